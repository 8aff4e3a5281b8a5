"""A person's caption in any language is a person's: kept, indexed, searchable, never hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from metadata_helpers import camera_exif, make_jpeg, record, xmp_packet, xmp_segment
from test_exif import with_segment

from photocap.metadata.authorship import find_human_caption
from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.infile import read_exif_caption
from photocap.metadata.sidecar_writer import XmpWriter
from photocap.metadata.sidecars import sidecar_path
from photocap.metadata.xmp import NS_DC, XmpDocument
from photocap.writers import WriteOptions

CAPTION = "A dog runs through the grass."

# A sidecar as a tool that writes only real languages leaves it: no x-default.
LANGUAGES = """<dc:description><rdf:Alt><rdf:li xml:lang="en-US">Kids in the lake</rdf:li>
<rdf:li xml:lang="de-DE">Kinder im See</rdf:li></rdf:Alt></dc:description>"""


def sidecar_with(description: str) -> str:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/'
        f'elements/1.1/">{description}</rdf:Description></rdf:RDF></x:xmpmeta>'
    )


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return make_jpeg(tmp_path / "photo.jpg", exif=camera_exif())


def test_other_languages_in_the_sidecar_are_a_persons_caption(photo: Path) -> None:
    sidecar = sidecar_path(photo)
    sidecar.write_text(sidecar_with(LANGUAGES), encoding="utf-8")
    assert find_human_caption(photo, CAPTION) == "Kids in the lake / Kinder im See"
    outcome = XmpWriter(WriteOptions()).write(record(photo, CAPTION))
    assert outcome.status == "kept_human"
    assert outcome.human_caption == "Kids in the lake / Kinder im See"
    doc = XmpDocument.load(sidecar)
    assert doc.get_default(NS_DC, "description") is None  # nothing of ours in front of theirs
    assert doc.texts_by_language(NS_DC, "description") == ["Kids in the lake", "Kinder im See"]
    # and not in the file either, where apps reading the file would show ours instead
    exif = ExifWriter(WriteOptions()).write(record(photo, CAPTION))
    assert exif.status == "kept_human"
    assert read_exif_caption(photo)[0] != CAPTION


def test_other_languages_in_the_photo_are_a_persons_caption(photo: Path) -> None:
    packet = xmp_packet(extra=LANGUAGES.replace("Kids", "Children"))
    with_segment(photo, xmp_segment(packet))
    assert find_human_caption(photo, CAPTION) == "Children in the lake / Kinder im See"
    assert ExifWriter(WriteOptions()).write(record(photo, CAPTION)).status == "kept_human"
    assert read_exif_caption(photo)[0] != CAPTION


def test_a_language_added_after_ours_takes_ours_out(photo: Path) -> None:
    writer = XmpWriter(WriteOptions())
    assert writer.write(record(photo, CAPTION)).status == "written"
    sidecar = sidecar_path(photo)
    text = sidecar.read_text(encoding="utf-8")  # a person adds a German caption in digiKam
    at = text.index("</rdf:Alt>", text.index("<dc:description"))
    text = text[:at] + '<rdf:li xml:lang="de-DE">Ein Hund im Gras</rdf:li>' + text[at:]
    sidecar.write_text(text, encoding="utf-8")
    outcome = writer.write(record(photo, CAPTION))
    assert outcome.status == "kept_human"
    doc = XmpDocument.load(sidecar)
    assert doc.texts_by_language(NS_DC, "description") == ["Ein Hund im Gras"]


def test_a_persons_caption_in_another_language_is_searchable(
    tmp_path: Path, model_file: Path
) -> None:
    from typer.testing import CliRunner

    from photocap.cli import app

    lib = tmp_path / "lib"
    lib.mkdir()
    photo = make_jpeg(lib / "photo.jpg")
    sidecar_path(photo).write_text(sidecar_with(LANGUAGES), encoding="utf-8")
    db = tmp_path / "index.db"
    runner = CliRunner()
    args = ["--db", str(db), "--model", str(model_file), "--workers", "0"]
    result = runner.invoke(app, ["caption", str(lib), "--write", "xmp,index", *args])
    assert result.exit_code == 0, result.output
    for words in (["kids", "lake"], ["kinder", "see"]):  # every language is found
        found = runner.invoke(app, ["search", *words, "--db", str(db), "--json"])
        assert found.exit_code == 0, found.output
        assert str(photo) in found.output and "Kids in the lake" in found.output
