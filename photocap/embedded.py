"""Captions embedded in a photo file beside EXIF: the XMP packet and the IPTC caption.

A JPEG can hold a caption in three places, and photo software reads different ones: EXIF
``ImageDescription`` (written by :mod:`photocap.exif`), ``dc:description`` in the XMP packet
embedded in an APP1 segment (Lightroom, digiKam), and IPTC ``Caption-Abstract`` in a Photoshop
APP13 segment (older tools). The Metadata Working Group's rule, which exiftool follows, is that
a writer keeps them in step and a reader takes EXIF first. So ``--write exif`` writes the
caption to EXIF *and* to the embedded XMP packet (this module builds the packet's segment),
and a caption a person wrote in *any* of the three counts as human: unless told to
(``--overwrite-human``), photocap writes over none of them, and no sidecar or EXIF caption of
photocap's shadows it. IPTC is only read: photocap never writes it (an existing IPTC block
keeps its digest valid that way; MWG readers take EXIF before IPTC in any case).

A WebP's XMP lives in an ``XMP `` chunk (see :func:`photocap.exif.rebuild_webp`), a PNG's in
an ``iTXt`` chunk beside its ``eXIf`` chunk (:func:`photocap.exif.rebuild_png`). A TIFF (a scan,
or a camera RAW that is TIFF inside) keeps its IPTC record in IFD0: the IPTC-NAA tag, or a
Photoshop image resource block like a JPEG's APP13.

:func:`read_photo_text` gathers what a file says in all these places (:class:`InFileText`):
for the exif writer's plan, and for the look for a person's caption
(:func:`photocap.xmp.find_human_caption`), also in TIFF, PNG, HEIC and AVIF files and RAWs.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from photocap.container import (
    APP1,
    EXIF_HEADER,
    MAX_PHOTO_BYTES,
    TAG_IMAGE_DESCRIPTION,
    TAG_MAKE,
    TAG_MODEL,
    TAG_XMP,
    TAG_XP_COMMENT,
    Segment,
    decode_ascii,
    decode_xp,
    detect_file_format,
    detect_format,
    exif_tiff,
    parse_jpeg,
    parse_png,
    parse_webp,
    png_texts,
    read_png_file_chunks,
    read_tag,
    read_tiff_file_tags,
    set_ifd0_tags,
    webp_exif_tiff,
)
from photocap.errors import WriteError
from photocap.safeio import read_capped
from photocap.writers import is_blank_description
from photocap.xmp import LANGUAGE_SEPARATOR, NS_DC, XmpDocument

APP13 = 0xED
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"  # standard XMP APP1 (XMP spec part 3)
# Extended XMP parts (APP1 "http://ns.adobe.com/xmp/extension/") are other segments to us:
# copied byte for byte; their GUID stays in the packet's xmpNote:HasExtendedXMP.
PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
# A segment's length field counts itself (2 bytes) and the header: the rest is the packet.
MAX_XMP_PACKET = 0xFFFF - 2 - len(XMP_HEADER)
IPTC_RESOURCE = 0x0404  # the IPTC-NAA record in a Photoshop image resource block
IPTC_CAPTION = (2, 120)  # IIM record 2, dataset 120: Caption-Abstract
# A TIFF's IFD0 tags that can hold an IPTC record: IPTC-NAA (33723), then Photoshop's image
# resource block (34377); the order tiff_iptc_caption takes them in.
_TIFF_IPTC_TAGS = (0x83BB, 0x8649)


def is_xmp_segment(data: bytes, seg: Segment) -> bool:
    """True for the standard XMP APP1 segment (not an Extended XMP part)."""
    header = data[seg.start + 4 : seg.start + 4 + len(XMP_HEADER)]
    return seg.marker == APP1 and header == XMP_HEADER


def xmp_segment(data: bytes, segments: Sequence[Segment]) -> tuple[int | None, bytes | None]:
    """(index of the JPEG's standard XMP segment, its packet) or (None, None).

    Two standard packets are against the XMP spec, and which one a reader takes is anyone's
    guess, so such a file raises :class:`WriteError` rather than being merged.
    """
    found = [i for i, seg in enumerate(segments) if is_xmp_segment(data, seg)]
    if len(found) > 1:
        raise WriteError("the photo holds two XMP packets; not written")
    if not found:
        return None, None
    seg = segments[found[0]]
    return found[0], data[seg.start + 4 + len(XMP_HEADER) : seg.end]


def parse_packet(packet: bytes) -> XmpDocument:
    """The embedded packet as a document; a malformed one raises :class:`WriteError`.

    A packet is XML padded with whitespace, sometimes NUL-terminated by its writer.
    """
    return XmpDocument.parse(packet.rstrip(b"\x00 \t\r\n"), "the photo's embedded XMP")


def xmp_app1(doc: XmpDocument) -> bytes:
    """The standard XMP APP1 segment for ``doc``; over 64 KB raises :class:`WriteError`."""
    packet = doc.serialize()
    if len(packet) > MAX_XMP_PACKET:
        raise WriteError(
            f"embedded XMP would exceed 64 KB ({len(packet)} bytes; Extended XMP is not "
            "written); not written"
        )
    return b"\xff\xe1" + struct.pack(">H", 2 + len(XMP_HEADER) + len(packet)) + XMP_HEADER + packet


def iptc_caption(data: bytes, segments: Sequence[Segment]) -> str | None:
    """IPTC ``Caption-Abstract`` of a JPEG (Photoshop APP13), or None; damage reads as None."""
    irb = b"".join(
        data[seg.start + 4 + len(PHOTOSHOP_HEADER) : seg.end]
        for seg in segments
        if seg.marker == APP13
        and data[seg.start + 4 : seg.start + 4 + len(PHOTOSHOP_HEADER)] == PHOTOSHOP_HEADER
    )
    return _iim_caption(_image_resource(irb, IPTC_RESOURCE))


def tiff_iptc_caption(iptc_naa: bytes | None, photoshop: bytes | None) -> str | None:
    """IPTC ``Caption-Abstract`` of a TIFF, from IFD0's IPTC-NAA tag (the IIM record itself;
    Photoshop types it LONG, but its bytes are the record's, in order) or else from its
    Photoshop image resource block; None when neither holds one. Damage reads as None."""
    return _iim_caption(iptc_naa) or _iim_caption(_image_resource(photoshop or b"", IPTC_RESOURCE))


def _iim_caption(record: bytes | None) -> str | None:
    """The Caption-Abstract of an IPTC-IIM record, or None.

    IIM text is UTF-8 when the record says so (1:90) and in practice Latin-1 otherwise.
    """
    raw = None if record is None else _iim_dataset(record, IPTC_CAPTION)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _image_resource(irb: bytes, wanted: int) -> bytes | None:
    """The data of resource ``wanted`` in a Photoshop image resource block."""
    pos = 0
    while pos + 12 <= len(irb) and irb[pos : pos + 4] == b"8BIM":
        (rid,) = struct.unpack(">H", irb[pos + 4 : pos + 6])
        name_len = irb[pos + 6]
        pos += 6 + ((name_len + 2) & ~1)  # Pascal name (length byte included), padded to even
        if pos + 4 > len(irb):
            return None
        (size,) = struct.unpack(">I", irb[pos : pos + 4])
        pos += 4
        if pos + size > len(irb):
            return None
        if rid == wanted:
            return irb[pos : pos + size]
        pos += size + (size & 1)
    return None


def _iim_dataset(record: bytes, wanted: tuple[int, int]) -> bytes | None:
    """The first dataset (record, number) of an IPTC-IIM stream."""
    pos = 0
    while pos + 5 <= len(record) and record[pos] == 0x1C:
        number = (record[pos + 1], record[pos + 2])
        (size,) = struct.unpack(">H", record[pos + 3 : pos + 5])
        pos += 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes hold the length
            width = size & 0x7FFF
            if width > 4 or pos + width > len(record):
                return None
            size = int.from_bytes(record[pos : pos + width], "big")
            pos += width
        if pos + size > len(record):
            return None
        if number == wanted:
            return record[pos : pos + size]
        pos += size
    return None


def xmp_description(doc: XmpDocument | None) -> str | None:
    """The x-default ``dc:description`` of an embedded packet, or None."""
    return None if doc is None else doc.get_default(NS_DC, "description")


# --------------------------------------------------------------------------- what a file says


@dataclass
class InFileText:
    """What a photo file holds where a caption can be: the input of a rewrite's plan (JPEG,
    WebP, TIFF, PNG), and of the look for a person's caption (those, RAWs and
    :data:`PILLOW_TEXT_FORMATS`)."""

    format: str  # "JPEG", "WebP", "TIFF", "PNG", "DNG", "RAW" or one of PILLOW_TEXT_FORMATS
    tiff: bytes | None  # the EXIF TIFF block
    packet: bytes | None  # the embedded XMP packet (JPEG APP1, WebP "XMP ", PNG iTXt, ...)
    iptc_caption: str | None  # IPTC Caption-Abstract (JPEG, TIFF and TIFF-based RAW)

    @property
    def description(self) -> str | None:
        """EXIF ImageDescription."""
        return decode_ascii(read_tag(self.tiff, TAG_IMAGE_DESCRIPTION))

    @property
    def comment(self) -> str | None:
        """EXIF XPComment."""
        return decode_xp(read_tag(self.tiff, TAG_XP_COMMENT))

    def xmp(self) -> XmpDocument | None:
        """The embedded packet, parsed; a malformed one raises :class:`WriteError`."""
        return None if self.packet is None else parse_packet(self.packet)

    def human_caption(self, *ours: str | None, strict: bool = True) -> str | None:
        """The first description in the file a person wrote: not blank, none of ``ours``.

        A malformed embedded packet raises :class:`WriteError` (nobody can tell what it
        says), or with ``strict=False`` counts as holding none.
        """

        # A camera that writes its own name there ("CASIO COMPUTER CO.,LTD.", "SAMSUNG SM-G960F")
        make, model = (decode_ascii(read_tag(self.tiff, t)) or "" for t in (TAG_MAKE, TAG_MODEL))
        device = {" ".join(t.split()).casefold() for t in (make, model, f"{make} {model}") if t}

        def human(text: str | None) -> bool:
            if is_blank_description(text) or text in ours:
                return False
            return " ".join((text or "").split()).casefold() not in device

        if human(self.description):
            return self.description
        try:
            packet = self.xmp()
        except WriteError:
            if strict:
                raise
            packet = None
        # Any language counts: photocap writes x-default only (en-US "Kids in the lake"); each
        # language a person wrote is kept, to be indexed and found.
        texts = packet.texts_by_language(NS_DC, "description") if packet else []
        theirs = [t for i, t in enumerate(texts) if human(t) and t not in texts[:i]]
        if theirs:
            return LANGUAGE_SEPARATOR.join(theirs)
        return self.iptc_caption if human(self.iptc_caption) else None


def read_in_file_text(data: bytes, name: str | Path | None = None) -> InFileText:
    """The caption-bearing parts of a JPEG's, WebP's, TIFF's, PNG's or (by its ``name``) a
    DNG's bytes. Raises WriteError."""
    fmt = detect_format(data, name)
    if fmt in ("TIFF", "DNG"):  # the file is one TIFF block; its XMP packet is IFD0's tag 700
        iptc = tiff_iptc_caption(*(_readable_tag(data, t) for t in _TIFF_IPTC_TAGS))
        return InFileText(fmt, data, read_tag(data, TAG_XMP, "TIFF"), iptc)
    if fmt == "PNG":  # its EXIF is an eXIf chunk, its XMP packet an iTXt chunk
        pngs = parse_png(data)[0]
        return InFileText("PNG", *png_texts([(c.type, c.payload(data)) for c in pngs]), None)
    if fmt == "WebP":
        chunks, _ = parse_webp(data)
        xmp = next((c.payload(data) for c in chunks if c.fourcc == b"XMP "), None)
        return InFileText("WebP", webp_exif_tiff(data, chunks)[1], xmp, None)
    segments, _ = parse_jpeg(data)
    tiff = exif_tiff(data, segments)[1]
    return InFileText("JPEG", tiff, xmp_segment(data, segments)[1], iptc_caption(data, segments))


def _readable_tag(tiff: bytes, tag: int) -> bytes | None:
    """An IFD0 tag's value, or None when it is missing or cannot be read: a damaged IPTC
    record holds no caption anyone can read, so ours shadows none (as in a JPEG)."""
    try:
        return read_tag(tiff, tag, "TIFF")
    except WriteError:
        return None


JPEG_HEAD_BYTES = 256 * 1024  # where a JPEG's metadata segments end, nearly always
# Formats whose own captions (EXIF ImageDescription, XMP) Pillow reads, for the human check;
# photocap writes none of them (their caption goes to the sidecar).
PILLOW_TEXT_FORMATS = ("HEIC", "AVIF")


def read_photo_text(photo: Path) -> InFileText | None:
    """The captions a photo file holds, for JPEG, WebP, TIFF, PNG, :data:`PILLOW_TEXT_FORMATS`
    and camera RAW files that are TIFF inside; None for other formats (CR3, RAF, GIF, ...). Raises
    WriteError when the file cannot be read."""
    try:
        fmt = detect_file_format(photo)  # its first bytes: a 50 MB RAW is not read for nothing
        if fmt in ("TIFF", "DNG", "RAW"):
            return _read_tiff_text(photo, fmt)
        if fmt == "PNG":  # its text chunks, by seeking past the image data
            with open(photo, "rb") as fh:
                return InFileText("PNG", *png_texts(read_png_file_chunks(fh)), None)
    except OSError as err:
        raise WriteError(f"cannot read photo: {err.strerror}") from None
    if fmt not in ("JPEG", "WebP", *PILLOW_TEXT_FORMATS):
        return None
    if fmt == "JPEG":
        # Its metadata segments come before the image data: the head of the file is enough,
        # unless they run past it (a big ICC profile, say).
        try:
            with open(photo, "rb") as fh:
                return read_in_file_text(fh.read(JPEG_HEAD_BYTES))
        except (WriteError, OSError):
            pass
    if fmt == "WebP":  # its EXIF and XMP chunks come after the image data
        return read_in_file_text(read_capped(photo, MAX_PHOTO_BYTES, "photo"))
    from PIL import Image

    from photocap.image import register_heif

    try:
        if fmt in ("HEIC", "AVIF"):
            register_heif("HEIF" if fmt == "HEIC" else fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a large photo's bomb warning: headers only here
            with Image.open(photo) as img:  # reads the headers, not the pixels
                exif = img.getexif()
                tiff = exif.tobytes()[len(EXIF_HEADER) :] if len(exif) else None
                packet = img.info.get("xmp") or getattr(img, "tag_v2", {}).get(700)
    except Exception as err:  # any reader error: the caller decides what an unreadable file means
        raise WriteError(f"cannot read the photo's metadata: {err}") from None
    if isinstance(packet, str):
        packet = packet.encode()
    return InFileText(fmt, tiff, packet if isinstance(packet, bytes) else None, None)


# What a TIFF's IFD0 may say about its caption: ImageDescription, Make and Model (a camera's
# own name there is not a caption), XPComment, the XMP packet and the IPTC record.
_TIFF_TEXT_TAGS = {TAG_IMAGE_DESCRIPTION, TAG_MAKE, TAG_MODEL, TAG_XP_COMMENT, TAG_XMP,
                   *_TIFF_IPTC_TAGS}  # fmt: skip


def _read_tiff_text(photo: Path, fmt: str) -> InFileText | None:
    """The texts in the IFD0 of a TIFF, or of a camera RAW that is TIFF inside (DNG, NEF, CR2,
    ARW, ORF, ...); None for a RAW that is not.

    Lightroom writes a DNG's or TIFF's caption into the file's XMP packet (tag 700), not a
    sidecar; a sidecar caption of photocap's would hide it in apps that read sidecars first.
    Only what is asked is read, by seeking: a scan or a RAW is tens or hundreds of MB
    (:func:`photocap.container.read_tiff_file_tags`).
    """
    with open(photo, "rb") as fh:
        values = read_tiff_file_tags(fh, _TIFF_TEXT_TAGS, optional=_TIFF_IPTC_TAGS)
    if values is None:
        return None
    packet = values.pop(TAG_XMP, (0, None))[1]
    iptc = tiff_iptc_caption(*(values.pop(t, (0, None))[1] for t in _TIFF_IPTC_TAGS))
    # The texts as a small TIFF block of their own, which InFileText reads like any EXIF.
    texts = set_ifd0_tags(None, dict(values)) if values else None
    return InFileText(fmt, texts, packet, iptc)
