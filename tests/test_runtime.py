"""The encoder on OpenVINO (photocap.runtime): same features and captions as torch, derived
files cached by the model's hash, torch whenever OpenVINO cannot be had or would be stale."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is a dependency on x86_64 and ARM64 only")
pytest.importorskip("onnx", reason="OpenVINO is a dependency on x86_64 and ARM64 only")

import torch

from photocap.checkpoint import LazyCaptioner, load_captioner
from photocap.runtime import STEP_VERSION


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
    assert "The encoder and decoders ran on torch: openvino: " in result.output


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


def test_a_run_compiles_openvino_once_for_every_thread_while_loading(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the build thread, not mid-run on the first batch; once per part, for every thread
    # torch had when the run started: OpenVINO keeps them while workers decode (torch's own
    # threads are halved then), so no second compiled model (and memory arena) is made.
    import threading

    from conftest import make_tiny_jpegs

    import photocap.runtime as runtime
    from photocap.index import PhotoIndex
    from photocap.pipeline import CaptionOptions, caption_library

    monkeypatch.setenv("PHOTOCAP_RUNTIME", "openvino")  # 3 photos: torch otherwise
    compiled: list[tuple[str, str, int]] = []
    compiled_for = runtime._Compiled._compiled_for

    def recording(self: runtime._Compiled, threads: int) -> object:
        if threads not in self._compiled:
            compiled.append((type(self).__name__, threading.current_thread().name, threads))
        return compiled_for(self, threads)

    monkeypatch.setattr(runtime._Compiled, "_compiled_for", recording)
    threads = torch.get_num_threads()
    make_tiny_jpegs(tmp_path / "lib", 3)
    lazy = LazyCaptioner(model_file, device="cpu")
    with PhotoIndex(tmp_path / "i.db") as index:
        list(caption_library([tmp_path / "lib"], lazy, index, CaptionOptions(workers=1)))
    assert sorted(compiled) == [("OpenVinoDecoder", "photocap-model-load", threads),
                                ("OpenVinoEncoder", "photocap-model-load", threads)]  # fmt: skip
    # torch's threads halved (as while workers decode): OpenVINO runs with all of them still.
    model = lazy.captioner()
    torch.set_num_threads(1)
    try:
        model.caption_batch(_pixels(model.preset.size, 2))
    finally:
        torch.set_num_threads(threads)
    assert len(compiled) == 2


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


# ---------------------------------------------------------------- the decoders' int8 step


@pytest.fixture
def wide_ensemble(wide_model_file: Path) -> Path:
    """conftest's wide_model_file: two decoders, 64 wide, int8 weights in the step."""
    return wide_model_file


def _step_files(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "openvino").glob("decoders-*"))


def test_every_cpu_run_decodes_with_the_int8_step_whatever_its_size(
    wide_ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo's caption must not depend on how many photos its run has: the decoders use
    OpenVINO in a one-photo run too (the encoder stays on torch there)."""
    import openvino

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    lazy = LazyCaptioner(wide_ensemble, device="cpu")
    lazy.prepare(wait=True, photos=1)
    model = lazy.captioner()
    assert model.runtime_name == "torch"  # the encoder: one photo does not repay its start
    assert model.decoder_runtime_name.startswith("openvino ")
    assert model.decoder_runtime_name.endswith(" int8")
    digest = lazy.digest[:16]
    names = _step_files(tmp_path / "cache")
    v = STEP_VERSION
    assert names == [f"decoders-{digest}-v{v}.bin", f"decoders-{digest}-v{v}.xml"]
    saved = openvino.Core().read_model(str(tmp_path / "cache" / "openvino" / names[1]))
    int8 = [
        n
        for n in saved.get_ordered_ops()
        if n.get_type_name() == "Constant" and n.get_element_type() == openvino.Type.i8
    ]
    # Each decoder: the attention's hidden projection, the LSTM's two, the deep output's;
    # the rest have a side under 64 here (the tiny encoder's 32 channels, 22 words).
    assert len(int8) == 2 * 4
    with torch.inference_mode():
        assert model._runtime_decoder() is not None
        ours = model.caption_batch(_pixels(model.preset.size, 4))
    assert all(c.text for c in ours)


def test_the_int8_step_computes_the_torch_step_to_int8_rounding(wide_ensemble: Path) -> None:
    """Next-word probabilities within a few thousandths, the same best word; the new state
    within int8's rounding. The ensemble's mean of probabilities is exported at opset 18:
    at 17, OpenVINO read its log-sum-exp as a sum over every axis, a scalar."""
    from photocap.runtime import _step_inputs

    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    plain = load_captioner(wide_ensemble, "cpu")
    with torch.no_grad():
        runtime = model._runtime_decoder()
    assert runtime is not None
    with torch.no_grad():
        words, h, c, features, att = _step_inputs(plain.decoder, (4, 32), 12, seed=5)
        want, (want_h, _), want_alpha = plain.decoder.step(words, (h, c), features, att)
        got, (got_h, _), got_alpha = runtime.step(words, (h, c), features, att)
    assert got.shape == want.shape and got_h.shape == want_h.shape
    assert float((got.exp() - want.exp()).abs().max()) < 0.02
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert float((got_h - want_h).abs().max()) < 0.05
    torch.testing.assert_close(got_alpha, want_alpha, rtol=0, atol=0.02)


def test_greedy_and_beam_search_with_the_step_match_torch_on_a_model_int8_leaves_alone(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny model's layers are too small for int8 (16 wide): its OpenVINO step is fp32,
    so every search with it gives torch's captions exactly (batch sizes change as beams end)."""
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    model = LazyCaptioner(model_file, device="cpu").captioner()
    plain = load_captioner(model_file, "cpu")
    assert model.decoder_runtime_name.startswith("openvino ")
    pixels = _pixels(model.preset.size, 5)
    for beam in (1, 3, 5):
        ours = model.caption_batch(pixels, beam_size=beam)
        theirs = plain.caption_batch(pixels, beam_size=beam)
        assert [(c.text, c.alternatives) for c in ours] == [
            (c.text, c.alternatives) for c in theirs
        ]


def test_building_the_step_leaves_the_torch_decoders_in_eval_mode(
    wide_ensemble: Path, tmp_path: Path
) -> None:
    # The exporter puts back the mode of the module it is given to every submodule: a wrapper
    # made in training mode switched the decoders' dropout on, torch's step changed, and the
    # check against it failed on the first run (every later run, from the cache, passed).
    import photocap.runtime as runtime

    plain = load_captioner(wide_ensemble, "cpu")
    with torch.no_grad():
        probe = runtime._step_inputs(plain.decoder, (4, 32), 6, seed=2)
        before = plain.decoder.step(probe[0], (probe[1], probe[2]), probe[3], probe[4])[0]
        runtime._export_int8_step(plain.decoder, (4, 32), tmp_path / "decoders-x-v1.xml")
        after = plain.decoder.step(probe[0], (probe[1], probe[2]), probe[3], probe[4])[0]
    assert not any(module.training for module in plain.decoder.modules())
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_the_step_file_is_made_once_and_a_damaged_or_foreign_one_is_made_again(
    wide_ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import photocap.runtime as runtime
    from photocap.checkpoint import build_random_captioner, save_captioner

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    lazy = LazyCaptioner(wide_ensemble, device="cpu")
    lazy.captioner()
    folder = tmp_path / "cache" / "openvino"
    xml = folder / f"decoders-{lazy.digest[:16]}-v{runtime.STEP_VERSION}.xml"
    stamp = xml.stat().st_mtime_ns
    made = runtime._export_int8_step
    exports: list[Path] = []

    def counting(decoder: object, shape: tuple[int, int], path: Path) -> None:
        exports.append(path)
        made(decoder, shape, path)

    monkeypatch.setattr(runtime, "_export_int8_step", counting)
    again = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    assert again.decoder_runtime_name.endswith(" int8") and exports == []
    assert xml.stat().st_mtime_ns == stamp
    # Damaged under its final name: made again once, not torch for every later run.
    xml.write_bytes(xml.read_bytes()[:500])
    assert (
        LazyCaptioner(wide_ensemble, device="cpu")
        .captioner()
        .decoder_runtime_name.endswith(" int8")
    )
    assert exports == [xml]
    # Another model's step under this model's name computes other words: made again.
    other = save_captioner(build_random_captioner(seed=9, width=64, decoders=2),
                           tmp_path / "other.safetensors")  # fmt: skip
    theirs = LazyCaptioner(other, device="cpu")
    theirs.captioner()
    exports.clear()
    for suffix in (".xml", ".bin"):
        source = folder / xml.name.replace(lazy.digest[:16], theirs.digest[:16])
        source = source.with_suffix(suffix)
        xml.with_suffix(suffix).write_bytes(source.read_bytes())
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    assert model.decoder_runtime_name.endswith(" int8") and exports == [xml]


def test_the_int8_step_is_never_used_for_changed_weights_training_or_gradients(
    wide_ensemble: Path,
) -> None:
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    with torch.inference_mode():
        assert model._runtime_decoder() is not None
    with torch.enable_grad():
        assert model._runtime_decoder() is None  # self-critical training samples with grads
    model.train()
    with torch.inference_mode():
        assert model._runtime_decoder() is None
    model.eval()
    with torch.no_grad():
        next(model.decoder.parameters()).add_(0.5)  # a training step, load_state_dict
    with torch.inference_mode():
        assert model._runtime_decoder() is None


def test_a_step_failure_mid_run_captions_on_torch(wide_ensemble: Path) -> None:
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    plain = load_captioner(wide_ensemble, "cpu")
    with torch.no_grad():
        runtime = model._runtime_decoder()
    assert runtime is not None

    def broken(*args: object) -> object:
        raise RuntimeError("out of memory in the step")

    runtime.step = broken  # type: ignore[method-assign, assignment]
    pixels = _pixels(model.preset.size)
    assert [c.text for c in model.caption_batch(pixels)] == [
        c.text for c in plain.caption_batch(pixels)
    ]
    assert model.decoder_runtime_name == "torch (openvino: out of memory in the step)"
    assert model._runtime_decoder() is None


def test_the_decoders_stay_on_torch_when_asked_or_when_openvino_cannot_be_had(
    wide_ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from conftest import make_tiny_jpegs
    from typer.testing import CliRunner

    from photocap.cli import app

    monkeypatch.setenv("PHOTOCAP_RUNTIME", "torch")
    assert LazyCaptioner(wide_ensemble, device="cpu").captioner().decoder_runtime_name == (
        "torch (PHOTOCAP_RUNTIME=torch)"
    )
    monkeypatch.delenv("PHOTOCAP_RUNTIME")
    make_tiny_jpegs(tmp_path / "lib", 2)
    args = ["caption", str(tmp_path / "lib"), "--model", str(wide_ensemble), "--write", "index"]
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["encoder"] == "torch" and summary["decoders"].endswith(" int8")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "file"))  # the cache cannot be made
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert "The decoders ran on torch: openvino: " in result.output


def test_a_run_with_cached_files_does_not_import_onnx(
    wide_ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnx (~0.7 s to import) writes the exported files; once they are cached a run, even of
    one photo, needs OpenVINO only. A file to export without onnx: torch, saying why."""
    import subprocess
    import sys

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PHOTOCAP_RUNTIME", "openvino")  # the encoder's file too
    LazyCaptioner(wide_ensemble, device="cpu").captioner()  # exports both, imports onnx
    script = (
        "import sys\n"
        "from photocap.checkpoint import LazyCaptioner\n"
        f"model = LazyCaptioner({str(wide_ensemble)!r}, device='cpu').captioner()\n"
        "print(model.runtime_name, '|', model.decoder_runtime_name, '|', 'onnx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    encoder, decoders, imported = out.split(" | ")
    assert encoder.startswith("openvino ") and decoders.endswith(" int8") and imported == "False"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()  # cached: no onnx needed
    assert model.runtime_name.startswith("openvino ")
    assert model.decoder_runtime_name.endswith(" int8")
    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "empty"))  # files to export: onnx
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    why = "torch (openvino: onnx is not installed (it exports the model for OpenVINO))"
    assert model.runtime_name == model.decoder_runtime_name == why


def test_the_openvino_encoder_runs_a_batch_in_chunks_with_the_same_features(
    model_file: Path,
) -> None:
    """Four photos at a time (its memory arena is sized by the largest batch): a batch of 9
    runs as 4 + 4 + 1 and gives torch's features, in order."""
    from photocap.runtime import ENCODER_CHUNK

    model = LazyCaptioner(model_file, device="cpu").captioner()
    plain = load_captioner(model_file, "cpu")
    pixels = _pixels(model.preset.size, 2 * ENCODER_CHUNK + 1)
    with torch.inference_mode():
        assert model._runtime_encoder() is not None
        ours, theirs = model.encode(pixels), plain.encode(pixels)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_photos_caption_does_not_depend_on_its_batch_with_the_int8_step(
    wide_ensemble: Path,
) -> None:
    """Dynamic quantisation scales activations per group of values within a row, never across
    rows: a photo captioned alone and in a batch of five gets the same caption."""
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    assert model.decoder_runtime_name.endswith(" int8")
    pixels = _pixels(model.preset.size, 5)
    together = [c.text for c in model.caption_batch(pixels)]
    alone = [model.caption_batch(pixels[k : k + 1])[0].text for k in range(5)]
    assert together == alone


def test_a_cache_path_that_cannot_be_had_leaves_the_model_on_torch(
    wide_ensemble: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # expanduser() raises for an unknown user's home: OpenVINO cannot be had, the run goes on.
    monkeypatch.setenv("PHOTOCAP_CACHE", "~no-such-user-photocap/cache")
    monkeypatch.setenv("PHOTOCAP_RUNTIME", "openvino")
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    assert model.runtime_name.startswith("torch (openvino: ")
    assert model.decoder_runtime_name.startswith("torch (openvino: ")
    assert model.caption_batch(_pixels(model.preset.size, 2))


def test_a_step_whose_state_outputs_are_mixed_up_fails_the_check(
    wide_ensemble: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares the new state too, not only the next word's scores: a step file
    whose h and c came back swapped would pass a scores-only check and go wrong from the
    second word on."""
    import photocap.runtime as runtime

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    step = runtime.OpenVinoDecoder.step

    def swapped(self: runtime.OpenVinoDecoder, *args: torch.Tensor) -> object:
        scores, (h, c), alpha = step(self, *args)  # type: ignore[arg-type]
        return scores, (c, h), alpha

    monkeypatch.setattr(runtime.OpenVinoDecoder, "step", swapped)
    model = LazyCaptioner(wide_ensemble, device="cpu").captioner()
    assert model.decoder_runtime_name.startswith("torch (openvino: its state differ")
