"""Shared fixtures: an isolated environment, generated sample photos, a tiny random model.

Every test runs with HOME, the XDG folders and PHOTOCAP_DB inside its tmp_path, so no test ever
reads or writes the real user's data folder.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def photocap_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point HOME, XDG dirs and PHOTOCAP_DB into tmp_path (autouse: tests never touch ~)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": home,
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "PHOTOCAP_DB": tmp_path / "photocap.db",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    for key in ("PHOTOCAP_CACHE", "PHOTOCAP_RUNTIME", "PHOTOCAP_MODEL"):
        monkeypatch.delenv(key, raising=False)  # the cache follows XDG_CACHE_HOME above
    return env


# ----------------------------------------------------------------------------- sample photos


def _jpeg_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, **kwargs)
    return buf.getvalue()


def _scene(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A small image with some structure (gradient + blocks), not a flat colour."""
    w, h = size
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    block = Image.new("RGB", (max(1, w // 3), max(1, h // 3)), ((seed * 67) % 256, 120, 200))
    img.paste(block, (w // 4, h // 4))
    return img


def _exif_bytes(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 5D"
    if orientation:
        exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2021:07:14 09:30:00"
    return exif.tobytes()


def _with_corrupt_exif(jpeg: bytes) -> bytes:
    """Insert an APP1 Exif segment whose TIFF structure is garbage right after SOI."""
    payload = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\xde\xad\xbe\xef" * 8
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class SamplePhotos:
    """A generated library: ``good`` photos decode, ``bad`` ones fail with a reason."""

    root: Path
    good: dict[str, Path] = field(default_factory=dict)
    bad: dict[str, Path] = field(default_factory=dict)
    ignored: dict[str, Path] = field(default_factory=dict)  # hidden files, sidecars, non-images


def make_good_photos(folder: Path) -> dict[str, Path]:
    """One small photo per supported format and odd mode. Returns name -> path."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kwargs: Any) -> None:
        path = folder / name
        img.save(path, **kwargs)
        out[name] = path

    base = _scene((48, 32), 1)
    save("jpeg_exif_rotated.jpg", base, exif=_exif_bytes(orientation=6), quality=85)
    save("plain.png", _scene((40, 30), 2))
    save("photo.webp", _scene((40, 30), 3), quality=80)
    save("scan.tiff", _scene((40, 30), 4))
    save("old.bmp", _scene((40, 30), 5))
    frames = [_scene((30, 20), i).convert("P") for i in range(3)]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["animated.gif"] = path
    save("iphone.heic", _scene((32, 24), 6), format="HEIF")
    save("modern.avif", _scene((32, 24), 7), format="AVIF")
    save("cmyk.jpg", _scene((40, 30), 8).convert("CMYK"), quality=85)
    save(
        "deep16.png",
        Image.linear_gradient("L")
        .resize((40, 30))
        .convert("I")
        .point(lambda v: v * 256)
        .convert("I;16"),
    )
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (10, 5, 20, 15))
    save("palette_alpha.png", palette, transparency=0)
    save("rgba.png", Image.new("RGBA", (20, 20), (0, 128, 0, 100)))
    save("gray.jpg", _scene((40, 30), 9).convert("L"), quality=85)
    save("bilevel.png", _scene((40, 30), 10).convert("1"))
    save("one_pixel.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    save("panorama.png", Image.new("RGB", (20000, 200), (90, 140, 200)))
    (folder / "corrupt_exif.jpg").write_bytes(_with_corrupt_exif(_jpeg_bytes(_scene((40, 30), 11))))
    out["corrupt_exif.jpg"] = folder / "corrupt_exif.jpg"
    (folder / "no_extension").write_bytes(_jpeg_bytes(_scene((40, 30), 12)))
    out["no_extension"] = folder / "no_extension"
    odd = folder / "sub folder" / "été à Zürich 日本.jpg"
    odd.parent.mkdir()
    odd.write_bytes(_jpeg_bytes(_scene((40, 30), 13)))
    out["unicode"] = odd
    newline = folder / "sub folder" / "line\nbreak.jpg"
    newline.write_bytes(_jpeg_bytes(_scene((40, 30), 14)))
    out["newline"] = newline
    return out


def make_bad_photos(folder: Path) -> dict[str, Path]:
    """Files that claim to be photos but cannot be decoded. Returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    full = _jpeg_bytes(_scene((64, 48), 20))
    for name, data in {
        "truncated.jpg": full[: len(full) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not a photo, just text\n" * 3,
        "bomb.png": _png_bomb(100_000, 100_000),
    }.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


@pytest.fixture
def sample_photos(tmp_path: Path) -> SamplePhotos:
    """A library in tmp_path/library with every format, every bad input and things to ignore."""
    root = tmp_path / "library"
    lib = SamplePhotos(root)
    lib.good = make_good_photos(root / "good")
    lib.bad = make_bad_photos(root / "bad")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "thumb.jpg").write_bytes(_jpeg_bytes(_scene((8, 8))))
    (root / "good" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "good" / "plain.png.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    (root / "notes.txt").write_text("not a photo")
    lib.ignored = {
        "hidden": root / ".hidden" / "thumb.jpg",
        "ds_store": root / "good" / ".DS_Store",
        "sidecar": root / "good" / "plain.png.xmp",
        "text": root / "notes.txt",
    }
    os.symlink(root, root / "good" / "loop")  # a symlink loop back to the library root
    return lib


def make_tiny_jpegs(folder: Path, count: int, size: tuple[int, int] = (24, 16)) -> list[Path]:
    """``count`` distinct tiny JPEGs (for runs over hundreds of photos): no two have the same
    pixels (a copy would keep its original's caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        blue = (i * 13 + (i // 256) * 101) % 256  # past 256 photos, the colours do not repeat
        img = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, blue))
        path = folder / f"img_{i:04d}.jpg"
        img.save(path, quality=70)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="session")
def captioner() -> Any:
    """The tiny randomly initialised captioner (fast on CPU)."""
    checkpoint = pytest.importorskip("photocap.checkpoint")
    return checkpoint.build_random_captioner(device="cpu")


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory, captioner: Any) -> Path:
    """The tiny captioner saved as a model file, for ``--model``."""
    from photocap.checkpoint import save_captioner

    return save_captioner(captioner, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def wide_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random two-decoder model wide enough (64) for int8 weights in the decoders' OpenVINO
    step (photocap.runtime): its LSTM, attention and deep-output projections are quantised, as
    the shipped ensemble's are (the tiny model's 16-wide layers are left in fp32)."""
    from photocap.checkpoint import build_random_captioner, save_captioner

    folder = tmp_path_factory.mktemp("wide")
    model = build_random_captioner(width=64, decoders=2)
    return save_captioner(model, folder / "wide.safetensors")


@pytest.fixture(scope="session")
def model_with_embedding(tmp_path_factory: pytest.TempPathFactory, captioner: Any) -> Path:
    """The tiny captioner's model file with a random text-image embedding (16-d) beside it."""
    import torch

    from photocap.checkpoint import LazyCaptioner, save_captioner
    from photocap.embedding import embedding_path, new_embedding, save_embedding

    path = save_captioner(captioner, tmp_path_factory.mktemp("vse") / "tiny.safetensors")
    model_id = LazyCaptioner(path, device="cpu").model_id
    decoder = captioner.decoder
    first = decoder.members[0] if hasattr(decoder, "members") else decoder
    torch.manual_seed(0)
    words = first.embed.weight.detach().float()
    module = new_embedding(captioner.encoder.feature_dim, words, dim=16)
    save_embedding(module, captioner.vocab, model_id, embedding_path(path))
    return path
