"""photocap revert: restore what was there before, delete what photocap created from nothing."""

from __future__ import annotations

from pathlib import Path

import piexif
import pytest
from metadata_helpers import camera_exif, is_exif, make_jpeg, pixels, record, segments
from test_xmp import HUMAN_SIDECAR, RICH_SIDECAR
from typer.testing import CliRunner

from photocap.cli import app
from photocap.metadata.authorship import human_caption_in_file_text
from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.infile import read_exif_caption
from photocap.metadata.revert import revert_paths
from photocap.metadata.sidecar_writer import XmpWriter
from photocap.metadata.xmp import NS_DC, NS_PHOTOCAP, XmpDocument
from photocap.writers import WriteOptions


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    folder = tmp_path / "lib"
    folder.mkdir()
    return folder


def caption_all(photo: Path, caption: str = "A dog runs.", **opts: object) -> None:
    options = WriteOptions(**opts)  # type: ignore[arg-type]
    for writer in (XmpWriter(options), ExifWriter(options)):
        assert writer.write(record(photo, caption)).status in ("written", "skipped")


def test_created_sidecar_is_deleted_and_exif_removed(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = photo.read_bytes()
    old_exif = piexif.load(before)
    old_pixels = pixels(photo)
    caption_all(photo)
    outcomes = list(revert_paths([lib]))
    assert [(o.path.name, o.status) for o in outcomes] == [("photo.jpg.xmp", "deleted")]
    assert not (lib / "photo.jpg.xmp").exists()
    assert read_exif_caption(photo) == (None, None)
    assert piexif.load(str(photo)) == old_exif
    after = photo.read_bytes()
    assert [s for s in segments(after) if not is_exif(s)] == [
        s for s in segments(before) if not is_exif(s)
    ]
    assert pixels(photo) == old_pixels


def test_merged_sidecar_gets_its_fields_back(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg")
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(RICH_SIDECAR, encoding="utf-8")
    original = XmpDocument.load(sidecar).serialize()
    XmpWriter(WriteOptions()).write(record(photo))
    assert XmpDocument.load(sidecar).serialize() != original
    [outcome] = list(revert_paths([photo], ["xmp"]))
    assert outcome.status == "reverted"
    assert XmpDocument.load(sidecar).serialize() == original
    assert NS_PHOTOCAP not in sidecar.read_text(encoding="utf-8")


def test_overwritten_human_values_are_restored(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(description="Holiday in Rome"))
    (lib / "photo.jpg.xmp").write_text(HUMAN_SIDECAR, encoding="utf-8")
    caption_all(photo, overwrite_human=True)
    assert read_exif_caption(photo)[0] == "A dog runs."
    [outcome] = list(revert_paths([lib / "photo.jpg.xmp"]))
    assert outcome.status == "reverted"
    doc = XmpDocument.load(lib / "photo.jpg.xmp")
    assert doc.get_default(NS_DC, "description") == "Grandma's 80th birthday\n"
    assert not doc.has_namespace(NS_PHOTOCAP)
    assert read_exif_caption(photo) == ("Holiday in Rome", None)


def test_camera_default_description_replaced_and_restored(lib: Path) -> None:
    # What an Olympus writes when nobody wrote a description: not a person's caption.
    exif = camera_exif(description="OLYMPUS DIGITAL CAMERA         ")
    photo = make_jpeg(lib / "photo.jpg", exif=exif)
    (lib / "photo.jpg.xmp").write_text(
        HUMAN_SIDECAR.replace("Grandma's 80th birthday\n", "SONY DSC"), encoding="utf-8"
    )
    caption_all(photo)  # no --overwrite-human needed
    assert read_exif_caption(photo) == ("A dog runs.", "A dog runs.")
    assert XmpDocument.load(lib / "photo.jpg.xmp").get_default(NS_DC, "description") == (
        "A dog runs."
    )
    [outcome] = list(revert_paths([lib / "photo.jpg.xmp"]))
    assert outcome.status == "reverted"
    assert XmpDocument.load(lib / "photo.jpg.xmp").get_default(NS_DC, "description") == "SONY DSC"
    assert read_exif_caption(photo) == ("OLYMPUS DIGITAL CAMERA", None)


def test_description_with_control_characters_recorded(lib: Path) -> None:
    # Binary junk in a camera's ImageDescription cannot go into XML as it is; the sidecar that
    # records it must still parse (it did not, after the photo had been rewritten).
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(description="junk\x01\x02 text"))
    caption_all(photo, overwrite_human=True)
    assert read_exif_caption(photo)[0] == "A dog runs."
    prov = XmpDocument.load(lib / "photo.jpg.xmp")
    assert prov.get_text(NS_PHOTOCAP, "exifPreviousDescription") == "junk\ufffd\ufffd text"
    [outcome] = list(revert_paths([lib / "photo.jpg.xmp"]))
    assert outcome.status == "deleted"  # the sidecar photocap created, after the EXIF is restored
    # The file's own bytes come back (its undo record), not the text as XML could hold it.
    assert read_exif_caption(photo)[0] == "junk\x01\x02 text"


def test_edited_caption_is_left_alone(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg")
    XmpWriter(WriteOptions()).write(record(photo))
    sidecar = lib / "photo.jpg.xmp"
    doc = XmpDocument.load(sidecar)
    doc.set_default(NS_DC, "description", "Rex, edited by hand")
    sidecar.write_bytes(doc.serialize())
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "reverted" and "edited after photocap" in outcome.message
    assert XmpDocument.load(sidecar).get_default(NS_DC, "description") == "Rex, edited by hand"


def test_files_without_provenance_are_not_touched(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif(description="Mine"))
    (lib / "photo.jpg.xmp").write_text(HUMAN_SIDECAR, encoding="utf-8")
    (lib / "other.xmp").write_text("<broken", encoding="utf-8")
    before = photo.read_bytes(), (lib / "photo.jpg.xmp").read_bytes()
    assert list(revert_paths([lib])) == []
    assert (photo.read_bytes(), (lib / "photo.jpg.xmp").read_bytes()) == before


def test_dry_run(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption_all(photo)
    files = {p.name: p.read_bytes() for p in lib.iterdir()}
    [outcome] = list(revert_paths([lib], dry_run=True))
    assert outcome.status == "deleted"
    assert {p.name: p.read_bytes() for p in lib.iterdir()} == files


def test_cli_revert_exit_codes(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption_all(photo)
    runner = CliRunner()
    # A dry run lists what it would change, and changes nothing.
    before = {p: p.read_bytes() for p in lib.iterdir()}
    result = runner.invoke(app, ["revert", str(lib), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.splitlines()) == [
        f"would delete: {lib / 'photo.jpg.xmp'}",
        f"would restore: {photo}",
    ]
    assert "Dry run: would have reverted 0 sidecars, deleted 1," in result.stderr
    assert {p: p.read_bytes() for p in lib.iterdir()} == before
    result = runner.invoke(app, ["revert", str(lib), "--write", "exif"])
    assert result.exit_code == 0, result.output
    assert "reverted 1 sidecar, deleted 0, 0 unchanged, 0 failed." in result.output
    assert read_exif_caption(photo) == (None, None)
    result = runner.invoke(app, ["revert", str(lib)])
    assert result.exit_code == 0 and "deleted 1" in result.output
    assert not (lib / "photo.jpg.xmp").exists()

    # A sidecar that names photocap but cannot be parsed: reported, exit code 1.
    (lib / "bad.jpg.xmp").write_text(f"<x xmlns:p='{NS_PHOTOCAP}'>", encoding="utf-8")
    result = runner.invoke(app, ["revert", str(lib)])
    assert result.exit_code == 1
    assert "failed: " in result.output and "malformed XML" in result.output
    assert runner.invoke(app, ["revert", str(lib), "--write", "index"]).exit_code == 2
    typo = runner.invoke(app, ["revert", str(lib / "nope")])
    assert typo.exit_code == 2 and "no such file or folder" in typo.output


def test_webp_exif_reverted(lib: Path) -> None:
    from test_exif import _make_webp, _pages, _webp_chunks

    photo = _make_webp(lib / "photo.webp", "xmp_and_exif")
    before = photo.read_bytes()
    caption_all(photo)
    assert read_exif_caption(photo) == ("A dog runs.", "A dog runs.")
    outcomes = list(revert_paths([lib]))
    assert [(o.path.name, o.status) for o in outcomes] == [("photo.webp.xmp", "deleted")]
    assert read_exif_caption(photo) == (None, None)
    after = photo.read_bytes()
    assert [c for c in _webp_chunks(after) if c[0] not in (b"EXIF", b"XMP ")] == [
        c for c in _webp_chunks(before) if c[0] not in (b"EXIF", b"XMP ")
    ]  # VP8X already had its EXIF and XMP flags: unchanged
    # Its XMP chunk (empty, the camera's) stays, empty again: photocap did not add it.
    packet = XmpDocument.parse(dict(_webp_chunks(after))[b"XMP "][8:].rstrip(b"\x00"))
    assert packet.is_empty()
    assert _pages(after) == _pages(before)
    exif = piexif.load(dict(_webp_chunks(after))[b"EXIF"][8:])
    assert exif["0th"][piexif.ImageIFD.Make] == b"TestCam"


def test_webp_xmp_chunk_photocap_added_goes_on_revert(lib: Path) -> None:
    from test_exif import _make_webp, _pages, _webp_chunks

    photo = _make_webp(lib / "photo.webp", "lossy")  # simple format: no VP8X, no XMP
    before = photo.read_bytes()
    caption_all(photo)
    assert b"XMP " in dict(_webp_chunks(photo.read_bytes()))
    [outcome] = list(revert_paths([photo]))
    assert outcome.status == "deleted"
    chunks = _webp_chunks(photo.read_bytes())
    assert b"XMP " not in dict(chunks) and not chunks[0][1][8] & 0x04  # chunk and flag gone
    assert _pages(photo.read_bytes()) == _pages(before)


@pytest.mark.parametrize("kind", ["rgb", "tagged"])
def test_tiff_reverted(lib: Path, kind: str) -> None:
    from test_exif import _make_tiff, _pages, _tags

    from photocap.metadata.ifd import TAG_XMP, read_tag

    photo = _make_tiff(lib / "scan.tif", kind)
    before = photo.read_bytes()
    caption_all(photo)
    assert read_exif_caption(photo) == ("A dog runs.", "A dog runs.")
    [outcome] = list(revert_paths([lib]))
    assert (outcome.path.name, outcome.status) == ("scan.tif.xmp", "deleted")
    after = photo.read_bytes()
    assert read_exif_caption(photo) == (None, None)
    assert _pages(after) == _pages(before) and _tags(after) == _tags(before)
    packet = read_tag(after, TAG_XMP)
    if kind == "rgb":  # the packet photocap added is gone
        assert packet is None
    else:  # the scanner's packet stays, as it was apart from layout
        assert packet is not None and b"grandma" in packet and b"A dog runs" not in packet


@pytest.mark.parametrize("kind", ["rgb", "tagged"])
def test_png_reverted(lib: Path, kind: str) -> None:
    from test_exif import _is_ours, _make_png, _pages, _png_chunks

    photo = _make_png(lib / "photo.png", kind)
    before = photo.read_bytes()
    caption_all(photo)
    assert read_exif_caption(photo) == ("A dog runs.", "A dog runs.")
    [outcome] = list(revert_paths([lib]))
    assert (outcome.path.name, outcome.status) == ("photo.png.xmp", "deleted")
    after = photo.read_bytes()
    assert read_exif_caption(photo) == (None, None)
    assert _pages(after) == _pages(before)
    old, new = _png_chunks(before), _png_chunks(after)
    assert [c for c in old if not _is_ours(c)] == [c for c in new if not _is_ours(c)]
    packets = [whole for kind_, whole in new if _is_ours((kind_, whole)) and kind_ == b"iTXt"]
    if kind == "rgb":  # the packet photocap added is gone
        assert packets == []
    else:  # the tool's packet stays, as it was apart from layout; so does the camera's EXIF
        assert len(packets) == 1 and b"grandma" in packets[0] and b"A dog runs" not in packets[0]
        exif = piexif.load(dict(new)[b"eXIf"][8:-4])
        assert exif["0th"][piexif.ImageIFD.Make] == b"TestCam"


@pytest.mark.parametrize("writers", ["xmp,exif", "exif"])
def test_a_copy_of_a_photo_photocap_wrote_into_reverts_whole(lib: Path, writers: str) -> None:
    # A photo copied (or moved without its sidecar) after photocap wrote its caption into it:
    # the copy holds our caption and no provenance. It is ours, not a person's: not kept as
    # one, not recorded as what was there before, and gone from the copy on revert.
    from photocap.metadata.infile import read_photo_text

    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption_all(photo)
    copy = lib / "copies" / "copy.jpg"
    copy.parent.mkdir()
    copy.write_bytes(photo.read_bytes())
    options = WriteOptions()
    for writer in (XmpWriter(options), ExifWriter(options)):
        if writer.name in writers.split(","):
            outcome = writer.write(record(copy, "A dog runs."))
            assert outcome.status in ("written", "unchanged"), outcome
    assert read_exif_caption(copy) == ("A dog runs.", "A dog runs.")
    list(revert_paths([copy]))
    assert read_exif_caption(copy) == (None, None)
    text = read_photo_text(copy)
    assert text is not None and human_caption_in_file_text(text) is None
    doc = text.xmp()
    assert doc is None or doc.get_default(NS_DC, "description") is None
    assert piexif.load(copy.read_bytes())["0th"][piexif.ImageIFD.Make] == b"TestCam"
