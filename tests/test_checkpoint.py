"""Model files: safetensors round trips, refusals with one-line errors, never any pickle."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flickr_fixtures import EXAMPLES, SHIPPED_MODEL, one_torch_thread  # noqa: F401
from safetensors.torch import load_file, save_file

from photocap import checkpoint
from photocap.checkpoint import (
    FORMAT_VERSION,
    build_random_captioner,
    default_model_path,
    load_captioner,
    read_metadata,
    save_captioner,
)
from photocap.errors import ModelError
from photocap.model import Captioner
from photocap.vocab import tokenize


def _pixels(n: int = 4, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _texts(c: Captioner, pixels: torch.Tensor, beam: int = 3) -> list[tuple[str, tuple[str, ...]]]:
    return [(x.text, x.alternatives) for x in c.caption_batch(pixels, beam)]


def _one_line_model_error(path: Path) -> ModelError:
    with pytest.raises(ModelError) as info:
        load_captioner(path, device="cpu")
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


def test_fp32_round_trip_is_exact(tmp_path: Path) -> None:
    original = build_random_captioner(device="cpu", seed=5)
    path = save_captioner(original, tmp_path / "m.safetensors", info={"note": "round trip"})
    loaded = load_captioner(path, device="cpu")
    assert loaded.vocab == original.vocab
    assert loaded.config == original.config
    assert loaded.preset == original.preset
    own = {k: v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = loaded.state_dict()
    for name, tensor in own.items():
        assert torch.equal(got[name], tensor), name
    assert _texts(loaded, _pixels()) == _texts(original, _pixels())
    for a, b in zip(
        loaded.caption_batch(_pixels(), 2), original.caption_batch(_pixels(), 2), strict=True
    ):
        assert a.score == b.score
    assert loaded.metadata["note"] == "round trip"
    assert loaded.metadata["name"] == "random-tiny"
    assert loaded.model_id.startswith("random-tiny@") and len(loaded.model_id.split("@")[1]) == 12
    assert not loaded.training
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temp file


def test_half_round_trip(tmp_path: Path) -> None:
    original = build_random_captioner(device="cpu", seed=6)
    path = save_captioner(original, tmp_path / "half.safetensors", half=True)
    raw = load_file(str(path))
    assert {t.dtype for t in raw.values() if t.is_floating_point()} == {torch.float16}
    loaded = load_captioner(path, device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # the same model rounded through fp16 by hand captions exactly like the loaded file
    rounded = build_random_captioner(device="cpu", seed=6)
    with torch.no_grad():
        for p in rounded.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    assert _texts(loaded, _pixels()) == _texts(rounded, _pixels())
    # and half -> load -> half again is stable
    again = save_captioner(loaded, tmp_path / "again.safetensors", half=True)
    for name, tensor in load_file(str(again)).items():
        assert torch.equal(tensor, raw[name]), name
    assert (tmp_path / "half.safetensors").stat().st_size < (
        save_captioner(original, tmp_path / "full.safetensors").stat().st_size
    )


def test_metadata_is_plain_strings(tmp_path: Path) -> None:
    path = save_captioner(build_random_captioner(), tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert meta["format"] == "photocap-checkpoint"
    assert meta["format_version"] == "1"  # one decoder: readable by every photocap (<= 3)
    assert FORMAT_VERSION == 3
    assert "decoders" not in json.loads(meta["config"])
    assert json.loads(meta["vocab"])[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert json.loads(meta["config"])["encoder"]["name"] == "tiny"
    assert json.loads(meta["preset"])["size"] == 64


def _rewrite_metadata(src: Path, dst: Path, **changes: str | None) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_format_version_too_new_is_refused(tmp_path: Path) -> None:
    good = save_captioner(build_random_captioner(), tmp_path / "m.safetensors")
    newer = _rewrite_metadata(
        good, tmp_path / "newer.safetensors", format_version=str(FORMAT_VERSION + 1)
    )
    err = _one_line_model_error(newer)
    assert f"version {FORMAT_VERSION + 1}" in str(err) and "upgrade" in str(err)
    # the current version and an older one load
    older = _rewrite_metadata(good, tmp_path / "older.safetensors", format_version="0")
    assert isinstance(load_captioner(older, device="cpu"), Captioner)


def test_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    assert "not a photocap model" in str(_one_line_model_error(path))
    bare = tmp_path / "bare.safetensors"
    save_file({"weight": torch.zeros(3)}, str(bare))
    assert "not a photocap model" in str(_one_line_model_error(bare))


def test_corrupt_metadata_and_mismatched_weights_are_refused(tmp_path: Path) -> None:
    good = save_captioner(build_random_captioner(), tmp_path / "m.safetensors")
    broken = _rewrite_metadata(good, tmp_path / "broken.safetensors", config="{not json")
    assert "corrupt" in str(_one_line_model_error(broken))
    no_vocab = _rewrite_metadata(good, tmp_path / "novocab.safetensors", vocab=None)
    _one_line_model_error(no_vocab)
    # weights of another architecture under a valid header
    other = tmp_path / "other_arch.safetensors"
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(good))
    tensors.pop("decoder.out.bias")
    save_file(tensors, str(other), metadata=meta)
    assert "does not match" in str(_one_line_model_error(other))


def test_model_info_is_read_from_the_header_as_the_loaded_model_says(tmp_path: Path) -> None:
    from photocap.checkpoint import model_info

    path = save_captioner(build_random_captioner(), tmp_path / "m.safetensors", half=True)
    assert model_info(path) == load_captioner(path, device="cpu").info()
    # Without building a model, without torch: what makes `photocap info` fast.
    code = (
        "import sys; from photocap.checkpoint import model_info; "
        f"info = model_info({str(path)!r}); print(info['parameters'], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    parameters = sum(p.numel() for p in build_random_captioner().parameters())
    assert out.stdout.split() == [str(parameters), "False"]
    for bad in (b"", b"\xff" * 8 + b"{}", (8).to_bytes(8, "little") + b"not json"):
        (tmp_path / "bad.safetensors").write_bytes(bad)
        with pytest.raises(ModelError, match=r"^not a photocap model file: "):
            model_info(tmp_path / "bad.safetensors")


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="shipped model not present")
def test_model_info_of_the_shipped_ensemble_as_the_loaded_model_says() -> None:
    from photocap.checkpoint import model_info

    assert model_info(SHIPPED_MODEL) == load_captioner(SHIPPED_MODEL, device="cpu").info()


def test_random_bytes_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(range(256)) * 40)
    _one_line_model_error(noise)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _one_line_model_error(empty)
    err = _one_line_model_error(tmp_path / "nope.safetensors")
    assert "not found" in str(err)
    folder = tmp_path / "a_folder.safetensors"
    folder.mkdir()
    _one_line_model_error(folder)


class _Boom:
    """Unpickling this creates a marker file: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickle_files_are_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pt = tmp_path / "model.pt"
    torch.save({"state": torch.zeros(2), "evil": _Boom(marker)}, pt)
    _one_line_model_error(pt)
    raw = tmp_path / "model.pkl"
    raw.write_bytes(pickle.dumps(_Boom(marker)))
    _one_line_model_error(raw)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    _one_line_model_error(disguised)
    assert not marker.exists()


def test_loading_a_model_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_captioner(build_random_captioner(), tmp_path / "m.safetensors")

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading a model file")

    monkeypatch.setattr(torch, "load", tripwire)
    monkeypatch.setattr(pickle, "load", tripwire)
    monkeypatch.setattr(pickle, "loads", tripwire)
    monkeypatch.setattr(pickle, "Unpickler", tripwire)
    assert isinstance(load_captioner(path, device="cpu"), Captioner)


def test_photocap_model_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_captioner(build_random_captioner(seed=9), tmp_path / "env model.safetensors")
    monkeypatch.setenv("PHOTOCAP_MODEL", str(path))
    assert default_model_path() == path
    loaded = load_captioner(None, device="cpu")
    assert loaded.model_id.startswith("random-tiny@")
    monkeypatch.setenv("PHOTOCAP_MODEL", str(tmp_path / "missing.safetensors"))
    err = _one_line_model_error(None)  # type: ignore[arg-type]
    assert "missing.safetensors" in str(err)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PHOTOCAP_MODEL", "~/env model.safetensors")
    assert default_model_path() == path


def test_default_model_path_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHOTOCAP_MODEL", raising=False)
    assert default_model_path().name == checkpoint.DEFAULT_MODEL_NAME


def test_unknown_device_is_refused(tmp_path: Path) -> None:
    path = save_captioner(build_random_captioner(), tmp_path / "m.safetensors")
    with pytest.raises(ModelError, match="unknown device"):
        load_captioner(path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA"):
            load_captioner(path, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_captions_match_cpu(tmp_path: Path) -> None:
    path = save_captioner(build_random_captioner(seed=2), tmp_path / "m.safetensors")
    cpu = load_captioner(path, device="cpu")
    gpu = load_captioner(path, device="cuda")
    assert gpu.device.type == "cuda"
    caps = gpu.caption_batch(_pixels(), 3)
    assert len(caps) == 4 and all(c.text.endswith(".") for c in caps)
    # bf16 autocast on the GPU: most, not necessarily all, captions agree with the CPU's
    same = sum(a.text == b.text for a, b in zip(caps, cpu.caption_batch(_pixels(), 3), strict=True))
    assert same >= 2


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="shipped model not present")
def test_shipped_model_captions_a_real_photo_plausibly() -> None:
    from PIL import Image, ImageOps

    captioner = load_captioner(SHIPPED_MODEL, device="cpu")
    assert len(captioner.vocab) > 1000
    photos = sorted(EXAMPLES.glob("*.jpg"))[:2]
    if not photos:
        pytest.skip("no example photos")
    pixels = []
    for photo in photos:
        with Image.open(photo) as img:
            pixels.append(captioner.preset.to_uint8(ImageOps.exif_transpose(img)))
    captions = captioner.caption_batch(torch.stack(pixels), beam_size=3)
    known = set(captioner.vocab.words[4:])
    for caption in captions:
        text = caption.text
        assert text[0].isupper() and text.endswith("."), text
        words = tokenize(text)
        assert len(words) >= 3, text
        assert all(w in known for w in words), text
        assert len(set(words)) >= 3, text  # not "a a a"
        assert caption.score > -5.0  # a model that knows its words is not guessing uniformly
    assert captioner.info()["vocabulary"] == len(captioner.vocab)
    # the limit on the shipped file, and its dev scores stored with it
    assert SHIPPED_MODEL.stat().st_size < 100e6
    assert captioner.metadata["dev_scores"]["beam_3"]["CIDEr"] > 0


def test_non_numeric_format_version_is_a_model_error(tmp_path: Path) -> None:
    good = save_captioner(build_random_captioner(), tmp_path / "m.safetensors")
    odd = _rewrite_metadata(good, tmp_path / "odd.safetensors", format_version="1.0")
    _one_line_model_error(odd)
