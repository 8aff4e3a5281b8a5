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
    app_segment,
    camera_exif,
    exiftool_json,
    exiftool_warnings,
    exiv2,
    insert_after_app,
    iptc_record,
    iptc_segment,
    is_caption_segment,
    is_exif,
    is_xmp,
    make_jpeg,
    photoshop_resources,
    record,
    segments,
    xmp_packet,
    xmp_segment,
)
from PIL import Image

from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.ifd import Tiff, load_piexif, read_tag
from photocap.metadata.infile import read_exif_caption
from photocap.metadata.jpeg import exif_tiff, parse_jpeg
from photocap.metadata.provenance import read_provenance
from photocap.metadata.revert import revert_paths
from photocap.metadata.sidecar_writer import XmpWriter
from photocap.metadata.xmp import NS_DC, NS_IPTC, NS_PHOTOCAP, XmpDocument
from photocap.writers import OutcomeCode, WriteOptions, WriteOutcome

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
    """Pixels identical, every segment but Exif and XMP byte-identical and in order, one Exif
    block and one XMP packet."""
    old, new = segments(before), segments(after)
    keep = [s for s in old if not is_caption_segment(s)]
    assert keep == [s for s in new if not is_caption_segment(s)]
    assert sum(is_exif(s) for s in new) == 1 and sum(is_xmp(s) for s in new) == 1
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
    assert outcome.code is OutcomeCode.KEPT_HUMAN
    assert photo.read_bytes() == before
    written = write(photo, overwrite_human=True)
    assert (written.status, written.code) == ("written", OutcomeCode.DONE)
    assert read_exif_caption(photo)[0] == CAPTION
    prov = read_provenance(XmpDocument.load(lib / "photo.jpg.xmp"))
    assert prov.exif_previous_description == "Holiday in Rome"
    assert prov.exif_description == CAPTION


@pytest.mark.parametrize(
    "text",
    ["Exif_JPEG_PICTURE", "rhdr", "DCIM\\100MEDIA", "SONY DSC", "RICOH DIGITAL CAMERA",
     "TestCam", "TestCam TC-1"],  # the last two: the camera's own Make / Model (camera_exif)
)  # fmt: skip
def test_device_default_description_is_not_a_persons(lib: Path, text: str) -> None:
    # Android phones, Huawei's shooting-mode codes, a camera's folder: a photo with one of
    # these is uncaptioned, for the sidecar as for EXIF.
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(description=text))
    assert XmpWriter(WriteOptions()).write(record(photo, CAPTION)).status == "written"
    assert write(photo).status == "written"
    assert read_exif_caption(photo)[0] == CAPTION
    prov = read_provenance(XmpDocument.load(lib / "photo.jpg.xmp"))
    assert prov.exif_previous_description == text  # revert puts it back


def test_a_persons_caption_in_the_sidecar_keeps_ours_out_of_the_file(lib: Path) -> None:
    # digiKam wrote the person's caption to the sidecar: EXIF/XMP readers of the file would
    # otherwise show ours while digiKam shows theirs.
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    doc = XmpDocument.new()
    doc.set_default(NS_DC, "description", "Grandma's 80th birthday")
    (lib / "photo.jpg.xmp").write_bytes(doc.serialize())
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Grandma's 80th birthday")
    assert photo.read_bytes() == before
    assert write(photo, overwrite_human=True).status == "written"
    assert read_exif_caption(photo)[0] == CAPTION


@pytest.mark.parametrize("text", ["A digital camera", "TestCam at the fair"])
def test_text_like_a_device_default_can_still_be_a_persons(lib: Path, text: str) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(description=text))
    assert write(photo).status == "kept_human"


def test_description_edited_after_photocap_is_kept(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    write(photo, "First caption.")
    exif = piexif.load(str(photo))
    exif["0th"][piexif.ImageIFD.ImageDescription] = b"Edited by me"
    piexif.insert(piexif.dump(exif), str(photo))
    assert write(photo, "Second caption.").status == "kept_human"
    assert read_exif_caption(photo)[0] == "Edited by me"


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "photo.gif"), ("BMP", "photo.bmp")])
def test_other_formats_skipped(lib: Path, fmt: str, name: str) -> None:
    photo = lib / name
    Image.new("RGB", (8, 8), "red").save(photo, fmt)
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.code) == ("skipped", OutcomeCode.FORMAT_NOT_WRITTEN)
    assert outcome.message.startswith("exif not supported for ") and "sidecar" in outcome.message
    assert photo.read_bytes() == before
    assert sorted(p.name for p in lib.iterdir()) == [name]


def test_raw_is_skipped_by_name(lib: Path) -> None:
    from raw_helpers import make_dng

    photo = make_dng(lib / "IMG_0001.NEF")  # TIFF inside: a TIFF writer would rewrite it
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.message) == (
        "skipped", "exif not supported for RAW; caption in sidecar",
    )  # fmt: skip
    assert photo.read_bytes() == before
    # Its JPEG, with stem naming, has no sidecar of its own to record what it replaced in.
    jpeg = make_jpeg(lib / "IMG_0001.JPG", exif=camera_exif())
    before = jpeg.read_bytes()
    outcome = write(jpeg, sidecar_name="stem")
    assert outcome.status == "skipped" and "belongs to the RAW" in outcome.message
    assert outcome.code is OutcomeCode.SIDECAR_TAKEN
    assert jpeg.read_bytes() == before


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


def _with_huge_count(exif: bytes, tag: int, count: int) -> bytes:
    """``exif`` (big-endian, as piexif dumps it) with SHORT ``tag``'s count set to ``count``."""
    entry = struct.pack(">HH", tag, 3)  # tag, type SHORT
    at = exif.index(entry)
    return exif[: at + 4] + struct.pack(">I", count) + exif[at + 8 :]


def test_corrupt_value_count_costs_no_memory(lib: Path) -> None:
    # piexif (the cross-check) builds a struct format of `count` characters before it looks for
    # the data: a corrupt count of up to 4 G in any IFD cost gigabytes and minutes (fuzzing).
    import tracemalloc

    exif = piexif.dump({"0th": {piexif.ImageIFD.Make: b"Cam"},
                        "Exif": {piexif.ExifIFD.ISOSpeedRatings: 100}})  # fmt: skip
    photo = make_jpeg(lib / "photo.jpg", exif=_with_huge_count(exif, 0x8827, 5_000_000))
    before = photo.read_bytes()
    tracemalloc.start()
    try:
        outcome = write(photo)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # was ~180 MB: struct compiles one code per claimed value
    assert outcome.status == "written", outcome.message
    assert_lossless(before, photo.read_bytes())
    assert read_exif_caption(photo) == (CAPTION, CAPTION)


def test_motion_photo_video_after_eoi_is_kept(lib: Path) -> None:
    # A Google/Samsung motion photo: the video follows the JPEG's EOI, and the XMP finds it by
    # its distance from the end of the file (GCamera:MicroVideoOffset), so it must stay last.
    video = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + os.urandom(4000)
    photo = make_jpeg(lib / "PXL_0001.MP.jpg", exif=camera_exif())
    photo.write_bytes(photo.read_bytes() + video)
    assert write(photo).status == "written"
    after = photo.read_bytes()
    assert after.endswith(video) and after[: -len(video)].endswith(b"\xff\xd9")
    assert read_exif_caption(photo) == (CAPTION, CAPTION)


def make_mpo(path: Path, *, index_first: bool = False) -> Path:
    """A two-image Multi-Picture JPEG (Pillow's layout: Exif APP1, then the MPF APP2). With
    ``index_first`` the MPF segment is moved before Exif, its offset to image 2 corrected, so
    the file is still valid (exiftool and Pillow read both images)."""
    exif = Image.Exif()
    exif[0x010F] = "StereoCam"
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(
        buf, "MPO", save_all=True, append_images=[Image.new("RGB", (32, 24), (30, 200, 30))],
        exif=exif,
    )  # fmt: skip
    data = buf.getvalue()
    if index_first:
        segs = segments(data)
        app1, app2 = segs[1], bytearray(segs[2])
        assert is_exif(app1) and app2[4:8] == b"MPF\x00"
        tiff = bytes(app2[8:])  # offsets count from here; Pillow writes little-endian
        (ifd,) = struct.unpack("<I", tiff[4:8])
        (n,) = struct.unpack("<H", tiff[ifd : ifd + 2])
        table = next(
            struct.unpack("<I", tiff[p + 8 : p + 12])[0]
            for p in range(ifd + 2, ifd + 2 + 12 * n, 12)
            if tiff[p : p + 2] == struct.pack("<H", 0xB002)
        )
        at = 8 + table + 16 + 8  # entry 2's data offset
        (offset,) = struct.unpack("<I", app2[at : at + 4])
        app2[at : at + 4] = struct.pack("<I", offset + len(app1))
        start = len(segs[0]) + 2
        data = data[:start] + bytes(app2) + app1 + data[start + len(app1) + len(app2) :]
    path.write_bytes(data)
    return path


def second_image(photo: Path) -> bytes:
    with Image.open(photo) as img:
        img.seek(1)
        return img.tobytes()


@pytest.mark.parametrize("index_first", [False, True])
def test_multi_picture_images_stay_reachable(lib: Path, index_first: bool) -> None:
    # The extra images of an MPO (second view, depth or Ultra HDR gain map) sit after EOI at
    # offsets counted from the MPF segment: resizing Exif before it is harmless, after it not.
    photo = make_mpo(lib / "photo.jpg", index_first=index_first)
    before, view = photo.read_bytes(), second_image(photo)
    outcome = write(photo)
    if index_first:
        assert outcome.status == "failed"
        assert "Multi-Picture index" in outcome.message and "\n" not in outcome.message
        assert photo.read_bytes() == before
    else:
        assert outcome.status == "written", outcome.message
        assert_lossless(before, photo.read_bytes())
        assert read_exif_caption(photo)[0] == CAPTION
    assert second_image(photo) == view


def test_cross_check_reads_sound_exif() -> None:
    pillow = Image.Exif()
    pillow[0x010F] = "Cam"  # little-endian, as Pillow writes it
    for exif in (camera_exif(), pillow.tobytes()):  # a camera's: sub-IFDs, thumbnail
        assert load_piexif(exif[6:]) is not None  # the TIFF block after "Exif\0\0"


def test_large_camera_jpeg_verified_and_written(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Verification decodes a JPEG at 1/8 scale, without Pillow's pixel limit (which refused a
    # camera's own 100-MP photo); scaled down here, a 64x48 photo against a limit of 100 pixels.
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = photo.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        outcome = write(photo)
    assert outcome.status == "written", outcome.message
    assert_lossless(before, photo.read_bytes())


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


def test_read_only_photo(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    photo.chmod(0o444)  # refused for root too (the tests run as root): the mode bits decide
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed" and outcome.message.startswith("file is read-only")
    assert photo.read_bytes() == before


def _damaged_chain(damage: str) -> bytes:
    """camera_exif() (IFD0, then IFD1 with the thumbnail) with one next-IFD pointer broken."""
    exif = camera_exif()
    tiff = bytearray(exif[6:])
    end = ">" if tiff[:2] == b"MM" else "<"
    chain = []  # (offset of the IFD, offset of its next pointer)
    off = struct.unpack(end + "I", tiff[4:8])[0]
    while off:
        count = struct.unpack(end + "H", tiff[off : off + 2])[0]
        chain.append((off, off + 2 + 12 * count))
        off = struct.unpack(end + "I", tiff[chain[-1][1] : chain[-1][1] + 4])[0]
    (ifd0, next0), (ifd1, next1) = chain
    at, to = {
        "ifd0 to itself": (next0, ifd0),
        "ifd0 into itself": (next0, ifd0 + 2 + 12),  # its second entry
        "ifd1 back to ifd0": (next1, ifd0),  # a cycle through IFD0
        "ifd0 out of range": (next0, len(tiff) + 4096),
        "ifd1 to itself": (next1, ifd1),  # a cycle of later IFDs
    }[damage]
    tiff[at : at + 4] = struct.pack(end + "I", to)
    return exif[:6] + bytes(tiff)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("ifd0 to itself", "IFD0's next-IFD pointer points to itself"),
        ("ifd0 into itself", "IFD0's next-IFD pointer points back into IFD0"),
        ("ifd1 back to ifd0", "IFD1's next-IFD pointer points back into IFD0"),
    ],
)
def test_ifd_chain_back_into_ifd0_is_refused_file_untouched(
    lib: Path, damage: str, reason: str
) -> None:
    # A new IFD0 copies the old one's next pointer: the old IFD0 would be read as a bogus
    # IFD1 (exiftool -validate: 13 warnings before, 20 after). Refused, in one line.
    photo = make_jpeg(lib / "photo.jpg", exif=_damaged_chain(damage))
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed"
    assert outcome.message == f"corrupt EXIF: {reason}; not written"
    assert photo.read_bytes() == before
    assert sorted(p.name for p in lib.iterdir()) == ["photo.jpg"]  # no sidecar, no temp file


@pytest.mark.parametrize("damage", ["ifd0 out of range", "ifd1 to itself"])
def test_ifd_chain_damage_elsewhere_is_copied_as_it_is(lib: Path, damage: str) -> None:
    # A pointer photocap never follows is copied, not repaired: the chain stays as it was.
    photo = make_jpeg(lib / "photo.jpg", exif=_damaged_chain(damage))
    old = Tiff(_damaged_chain(damage)[6:])
    old_next = old.read_ifd(old.ifd0)[1]
    assert write(photo).status == "written"
    data = photo.read_bytes()
    _, tiff = exif_tiff(data, parse_jpeg(data)[0])
    assert tiff is not None and tiff[8 : len(old.data)] == old.data[8:]  # old bytes kept
    new = Tiff(tiff)
    assert new.read_ifd(new.ifd0)[1] == old_next


@needs_exiftool
@pytest.mark.parametrize(
    "damage", ["ifd0 to itself", "ifd1 back to ifd0", "ifd0 out of range", "ifd1 to itself"]
)
def test_ifd_chain_damage_never_made_worse_for_exiftool(lib: Path, damage: str) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=_damaged_chain(damage))
    warnings_before = exiftool_warnings(photo)
    write(photo)
    warnings_after = exiftool_warnings(photo)
    assert len(warnings_after) <= len(warnings_before)
    assert not {w for w in warnings_after - warnings_before if not w.startswith("Validate")}


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


# --------------------------------------------------------------------------- embedded XMP, IPTC


def embedded(photo: Path) -> XmpDocument:
    """The photo's one standard XMP packet."""
    [seg] = [s for s in segments(photo.read_bytes()) if is_xmp(s)]
    return XmpDocument.parse(seg[33:])


def with_segment(photo: Path, segment: bytes) -> Path:
    photo.write_bytes(insert_after_app(photo.read_bytes(), segment))
    return photo


def test_caption_and_alt_text_go_into_a_new_xmp_packet_after_exif(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = photo.read_bytes()
    assert write(photo, "A photo of a dog runs.").status == "written"
    assert_lossless(before, photo.read_bytes())
    segs = segments(photo.read_bytes())
    assert is_exif(segs[1]) and is_xmp(segs[2])  # JFIF, Exif, XMP: the order the specs give
    doc = embedded(photo)
    assert doc.get_default(NS_DC, "description") == "A photo of a dog runs."
    assert doc.get_default(NS_IPTC, "AltTextAccessibility") == "A dog runs."
    assert not doc.has_namespace(NS_PHOTOCAP)  # provenance stays in the sidecar
    prov = read_provenance(XmpDocument.load(lib / "photo.jpg.xmp"))
    assert (prov.exif_alt_text, prov.exif_previous_xmp_description) == ("A dog runs.", None)


def test_existing_packet_is_merged_not_replaced(lib: Path) -> None:
    extra = "<dc:subject><rdf:Bag><rdf:li>dog</rdf:li></rdf:Bag></dc:subject>"
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    with_segment(photo, xmp_segment(xmp_packet(extra=extra)))
    before = photo.read_bytes()
    assert write(photo).status == "written"
    assert_lossless(before, photo.read_bytes())
    doc = embedded(photo)
    assert doc.get_default(NS_DC, "description") == CAPTION
    assert doc.get_text("http://ns.adobe.com/xap/1.0/", "Rating") == "4"
    assert b"<rdf:li>dog</rdf:li>" in doc.serialize()
    assert write(photo, "Second caption.").status == "written"  # a re-caption replaces ours
    assert embedded(photo).get_default(NS_DC, "description") == "Second caption."


@pytest.mark.parametrize("where", ["xmp", "iptc", "iptc-latin1"])
def test_human_caption_in_xmp_or_iptc_is_kept(lib: Path, where: str) -> None:
    # EXIF empty, a person's caption elsewhere in the file: MWG readers take EXIF first, so an
    # EXIF caption of ours would hide theirs.
    segment = {
        "xmp": xmp_segment(xmp_packet("Grandma's 80th birthday")),
        "iptc": iptc_segment(b"Grandma's 80th birthday"),
        "iptc-latin1": iptc_segment("Oma in Köln".encode("latin-1")),
    }[where]
    photo = with_segment(make_jpeg(lib / "photo.jpg", exif=camera_exif()), segment)
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.message) == ("kept_human", "kept human caption")
    assert photo.read_bytes() == before
    # The sidecar does not shadow it either (digiKam and Immich read the sidecar first) ...
    assert XmpWriter(WriteOptions()).write(record(photo, CAPTION)).status == "kept_human"
    sidecar = XmpDocument.load(lib / "photo.jpg.xmp")
    assert sidecar.get_default(NS_DC, "description") is None
    assert sidecar.get_default(NS_IPTC, "AltTextAccessibility") == CAPTION  # alt text is added
    # ... unless asked to.
    assert write(photo, overwrite_human=True).status == "written"
    assert read_exif_caption(photo)[0] == CAPTION


def test_overwritten_xmp_caption_comes_back_on_revert(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    with_segment(photo, xmp_segment(xmp_packet("Grandma's 80th birthday")))
    assert write(photo, overwrite_human=True).status == "written"
    assert embedded(photo).get_default(NS_DC, "description") == CAPTION
    [outcome] = list(revert_paths([photo]))
    assert outcome.status == "deleted"  # the sidecar held only photocap's record
    doc = embedded(photo)
    assert doc.get_default(NS_DC, "description") == "Grandma's 80th birthday"
    assert doc.get_default(NS_IPTC, "AltTextAccessibility") is None
    assert doc.get_text("http://ns.adobe.com/xap/1.0/", "Rating") == "4"


def test_revert_removes_the_packet_photocap_added(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg")
    write(photo)
    assert any(is_xmp(s) for s in segments(photo.read_bytes()))
    assert [o.status for o in revert_paths([photo])] == ["deleted"]
    assert not any(is_xmp(s) for s in segments(photo.read_bytes()))


@pytest.mark.parametrize("kind", ["malformed", "two packets", "too large"])
def test_packet_photocap_cannot_merge_leaves_the_photo_untouched(lib: Path, kind: str) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    if kind == "malformed":
        with_segment(photo, xmp_segment(b"<x:xmpmeta><rdf:RDF>broken"))
    elif kind == "two packets":
        with_segment(photo, xmp_segment(xmp_packet()) + xmp_segment(xmp_packet()))
    else:  # a packet near the 64 KB a segment holds (a long edit history, say)
        history = "<xmp:Label>" + "x" * 65000 + "</xmp:Label>"
        with_segment(photo, xmp_segment(xmp_packet(extra=history).replace(b" " * 200, b"")))
    before = photo.read_bytes()
    outcome = write(photo)
    expected = {"malformed": "malformed XML", "two packets": "two XMP", "too large": "64 KB"}
    assert outcome.status == "failed" and expected[kind] in outcome.message
    assert photo.read_bytes() == before


def test_extended_xmp_parts_are_kept(lib: Path) -> None:
    guid = b"0123456789ABCDEF0123456789ABCDEF"
    part = b"http://ns.adobe.com/xmp/extension/\x00" + guid + struct.pack(">II", 5, 0) + b"<x/> "
    note = f"<xmpNote:HasExtendedXMP xmlns:xmpNote='http://ns.adobe.com/xmp/note/'>{guid.decode()}"
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    with_segment(photo, xmp_segment(xmp_packet(extra=note + "</xmpNote:HasExtendedXMP>")))
    with_segment(photo, app_segment(0xE1, part))
    before = photo.read_bytes()
    assert write(photo).status == "written"
    assert_lossless(before, photo.read_bytes())  # the extension segment is byte-identical
    assert embedded(photo).get_text("http://ns.adobe.com/xmp/note/", "HasExtendedXMP") == (
        guid.decode()
    )


# A Pixel's packet (Ultra HDR gain map + motion photo): the GContainer directory gives the
# lengths of the items after EOI, so it must come through the merge whole.
PIXEL_PACKET = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.1.0-jc003">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/"
    xmlns:GCamera="http://ns.google.com/photos/1.0/camera/"
    xmlns:Container="http://ns.google.com/photos/1.0/container/"
    xmlns:Item="http://ns.google.com/photos/1.0/container/item/"
    hdrgm:Version="1.0" GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1"
    GCamera:MotionPhotoPresentationTimestampUs="968644">
   <Container:Directory>
    <rdf:Seq>
     <rdf:li rdf:parseType="Resource">
      <Container:Item Item:Mime="image/jpeg" Item:Semantic="Primary" Item:Length="0"
        Item:Padding="0"/>
     </rdf:li>
     <rdf:li rdf:parseType="Resource">
      <Container:Item Item:Mime="image/jpeg" Item:Semantic="GainMap" Item:Length="32512"/>
     </rdf:li>
     <rdf:li rdf:parseType="Resource">
      <Container:Item Item:Mime="video/mp4" Item:Semantic="MotionPhoto" Item:Length="2617356"
        Item:Padding="0"/>
     </rdf:li>
    </rdf:Seq>
   </Container:Directory>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


@needs_exiftool
def test_phone_packet_reads_the_same_but_for_the_caption(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    with_segment(photo, xmp_segment(PIXEL_PACKET.encode()))
    before = exiftool_json(photo, "-XMP:all", "-struct")
    assert write(photo).status == "written"
    after = exiftool_json(photo, "-XMP:all", "-struct")
    assert after.pop("Description") == after.pop("AltTextAccessibility") == CAPTION
    assert after == before
    assert len(before["Directory"]) == 3  # type: ignore[arg-type]


@needs_exiftool
def test_exiftool_reads_the_embedded_caption(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    with_segment(photo, xmp_segment(xmp_packet()))
    warnings_before = exiftool_warnings(photo)
    assert write(photo, "Ein Café in Köln.").status == "written"
    data = exiftool_json(photo, "-XMP-dc:Description", "-AltTextAccessibility", "-XMP:Rating")
    assert data["Description"] == "Ein Café in Köln."
    assert data["AltTextAccessibility"] == "Ein Café in Köln."
    assert data["Rating"] == 4
    new_warnings = exiftool_warnings(photo) - warnings_before
    assert not {w for w in new_warnings if not w.startswith("Validate")}


# --------------------------------------------------------------------------- WebP


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(FourCC, whole chunk bytes) of a WebP file, parsed here independently of photocap."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    end = 8 + struct.unpack("<I", data[4:8])[0]
    assert end == len(data)
    pos, out = 12, []
    while pos < end:
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        stop = pos + 8 + size + (size & 1)
        out.append((data[pos : pos + 4], data[pos:stop]))
        pos = stop
    return out


def _make_webp(path: Path, kind: str) -> Path:
    gradient = Image.linear_gradient("L").resize((48, 32))
    rgb = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              Image.new("L", (48, 32), 90)))  # fmt: skip
    if kind == "lossy":
        rgb.save(path, "WEBP", quality=80)
    elif kind == "alpha":
        rgba = rgb.copy()
        rgba.putalpha(gradient)  # real transparency
        rgba.save(path, "WEBP", lossless=True)
    elif kind == "xmp_and_exif":
        xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
        rgb.save(path, "WEBP", quality=80, exif=camera_exif(), xmp=xmp)
    elif kind == "animated":
        frames = [rgb, rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
        frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return path


@pytest.mark.parametrize("kind", ["lossy", "alpha", "xmp_and_exif", "animated"])
def test_webp_lossless_round_trip(lib: Path, kind: str) -> None:
    photo = _make_webp(lib / "photo.webp", kind)
    before = photo.read_bytes()
    assert write(photo).status == "written"
    after = photo.read_bytes()
    old, new = _webp_chunks(before), _webp_chunks(after)
    # every chunk but EXIF, XMP and the VP8X header is byte-identical and in the same order
    ours = (b"EXIF", b"XMP ", b"VP8X")
    assert [c for c in old if c[0] not in ours] == [c for c in new if c[0] not in ours]
    order = [fourcc for fourcc, _ in new]
    assert order[0] == b"VP8X" and order.count(b"EXIF") == 1 and order.count(b"XMP ") == 1
    assert new[0][1][8] & 0x08 and new[0][1][8] & 0x04  # VP8X: EXIF and XMP flags
    packet = XmpDocument.parse(dict(new)[b"XMP "][8:].rstrip(b"\x00"))
    assert packet.get_default(NS_DC, "description") == CAPTION
    if kind == "alpha":  # a simple VP8L file got a VP8X header: alpha flag and canvas size
        assert old[0][0] == b"VP8L" and new[0][1][8] & 0x10
        assert new[0][1][12:18] == (47).to_bytes(3, "little") + (31).to_bytes(3, "little")
    assert order.index(b"EXIF") < order.index(b"XMP ")  # container spec order
    image_chunks = [i for i, f in enumerate(order) if f in (b"VP8 ", b"VP8L", b"ANMF", b"ALPH")]
    assert order.index(b"EXIF") > max(image_chunks)
    assert _pages(before) == _pages(after)  # pixels (every frame) identical
    assert read_exif_caption(photo) == (CAPTION, CAPTION)
    with Image.open(photo) as img:
        assert img.getexif().get(0x010E) == CAPTION
    if kind == "xmp_and_exif":  # the camera's EXIF survives next to ours
        exif = piexif.load(dict(_webp_chunks(after))[b"EXIF"][8:])
        assert exif["0th"][piexif.ImageIFD.Make] == b"TestCam"
        assert exif["GPS"] and exif["thumbnail"]
    # a re-caption replaces the text; still one EXIF chunk
    assert write(photo, "A cat sleeps.").status == "written"
    assert read_exif_caption(photo)[0] == "A cat sleeps."
    assert [f for f, _ in _webp_chunks(photo.read_bytes())].count(b"EXIF") == 1
    assert _pages(photo.read_bytes()) == _pages(before)


@needs_exiftool
@pytest.mark.parametrize("kind", ["lossy", "alpha", "xmp_and_exif"])
def test_webp_read_by_exiftool(lib: Path, kind: str) -> None:
    photo = _make_webp(lib / "photo.webp", kind)
    _written_as_exiftool_reads_it(photo, "TestCam" if kind == "xmp_and_exif" else None)


def _written_as_exiftool_reads_it(photo: Path, make: str | None) -> None:
    """Write ``photo``: exiftool reads our caption in EXIF (both tags) and the XMP packet, the
    camera's (scanner's) ``make`` still there, and reports no new warning."""
    warnings_before = exiftool_warnings(photo)
    write(photo)
    data = exiftool_json(
        photo, "-EXIF:ImageDescription", "-EXIF:XPComment", "-EXIF:Make", "-XMP-dc:Description"
    )
    assert data["ImageDescription"] == CAPTION and data["XPComment"] == CAPTION
    assert data["Description"] == CAPTION
    assert data.get("Make") == make
    new_warnings = exiftool_warnings(photo) - warnings_before  # the count line aside
    assert not {w for w in new_warnings if not w.startswith("Validate")}


def test_webp_with_a_persons_caption_in_its_xmp_is_kept(lib: Path) -> None:
    gradient = Image.linear_gradient("L").resize((48, 32))
    photo = lib / "photo.webp"
    gradient.convert("RGB").save(photo, "WEBP", xmp=xmp_packet("Oma in Kassel"))
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Oma in Kassel")
    assert photo.read_bytes() == before


def test_corrupt_webp_fails_and_is_untouched(lib: Path) -> None:
    photo = _make_webp(lib / "photo.webp", "lossy")
    good = photo.read_bytes()
    photo.write_bytes(good[:-40])  # truncated: the RIFF size no longer fits
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed" and "\n" not in outcome.message
    assert "WebP" in outcome.message
    assert photo.read_bytes() == before


@pytest.mark.parametrize("kind", ["lossy", "animated"])
def test_damaged_webps_fail_cleanly_or_stay_pixel_identical(lib: Path, kind: str) -> None:
    src = _make_webp(lib / "src.webp", kind).read_bytes()
    outcomes = _write_damaged_copies(lib, src, ".webp", seed=7, keep=12)  # RIFF, size, WEBP
    assert "failed" in {o.status for o in outcomes}


def _write_damaged_copies(
    lib: Path, src: bytes, suffix: str, seed: int, keep: int
) -> list[WriteOutcome]:
    """Write 30 damaged copies of ``src`` (truncated, three bytes changed, a few bytes
    inserted; its first ``keep`` bytes intact): each fails with a one-line reason and stays
    untouched, or (damage the format tolerates) is written with every frame's pixels kept.
    Returns the writer's outcomes."""
    import random

    rng = random.Random(seed)
    outcomes: list[WriteOutcome] = []
    for trial in range(30):
        data = bytearray(src)
        if trial % 3 == 0:
            data = data[: rng.randrange(keep, len(data))]
        elif trial % 3 == 1:
            for _ in range(3):
                data[rng.randrange(keep, len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(keep, len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        photo = lib / f"p{trial}{suffix}"
        photo.write_bytes(bytes(data))
        outcome = write(photo)
        outcomes.append(outcome)
        assert outcome.status in ("written", "failed"), outcome
        if outcome.status == "failed":
            assert photo.read_bytes() == bytes(data) and "\n" not in outcome.message
        else:
            assert _pages(photo.read_bytes()) == _pages(bytes(data))
    return outcomes


# --------------------------------------------------------------------------- TIFF


def _make_tiff(path: Path, kind: str) -> Path:
    """A scan as archivists keep them: 8-bit RGB (LZW), 16-bit grey, CMYK, several pages, or
    with the EXIF and XMP a photo tool left (a keyword, a rating)."""
    gradient = Image.linear_gradient("L").resize((48, 32))
    rgb = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              Image.new("L", (48, 32), 90)))  # fmt: skip
    if kind == "rgb":
        rgb.save(path, "TIFF", compression="tiff_lzw")
    elif kind == "grey16":
        gradient.convert("I").point(lambda v: v * 257).convert("I;16").save(path, "TIFF")
    elif kind == "cmyk":
        rgb.convert("CMYK").save(path, "TIFF")
    elif kind == "pages":
        pages = [rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM), gradient.convert("RGB")]
        rgb.save(path, "TIFF", save_all=True, append_images=pages)
    elif kind == "tagged":
        xmp = (
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
            '02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.'
            'com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="4"><dc:'
            "subject><rdf:Bag><rdf:li>grandma</rdf:li></rdf:Bag></dc:subject></rdf:Description>"
            "</rdf:RDF></x:xmpmeta>"
        )
        info = {271: "ScanCo", 272: "FilmScan 9", 305: "ScanSoft 2.0", 700: xmp.encode()}
        rgb.save(path, "TIFF", tiffinfo=info)
    return path


def _pages(data: bytes) -> list[tuple[tuple[int, int], str, bytes]]:
    """Every frame (page) of an image file: its size, mode and pixels."""
    with Image.open(io.BytesIO(data)) as img:
        out = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            out.append((img.size, img.mode, img.tobytes()))
        return out


def _tags(data: bytes) -> dict[int, object]:
    """Every IFD0 tag Pillow reads but ours (ImageDescription, XMP, XPComment)."""
    with Image.open(io.BytesIO(data)) as img:
        tags = dict(img.tag_v2)  # type: ignore[attr-defined]
    return {k: v for k, v in tags.items() if k not in (0x010E, 700, 0x9C9C)}


@pytest.mark.parametrize("kind", ["rgb", "grey16", "cmyk", "pages", "tagged"])
def test_tiff_lossless_round_trip(lib: Path, kind: str) -> None:
    # Lightroom reads a TIFF's caption from the file (its XMP), never from a sidecar.
    photo = _make_tiff(lib / "scan.tif", kind)
    before = photo.read_bytes()
    assert write(photo).status == "written"
    after = photo.read_bytes()
    assert after[: len(before)][8:] == before[8:]  # every old byte kept; a new IFD0 appended
    assert _pages(after) == _pages(before)  # every page, every pixel
    assert _tags(after) == _tags(before)
    assert read_exif_caption(photo) == (CAPTION, CAPTION)
    with Image.open(photo) as img:
        packet = XmpDocument.parse(img.tag_v2[700])  # type: ignore[attr-defined]
    assert packet.get_default(NS_DC, "description") == CAPTION
    assert packet.get_default(NS_IPTC, "AltTextAccessibility") == CAPTION
    if kind == "tagged":  # the packet was merged: the keyword and rating are still there
        assert b"grandma" in packet.serialize() and b'Rating="4"' in packet.serialize()
    # A re-caption replaces the IFD0 photocap appended instead of stacking another.
    assert write(photo, "A cat sleeps.").status == "written"
    assert read_exif_caption(photo)[0] == "A cat sleeps."
    assert len(photo.read_bytes()) - len(after) < 64
    assert _pages(photo.read_bytes()) == _pages(before)


@needs_exiftool
@pytest.mark.parametrize("kind", ["rgb", "pages", "tagged"])
def test_tiff_read_by_exiftool(lib: Path, kind: str) -> None:
    photo = _make_tiff(lib / "scan.tif", kind)
    _written_as_exiftool_reads_it(photo, "ScanCo" if kind == "tagged" else None)


@pytest.mark.parametrize("where", ["description", "iptc", "iptc-long", "photoshop"])
def test_tiff_with_a_persons_caption_is_kept(lib: Path, where: str) -> None:
    # An archive's scans captioned in Photo Mechanic or an older Photoshop may hold their caption
    # only in IPTC: in IFD0's IPTC-NAA tag, which Photoshop types LONG, or in its resource block.
    caption = "Oma's kitchen, 1962"
    iim = iptc_record(caption.encode())
    iim += b"\x00" * (-len(iim) % 4)  # padded to 4-byte units, as Photoshop does
    tag = {"description": (270, caption), "iptc": (33723, iim), "iptc-long": (33723, iim),
           "photoshop": (34377, photoshop_resources(caption.encode()))}  # fmt: skip
    photo = _make_tiff(lib / "scan.tif", "rgb")
    with Image.open(photo) as img:
        img.load()
        img.save(photo, "TIFF", tiffinfo=dict([tag[where]]))
    if where == "iptc-long":  # the same bytes, typed LONG: 4-byte units
        data = bytearray(photo.read_bytes())
        at = data.index(struct.pack("<HHI", 33723, 7, len(iim)))
        data[at : at + 8] = struct.pack("<HHI", 33723, 4, len(iim) // 4)
        photo.write_bytes(bytes(data))
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.human_caption) == ("kept_human", caption)
    assert photo.read_bytes() == before
    # nor does a sidecar caption of ours shadow it (a seek-based read of the file, not the above)
    assert XmpWriter(WriteOptions()).write(record(photo, CAPTION)).status == "kept_human"
    assert XmpDocument.load(lib / "scan.tif.xmp").get_default(NS_DC, "description") is None


@pytest.mark.filterwarnings("error")  # Pillow's "Truncated File Read" stays off the terminal
@pytest.mark.parametrize("description", [None, "Oma's kitchen, 1962"])
def test_tiff_with_an_unreadable_iptc_record(lib: Path, description: str | None) -> None:
    # The IPTC tag points past the end of the file: no app can read a caption there, so ours
    # shadows none; the rest of IFD0 is read as ever, a person's ImageDescription included.
    photo = _make_tiff(lib / "scan.tif", "rgb")
    tags: dict[int, object] = {33723: iptc_record(b"Oma's kitchen")}
    if description:
        tags[270] = description
    with Image.open(photo) as img:
        img.load()
        img.save(photo, "TIFF", tiffinfo=tags)
    data = bytearray(photo.read_bytes())
    at = data.index(struct.pack("<HH", 33723, 7)) + 8
    data[at : at + 4] = struct.pack("<I", len(data) + 500)
    photo.write_bytes(bytes(data))
    expected = "kept_human" if description else "written"
    assert XmpWriter(WriteOptions()).write(record(photo, CAPTION)).status == expected
    assert write(photo).status == expected
    assert read_exif_caption(photo)[0] == (description or CAPTION)


@pytest.mark.parametrize("damage", ["truncated", "ifd_past_end"])
def test_damaged_tiff_fails_untouched(lib: Path, damage: str) -> None:
    photo = _make_tiff(lib / "scan.tif", "rgb")
    data = photo.read_bytes()
    if damage == "truncated":  # a download cut short: IFD0 (last, as Pillow writes) is gone
        data = data[:-100]
    else:
        data = data[:4] + struct.pack("<I", len(data) + 1000) + data[8:]
    photo.write_bytes(data)
    outcome = write(photo)
    assert outcome.status == "failed" and outcome.message.startswith("corrupt TIFF: ")
    assert "\n" not in outcome.message
    assert photo.read_bytes() == data


@needs_exiv2
def test_tiff_read_by_exiv2(lib: Path) -> None:
    _written_as_exiv2_reads_it(_make_tiff(lib / "scan.tif", "tagged"), "ScanCo")


# --------------------------------------------------------------------------- DNG


def _raw_reading(photo: Path, preview: bool) -> tuple[object, ...]:
    """What LibRaw reads of a RAW: its sizes, sensor samples and preview's pixels."""
    import rawpy

    with rawpy.imread(str(photo)) as raw:
        pixels = None
        if preview:
            with Image.open(io.BytesIO(raw.extract_thumb().data)) as img:
                pixels = img.tobytes()
        return raw.sizes, raw.raw_image_visible.tobytes(), pixels


@pytest.mark.parametrize("preview", [True, False])
def test_dng_is_written_in_file_lossless(lib: Path, preview: bool) -> None:
    # Lightroom reads a DNG's caption from the file (its XMP), never from a sidecar; Adobe
    # appends metadata the same way. Other TIFF-based RAWs (NEF, CR2, ...) are never written.
    from raw_helpers import make_dng

    photo = make_dng(lib / "IMG_0001.dng", preview=(64, 48) if preview else None)
    before = photo.read_bytes()
    reading = _raw_reading(photo, preview)
    assert write(photo).status == "written"
    after = photo.read_bytes()
    assert after[: len(before)][8:] == before[8:]  # every old byte kept; a new IFD0 appended
    assert read_exif_caption(photo) == (CAPTION, CAPTION)
    packet = XmpDocument.parse(read_tag(after, 700, "TIFF") or b"")
    assert packet.get_default(NS_DC, "description") == CAPTION
    assert packet.get_default(NS_IPTC, "AltTextAccessibility") == CAPTION
    assert _raw_reading(photo, preview) == reading  # the sensor data and preview LibRaw reads
    assert write(photo, "A cat sleeps.").status == "written"  # replaces our IFD0
    assert read_exif_caption(photo)[0] == "A cat sleeps."
    assert len(photo.read_bytes()) - len(after) < 64
    [outcome] = list(revert_paths([photo]))
    assert outcome.status == "deleted" and read_exif_caption(photo) == (None, None)
    assert photo.read_bytes()[8 : len(before)] == before[8:]


def test_dng_verification_compares_what_libraw_reads(lib: Path) -> None:
    from raw_helpers import make_dng

    from photocap.errors import WriteError
    from photocap.metadata.tiff import verify_same_raw

    green = make_dng(lib / "a.dng").read_bytes()
    red = make_dng(lib / "b.dng", colour=(200, 10, 10)).read_bytes()  # the same sensor data
    verify_same_raw(green, green)
    with pytest.raises(WriteError, match="sensor data or preview changed"):
        verify_same_raw(green, red)
    with pytest.raises(WriteError, match="does not read back"):
        verify_same_raw(green, green[:100])
    with pytest.raises(WriteError, match="LibRaw cannot read this DNG"):
        verify_same_raw(green[:100], green)


@needs_exiftool
def test_dng_read_by_exiftool(lib: Path) -> None:
    from raw_helpers import make_dng

    _written_as_exiftool_reads_it(make_dng(lib / "IMG_0001.dng"), "Canon")


def test_damaged_dng_fails_untouched(lib: Path) -> None:
    from raw_helpers import make_dng

    photo = make_dng(lib / "IMG_0001.dng")
    data = photo.read_bytes()
    photo.write_bytes(data[:-200])  # cut short: IFD0, last as written, is gone
    outcome = write(photo)
    assert outcome.status == "failed" and "\n" not in outcome.message
    assert photo.read_bytes() == data[:-200]


def _written_as_exiv2_reads_it(photo: Path, make: str) -> None:
    """Write ``photo``: exiv2 (digiKam's library) reads our caption in EXIF and XMP, and the
    camera's (scanner's) ``make`` is still there."""
    write(photo)
    out = exiv2(photo, "-pa")
    assert f"Exif.Image.ImageDescription                  Ascii      30  {CAPTION}" in out
    assert (
        f'Xmp.dc.description                           LangAlt     1  lang="x-default" {CAPTION}'
        in out
    )
    assert f"Exif.Image.Make                              Ascii{len(make) + 1:>8}  {make}" in out


def test_ours_leaves_the_file_when_a_persons_caption_comes_later(lib: Path) -> None:
    # photocap wrote its caption into the file; later a person captions the photo in digiKam,
    # which writes the sidecar. Windows and Lightroom read the file: ours would hide theirs.
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = photo.read_bytes()
    assert write(photo).status == "written"
    sidecar = lib / "photo.jpg.xmp"
    doc = XmpDocument.load(sidecar)
    doc.set_default(NS_DC, "description", "Grandma's 80th birthday")
    sidecar.write_bytes(doc.serialize())
    outcome = write(photo)
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Grandma's 80th birthday")
    assert read_exif_caption(photo) == (None, None)  # as the camera left them
    packet = embedded(photo)
    assert packet.get_default(NS_DC, "description") is None
    assert packet.get_default(NS_IPTC, "AltTextAccessibility") == CAPTION  # the alt text stays
    after = photo.read_bytes()
    keep = [s for s in segments(before) if not is_caption_segment(s)]
    assert keep == [s for s in segments(after) if not is_caption_segment(s)]
    with Image.open(io.BytesIO(before)) as a, Image.open(io.BytesIO(after)) as b:
        assert a.tobytes() == b.tobytes()
    assert read_provenance(XmpDocument.load(sidecar)).exif_description is None
    assert write(photo).status == "kept_human" and photo.read_bytes() == after  # settled


# --------------------------------------------------------------------------- PNG


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) of a PNG, up to IEND, parsed here independently of photocap."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while not out or out[-1][0] != b"IEND":
        size = struct.unpack(">I", data[pos : pos + 4])[0]
        out.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + size]))
        pos += 12 + size
    return out


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import zlib

    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _is_ours(chunk: tuple[bytes, bytes]) -> bool:
    """An eXIf chunk, or the iTXt chunk of the XMP packet."""
    kind, whole = chunk
    return kind == b"eXIf" or (kind == b"iTXt" and whole[8:].startswith(b"XML:com.adobe.xmp\0"))


PNG_TRAILER = b"\0trailing bytes a tool left after IEND"


def _make_png(path: Path, kind: str) -> Path:
    """A PNG as a library has them: a screenshot (RGB), a palette graphic with transparency,
    16-bit grey, RGBA, an animated PNG, or one a photo tool tagged (XMP with a keyword and a
    rating, camera EXIF, text chunks before and after the image data, bytes after IEND)."""
    from PIL import PngImagePlugin

    gradient = Image.linear_gradient("L").resize((48, 32))
    rgb = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              Image.new("L", (48, 32), 90)))  # fmt: skip
    if kind == "rgb":
        rgb.save(path, "PNG")
    elif kind == "palette":
        rgb.quantize(16).save(path, "PNG", transparency=3)
    elif kind == "grey16":
        gradient.convert("I").point(lambda v: v * 257).convert("I;16").save(path, "PNG")
    elif kind == "alpha":
        rgba = rgb.copy()
        rgba.putalpha(gradient)
        rgba.save(path, "PNG")
    elif kind == "animated":
        frames = [rgb, rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
        frames[0].save(path, "PNG", save_all=True, append_images=frames[1:], duration=100)
    elif kind == "tagged":
        info = PngImagePlugin.PngInfo()
        keyword = "<dc:subject><rdf:Bag><rdf:li>grandma</rdf:li></rdf:Bag></dc:subject>"
        xmp = xmp_packet(extra=keyword)
        info.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=False)
        info.add_text("Software", "darktable 4.6")
        info.add_text("Comment", "Created with GIMP", zip=True)
        rgb.save(path, "PNG", pnginfo=info, exif=camera_exif(), dpi=(300, 300))
        data = path.read_bytes()
        late = _png_chunk(b"tEXt", b"Source\0scanned 1962")  # a text chunk after the image
        path.write_bytes(data[:-12] + late + data[-12:] + PNG_TRAILER)
    return path


@pytest.mark.parametrize("kind", ["rgb", "palette", "grey16", "alpha", "animated", "tagged"])
def test_png_lossless_round_trip(lib: Path, kind: str) -> None:
    # Lightroom reads a PNG's caption from the file (its XMP), never from a sidecar.
    photo = _make_png(lib / "photo.png", kind)
    before = photo.read_bytes()
    assert write(photo).status == "written"
    after = photo.read_bytes()
    old, new = _png_chunks(before), _png_chunks(after)
    # every chunk but eXIf and the XMP iTXt is byte-identical and in the same order
    assert [c for c in old if not _is_ours(c)] == [c for c in new if not _is_ours(c)]
    kinds = [k for k, _ in new]
    assert kinds.count(b"eXIf") == 1 and sum(map(_is_ours, new)) == 2
    first_image = min(kinds.index(k) for k in (b"acTL", b"fcTL", b"IDAT") if k in kinds)
    assert all(i < first_image for i, c in enumerate(new) if _is_ours(c))  # readers stop there
    if kind == "animated":  # the animation's chunks stay together, as the encoder wrote them
        assert kinds[first_image : first_image + 3] == [b"acTL", b"fcTL", b"IDAT"]
    assert after.endswith(PNG_TRAILER) == (kind == "tagged")
    assert _pages(after) == _pages(before)  # every frame, every pixel, the same mode
    assert read_exif_caption(photo) == (CAPTION, CAPTION)
    with Image.open(photo) as img:
        packet = XmpDocument.parse(img.info["xmp"])
        assert img.getexif().get(0x010E) == CAPTION
    assert packet.get_default(NS_DC, "description") == CAPTION
    assert packet.get_default(NS_IPTC, "AltTextAccessibility") == CAPTION
    if kind == "tagged":  # merged: the keyword and rating are kept, the camera's EXIF beside ours
        assert b"grandma" in packet.serialize() and b'Rating="4"' in packet.serialize()
        exif = piexif.load(dict(new)[b"eXIf"][8:-4])
        assert exif["0th"][piexif.ImageIFD.Make] == b"TestCam" and exif["GPS"]
    # A re-caption replaces both chunks in place: still one of each, the same pixels.
    assert write(photo, "A cat sleeps.").status == "written"
    assert read_exif_caption(photo)[0] == "A cat sleeps."
    again = _png_chunks(photo.read_bytes())
    assert [k for k, _ in again] == kinds and sum(map(_is_ours, again)) == 2
    assert _pages(photo.read_bytes()) == _pages(before)


@needs_exiftool
@pytest.mark.parametrize("kind", ["rgb", "animated", "tagged"])
def test_png_read_by_exiftool(lib: Path, kind: str) -> None:
    photo = _make_png(lib / "photo.png", kind)
    _written_as_exiftool_reads_it(photo, "TestCam" if kind == "tagged" else None)


@needs_exiv2
def test_png_read_by_exiv2(lib: Path) -> None:
    _written_as_exiv2_reads_it(_make_png(lib / "photo.png", "tagged"), "TestCam")


@pytest.mark.parametrize("where", ["xmp", "compressed xmp", "late xmp", "exif", "raw profile"])
def test_png_with_a_persons_caption_is_kept(lib: Path, where: str) -> None:
    # Wherever a tool put it: the XMP packet (compressed, as some write it, or after the image
    # data, where Pillow does not look before decoding), the eXIf chunk, or ImageMagick's hex
    # "Raw profile type exif" from before eXIf existed.
    from PIL import PngImagePlugin

    from photocap.metadata.authorship import find_human_caption

    info = PngImagePlugin.PngInfo()
    exif = b""
    if where in ("xmp", "compressed xmp"):
        packet = xmp_packet("Oma in Kassel").decode()
        info.add_itxt("XML:com.adobe.xmp", packet, zip=where == "compressed xmp")
    elif where == "exif":
        exif = camera_exif("Oma in Kassel")
    else:
        raw = camera_exif("Oma in Kassel").hex()
        text = f"\nexif\n{len(raw) // 2:8d}\n" + "\n".join(
            raw[i : i + 72] for i in range(0, len(raw), 72)
        )
        info.add_text("Raw profile type exif", text, zip=True)
    photo = lib / "photo.png"
    Image.new("RGB", (32, 24), "teal").save(photo, "PNG", pnginfo=info, exif=exif)
    if where == "late xmp":
        data = photo.read_bytes()
        late = _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp_packet("Oma in Kassel"))
        photo.write_bytes(data[:-12] + late + data[-12:])
    before = photo.read_bytes()
    outcome = write(photo)
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Oma in Kassel")
    assert photo.read_bytes() == before
    assert find_human_caption(photo) == "Oma in Kassel"  # the sidecar writer's look, by seeking


def test_png_with_two_xmp_packets_is_left_untouched(lib: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for _ in range(2):
        info.add_itxt("XML:com.adobe.xmp", xmp_packet().decode(), zip=False)
    photo = lib / "photo.png"
    Image.new("RGB", (32, 24), "teal").save(photo, "PNG", pnginfo=info)
    before = photo.read_bytes()
    outcome = write(photo)
    assert outcome.status == "failed" and "two XMP packets" in outcome.message
    assert photo.read_bytes() == before


@pytest.mark.parametrize("kind", ["rgb", "animated"])
def test_damaged_pngs_fail_cleanly_or_stay_pixel_identical(lib: Path, kind: str) -> None:
    src = _make_png(lib / "src.png", kind).read_bytes()
    outcomes = _write_damaged_copies(lib, src, ".png", seed=11, keep=8)  # the signature
    failed = [o.message for o in outcomes if o.status == "failed"]
    assert failed and all("PNG" in m or "does not decode" in m for m in failed)
