"""The encoder on OpenVINO (photocap.runtime): same features and captions as torch, derived
files cached by the model's hash, torch whenever OpenVINO cannot be had or would be stale."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is a dependency on x86_64 and ARM64 only")
pytest.importorskip("onnx", reason="OpenVINO is a dependency on x86_64 and ARM64 only")

import torch

from photocap.checkpoint import LazyCaptioner, load_captioner


def _pixels(size: int, n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_openvino_encodes_as_torch_does_and_captions_the_same(model_file: Path) -> None:
    fast = LazyCaptioner(model_file, device="cpu").captioner()
    plain = load_captioner(model_file, "cpu")  # runtime=False: torch
    assert fast.runtime_name.startswith("openvino ") and plain.runtime_name == "torch"
    pixels = _pixels(fast.preset.size)
    with torch.inference_mode():
        assert fast._runtime_encoder() is not None
        ours, theirs = fast.encode(pixels), plain.encode(pixels)
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert [c.text for c in fast.caption_batch(pixels)] == [
        c.text for c in plain.caption_batch(pixels)
    ]


def test_the_onnx_file_is_made_once_per_model_and_reused(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    first = LazyCaptioner(model_file, device="cpu")
    first.captioner()
    made = list((tmp_path / "cache" / "openvino").glob("encoder-*.onnx"))
    size = first.preset.size
    assert [p.name for p in made] == [f"encoder-{first.digest[:16]}-{size}-v1.onnx"]
    stamp = made[0].stat().st_mtime_ns
    import photocap.runtime as runtime

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(runtime, "_export_onnx", no_export)
    again = LazyCaptioner(model_file, device="cpu").captioner()
    assert again.runtime_name.startswith("openvino ") and made[0].stat().st_mtime_ns == stamp


def test_torch_when_asked_or_when_openvino_cannot_be_had(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHOTOCAP_RUNTIME", "torch")
    assert LazyCaptioner(model_file, device="cpu").captioner().runtime_name == "torch"
    monkeypatch.delenv("PHOTOCAP_RUNTIME")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "file"))  # the cache cannot be made
    model = LazyCaptioner(model_file, device="cpu").captioner()
    assert model.runtime_name.startswith("torch (openvino: ")
    with torch.inference_mode():
        assert model._runtime_encoder() is None
        assert model.caption_batch(_pixels(model.preset.size))  # still captions


def test_changed_weights_are_never_encoded_by_the_stale_runtime(model_file: Path) -> None:
    """Training or a new state dict after the load: the runtime holds the old weights."""
    model = LazyCaptioner(model_file, device="cpu").captioner()
    pixels = _pixels(model.preset.size)
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.5)
    with torch.inference_mode():
        assert model._runtime_encoder() is None
        changed = model.encode(pixels)
    plain = load_captioner(model_file, "cpu")
    with torch.no_grad():
        next(plain.encoder.parameters()).add_(0.5)
    with torch.inference_mode():
        torch.testing.assert_close(changed, plain.encode(pixels), rtol=1e-4, atol=1e-5)


def test_a_cached_file_that_no_longer_reads_is_made_again(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    LazyCaptioner(model_file, device="cpu").captioner()
    (cached,) = (tmp_path / "cache" / "openvino").glob("encoder-*.onnx")
    cached.write_bytes(cached.read_bytes()[:1000])  # a damaged file under the final name
    model = LazyCaptioner(model_file, device="cpu").captioner()
    assert model.runtime_name.startswith("openvino ")
    assert cached.stat().st_size > 1000


def test_the_run_summary_says_what_ran_the_encoder(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from conftest import make_tiny_jpegs
    from typer.testing import CliRunner

    from photocap.cli import app

    make_tiny_jpegs(tmp_path / "lib", 2)
    args = ["caption", str(tmp_path / "lib"), "--model", str(model_file), "--write", "index"]

    def summary(*extra: str) -> dict[str, object]:
        result = CliRunner().invoke(app, [*args, *extra, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert summary()["encoder"] == "torch"  # 2 photos: OpenVINO's start would cost more
    assert summary()["encoder"] == ""  # nothing to caption: no model built
    monkeypatch.setenv("PHOTOCAP_RUNTIME", "openvino")
    assert str(summary("--force")["encoder"]).startswith("openvino ")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "file"))
    assert str(summary("--force")["encoder"]).startswith("torch (openvino: ")
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 0
    assert "The encoder ran on torch: openvino: " in result.output


def test_a_cached_file_of_another_model_is_not_used(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photocap.checkpoint import build_random_captioner, save_captioner

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    other = save_captioner(build_random_captioner(seed=7), tmp_path / "other.safetensors")
    LazyCaptioner(other, device="cpu").captioner()
    (theirs,) = (tmp_path / "cache" / "openvino").glob("encoder-*.onnx")
    ours = LazyCaptioner(model_file, device="cpu")
    name = theirs.name.replace(theirs.name.split("-")[1], ours.digest[:16])
    (theirs.parent / name).write_bytes(theirs.read_bytes())  # under our model's name
    model = ours.captioner()
    assert model.runtime_name.startswith("openvino ")
    assert (theirs.parent / name).read_bytes() != theirs.read_bytes()  # exported again
    pixels, plain = _pixels(model.preset.size), load_captioner(model_file, "cpu")
    with torch.inference_mode():
        torch.testing.assert_close(model.encode(pixels), plain.encode(pixels), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip


def test_a_run_compiles_openvino_for_both_thread_counts_while_loading(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run gives the model half the cores while decode workers decode and every thread
    # otherwise: both are compiled on the build thread, not mid-run on the first batch.
    import os
    import threading

    from conftest import make_tiny_jpegs

    import photocap.runtime as runtime
    from photocap.index import PhotoIndex
    from photocap.pipeline import CaptionOptions, caption_library

    monkeypatch.setenv("PHOTOCAP_RUNTIME", "openvino")  # 3 photos: torch otherwise
    compiled: list[tuple[str, int]] = []
    request = runtime.OpenVinoEncoder._request

    def recording(self: runtime.OpenVinoEncoder, threads: int) -> object:
        if threads not in self._compiled:
            compiled.append((threading.current_thread().name, threads))
        return request(self, threads)

    monkeypatch.setattr(runtime.OpenVinoEncoder, "_request", recording)
    threads = torch.get_num_threads()
    make_tiny_jpegs(tmp_path / "lib", 3)
    lazy = LazyCaptioner(model_file, device="cpu")
    with PhotoIndex(tmp_path / "i.db") as index:
        list(caption_library([tmp_path / "lib"], lazy, index, CaptionOptions(workers=1)))
    half = max(1, min(threads, (os.cpu_count() or 1) // 2))
    assert {n for _, n in compiled} == {threads, half}
    assert {name for name, _ in compiled} == {"photocap-model-load"}


def test_a_runtime_failure_mid_run_falls_back_to_torch(model_file: Path) -> None:
    model = LazyCaptioner(model_file, device="cpu").captioner()
    plain = load_captioner(model_file, "cpu")
    assert model._runtime is not None

    def broken(pixels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("compile failed for 3 threads")

    model._runtime = (model._runtime[0], broken)
    pixels = _pixels(model.preset.size)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode(pixels), plain.encode(pixels), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    assert model.runtime_name == "torch (openvino: compile failed for 3 threads)"
    assert model._runtime is None


def test_openvino_is_tried_from_the_run_size_where_it_pays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from photocap.runtime import MIN_PHOTOS, wants_runtime

    assert not wants_runtime(MIN_PHOTOS - 1) and wants_runtime(MIN_PHOTOS)
    assert wants_runtime(None)  # evaluate, a model loaded by hand
    monkeypatch.setenv("PHOTOCAP_RUNTIME", "openvino")
    assert wants_runtime(1)
    monkeypatch.setenv("PHOTOCAP_RUNTIME", "torch")
    assert not wants_runtime(10_000) and not wants_runtime(None)


def test_an_export_removes_what_it_replaces(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    lazy = LazyCaptioner(model_file, device="cpu")
    folder = tmp_path / "cache" / "openvino"
    folder.mkdir(parents=True)
    size, key = lazy.preset.size, lazy.digest[:16]
    older = folder / f"encoder-{key}-{size}-v0.onnx"  # an earlier export version
    other = folder / f"encoder-{'f' * 16}-{size}-v1.onnx"  # another model's: kept
    stale = folder / ".encoder-x.onnx.tmp-1-2"  # an export killed two hours ago
    fresh = folder / ".encoder-y.onnx.tmp-3-4"  # another run writing now
    for path in (older, other, stale, fresh):
        path.write_bytes(b"x")
    os.utime(stale, (0, 0))
    lazy.captioner()
    assert not older.exists() and not stale.exists() and other.exists() and fresh.exists()
    assert (folder / f"encoder-{key}-{size}-v1.onnx").exists()


def test_exporting_leaves_the_torch_encoder_in_eval_mode(model_file: Path, tmp_path: Path) -> None:
    # torch.onnx.export puts a module back in the mode it had. The BN-folded copy's wrapper
    # was made in training mode, so an export switched stochastic depth on in every block:
    # torch then computed other features (3.7 off on a scale of 6 with the shipped model),
    # OpenVINO's check against them failed, and the whole run fell back to that torch.
    import photocap.runtime as runtime

    captioner = load_captioner(model_file, "cpu")
    pixels = _pixels(captioner.preset.size)
    with torch.inference_mode():
        before = captioner.encode(pixels)
    with torch.no_grad():
        fused = captioner._inference_encoder()
    assert fused is not None
    runtime._export_onnx(fused, captioner.preset.size, tmp_path / "encoder-x-64-v1.onnx")
    assert not any(module.training for module in fused.modules())
    with torch.inference_mode():
        after = captioner.encode(pixels)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
