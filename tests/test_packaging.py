"""What `pip install -e '.[dev]'` installs is what the tests need: none skipped for it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _requirement_names() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"]]
    for extra in ("train", "ray", "dev"):  # dev includes photocap[train,ray]
        lines += project["optional-dependencies"][extra]
    return {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() for line in lines}


def test_every_package_a_test_imports_or_skips_is_installed_by_the_dev_extra() -> None:
    modules = set()
    for test in sorted((REPO / "tests").glob("*.py")):
        modules |= set(re.findall(r"importorskip\(\s*\"([\w.]+)\"", test.read_text()))
    # A distribution is named as its module is, with dashes (pillow_heif: pillow-heif).
    top = {m.split(".")[0] for m in modules} - {"photocap"} - set(sys.stdlib_module_names)
    wanted = {m.replace("_", "-") for m in top}
    assert "efficientnet-lite-pytorch" in wanted  # the reference port of test_encoder.py
    assert wanted - _requirement_names() == set()
