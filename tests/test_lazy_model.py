"""The model is built only when a photo needs it (issue 23): an unchanged re-run loads none."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_jpegs

from photocap.checkpoint import LazyCaptioner, load_captioner
from photocap.errors import ModelError
from photocap.index import PhotoIndex
from photocap.pipeline import CaptionOptions, RunSummary, caption_library


def _assert_run_stops(tmp_path: Path, model: LazyCaptioner, reason: str) -> None:
    """A run of two photos with ``model`` ends with a ModelError saying ``reason``."""
    make_tiny_jpegs(tmp_path / "lib", 2)
    with pytest.raises(ModelError, match=reason):
        _run(tmp_path / "lib", model, tmp_path / "index.db")


def _edited_model(model_file: Path, out: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``model_file`` whose tensors ``edit`` changed in place, header kept."""
    from safetensors.torch import load_file, save_file

    from photocap.checkpoint import read_metadata

    state = load_file(str(model_file))
    edit(state)
    save_file(state, str(out), metadata=read_metadata(model_file))
    return out


def _run(folder: Path, model: LazyCaptioner, db: Path) -> RunSummary:
    options = CaptionOptions(writers=("xmp", "index"), workers=1, batch_size=4)
    with PhotoIndex(db) as index:
        events = list(caption_library([folder], model, index, options))
    summary = events[-1]
    assert isinstance(summary, RunSummary)
    return summary


def test_unchanged_rerun_never_builds_the_model(tmp_path: Path, model_file: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 6)
    db = tmp_path / "index.db"
    first = LazyCaptioner(model_file, device="cpu")
    assert not first.is_built  # opening reads the header and hashes the file, nothing else
    assert _run(tmp_path / "lib", first, db).captioned == 6
    assert first.is_built

    again = LazyCaptioner(model_file, device="cpu")
    summary = _run(tmp_path / "lib", again, db)
    assert (summary.captioned, summary.skipped, summary.failed) == (0, 6, 0)
    assert not again.is_built


def test_lazy_captions_and_id_are_the_loaded_models(tmp_path: Path, model_file: Path) -> None:
    import torch

    lazy = LazyCaptioner(model_file, device="cpu")
    loaded = load_captioner(model_file, "cpu")
    assert lazy.model_id == loaded.model_id
    assert lazy.preset == loaded.preset
    pixels = torch.randint(0, 256, (2, 3, loaded.preset.size, loaded.preset.size),
                           dtype=torch.uint8)  # fmt: skip
    assert [c.text for c in lazy.caption_batch(pixels)] == [
        c.text for c in loaded.caption_batch(pixels)
    ]


def test_a_model_file_changed_after_opening_is_refused(tmp_path: Path, model_file: Path) -> None:
    """The captions are recorded with the id of the file as opened: a file replaced before the
    model is built (a training run saving a new best) must not caption under the old id."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(model_file.read_bytes())
    lazy = LazyCaptioner(path, device="cpu")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(data))
    _assert_run_stops(tmp_path, lazy, "changed during the run")


def test_weights_that_do_not_fit_fail_the_run_as_a_model_error(
    tmp_path: Path, model_file: Path
) -> None:
    def drop_one(state: dict[str, Any]) -> None:
        del state[next(iter(state))]

    path = _edited_model(model_file, tmp_path / "broken.safetensors", drop_one)
    lazy = LazyCaptioner(path, device="cpu")  # the header is fine: opened
    _assert_run_stops(tmp_path, lazy, "does not match its config")


def test_cli_rerun_of_an_unchanged_library_imports_no_torch(
    tmp_path: Path, model_file: Path
) -> None:
    make_tiny_jpegs(tmp_path / "lib", 3)
    args = ["caption", str(tmp_path / "lib"), "--model", str(model_file),
            "--db", str(tmp_path / "index.db"), "--write", "xmp,index"]  # fmt: skip
    code = (
        "import sys; from typer.testing import CliRunner; from photocap.cli import app; "
        f"r = CliRunner().invoke(app, {args!r}); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )

    def run() -> str:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=dict(os.environ))  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    assert run() == "0 True"  # captioned: the model was built
    assert run() == "0 False"  # nothing to caption: no torch, no model
    # A photo that does not decode is tried again each run: still no torch for it.
    (tmp_path / "lib" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    assert run() == "1 False"


def test_no_model_build_when_the_only_work_cannot_be_decoded(
    tmp_path: Path, model_file: Path
) -> None:
    # Failed photos are tried again on every run: a re-run whose only work is a photo that
    # still does not decode must not start a build (a thread left inside torch at exit
    # aborted the process: exit 134 instead of 1).
    import threading

    make_tiny_jpegs(tmp_path / "lib", 2)
    (tmp_path / "lib" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    db = tmp_path / "index.db"
    assert _run(tmp_path / "lib", LazyCaptioner(model_file, device="cpu"), db).failed == 1
    again = LazyCaptioner(model_file, device="cpu")
    summary = _run(tmp_path / "lib", again, db)
    assert (summary.captioned, summary.failed) == (0, 1)
    assert not again.is_built and again._builder is None
    assert not any(t.name == "photocap-model-load" for t in threading.enumerate())


def test_a_tensor_of_the_wrong_shape_stops_the_run_with_one_line(
    tmp_path: Path, model_file: Path
) -> None:
    # It was a RuntimeError, which the run takes for one batch's failure: every photo failed,
    # one line each, and the index got a failure row per photo.
    import sqlite3

    from typer.testing import CliRunner

    from photocap.cli import app

    def narrow_one(state: dict[str, Any]) -> None:
        name = next(k for k, v in state.items() if v.dim() == 2)
        state[name] = state[name][:, :-1].contiguous()

    path = _edited_model(model_file, tmp_path / "wrong.safetensors", narrow_one)
    make_tiny_jpegs(tmp_path / "lib", 6)
    db = tmp_path / "index.db"
    result = CliRunner().invoke(app, ["caption", str(tmp_path / "lib"), "--model", str(path),
                                      "--db", str(db), "--write", "index"])  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "does not match its config" in line]
    assert len(errors) == 1 and "failed" not in result.output.lower()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM photos WHERE error IS NOT NULL").fetchone() == (
            0,
        )
