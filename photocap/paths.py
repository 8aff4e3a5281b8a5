"""Where photocap keeps its files: the default caption index location.

The index lives in the per-user data folder (``platformdirs``), e.g.
``~/.local/share/photocap/photocap.db`` on Linux, ``~/Library/Application Support/photocap``
on macOS and ``%LOCALAPPDATA%\\photocap`` on Windows. ``PHOTOCAP_DB`` overrides it, and
``--db FILE`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV_VAR = "PHOTOCAP_DB"
DB_FILENAME = "photocap.db"


def default_db_path() -> Path:
    """The index used when no ``--db`` is given: ``$PHOTOCAP_DB`` or the user data folder."""
    env = os.environ.get(DB_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("photocap", appauthor=False) / DB_FILENAME


def resolve_db_path(db: Path | None) -> Path:
    """``--db`` when given, else :func:`default_db_path`; always absolute."""
    path = db.expanduser() if db is not None else default_db_path()
    return Path(os.path.abspath(path))
