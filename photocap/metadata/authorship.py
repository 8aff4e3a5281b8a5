"""Authorship: the one rule for "did a person write this caption?", and alt text.

photocap never writes over, hides or shadows a caption a person wrote, in any language and in
any place photo software reads one: a sidecar's ``dc:description``, EXIF ``ImageDescription``
and ``XPComment``, the file's embedded XMP, IPTC ``Caption-Abstract``. Every writer, and the
run for the index, ask this module, and only this module, whether a text is a person's
(:func:`written_by_person`; for alt text :func:`is_our_alt_text`):

* not blank and not a device's default text (:data:`CAMERA_DEFAULT_DESCRIPTIONS`: "OLYMPUS
  DIGITAL CAMERA", a Huawei shooting mode, ...; :func:`is_blank_description`);
* not what photocap itself recorded writing (its provenance), nor the caption being written;
* inside a file, not the camera's own make or model ("CASIO COMPUTER CO.,LTD.").

A caption in several languages is a person's in each: the texts are kept and joined by
:data:`LANGUAGE_SEPARATOR` for the index (:func:`human_description`,
:func:`human_caption_in_file_text`). :func:`find_human_caption` looks for one in the photo's
sidecars and inside the file. :func:`alt_text_for` turns a caption into IPTC alt text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path

from photocap.errors import WriteError
from photocap.metadata.edit import InFileText
from photocap.metadata.ifd import TAG_MAKE, TAG_MODEL, decode_ascii, read_tag
from photocap.metadata.provenance import Provenance, read_provenance
from photocap.metadata.sidecars import find_sidecars
from photocap.metadata.xmp import NS_DC, XmpDocument

# What cameras, phones and apps write into EXIF ImageDescription when nobody wrote a description
# (and what some photo tools then copy into XMP): not a caption, so photocap may replace it, and
# a photo holding one counts as uncaptioned. What it replaced is still recorded, so ``photocap
# revert`` puts it back. Every entry is a string seen in real files, not a guess (a too-eager
# list would treat a person's one-word caption as noise); besides the classic camera texts,
# most come from PhotoPrism's list of unwanted descriptions.
#
# The scene and shooting modes Huawei phones write there ("rhdr": rear HDR, "fbt": front
# beauty, ...).
# fmt: off
_HUAWEI_MODES = (
    "rhdr", "hdrpl", "oznorWO", "frontbhdp", "fbt", "rbt", "ptr", "fbthdr", "btr", "mon", "nor",
    "dav", "mde", "mde_soft", "edf", "btfmdn", "btf", "btfhdr", "frem", "oznor", "rpt", "burst",
    "sdr_HDRB", "cof", "qrf", "fshbty",
)
# fmt: on
CAMERA_DEFAULT_DESCRIPTIONS = frozenset(
    text.casefold()
    for text in (
        "OLYMPUS DIGITAL CAMERA",
        "SONY DSC",
        "KODAK Digital Still Camera",
        "MINOLTA DIGITAL CAMERA",
        "KONICA MINOLTA DIGITAL CAMERA",
        "SAMSUNG DIGITAL CAMERA",
        "DIGITAL CAMERA",
        "Exif_JPEG_PICTURE",  # many Android phones (Samsung, LG, ...)
        "SAMSUNG",
        "SAMSUNG CAMERA PICTURES",
        "<Digimax i5, Samsung #1>",
        "Scanner",  # KODAK Slide N Scan
        "default",
        "untitled",
        "DCIM",
        "binary comment",
        "charset=Ascii",
        "Created by Imlib",
        "DVC 10.1 HDMI",
        "iClarified",
        *_HUAWEI_MODES,
    )
)


# The pattern of most camera texts ("RICOH DIGITAL CAMERA", "NIKON DIGITAL CAMERA"), a folder
# path some cameras put there ("DCIM\100MEDIA"), and what exiftool-based tools write for a
# value they could not read.
_NON_CAPTION = re.compile(
    r"(?!(?:a|an|the|my|our|his|her|their) )(?:\S+ ){1,2}digital (?:still )?camera"
    r"|DCIM\\\S*|\(binary data.*|string with binary data.*",
    re.IGNORECASE,
)


def is_blank_description(text: str | None) -> bool:
    """True when no person wrote ``text``: none, only whitespace, or a device's default text."""
    if not text:
        return True
    text = " ".join(text.split())
    return text.casefold() in CAMERA_DEFAULT_DESCRIPTIONS or bool(_NON_CAPTION.fullmatch(text))


def written_by_person(
    text: str | None, ours: Collection[str | None] = (), device: Collection[str] = ()
) -> bool:
    """The rule: ``text`` is a person's caption unless it is blank or a device's default text,
    one of ``ours`` (what photocap wrote, or is writing), or, inside a file, the camera's own
    make or model (``device``, casefolded)."""
    if is_blank_description(text) or text in ours:
        return False
    return " ".join((text or "").split()).casefold() not in device


# Between the languages of a person's caption, as the index holds and search shows them.
LANGUAGE_SEPARATOR = " / "


def persons_texts(
    texts: Sequence[str | None], ours: Collection[str | None] = (), device: Collection[str] = ()
) -> str | None:
    """The texts of ``texts`` a person wrote, each once, in order, joined by
    :data:`LANGUAGE_SEPARATOR`; None when there is none."""
    theirs: list[str] = []
    for text in texts:
        if text is not None and text not in theirs and written_by_person(text, ours, device):
            theirs.append(text)
    return LANGUAGE_SEPARATOR.join(theirs) or None


def human_description(doc: XmpDocument | None, *ours: str | None) -> str | None:
    """The description a person wrote in ``doc``, in every language it has (``x-default``
    first, joined by :data:`LANGUAGE_SEPARATOR`, so that each is indexed and found); texts
    blank or one of ``ours`` (what photocap wrote) left out. photocap writes only
    ``x-default``, so a caption in ``en-US`` or ``de-DE`` alone is a person's as much as one in
    ``x-default``. None: no person's caption."""
    if doc is None:
        return None
    return persons_texts(doc.texts_by_language(NS_DC, "description"), ours)


def human_caption_in_file_text(
    text: InFileText, *ours: str | None, strict: bool = True
) -> str | None:
    """The first description in a file a person wrote (EXIF ImageDescription, then the
    embedded XMP in every language, then IPTC): not blank, none of ``ours``, not the camera's
    own name.

    A malformed embedded packet raises :class:`WriteError` (nobody can tell what it says), or
    with ``strict=False`` counts as holding none.
    """
    # A camera that writes its own name there ("CASIO COMPUTER CO.,LTD.", "SAMSUNG SM-G960F")
    make, model = (decode_ascii(read_tag(text.tiff, t)) or "" for t in (TAG_MAKE, TAG_MODEL))
    device = {" ".join(t.split()).casefold() for t in (make, model, f"{make} {model}") if t}
    if written_by_person(text.description, ours, device):
        return text.description
    try:
        packet = text.xmp()
    except WriteError:
        if strict:
            raise
        packet = None
    # Any language counts: photocap writes x-default only (en-US "Kids in the lake"); each
    # language a person wrote is kept, to be indexed and found.
    texts = packet.texts_by_language(NS_DC, "description") if packet else []
    theirs = persons_texts(texts, ours, device)
    if theirs:
        return theirs
    return text.iptc_caption if written_by_person(text.iptc_caption, ours, device) else None


def find_human_caption(photo: Path, caption: str = "") -> str | None:
    """A caption a person wrote for ``photo``, if any: in its sidecars (either naming form), or
    inside the file (:func:`human_caption_in_file_text`). Text photocap recorded writing, and
    ``caption`` itself, are not a person's. Unreadable sidecars are skipped, not judged.

    Apps that read sidecars first (digiKam, darktable, Immich) would show a sidecar caption of
    photocap's over a person's caption in the file; the index makes a person's searchable.
    """
    found, prov = human_caption_in_sidecars(photo)
    return found or _human_caption_in_file(photo, prov, caption)


def human_caption_in_sidecars(photo: Path) -> tuple[str | None, Provenance]:
    """(The first sidecar description of ``photo`` a person wrote, or None; what photocap
    recorded writing, gathered from its sidecars)."""
    prov = Provenance()
    found: str | None = None
    for sidecar in find_sidecars(photo):
        try:
            doc = XmpDocument.load(sidecar)
        except WriteError:
            continue
        mine = read_provenance(doc)
        prov.description = prov.description or mine.description
        prov.exif_description = prov.exif_description or mine.exif_description
        if found is None:
            found = human_description(doc, mine.description)
    return found, prov


def _human_caption_in_file(photo: Path, prov: Provenance, caption: str) -> str | None:
    """A description a person wrote inside the photo (EXIF, XMP, IPTC), if any: JPEG, WebP,
    TIFF, PNG, HEIC, AVIF. A file that cannot be read or parsed here is left to the decoder
    to report."""
    from photocap.metadata.infile import read_photo_text

    try:
        text = read_photo_text(photo)
        if text is None:
            return None
        ours = (prov.description, prov.exif_description, " ".join(caption.split()))
        return human_caption_in_file_text(text, *ours, strict=False)
    except WriteError:
        return None


MAX_ALT_TEXT = 250  # IPTC recommendation for AltTextAccessibility


_ALT_PREFIX = re.compile(
    r"^\s*(?:(?:an?|the)\s+)?(?:image|picture|photo(?:graph)?|close-?up|view)\s+(?:of|showing)\s+",
    re.IGNORECASE,
)


def is_blank_alt_text(text: str | None) -> bool:
    """No alt text: none, or only whitespace (anyone may write one there)."""
    return not (text and text.strip())


def is_our_alt_text(text: str | None, *ours: str | None) -> bool:
    """The alt text is photocap's: one of ``ours`` (what it recorded writing, or is writing).
    Any other alt text is a person's, kept unless ``--overwrite-human``."""
    return text is not None and text in ours


def alt_text_for(caption: str) -> str:
    """IPTC alt text from a caption: no "image of" prefix, one line, at most 250 characters."""
    text = " ".join(caption.split())
    text = _ALT_PREFIX.sub("", text, count=1)
    if text:
        text = text[0].upper() + text[1:]
    if len(text) > MAX_ALT_TEXT:
        cut = text[: MAX_ALT_TEXT - 1]
        if " " in cut[MAX_ALT_TEXT // 2 :]:
            cut = cut.rsplit(" ", 1)[0]
        text = cut.rstrip(" ,;:") + "…"
    return text
