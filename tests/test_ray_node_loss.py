"""``--engine ray``: a worker node lost mid-run on a simulated cluster loses no photo. The run
is in a process of its own (``tests/ray_node_loss.py``), as ``photocap caption`` is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_jpegs

pytestmark = pytest.mark.ray
pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'photocap[ray]'")


def test_a_node_lost_mid_run_loses_no_photo(model_file: Path, tmp_path: Path) -> None:
    # Its own cluster, in a process of its own (see tests/ray_node_loss.py): a worker node
    # removed after the first results and another added.
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 16)
    script = Path(__file__).with_name("ray_node_loss.py")
    args = [sys.executable, str(script), str(model_file), str(lib), str(tmp_path / "i.db")]
    # A process as a user starts it: not the Ray settings an earlier test's ray.init() left in
    # this one's environment (RAY_AUTH_MODE=token, whose token lives in that Ray's session).
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["removed"] and report["added"]
    assert not report["interrupted"]
    assert (report["captioned"], report["failed"]) == (16, 0)
    rows = report["rows"]
    assert sorted(rows) == sorted(str(p) for p in lib.glob("*.jpg"))  # each exactly once
    assert all((lib / f"{Path(p).name}.xmp").is_file() for p in rows)
