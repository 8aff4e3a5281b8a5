"""In-file EXIF captions: lossless JPEG surgery, camera EXIF kept, human captions kept."""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path

import piexif
import pytest
from metadata_helpers import (
    EXIFTOOL,
    EXIV2,
    camera_exif,
    exiftool_json,
    exiftool_warnings,
    exiv2,
    is_exif,
    make_jpeg,
    record,
    segments,
)
from PIL import Image

from photocap.exif import ExifWriter, read_exif_caption
from photocap.writers import WriteOptions
from photocap.xmp import XmpDocument, read_provenance

needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed")
needs_exiv2 = pytest.mark.skipif(EXIV2 is None, reason="exiv2 not installed")

CAPTION = "A dog runs through the grass."


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    folder = tmp_path / "lib"
    folder.mkdir()
    return folder


def write(photo: Path, caption: str = CAPTION, **opts: object):  # type: ignore[no-untyped-def]
    return ExifWriter(WriteOptions(**opts)).write(record(photo, caption))  # type: ignore[arg-type]


def assert_lossless(before: bytes, after: bytes) -> None:
    """Pixels identical, every non-Exif segment byte-identical and in order, one Exif block."""
    old, new = segments(before), segments(after)
    assert [s for s in old if not is_exif(s)] == [s for s in new if not is_exif(s)]
    assert sum(is_exif(s) for s in new) == 1
    assert new[0][:2] == old[0][:2]  # the first segment (JFIF APP0) stays first
    with Image.open(io.BytesIO(before)) as a, Image.open(io.BytesIO(after)) as b:
        assert a.tobytes() == b.tobytes()


def test_camera_jpeg_round_trip(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = photo.read_bytes()
    old_exif = piexif.load(str(photo))
    outcome = write(photo)
    assert (outcome.status, outcome.message) == ("written", "")
    after = photo.read_bytes()
    assert_lossless(before, after)
    assert segments(after)[0][4:9] == b"JFIF\x00"
    assert read_exif_caption(photo) == (CAPTION, CAPTION)
    new_exif = piexif.load(str(photo))
    for ifd in ("Exif", "GPS", "1st", "Interop"):
        assert new_exif[ifd] == old_exif[ifd], ifd
    assert new_exif["thumbnail"] == old_exif["thumbnail"] and new_exif["thumbnail"]
    zeroth = dict(new_exif["0th"])
    assert zeroth.pop(piexif.ImageIFD.ImageDescription) == CAPTION.encode()
    assert zeroth.pop(piexif.ImageIFD.XPComment) == tuple(CAPTION.encode("utf-16-le") + b"\0\0")
    assert zeroth == old_exif["0th"]
    assert new_exif["Exif"][piexif.ExifIFD.MakerNote] == old_exif["Exif"][piexif.ExifIFD.MakerNote]


def test_icc_xmp_and_comment_segments_kept(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(), icc=True, extras=True)
    before = photo.read_bytes()
    assert write(photo).status == "written"
    after = photo.read_bytes()
    assert_lossless(before, after)
    markers = [s[:2] for s in segments(after)]
    assert b"\xff\xe2" in markers and b"\xff\xfe" in markers  # ICC and COM
    with Image.open(photo) as img:
        assert img.info.get("icc_profile")


def test_jpeg_without_exif_gets_one_block_after_jfif(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg")
    before = photo.read_bytes()
    assert not any(is_exif(s) for s in segments(before))
    assert write(photo).status == "written"
    after = photo.read_bytes()
    assert_lossless(before, after)
    segs = segments(after)
    assert segs[0][4:9] == b"JFIF\x00" and is_exif(segs[1])


def test_little_endian_exif_from_pillow(lib: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "LittleCam"  # Make
    photo = make_jpeg(lib / "photo.jpg", exif=exif.tobytes())
    before = photo.read_bytes()
    assert write(photo, "Ünïcode ✓ caption").status == "written"
    assert_lossless(before, photo.read_bytes())
    assert read_exif_caption(photo) == ("Ünïcode ✓ caption", "Ünïcode ✓ caption")
    with Image.open(photo) as img:
        assert img.getexif()[0x010F] == "LittleCam"


def test_recaption_does_not_grow_the_file(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    write(photo, "First caption.")
    assert write(photo, "First caption.").status == "unchanged"
    write(photo, "Second caption.")
    size = photo.stat().st_size
    for i in range(5):
        write(photo, f"Caption number {i}.")
    assert photo.stat().st_size <= size + 16
    assert read_exif_caption(photo)[0] == "Caption number 4."
    assert sum(is_exif(s) for s in segments(photo.read_bytes())) == 1


def test_human_description_kept(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(description="Holiday in Rome"))
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.message) == ("kept_human", "kept human caption")
    assert photo.read_bytes() == before
    assert write(photo, overwrite_human=True).status == "written"
    assert read_exif_caption(photo)[0] == CAPTION
    prov = read_provenance(XmpDocument.load(lib / "photo.jpg.xmp"))
    assert prov.exif_previous_description == "Holiday in Rome"
    assert prov.exif_description == CAPTION


def test_description_edited_after_photocap_is_kept(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    write(photo, "First caption.")
    exif = piexif.load(str(photo))
    exif["0th"][piexif.ImageIFD.ImageDescription] = b"Edited by me"
    piexif.insert(piexif.dump(exif), str(photo))
    assert write(photo, "Second caption.").status == "kept_human"
    assert read_exif_caption(photo)[0] == "Edited by me"


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "photo.png"), ("WEBP", "photo.webp")])
def test_other_formats_skipped(lib: Path, fmt: str, name: str) -> None:
    photo = lib / name
    Image.new("RGB", (8, 8), "red").save(photo, fmt)
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "skipped"
    assert outcome.message.startswith("exif not supported for ") and "sidecar" in outcome.message
    assert photo.read_bytes() == before
    assert sorted(p.name for p in lib.iterdir()) == [name]


def test_mtime_and_permissions_kept_touch_updates(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    photo.chmod(0o640)
    os.utime(photo, (1_500_000_000, 1_500_000_000))
    write(photo, "First caption.")
    st = photo.stat()
    assert st.st_mtime == 1_500_000_000 and stat.S_IMODE(st.st_mode) == 0o640
    write(photo, "Second caption.", touch=True)
    assert photo.stat().st_mtime > 1_500_000_000 + 1000


def test_dry_run_touches_nothing(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = photo.read_bytes()
    assert write(photo, dry_run=True).status == "written"
    assert photo.read_bytes() == before
    assert sorted(p.name for p in lib.iterdir()) == ["photo.jpg"]


def test_corrupt_jpeg_fails_untouched(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    data = photo.read_bytes()
    sos = data.index(b"\xff\xda")
    photo.write_bytes(data[: sos - 7])  # cut inside the tables, before the scan
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed" and "corrupt JPEG" in outcome.message
    assert photo.read_bytes() == before


def test_exif_over_64k_refused(lib: Path) -> None:
    big = piexif.dump(
        {"0th": {piexif.ImageIFD.Make: b"X"}, "Exif": {piexif.ExifIFD.MakerNote: b"\x00" * 65200}}
    )
    photo = make_jpeg(lib / "photo.jpg", exif=big)
    before = photo.read_bytes()
    outcome = write(photo, "A caption long enough to push the block over. " * 4)
    assert outcome.status == "failed" and "64 KB" in outcome.message
    assert photo.read_bytes() == before


def test_bad_sidecar_means_photo_untouched(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    (lib / "photo.jpg.xmp").write_text("<broken", encoding="utf-8")
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed" and "malformed XML" in outcome.message
    assert photo.read_bytes() == before


def test_read_only_photo(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    photo.chmod(0o444)
    if os.access(photo, os.W_OK):  # root: emulate what an ordinary user gets
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: Path(p) != photo and real(p, m))
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed" and outcome.message.startswith("file is read-only")
    assert photo.read_bytes() == before


def test_unknown_tags_survive(lib: Path) -> None:
    # A tag piexif does not know (0xEA1C Padding, 0xC4A5 PrintIM): piexif.load/dump would drop
    # it; photocap keeps the whole TIFF block, so it survives.
    exif = camera_exif()
    tiff = bytearray(exif[6:])
    assert tiff[:2] == b"MM"
    ifd0 = struct.unpack(">I", tiff[4:8])[0]
    count = struct.unpack(">H", tiff[ifd0 : ifd0 + 2])[0]
    first_tag = ifd0 + 2
    tiff[first_tag : first_tag + 12] = struct.pack(">HHI4s", 0x010F, 2, 4, b"ABC\x00")
    tiff[first_tag + 12 * (count - 1) : first_tag + 12 * count] = struct.pack(
        ">HHI4s", 0xC4A5, 7, 4, b"PIM!"
    )
    photo = make_jpeg(lib / "photo.jpg", exif=b"Exif\x00\x00" + bytes(tiff))
    write(photo)
    with Image.open(photo) as img:
        assert img.getexif()[0xC4A5] == b"PIM!"


@needs_exiftool
@pytest.mark.parametrize("kind", ["camera", "none", "extras"])
def test_exiftool_reads_and_validates(lib: Path, kind: str) -> None:
    photo = make_jpeg(
        lib / "photo.jpg",
        exif=None if kind == "none" else camera_exif(),
        icc=kind == "extras",
        extras=kind == "extras",
    )
    warnings_before = exiftool_warnings(photo) - {"Validate : OK"}
    before = exiftool_json(photo, "-Make", "-GPSLatitude", "-ThumbnailLength", "-XMP:Rating")
    assert write(photo, "Ein Café in Köln.").status == "written"
    data = exiftool_json(
        photo,
        "-EXIF:ImageDescription",
        "-XPComment",
        "-Make",
        "-GPSLatitude",
        "-ThumbnailLength",
        "-XMP:Rating",
    )
    assert data["ImageDescription"] == "Ein Café in Köln."
    assert data["XPComment"] == "Ein Café in Köln."
    for key, value in before.items():
        assert data[key] == value
    new_warnings = {
        w for w in exiftool_warnings(photo) - warnings_before if not w.startswith("Validate")
    }
    assert not new_warnings


@needs_exiv2
def test_exiv2_reads_caption(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    write(photo)
    out = exiv2(photo, "-pa")
    assert f"Exif.Image.ImageDescription                  Ascii      30  {CAPTION}" in out
    assert "Exif.Image.XPComment" in out and CAPTION in out.split("Exif.Image.XPComment")[1]
    assert "Exif.GPSInfo.GPSLatitude" in out and "Exif.Image.Make" in out
