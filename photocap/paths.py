"""Where photocap keeps its files: the default caption index location, and the cache folder.

The index lives in the per-user data folder (``platformdirs``), e.g.
``~/.local/share/photocap/photocap.db`` on Linux, ``~/Library/Application Support/photocap``
on macOS and ``%LOCALAPPDATA%\\photocap`` on Windows. ``PHOTOCAP_DB`` overrides it, and
``--db FILE`` overrides both.

Files derived from others (the model's OpenVINO parts, the gallery's thumbnails) live in the
per-user cache folder (``~/.cache/photocap`` on Linux), or ``$PHOTOCAP_CACHE``: deleting it
loses nothing but time.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV_VAR = "PHOTOCAP_DB"
DB_FILENAME = "photocap.db"
CACHE_ENV = "PHOTOCAP_CACHE"


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


def cache_dir() -> Path:
    """Where derived files live: ``$PHOTOCAP_CACHE``, else the per-user cache folder."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("photocap", appauthor=False)
