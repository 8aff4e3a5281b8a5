"""XMP sidecars: naming, merge without clobbering, human captions kept, bad sidecars refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from metadata_helpers import EXIFTOOL, EXIV2, exiftool_json, exiftool_warnings, exiv2, record

from photocap.metadata import get_writers
from photocap.metadata.authorship import alt_text_for, find_human_caption
from photocap.metadata.provenance import read_provenance
from photocap.metadata.sidecar_writer import STEM_SIDECAR_BESIDE, XmpWriter
from photocap.metadata.sidecars import adopt_sidecar, read_caption, sidecar_stamp
from photocap.metadata.xmp import NS_DC, NS_IPTC, XmpDocument
from photocap.writers import OutcomeCode, WriteOptions, WriteOutcome

needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed")
needs_exiv2 = pytest.mark.skipif(EXIV2 is None, reason="exiv2 not installed")

RICH_SIDECAR = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<!-- exported by acme 2.1 -->
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <?acme-sync revision="7"?>
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:acme="http://example.com/acme/1.0/"
    xmp:Rating="5"
    darktable:history_end="2"
    crs:Exposure2012="+0.35"
    acme:Secret="keep me">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>dog</rdf:li>
     <rdf:li>park</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <!-- edited by hand: keep the darktable history -->
   <dc:description>
    <rdf:Alt>
     <rdf:li xml:lang="de-DE">Ein Hund im Park</rdf:li>
    </rdf:Alt>
   </dc:description>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1"
       darktable:params="0000000000000000"/>
     <rdf:li darktable:operation="colorin" darktable:enabled="1"
       darktable:params="gz48eJxjZBgFo2AU0AsAAANwAAE="/>
    </rdf:Seq>
   </darktable:history>
   <acme:Nested>
    <rdf:Bag><rdf:li>one</rdf:li><rdf:li>two</rdf:li></rdf:Bag>
   </acme:Nested>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<!-- acme checksum 1f2e3d -->
<?xpacket end="w"?>
"""

HUMAN_SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
 xmp:Rating="3"><dc:description><rdf:Alt><rdf:li xml:lang="x-default">Grandma's 80th birthday
</rdf:li></rdf:Alt></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"""

# The same with no caption in any language: a sidecar photocap merges its caption into.
RICH_NO_CAPTION = RICH_SIDECAR.replace(
    """   <dc:description>
    <rdf:Alt>
     <rdf:li xml:lang="de-DE">Ein Hund im Park</rdf:li>
    </rdf:Alt>
   </dc:description>
""",
    "",
)

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol4;</x:xmpmeta>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>"""


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    folder = tmp_path / "lib"
    folder.mkdir()
    return folder


def photo_in(folder: Path, name: str = "photo.jpg") -> Path:
    path = folder / name
    path.write_bytes(b"\xff\xd8\xff\xe0 not decoded by the xmp writer")
    return path


def write(photo: Path, caption: str = "A dog runs through the grass.", **opts: object):  # type: ignore[no-untyped-def]
    return XmpWriter(WriteOptions(**opts)).write(record(photo, caption))  # type: ignore[arg-type]


def test_a_skipped_or_kept_outcome_needs_its_code() -> None:
    with pytest.raises(ValueError, match="needs its OutcomeCode"):
        WriteOutcome("xmp", Path("photo.jpg"), "skipped", "why")
    assert WriteOutcome("xmp", Path("photo.jpg"), "failed", "why").code is OutcomeCode.FAILED


def test_built_by_name() -> None:
    writers = get_writers(["xmp", "exif"], WriteOptions())
    assert [w.name for w in writers] == ["xmp", "exif"]


def test_new_sidecar_full_name(lib: Path) -> None:
    photo = photo_in(lib)
    outcome = write(photo)
    assert (outcome.status, outcome.message) == ("written", "")
    sidecar = lib / "photo.jpg.xmp"
    assert sidecar.exists() and not (lib / "photo.xmp").exists()
    doc = XmpDocument.load(sidecar)
    assert doc.get_lang_alt(NS_DC, "description") == [
        ("x-default", "A dog runs through the grass.")
    ]
    prov = read_provenance(doc)
    assert prov.model == "photocap-test-1" and prov.score == "-1.2500"
    assert prov.date == "2024-05-01T12:00:00+00:00" and prov.created_sidecar
    assert read_caption(photo) == "A dog runs through the grass."
    assert sorted(p.name for p in lib.iterdir()) == ["photo.jpg", "photo.jpg.xmp"]


def test_stem_naming_and_reading_both_forms(lib: Path) -> None:
    photo = photo_in(lib)
    assert write(photo, sidecar_name="stem").status == "written"
    assert (lib / "photo.xmp").exists() and not (lib / "photo.jpg.xmp").exists()
    assert read_caption(photo) == "A dog runs through the grass."


def test_stem_naming_refuses_shared_sidecar(lib: Path) -> None:
    jpg = photo_in(lib, "x.jpg")
    photo_in(lib, "x.png")
    outcome = write(jpg, sidecar_name="stem")
    assert outcome.status == "failed"
    assert "x.xmp would be shared by x.jpg and x.png" in outcome.message
    assert "\n" not in outcome.message
    assert not (lib / "x.xmp").exists()


def test_stem_sidecar_of_a_raw_jpeg_pair_is_the_raws(lib: Path) -> None:
    # Lightroom's convention: IMG_0001.xmp describes IMG_0001.CR2; its JPEG is a "sidecar JPEG".
    raw, jpg = photo_in(lib, "IMG_0001.CR2"), photo_in(lib, "IMG_0001.JPG")
    assert write(raw, "A dog on a beach.", sidecar_name="stem").status == "written"
    outcome = write(jpg, "A dog on the beach.", sidecar_name="stem")
    assert outcome.status == "skipped" and "belongs to the RAW" in outcome.message
    assert outcome.code is OutcomeCode.SIDECAR_TAKEN
    assert sorted(p.name for p in lib.iterdir()) == ["IMG_0001.CR2", "IMG_0001.JPG", "IMG_0001.xmp"]
    assert read_caption(raw) == "A dog on a beach."
    assert read_caption(jpg) is None  # the stem sidecar is not the JPEG's
    # Two RAWs (or no RAW) sharing a stem stay ambiguous: refused, as before.
    photo_in(lib, "IMG_0001.DNG")
    assert write(raw, sidecar_name="stem").status == "failed"
    # Full naming gives every file its own sidecar.
    assert write(jpg, sidecar_name="full").status == "written"
    assert read_caption(jpg) == "A dog runs through the grass."


def test_dry_run_writes_nothing(lib: Path) -> None:
    photo = photo_in(lib)
    assert write(photo, dry_run=True).status == "written"
    assert not (lib / "photo.jpg.xmp").exists()


def test_alt_text_rules() -> None:
    assert alt_text_for("An image of a dog on a beach.") == "A dog on a beach."
    assert alt_text_for("photo of  two  cats") == "Two cats"
    long = alt_text_for("A dog " + "and a very happy cat " * 30)
    assert len(long) <= 250 and long.endswith("…")


def test_recaption_updates_own_caption(lib: Path) -> None:
    photo = photo_in(lib)
    write(photo, "First caption.")
    assert write(photo, "First caption.").status == "unchanged"
    outcome = write(photo, "Second caption.")
    assert outcome.status == "written"
    doc = XmpDocument.load(lib / "photo.jpg.xmp")
    assert doc.get_default(NS_DC, "description") == "Second caption."
    assert read_provenance(doc).previous_description is None  # nothing was there before


def test_merge_keeps_every_other_field(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(RICH_SIDECAR, encoding="utf-8")
    outcome = write(photo)
    # Its German caption is a person's (in any language): kept, and nothing of ours put in
    # front of it; the alt text, which it has none of, is merged in.
    assert outcome.status == "kept_human"
    doc = XmpDocument.load(sidecar)
    assert doc.get_lang_alt(NS_DC, "description") == [("de-DE", "Ein Hund im Park")]
    assert doc.get_default(NS_IPTC, "AltTextAccessibility") == "A dog runs through the grass."
    text = sidecar.read_text(encoding="utf-8")
    for kept in (
        'xmp:Rating="5"',
        'crs:Exposure2012="+0.35"',
        'acme:Secret="keep me"',
        'xmlns:acme="http://example.com/acme/1.0/"',
        "<rdf:li>dog</rdf:li>",
        "<rdf:li>park</rdf:li>",
        'darktable:operation="colorin"',
        'darktable:params="gz48eJxjZBgFo2AU0AsAAANwAAE="',
        'darktable:history_end="2"',
        "<rdf:li>two</rdf:li>",
        "<!-- edited by hand: keep the darktable history -->",  # comments and PIs survive
        '<?acme-sync revision="7"?>',
    ):
        assert kept in text
    # ... also outside the root element, each on its side of it, inside the one packet
    assert text.index("<!-- exported by acme 2.1 -->") < text.index("<x:xmpmeta")
    assert text.index("</x:xmpmeta>") < text.index("<!-- acme checksum 1f2e3d -->")
    assert text.count("<?xpacket") == 2 and text.rstrip().endswith('<?xpacket end="w"?>')
    assert not read_provenance(doc).created_sidecar


@needs_exiftool
def test_merge_seen_by_exiftool(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(RICH_NO_CAPTION, encoding="utf-8")
    before = exiftool_json(sidecar, "-XMP:all", "-struct")
    warnings_before = exiftool_warnings(sidecar)
    write(photo)
    after = exiftool_json(sidecar, "-XMP:all", "-struct")
    assert after["Description"] == "A dog runs through the grass."
    assert after["AltTextAccessibility"] == "A dog runs through the grass."
    for key, value in before.items():
        if key not in ("SourceFile", "Description"):
            assert after[key] == value, key
    assert exiftool_warnings(sidecar) <= warnings_before


def test_human_description_kept_alt_text_added(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(HUMAN_SIDECAR, encoding="utf-8")
    outcome = write(photo)
    assert (outcome.status, outcome.message) == ("kept_human", "kept human caption")
    doc = XmpDocument.load(sidecar)
    assert doc.get_default(NS_DC, "description") == "Grandma's 80th birthday\n"
    assert doc.get_text("http://ns.adobe.com/xap/1.0/", "Rating") == "3"
    assert doc.get_default(
        "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/", "AltTextAccessibility"
    ) == ("A dog runs through the grass.")
    # A second run changes nothing more.
    mtime = sidecar.stat().st_mtime_ns
    assert write(photo).status == "kept_human"
    assert sidecar.stat().st_mtime_ns == mtime


def test_overwrite_human_records_previous(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(HUMAN_SIDECAR, encoding="utf-8")
    assert write(photo, overwrite_human=True).status == "written"
    doc = XmpDocument.load(sidecar)
    assert doc.get_default(NS_DC, "description") == "A dog runs through the grass."
    assert read_provenance(doc).previous_description == "Grandma's 80th birthday\n"


def test_caption_edited_by_a_person_is_then_kept(lib: Path) -> None:
    photo = photo_in(lib)
    write(photo, "First caption.")
    sidecar = lib / "photo.jpg.xmp"
    doc = XmpDocument.load(sidecar)
    doc.set_default(NS_DC, "description", "My dog Rex.")
    sidecar.write_bytes(doc.serialize())
    assert write(photo, "Second caption.").status == "kept_human"
    assert XmpDocument.load(sidecar).get_default(NS_DC, "description") == "My dog Rex."


def test_attribute_form_description(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:description="Old"/>'
        "</rdf:RDF></x:xmpmeta>",
        encoding="utf-8",
    )
    assert write(photo).status == "kept_human"
    assert write(photo, overwrite_human=True).status == "written"
    doc = XmpDocument.load(sidecar)
    assert doc.get_lang_alt(NS_DC, "description") == [
        ("x-default", "A dog runs through the grass.")
    ]
    assert read_provenance(doc).previous_description == "Old"


def test_a_person_s_text_about_a_camera_is_still_theirs(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(
        HUMAN_SIDECAR.replace("Grandma's 80th birthday\n", "Sony DSC club outing"), "utf-8"
    )
    assert write(photo).status == "kept_human"
    assert XmpDocument.load(sidecar).get_default(NS_DC, "description") == "Sony DSC club outing"


def test_sidecar_with_capital_extension_is_the_photo_s(lib: Path) -> None:
    photo = photo_in(lib)
    (lib / "photo.jpg.XMP").write_text(HUMAN_SIDECAR, encoding="utf-8")
    assert write(photo).status == "kept_human"
    assert not (lib / "photo.jpg.xmp").exists()  # no second sidecar beside the person's
    assert write(photo, overwrite_human=True).status == "written"
    doc = XmpDocument.load(lib / "photo.jpg.XMP")
    assert doc.get_default(NS_DC, "description") == "A dog runs through the grass."
    # The stem form in capitals (photo.XMP) holds a person's caption just the same.
    other = photo_in(lib, "other.jpg")
    (lib / "other.XMP").write_text(HUMAN_SIDECAR, encoding="utf-8")
    assert write(other).status == "kept_human"


def test_human_caption_in_other_naming_form_is_respected(lib: Path) -> None:
    photo = photo_in(lib)
    (lib / "photo.xmp").write_text(HUMAN_SIDECAR, encoding="utf-8")  # Lightroom's sidecar
    assert write(photo).status == "kept_human"
    doc = XmpDocument.load(lib / "photo.jpg.xmp")
    assert doc.get_default(NS_DC, "description") is None


def _assert_untouched(sidecar: Path, before: bytes, mtime: int) -> None:
    assert sidecar.read_bytes() == before
    assert sidecar.stat().st_mtime_ns == mtime
    assert [p.name for p in sidecar.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF", "malformed XML"),
        (BILLION_LAUGHS, "unsafe XML refused"),
        (EXTERNAL_ENTITY, "unsafe XML refused"),
        ("<html><body>not xmp</body></html>", "not an XMP sidecar"),
    ],
)
def test_bad_sidecar_fails_and_is_untouched(lib: Path, content: str, reason: str) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(content, encoding="utf-8")
    before, mtime = sidecar.read_bytes(), sidecar.stat().st_mtime_ns
    outcome = write(photo)
    assert outcome.status == "failed"
    assert reason in outcome.message and "\n" not in outcome.message
    _assert_untouched(sidecar, before, mtime)


def test_huge_sidecar_refused(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    with open(sidecar, "wb") as fh:
        fh.write(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>")
        fh.write(b" " * (50 * 1024 * 1024))
        fh.write(b"</x:xmpmeta>")
    mtime = sidecar.stat().st_mtime_ns
    outcome = write(photo)
    assert outcome.status == "failed" and "too large (50 MB > 10 MB)" in outcome.message
    assert sidecar.stat().st_size > 50 * 1024 * 1024
    assert sidecar.stat().st_mtime_ns == mtime


def test_sidecar_stamp_changes_with_any_sidecar_of_the_photo(lib: Path) -> None:
    # What a re-run compares to notice an edit made in another app, without parsing anything.
    photo = photo_in(lib, "IMG_1.JPG")
    assert sidecar_stamp(photo) == ""
    write(photo)
    written = sidecar_stamp(photo)
    assert written.startswith("IMG_1.JPG.xmp:") and sidecar_stamp(photo) == written
    sidecar = lib / "IMG_1.JPG.xmp"
    stat = sidecar.stat()
    sidecar.write_bytes(sidecar.read_bytes().replace(b"A dog", b"A cat"))  # same size
    os.utime(sidecar, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    edited = sidecar_stamp(photo)
    assert edited not in ("", written)
    (lib / "IMG_1.XMP").write_bytes(b"<x:xmpmeta/>")  # Lightroom's name, in capitals
    assert sidecar_stamp(photo).startswith(edited + "/IMG_1.XMP:12:")
    (lib / "IMG_1.xmp").write_bytes(b"<x:xmpmeta/>")  # hides the capitalised one, as in use
    assert sidecar_stamp(photo).startswith(edited + "/IMG_1.xmp:12:")
    sidecar.unlink()
    assert sidecar_stamp(photo).startswith("IMG_1.xmp:12:")


def test_sidecar_path_is_a_folder(lib: Path) -> None:
    photo = photo_in(lib)
    (lib / "photo.jpg.xmp").mkdir()
    outcome = write(photo)
    assert outcome.status == "failed" and "folder" in outcome.message
    assert (lib / "photo.jpg.xmp").is_dir()


def test_read_only_sidecar(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = photo_in(lib)
    write(photo, "First caption.")
    sidecar = lib / "photo.jpg.xmp"
    before = sidecar.read_bytes()
    sidecar.chmod(0o444)
    if os.access(sidecar, os.W_OK):  # root: emulate what an ordinary user gets
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: Path(p) != sidecar and real(p, m))
    outcome = write(photo, "Second caption.")
    assert outcome.status == "failed" and "read-only" in outcome.message
    assert sidecar.read_bytes() == before


def test_prefixes_and_namespaces_survive(lib: Path) -> None:
    photo = photo_in(lib)
    sidecar = lib / "photo.jpg.xmp"
    sidecar.write_text(RICH_SIDECAR, encoding="utf-8")
    write(photo)
    text = sidecar.read_text(encoding="utf-8")
    assert "ns0:" not in text and "ns1:" not in text
    assert 'xmlns:photocap="https://github.com/photocap/ns/1.0/"' in text
    assert text.startswith('<?xpacket begin="\ufeff"')
    XmpDocument.parse(text.encode())  # re-parses


@needs_exiftool
def test_exiftool_reads_new_sidecar(lib: Path) -> None:
    photo = photo_in(lib)
    write(photo, 'Ein Café in Köln, with "quotes" & <brackets>.')
    sidecar = lib / "photo.jpg.xmp"
    data = exiftool_json(
        sidecar, "-XMP-dc:Description", "-XMP-iptcCore:AltTextAccessibility", "-XMP-photocap:all"
    )
    assert data["Description"] == 'Ein Café in Köln, with "quotes" & <brackets>.'
    assert data["AltTextAccessibility"] == data["Description"]
    assert data["CaptionModel"] == "photocap-test-1"
    assert not [w for w in exiftool_warnings(sidecar) if "Warning" in w]


@needs_exiv2
def test_exiv2_reads_new_sidecar(lib: Path) -> None:
    photo = photo_in(lib)
    write(photo)
    out = exiv2(lib / "photo.jpg.xmp", "-px")
    assert (
        'Xmp.dc.description                           LangAlt     1  lang="x-default" A dog' in out
    )
    assert "Xmp.iptc.AltTextAccessibility" in out
    assert "Xmp.photocap.captionModel" in out


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "HEIC"])
def test_a_persons_caption_inside_other_formats_is_kept(tmp_path: Path, fmt: str) -> None:
    # Not only JPEG: a PNG's iTXt XMP, a TIFF's ImageDescription (a scan a person labelled), a
    # HEIC's XMP. The sidecar must not hide them from apps that read sidecars first.
    from metadata_helpers import xmp_packet
    from PIL import Image, PngImagePlugin

    img = Image.new("RGB", (32, 24), "teal")
    photo = tmp_path / f"photo.{fmt.lower()}"
    exif = Image.Exif()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp_packet("Oma in Kassel").decode(), zip=False)
        img.save(photo, "PNG", pnginfo=info)
    elif fmt == "TIFF":
        exif[0x010E] = "Oma in Kassel"
        img.save(photo, "TIFF", exif=exif)
    else:
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
        img.save(photo, "HEIF", xmp=xmp_packet("Oma in Kassel"))
    outcome = XmpWriter(WriteOptions()).write(record(photo, "A dog runs."))
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Oma in Kassel")
    # A device's text in the same place is no caption: the sidecar gets ours.
    other = tmp_path / "plain.tiff"
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA"
    img.save(other, "TIFF", exif=exif)
    assert XmpWriter(WriteOptions()).write(record(other, "A dog runs.")).status == "written"


def test_a_persons_caption_past_a_large_jpeg_header_is_found(tmp_path: Path) -> None:
    # Only the head of a JPEG is read for the check, unless its metadata runs past it.
    from metadata_helpers import app_segment, insert_after_app, make_jpeg, xmp_packet, xmp_segment

    from photocap.metadata.jpeg import JPEG_HEAD_BYTES

    photo = make_jpeg(tmp_path / "photo.jpg")
    filler = app_segment(0xEF, b"\0" * 65000) * (JPEG_HEAD_BYTES // 65000 + 1)
    data = insert_after_app(photo.read_bytes(), filler + xmp_segment(xmp_packet("Oma in Kassel")))
    photo.write_bytes(data)
    assert data.index(b"Oma in Kassel") > JPEG_HEAD_BYTES
    assert find_human_caption(photo) == "Oma in Kassel"


def test_a_persons_caption_inside_a_raw_file_is_respected(tmp_path: Path) -> None:
    # Lightroom writes a DNG's caption into the file's XMP packet (TIFF tag 700), often
    # appended at the end of the file, and never into a sidecar. The sidecar photocap writes
    # must not hide it from apps that read sidecars first (darktable, digiKam).
    from metadata_helpers import xmp_packet
    from raw_helpers import make_dng

    packet = xmp_packet("Oma in Kassel")
    photo = make_dng(tmp_path / "IMG_0001.DNG", sensor=(256, 256), ifd0=[(700, 1, list(packet))])
    assert photo.read_bytes().index(b"Oma in Kassel") > 128 * 1024  # past IFD0's 8-byte pointer
    outcome = XmpWriter(WriteOptions()).write(record(photo, "A dog runs."))
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Oma in Kassel")
    # A person's caption in ImageDescription.
    nef = make_dng(tmp_path / "DSC_0001.NEF", ifd0=[(270, 2, "Grandpa's 80th")])
    data = nef.read_bytes()
    assert find_human_caption(nef) == "Grandpa's 80th"
    # A camera's own text there (its maker, a device default) is no caption: ours is written.
    for junk in ("Canon", "OLYMPUS DIGITAL CAMERA"):
        other = make_dng(tmp_path / f"{junk[:3]}.ORF", ifd0=[(270, 2, junk)])
        assert find_human_caption(other) is None
        assert XmpWriter(WriteOptions()).write(record(other, "A dog runs.")).status == "written"
    assert nef.read_bytes() == data  # read, never written


def test_ours_goes_when_a_persons_caption_comes_later_in_the_file(lib: Path) -> None:
    # photocap captioned first; later a person wrote a caption into the file (Lightroom). Ours,
    # still in the sidecar, would now hide theirs in apps that read the sidecar first.
    from metadata_helpers import insert_after_app, make_jpeg, xmp_packet, xmp_segment

    photo = make_jpeg(lib / "photo.jpg")
    assert write(photo).status == "written"
    photo.write_bytes(
        insert_after_app(photo.read_bytes(), xmp_segment(xmp_packet("Oma in Kassel")))
    )
    outcome = write(photo)
    assert (outcome.status, outcome.human_caption) == ("kept_human", "Oma in Kassel")
    doc = XmpDocument.load(lib / "photo.jpg.xmp")
    assert doc.get_default(NS_DC, "description") is None
    assert read_provenance(doc).description is None
    assert read_caption(photo) is None and find_human_caption(photo) == "Oma in Kassel"
    assert doc.get_default(NS_IPTC, "AltTextAccessibility") == alt_text_for(
        "A dog runs through the grass."
    )  # the alt text stays: it shows nowhere a caption does


def test_adopt_sidecar_moves_only_photocaps_own_full_form_sidecar(lib: Path) -> None:
    photo = lib / "IMG_1.jpg"
    photo.write_bytes(b"jpeg")
    XmpWriter(WriteOptions()).write(record(photo))
    (lib / "new").mkdir()
    moved = lib / "new" / "renamed.jpg"
    photo.rename(moved)
    # not while something is at the old path (a photo put back, or another one)
    (lib / "IMG_1.jpg").write_bytes(b"other")
    assert not adopt_sidecar(photo, moved, "full")
    (lib / "IMG_1.jpg").unlink()
    # into the form the writers use: here the stem form
    assert adopt_sidecar(photo, moved, "stem")
    assert not (lib / "IMG_1.jpg.xmp").exists()
    assert read_caption(moved) is not None and (lib / "new" / "renamed.xmp").is_file()
    # a stem-named sidecar may be a RAW's: it stays
    other = lib / "IMG_2.jpg"
    other.write_bytes(b"jpeg")
    XmpWriter(WriteOptions(sidecar_name="stem")).write(record(other))
    other.rename(lib / "new" / "IMG_2.jpg")
    assert not adopt_sidecar(other, lib / "new" / "IMG_2.jpg", "full")
    assert (lib / "IMG_2.xmp").is_file()


def test_a_new_sidecar_beside_a_stem_named_one_says_so(lib: Path) -> None:
    # Lightroom keeps a RAW's metadata in IMG_1.xmp and never reads IMG_1.CR2.xmp, the default
    # name: the caption is written there anyway (the naming contract), with a word on it.
    raw = lib / "IMG_1.CR2"
    raw.write_bytes(b"raw")
    (lib / "IMG_1.xmp").write_text(RICH_NO_CAPTION, encoding="utf-8")
    outcome = XmpWriter(WriteOptions()).write(record(raw))
    assert (outcome.status, outcome.message) == ("written", STEM_SIDECAR_BESIDE)
    assert outcome.code is OutcomeCode.STEM_SIDECAR_BESIDE
    assert (lib / "IMG_1.CR2.xmp").is_file()
    again = XmpWriter(WriteOptions()).write(record(raw, "A cat sleeps."))  # not news any more
    assert (again.status, again.message) == ("written", "")
    # --sidecar-name stem writes into Lightroom's, and has nothing to say
    (lib / "IMG_1.CR2.xmp").unlink()
    stem = XmpWriter(WriteOptions(sidecar_name="stem")).write(record(raw))
    assert (stem.status, stem.message) == ("written", "")
    assert XmpDocument.load(lib / "IMG_1.xmp").get_default(NS_DC, "description")
