"""Decoding photos of every format and every kind of bad input."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_bad_photos, make_good_photos
from PIL import Image

from photocap.errors import ImageError
from photocap.image import (
    DecodedPhoto,
    DecodeFailure,
    decode_photo,
    describe_path,
    hash_file,
    open_image,
    sniff_format,
)
from photocap.preset import Preset

PRESET = Preset(size=32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Path]]:
    root = tmp_path_factory.mktemp("img")
    return make_good_photos(root / "good"), make_bad_photos(root / "bad")


def test_every_good_photo_decodes_to_preset_pixels(photos) -> None:
    good, _ = photos
    for name, path in good.items():
        result = decode_photo(str(path), PRESET)
        assert isinstance(result, DecodedPhoto), (name, result)
        assert result.pixels.shape == (3, 32, 32) and result.pixels.dtype == np.uint8, name
        assert len(result.content_hash) == 64
        assert result.size == path.stat().st_size


def test_pixels_match_preset_to_uint8(photos) -> None:
    path = photos[0]["plain.png"]
    decoded = decode_photo(str(path), PRESET)
    assert isinstance(decoded, DecodedPhoto)
    expected = PRESET.to_uint8(Image.open(path)).numpy()
    assert np.array_equal(decoded.pixels, expected)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.jpg", "JPEG"),
        ("empty.jpg", "empty file"),
        ("text.jpg", "not an image"),
        ("bomb.png", "image too large (10,000,000,000 pixels)"),
    ],
)
def test_bad_photo_is_one_line_failure(photos, name: str, reason: str) -> None:
    result = decode_photo(str(photos[1][name]), PRESET)
    assert isinstance(result, DecodeFailure)
    assert reason in result.error
    assert "\n" not in result.error and "Traceback" not in result.error


def test_max_pixels_limit(photos) -> None:
    result = decode_photo(str(photos[0]["panorama.png"]), PRESET, max_pixels=1_000_000)
    assert isinstance(result, DecodeFailure)
    assert result.error == "image too large (4,000,000 pixels; limit 1,000,000)"


def test_exif_orientation_date_and_camera(photos) -> None:
    result = decode_photo(str(photos[0]["jpeg_exif_rotated.jpg"]), PRESET)
    assert isinstance(result, DecodedPhoto)
    assert (result.width, result.height) == (32, 48)  # stored 48x32, orientation 6 -> portrait
    assert result.date_taken == "2021-07-14T09:30:00"
    assert result.camera == "Canon EOS 5D"
    assert open_image(photos[0]["jpeg_exif_rotated.jpg"]).size == (32, 48)


def test_corrupt_exif_still_decodes(photos) -> None:
    result = decode_photo(str(photos[0]["corrupt_exif.jpg"]), PRESET)
    assert isinstance(result, DecodedPhoto)
    assert result.date_taken is None


def test_transparency_is_composited_on_white(photos) -> None:
    img = open_image(photos[0]["palette_alpha.png"])
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white
    assert img.getpixel((15, 10)) == (0, 0, 255)


def test_16_bit_png_keeps_its_range(photos) -> None:
    img = open_image(photos[0]["deep16.png"])
    values = np.asarray(img)
    assert values.max() > 200 and values.min() < 50  # scaled, not clipped to white


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    gone = decode_photo(str(tmp_path / "gone.jpg"), PRESET)
    assert isinstance(gone, DecodeFailure) and "file not found" in gone.error
    locked = tmp_path / "locked.jpg"
    Image.new("RGB", (8, 8)).save(locked)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: chmod 000 does not block reads")
        result = decode_photo(str(locked), PRESET)
        assert isinstance(result, DecodeFailure) and result.error == "permission denied"
    finally:
        locked.chmod(0o644)


def test_open_image_raises_image_error(photos) -> None:
    with pytest.raises(ImageError, match="not an image"):
        open_image(photos[1]["text.jpg"])


def test_sniff_format_by_content() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic") == "HEIF"
    assert sniff_format(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00avifmif1") == "AVIF"
    assert sniff_format(b"hello world") is None


def test_jpeg_draft_decodes_large_photo_fast(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, quality=90)  # 12 MP
    started = time.perf_counter()
    result = decode_photo(str(big), Preset(size=224))
    elapsed = time.perf_counter() - started
    assert isinstance(result, DecodedPhoto) and (result.width, result.height) == (4000, 3000)
    assert elapsed < 1.0  # ~0.1 s drafted (incl. hashing) vs ~0.3 s full decode on 2 cores


def test_hash_file_matches_decode(photos) -> None:
    path = photos[0]["plain.png"]
    result = decode_photo(str(path), PRESET)
    assert isinstance(result, DecodedPhoto) and result.content_hash == hash_file(path)


def test_describe_path_escapes_newlines() -> None:
    assert describe_path("/a/line\nbreak.jpg") == "/a/line\\nbreak.jpg"
    assert describe_path("/a/été.jpg") == "/a/été.jpg"


def test_bytes_source() -> None:
    buf = io.BytesIO()
    Image.new("LA", (4, 4), (0, 0)).save(buf, format="PNG")
    assert open_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_pillow_log_lines_stay_off_the_terminal(tmp_path: Path) -> None:
    # A TIFF claiming 65,535 samples per pixel: Pillow logs an error line before it refuses it.
    import struct
    import subprocess
    import sys

    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack("<H", data[at : at + 2])[0] == 0x0115:  # SamplesPerPixel
            data[at + 8 : at + 10] = struct.pack("<H", 65535)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(data)
    code = (
        "from photocap.image import decode_photo; from photocap.preset import Preset; "
        f"print(decode_photo({str(bad)!r}, Preset(size=32)).error)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cannot identify TIFF image (corrupt header?)"
    assert out.stderr == ""


def test_large_jpeg_is_limited_by_what_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 102-MP medium-format JPEG is over Pillow's pixel limit (89 MP), but photocap decodes a
    # JPEG at up to 1/8 scale, so it accepts a JPEG declaring up to twice the limit. Scaled down
    # here: a 128x96 JPEG (12,288 pixels) against a limit of 8,000.
    import struct

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8_000)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (128, 96), (90, 140, 200)).save(big, quality=90)
    result = decode_photo(str(big), PRESET)  # drafted to 64x48 for 32 px: 3,072 pixels decoded
    assert isinstance(result, DecodedPhoto), result
    assert (result.width, result.height) == (128, 96)
    png = tmp_path / "big.png"  # no scaled decoding for a PNG: the limit is its size
    Image.new("RGB", (128, 96)).save(png)
    failure = decode_photo(str(png), PRESET)
    assert isinstance(failure, DecodeFailure) and failure.error.startswith("image too large")
    # A tiny JPEG whose header claims 65000x65000 pixels is still a bomb.
    data = bytearray(big.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(data)
    refused = decode_photo(str(bomb), PRESET)
    assert isinstance(refused, DecodeFailure)
    assert refused.error == "image too large (4,225,000,000 pixels; limit 8,000)"


def test_file_too_large_to_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A decode worker reads a file whole: a bound keeps its memory flat (1 GiB; 1 KB here).
    import photocap.image

    monkeypatch.setattr(photocap.image, "MAX_DECODE_BYTES", 1024)
    big = tmp_path / "big.png"
    Image.new("RGB", (256, 256)).save(big, compress_level=0)
    result = decode_photo(str(big), PRESET)
    assert isinstance(result, DecodeFailure)
    assert result.error.startswith("file too large (") and "limit" in result.error


# --------------------------------------------------------------------------- camera RAW

needs_rawpy = pytest.mark.skipif(
    __import__("importlib").util.find_spec("rawpy") is None, reason="rawpy not installed"
)


def test_sniff_raw_by_content_or_name() -> None:
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 8
    assert sniff_format(tiff) == "TIFF"
    assert sniff_format(tiff, "IMG_0001.NEF") == sniff_format(tiff, "/a/b.dng") == "RAW"
    assert sniff_format(tiff, "scan.tif") == "TIFF"
    assert sniff_format(b"II*\x00\x10\x00\x00\x00CR\x02\x00") == "RAW"  # CR2
    assert sniff_format(b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom") == "RAW"  # CR3
    assert sniff_format(b"FUJIFILMCCD-RAW 0201FF383501") == "RAW"
    assert sniff_format(b"IIRO\x08\x00\x00\x00") == sniff_format(b"IIU\x00\x18\x00") == "RAW"


@needs_rawpy
def test_raw_is_captioned_from_its_preview_upright(tmp_path: Path) -> None:
    from raw_helpers import make_dng

    # The camera was turned: the sensor is 128x96, the photo is shown 96x128 (EXIF 6).
    photo = make_dng(tmp_path / "IMG_0001.DNG", preview=(64, 48), orientation=6,
                     taken="2021:07:04 10:11:12")  # fmt: skip
    got = decode_photo(str(photo), PRESET)
    assert isinstance(got, DecodedPhoto), got
    assert (got.format, got.width, got.height) == ("RAW", 96, 128)
    assert (got.camera, got.date_taken) == ("Canon EOS Test", "2021-07-04T10:11:12")
    assert abs(got.pixels[:, 5, 5].astype(int) - (30, 160, 40)).max() <= 3  # the preview's
    img = open_image(photo)
    assert img.size == (48, 64) and img.mode == "RGB"
    undated = decode_photo(str(make_dng(tmp_path / "undated.dng")), PRESET)
    assert isinstance(undated, DecodedPhoto) and undated.date_taken is None  # not 1970


@needs_rawpy
def test_raw_without_preview_is_demosaiced(tmp_path: Path) -> None:
    from raw_helpers import make_dng

    photo = make_dng(tmp_path / "bare.dng", preview=None, orientation=3)
    got = decode_photo(str(photo), PRESET)
    assert isinstance(got, DecodedPhoto), got
    assert (got.format, got.width, got.height, got.date_taken) == ("RAW", 128, 96, None)
    assert open_image(photo).size == (64, 48)  # half size


@needs_rawpy
def test_bad_raw_is_one_line_failure(tmp_path: Path) -> None:
    from raw_helpers import make_dng

    good = make_dng(tmp_path / "good.nef").read_bytes()
    for name, data in {
        "truncated.nef": good[: len(good) // 3],
        "junk.cr2": b"II*\x00\x10\x00\x00\x00CR\x02\x00" + os.urandom(300),
        "text.raf": b"FUJIFILMCCD-RAW " + b"not really" * 20,
    }.items():
        (tmp_path / name).write_bytes(data)
        got = decode_photo(str(tmp_path / name), PRESET)
        assert isinstance(got, DecodeFailure), name
        assert "\n" not in got.error and "RAW" in got.error, (name, got.error)


def test_raw_without_rawpy_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from raw_helpers import make_dng

    monkeypatch.setitem(sys.modules, "rawpy", None)  # import fails as if not installed
    got = decode_photo(str(make_dng(tmp_path / "a.arw")), PRESET)
    assert isinstance(got, DecodeFailure)
    assert got.error == "RAW files need the rawpy package (pip install rawpy)"


# --------------------------------------------------------------------------- HEIC thumbnails


def _heic(path: Path, size: tuple[int, int], orientation: int = 1, box: int | None = 320) -> Path:
    """A HEIC of a left-to-right gradient (so a rotation shows), with a ``box`` thumbnail."""
    pillow_heif = pytest.importorskip("pillow_heif")
    img = Image.linear_gradient("L").rotate(90).convert("RGB").resize(size)
    exif = Image.Exif()
    exif[0x0112] = orientation  # pillow-heif stores it as a HEIF rotation (irot)
    heif = pillow_heif.from_pillow(img)
    heif.info["exif"] = exif.tobytes()
    heif.save(path, quality=90, **({"thumbnails": [box]} if box else {}))
    return path


@pytest.mark.parametrize("orientation", [1, 6])
def test_fast_heic_captions_the_thumbnail_upright(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orientation: int
) -> None:
    import photocap.image as image

    photo = _heic(tmp_path / "IMG_0001.HEIC", (1200, 900), orientation)
    calls: list[int] = []
    real = image._heif_thumbnail

    def spy(data: bytes, min_side: int) -> Any:
        thumb = real(data, min_side)
        calls.append(min(thumb.size) if thumb else 0)
        return thumb

    monkeypatch.setattr(image, "_heif_thumbnail", spy)
    preset = Preset(size=224)
    full = decode_photo(str(photo), preset)
    fast = decode_photo(str(photo), preset, None, True)
    assert isinstance(full, DecodedPhoto) and isinstance(fast, DecodedPhoto)
    assert calls == [240]  # only with the option; the 320x240 thumbnail
    assert (fast.width, fast.height) == (full.width, full.height)
    assert (full.width, full.height) == ((900, 1200) if orientation == 6 else (1200, 900))
    # Same picture the same way up: a thumbnail left unrotated would differ by ~half the range.
    diff = np.abs(fast.pixels.astype(int) - full.pixels.astype(int)).mean()
    assert diff < 8, diff


def test_fast_heic_decodes_the_photo_when_its_thumbnail_is_too_small(tmp_path: Path) -> None:
    photo = _heic(tmp_path / "small_thumb.heic", (1200, 900), box=160)  # 160x120 < 224
    none = _heic(tmp_path / "no_thumb.heic", (1200, 900), box=None)
    preset = Preset(size=224)
    for path in (photo, none):
        full = decode_photo(str(path), preset)
        fast = decode_photo(str(path), preset, None, True)
        assert isinstance(full, DecodedPhoto) and isinstance(fast, DecodedPhoto)
        assert np.array_equal(full.pixels, fast.pixels)
