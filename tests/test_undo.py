"""photocap revert gives back the exact file: byte patches, and what is left when it cannot."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from metadata_helpers import camera_exif, make_jpeg, record
from test_exif import _make_png, _make_tiff, _make_webp

from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.infile import read_exif_caption
from photocap.metadata.patch import Splice, apply_patch, decode_patch, diff_bytes, encode_patch
from photocap.metadata.provenance import read_provenance
from photocap.metadata.revert import revert_paths
from photocap.metadata.sidecar_writer import XmpWriter
from photocap.metadata.sidecars import sidecar_path
from photocap.metadata.xmp import XmpDocument
from photocap.writers import WriteOptions

CAPTION = "A dog runs through the grass."
SECOND = "A brown dog is running on the grass."


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    folder = tmp_path / "lib"
    folder.mkdir()
    return folder


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def caption(photo: Path, text: str = CAPTION) -> None:
    options = WriteOptions()
    for writer in (XmpWriter(options), ExifWriter(options)):
        assert writer.write(record(photo, text)).status == "written"


def traces(data: bytes, *texts: str) -> list[str]:
    """Which of ``texts`` are anywhere in ``data``, in UTF-8 or UTF-16 (either byte order)."""
    found = []
    for text in texts:
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            if text.encode(enc) in data:
                found.append(f"{text!r} as {enc}")
    return found


def _dng(path: Path) -> Path:
    from raw_helpers import make_dng

    return make_dng(path, preview=(64, 48))


# Each in-file format, with prior metadata and without.
PHOTOS = {
    "jpeg-bare": lambda p: make_jpeg(p / "photo.jpg"),
    "jpeg-camera": lambda p: make_jpeg(p / "photo.jpg", exif=camera_exif()),
    "jpeg-olympus": lambda p: make_jpeg(
        p / "photo.jpg", exif=camera_exif(description="OLYMPUS DIGITAL CAMERA         ")
    ),
    "jpeg-xmp": lambda p: make_jpeg(p / "photo.jpg", exif=camera_exif(), icc=True, extras=True),
    "png-bare": lambda p: _make_png(p / "photo.png", "rgb"),
    "png-tagged": lambda p: _make_png(p / "photo.png", "tagged"),
    "webp-simple": lambda p: _make_webp(p / "photo.webp", "lossy"),
    "webp-tagged": lambda p: _make_webp(p / "photo.webp", "xmp_and_exif"),
    "tiff-bare": lambda p: _make_tiff(p / "photo.tif", "rgb"),
    "tiff-tagged": lambda p: _make_tiff(p / "photo.tif", "tagged"),
    "dng": lambda p: _dng(p / "IMG_0001.dng"),
}


@pytest.mark.parametrize("kind", sorted(PHOTOS))
def test_revert_gives_back_the_exact_file(lib: Path, kind: str) -> None:
    photo = PHOTOS[kind](lib)
    original = sha(photo)
    mtime = photo.stat().st_mtime_ns
    caption(photo)
    caption(photo, SECOND)  # a re-caption keeps the way back to the first bytes
    assert sha(photo) != original and read_exif_caption(photo)[0] == SECOND
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "deleted", outcome.message
    assert sha(photo) == original
    assert photo.stat().st_mtime_ns == mtime
    assert not sidecar_path(photo).exists()


def test_revert_after_another_app_changed_the_file_leaves_no_trace(lib: Path) -> None:
    # A TIFF as a scanner writes it; photocap captions it; then another app adds its own
    # (here: an extra IFD0 tag through photocap's own lossless writer, as a rating would be).
    photo = _make_tiff(lib / "photo.tif", "tagged")
    caption(photo)
    from photocap.metadata.ifd import TYPE_ASCII, set_ifd0_tags

    data = photo.read_bytes()
    photo.write_bytes(set_ifd0_tags(data, {315: (TYPE_ASCII, b"Ann Smith\0")}, "TIFF"))
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "deleted", outcome.message
    assert "changed since photocap wrote it" in outcome.message
    after = photo.read_bytes()
    assert read_exif_caption(photo) == (None, None)
    assert b"Ann Smith" in after  # theirs stays
    assert traces(after, CAPTION) == []  # no byte of our caption, referenced or not


@pytest.mark.parametrize("kind", ["jpeg-camera", "png-tagged", "webp-tagged"])
def test_revert_of_a_changed_file_leaves_no_trace(lib: Path, kind: str) -> None:
    photo = PHOTOS[kind](lib)
    caption(photo)
    with open(photo, "ab") as fh:  # another app changed the file after photocap
        fh.write(b"\0")
    [outcome] = list(revert_paths([lib]))
    assert outcome.status in ("deleted", "reverted"), outcome.message
    assert read_exif_caption(photo) == (None, None)
    assert traces(photo.read_bytes(), CAPTION) == []


def test_undo_record_is_small_and_in_the_sidecar(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption(photo)
    prov = read_provenance(XmpDocument.load(sidecar_path(photo)))
    assert prov.exif_undo is not None and len(prov.exif_undo) < 200
    assert prov.exif_written_sha256 == sha(photo)


def test_a_damaged_undo_record_falls_back_to_the_texts(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption(photo)
    sidecar = sidecar_path(photo)
    text = sidecar.read_text(encoding="utf-8")
    prov = read_provenance(XmpDocument.load(sidecar))
    assert prov.exif_undo
    sidecar.write_text(text.replace(prov.exif_undo, "AAAA" + prov.exif_undo[4:]), "utf-8")
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "deleted", outcome.message
    assert read_exif_caption(photo) == (None, None)


def test_hard_linked_photo_is_not_split(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    other = lib / "copy.jpg"
    os.link(photo, other)
    before = photo.read_bytes()
    outcome = ExifWriter(WriteOptions()).write(record(photo, CAPTION))
    assert outcome.status == "failed"
    assert "hard link" in outcome.message
    assert photo.read_bytes() == before and os.stat(photo).st_ino == os.stat(other).st_ino


# --------------------------------------------------------------------------- the patches


def test_patch_round_trip_on_scattered_edits() -> None:
    rng = random.Random(7)
    original = rng.randbytes(300_000)
    written = (
        original[:4] + b"\x00\x00\x01\x00" + original[8:5000] + rng.randbytes(900)
        + original[5000:200_000] + original[200_500:] + rng.randbytes(3000)
    )  # fmt: skip
    splices = diff_bytes(written, original)
    assert apply_patch(written, splices) == original
    assert sum(len(s.data) for s in splices) < 1200  # the replaced bytes, not the file
    assert decode_patch(encode_patch(splices)) == splices


@pytest.mark.parametrize(
    ("a", "b"), [(b"", b"abc"), (b"abc", b""), (b"same", b"same"), (b"\0" * 9000, b"\1" * 9000)]
)
def test_patch_edge_cases(a: bytes, b: bytes) -> None:
    assert apply_patch(a, diff_bytes(a, b)) == b


def test_damaged_patches_are_refused() -> None:
    from photocap.errors import WriteError

    with pytest.raises(WriteError):
        decode_patch("not base64!")
    with pytest.raises(WriteError):
        apply_patch(b"abc", [Splice(2, 9, b"")])


# --------------------------------------------------------------------------- the whole command


def test_revert_walks_like_caption_and_clears_the_index(tmp_path: Path, model_file: Path) -> None:
    from conftest import make_tiny_jpegs
    from typer.testing import CliRunner

    from photocap.cli import app
    from photocap.index import PhotoIndex

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    [linked] = make_tiny_jpegs(outside, 1)
    lib = tmp_path / "lib"
    lib.mkdir()
    [own] = make_tiny_jpegs(lib, 1)
    (lib / "album").symlink_to(outside, target_is_directory=True)  # a symlinked folder
    before = {p: sha(p) for p in (own, linked)}
    db = tmp_path / "index.db"
    runner = CliRunner()
    args = ["--db", str(db), "--model", str(model_file), "--workers", "0"]
    result = runner.invoke(app, ["caption", str(lib), "--write", "xmp,exif,index", *args])
    assert result.exit_code == 0, result.output
    with PhotoIndex(db) as index:
        words = index.get(str(lib / "album" / linked.name)).caption.split()  # type: ignore[union-attr]
    found = runner.invoke(app, ["search", words[1], "--db", str(db), "--json"])
    assert found.output.count('"path"') == 2

    result = runner.invoke(app, ["revert", str(lib), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert {p: sha(p) for p in (own, linked)} == before  # the symlinked folder's photo too
    assert not list(outside.glob("*.xmp")) and not list(lib.glob("*.xmp"))
    found = runner.invoke(app, ["search", words[1], "--db", str(db), "--json"])
    assert '"path"' not in found.output
    with PhotoIndex(db) as index:
        assert index.get(str(own)).caption is None  # type: ignore[union-attr]
    # a re-run captions them again: nothing is skipped as "already captioned"
    result = runner.invoke(app, ["caption", str(lib), "--write", "index", *args, "--json"])
    assert '"skipped": 0' in result.output and '"captioned": 1' in result.output, result.output


# --------------------------------------------------------------------------- the record first


def test_a_read_only_sidecar_means_the_photo_is_not_touched(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    sidecar = sidecar_path(photo)
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/'
        '1.0/" xmp:Rating="4"/></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    sidecar.chmod(0o444)
    before = sha(photo)
    outcome = ExifWriter(WriteOptions()).write(record(photo, CAPTION))
    assert outcome.status == "failed" and "read-only" in outcome.message
    assert sha(photo) == before  # no caption in the file that nothing records


def test_a_record_that_cannot_be_saved_puts_the_photo_back(
    lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import photocap.metadata.exif_writer
    from photocap.errors import WriteError

    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    before = sha(photo)

    def disk_full(path: Path, doc: object) -> None:
        raise WriteError(f"no space left on device: {path}")

    monkeypatch.setattr(photocap.metadata.exif_writer, "save_sidecar", disk_full)
    outcome = ExifWriter(WriteOptions()).write(record(photo, CAPTION))
    assert outcome.status == "failed" and "record could not be saved" in outcome.message
    assert sha(photo) == before and not outcome.changed_photo


def test_revert_with_a_read_only_sidecar_touches_nothing(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption(photo)
    written = sha(photo)
    sidecar_path(photo).chmod(0o444)
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "failed" and "read-only" in outcome.message
    assert sha(photo) == written  # the record still matches the photo: a later revert works
    sidecar_path(photo).chmod(0o644)
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "deleted" and outcome.message == ""


@pytest.mark.parametrize("why", ["read-only", "hard link"])
def test_a_dry_run_revert_says_what_the_revert_would(lib: Path, why: str) -> None:
    photo = make_jpeg(lib / "photo.jpg", exif=camera_exif())
    caption(photo)
    if why == "read-only":
        photo.chmod(0o444)
    else:
        os.link(photo, lib / "other-name.jpg")
    [dry] = list(revert_paths([lib], dry_run=True))
    [real] = list(revert_paths([lib]))
    assert dry.status == real.status == "failed"
    assert dry.message == real.message


def test_a_raw_jpeg_pairs_stem_sidecar_reverts_the_dng(lib: Path) -> None:
    # Lightroom's layout: IMG_0001.xmp describes the RAW of the pair (--sidecar-name stem).
    dng = _dng(lib / "IMG_0001.dng")
    jpeg = make_jpeg(lib / "IMG_0001.jpg", exif=camera_exif())
    before = {p: sha(p) for p in (dng, jpeg)}
    outcome = ExifWriter(WriteOptions(sidecar_name="stem")).write(record(dng, CAPTION))
    assert outcome.status == "written" and (lib / "IMG_0001.xmp").is_file()
    [reverted] = list(revert_paths([lib]))
    assert reverted.status == "deleted", reverted.message
    assert {p: sha(p) for p in (dng, jpeg)} == before


@pytest.mark.parametrize("named", ["sidecar", "real folder"])
def test_revert_clears_the_index_however_the_photo_is_named(
    tmp_path: Path, model_file: Path, named: str
) -> None:
    from conftest import make_tiny_jpegs
    from typer.testing import CliRunner

    from photocap.cli import app
    from photocap.index import PhotoIndex

    real = tmp_path / "real"
    real.mkdir()
    [photo] = make_tiny_jpegs(real, 1)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "album").symlink_to(real, target_is_directory=True)
    db = tmp_path / "index.db"
    runner = CliRunner()
    args = ["--db", str(db), "--model", str(model_file), "--workers", "0"]
    result = runner.invoke(app, ["caption", str(lib), "--write", "xmp,index", *args])
    assert result.exit_code == 0, result.output
    row = str(lib / "album" / photo.name)  # the index knows it by the walked path
    with PhotoIndex(db) as index:
        assert index.get(row).caption  # type: ignore[union-attr]
    target = sidecar_path(photo) if named == "sidecar" else real
    result = runner.invoke(app, ["revert", str(target), "--db", str(db)])
    assert result.exit_code == 0, result.output
    with PhotoIndex(db) as index:
        assert index.get(row).caption is None  # type: ignore[union-attr]


def test_forgetting_a_caption_forgets_the_failure_to_write_it(tmp_path: Path) -> None:
    from photocap.index import PhotoIndex

    with PhotoIndex(tmp_path / "i.db") as index:
        index.upsert_photos([
            {"path": "/p/a.jpg", "caption": "A dog.", "error": "exif: has 2 hard links",
             "stage": "exif"},
            {"path": "/p/b.jpg", "caption": "A cat.", "error": None, "stage": None},
        ])  # fmt: skip
        index.forget_captions(["/p/a.jpg", "/p/b.jpg"])
        stats = index.stats()
        assert stats.failed == 0 and not stats.failures
        assert index.get("/p/a.jpg").caption is None  # type: ignore[union-attr]


def test_every_page_of_a_tiff_counts_as_referenced(lib: Path) -> None:
    # A dead copy of our caption may be zeroed; a live one, in any page, never.
    from photocap.metadata.ifd import Tiff, all_references

    photo = _make_tiff(lib / "photo.tif", "pages")  # three pages: IFD0 -> IFD1 -> IFD2
    t = Tiff(photo.read_bytes(), "TIFF")
    chain, at = [], t.ifd0
    while at:
        entries, nxt = t.read_ifd(at)
        chain.append((at, at + 2 + 12 * len(entries) + 4))
        at = nxt
    assert len(chain) == 3
    refs = all_references(t)
    assert all(ifd in refs for ifd in chain)
    strips = [(s, e) for s, e in refs if e - s > 100]  # each page's pixels, as ranges
    assert len(strips) >= 3


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed")
@pytest.mark.parametrize("kind", ["jpeg-camera", "tiff-tagged", "png-bare", "webp-simple"])
def test_revert_after_exiftool_wrote_a_rating(lib: Path, kind: str) -> None:
    photo = PHOTOS[kind](lib)
    caption(photo)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-xmp:Rating=2",
                    "-EXIF:Artist=Ann Smith", str(photo)], check=True)  # fmt: skip
    [outcome] = list(revert_paths([lib]))
    assert outcome.status == "deleted", outcome.message
    data = photo.read_bytes()
    assert read_exif_caption(photo) == (None, None)
    assert b"Ann Smith" in data  # theirs stays
    assert traces(data, CAPTION) == []
