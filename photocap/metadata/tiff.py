"""TIFF and DNG files: where a caption goes, and how it is put there losslessly.

A TIFF file (a scan) or a DNG (a camera RAW that is TIFF inside) is one TIFF block: its
caption is IFD0's ImageDescription and XPComment, its XMP packet IFD0's tag 700, its IPTC
record the IPTC-NAA tag or a Photoshop resource block.

* **Read texts**: :func:`read_texts` from the bytes; :func:`read_file_texts` from a file of
  hundreds of MB by seeking (also for the RAWs photocap never writes: NEF, CR2, ARW, ...).
* **Rebuild**: :func:`rebuild_tiff` / :func:`rebuild_dng` change IFD0 as an EXIF block is
  changed (:func:`photocap.metadata.ifd.set_ifd0_tags`: a new IFD0 appended, every page,
  strip and other IFD byte for byte), as Adobe's apps append a DNG's metadata.
* **Verify**: :func:`verify_tiff`: only IFD0's updated tags differ; every page decodes to the
  same pixels (a DNG: LibRaw reads the same sensor data and preview).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from photocap.errors import WriteError
from photocap.metadata.edit import FileEdit, InFileText, verify_same_frames
from photocap.metadata.ifd import (
    TAG_IMAGE_DESCRIPTION,
    TAG_MAKE,
    TAG_MODEL,
    TAG_XMP,
    TAG_XP_COMMENT,
    TYPE_BYTE,
    Tiff,
    read_tag,
    read_tiff_file_tags,
    set_ifd0_tags,
    verify_tags,
)
from photocap.metadata.iptc import tiff_iptc_caption, tiff_iptc_keywords
from photocap.metadata.jpeg import parse_jpeg
from photocap.metadata.xmp import XmpDocument, apply_xmp_edit, parse_packet, verify_xmp_edit

# A TIFF's IFD0 tags that can hold an IPTC record: IPTC-NAA (33723), then Photoshop's image
# resource block (34377); the order tiff_iptc_caption takes them in.
TIFF_IPTC_TAGS = (0x83BB, 0x8649)


def readable_tag(tiff: bytes, tag: int) -> bytes | None:
    """An IFD0 tag's value, or None when it is missing or cannot be read: a damaged IPTC
    record holds no caption anyone can read, so ours shadows none (as in a JPEG)."""
    try:
        return read_tag(tiff, tag, "TIFF")
    except WriteError:
        return None


# What a TIFF's IFD0 may say about its caption: ImageDescription, Make and Model (a camera's
# own name there is not a caption), XPComment, the XMP packet and the IPTC record.
_TIFF_TEXT_TAGS = {TAG_IMAGE_DESCRIPTION, TAG_MAKE, TAG_MODEL, TAG_XP_COMMENT, TAG_XMP,
                   *TIFF_IPTC_TAGS}  # fmt: skip


def read_file_texts(photo: Path, fmt: str) -> InFileText | None:
    """The texts in the IFD0 of a TIFF, or of a camera RAW that is TIFF inside (DNG, NEF, CR2,
    ARW, ORF, ...); None for a RAW that is not.

    Lightroom writes a DNG's or TIFF's caption into the file's XMP packet (tag 700), not a
    sidecar; a sidecar caption of photocap's would hide it in apps that read sidecars first.
    Only what is asked is read, by seeking: a scan or a RAW is tens or hundreds of MB
    (:func:`photocap.metadata.ifd.read_tiff_file_tags`).
    """
    with open(photo, "rb") as fh:
        values = read_tiff_file_tags(fh, _TIFF_TEXT_TAGS, optional=TIFF_IPTC_TAGS)
    if values is None:
        return None
    packet = values.pop(TAG_XMP, (0, None))[1]
    blocks = [values.pop(t, (0, None))[1] for t in TIFF_IPTC_TAGS]
    iptc, keywords = tiff_iptc_caption(*blocks), tiff_iptc_keywords(*blocks)
    # The texts as a small TIFF block of their own, which InFileText reads like any EXIF.
    texts = set_ifd0_tags(None, dict(values)) if values else None
    return InFileText(fmt, texts, packet, iptc, keywords)


def rebuild_tiff(data: bytes, edit: FileEdit, *, dng: bool = False) -> bytes:
    """The TIFF (or, ``dng``, DNG) ``data`` with ``edit`` applied to IFD0 (the XMP packet is its
    tag 700); verified in memory.

    A TIFF file is one TIFF block, so it is changed the way an EXIF block is: a new IFD0 (the
    old entries, copied verbatim, plus ours) is appended and the header points to it. The
    image data, every other IFD (further pages, EXIF, GPS; a DNG's sensor data and previews)
    and every value stay where they are, byte for byte. Adobe updates a DNG's metadata the
    same way, appending; Lightroom reads a DNG's caption from the file, never a sidecar.
    """
    updates = dict(edit.tags)
    if edit.xmp:
        packet = read_tag(data, TAG_XMP, "TIFF")
        doc = parse_packet(packet) if packet is not None else XmpDocument.new()
        apply_xmp_edit(doc, edit.xmp)
        drop = edit.drop_empty_xmp and doc.is_empty()
        updates[TAG_XMP] = None if drop else (TYPE_BYTE, doc.serialize())
    new = set_ifd0_tags(data, updates, "TIFF")
    verify_tiff(data, new, edit, updates, dng=dng)
    return new


def rebuild_dng(data: bytes, edit: FileEdit) -> bytes:
    """:func:`rebuild_tiff` of a DNG."""
    return rebuild_tiff(data, edit, dng=True)


def verify_tiff(
    old: bytes,
    new: bytes,
    edit: FileEdit,
    updates: dict[int, tuple[int, bytes] | None],
    *,
    dng: bool = False,
) -> None:
    """Raise WriteError unless ``new`` differs from ``old`` only in IFD0's ``updates``: the
    bytes before the old IFD0 (or all of them) unchanged, the other IFD0 entries and the next
    IFD the same, our texts read back, and every page decodes to the same pixels (a DNG: LibRaw
    reads the same sensor data and preview)."""
    before, after = Tiff(old, "TIFF"), Tiff(new, "TIFF")
    if old[:4] != new[:4]:
        raise WriteError("verification failed: TIFF header changed")
    # All old bytes are kept, or all before the old IFD0 (which was last: cut and rebuilt).
    if new[8 : len(old)] != old[8:] and new[8 : before.ifd0] != old[8 : before.ifd0]:
        raise WriteError("verification failed: TIFF data changed")
    old_entries, old_next = before.read_ifd(before.ifd0)
    new_entries, new_next = after.read_ifd(after.ifd0)
    if old_next != new_next or [e for e in old_entries if e.tag not in updates] != [
        e for e in new_entries if e.tag not in updates
    ]:
        raise WriteError("verification failed: other TIFF tags changed")
    verify_tags(old, new, updates)  # the XMP tag too: it reads back as serialised
    if edit.xmp:
        verify_xmp_edit(read_tag(old, TAG_XMP), read_tag(new, TAG_XMP), edit.xmp)
    if dng:  # Pillow decodes no sensor data, and often not the preview in IFD0 either
        verify_same_raw(old, new)
    else:
        verify_same_frames(old, new, "TIFF")


def verify_same_raw(old: bytes, new: bytes) -> None:
    """Raise WriteError unless LibRaw reads both files alike: the same sensor size, sensor
    data and embedded preview."""
    import numpy as np
    import rawpy

    def reading(data: bytes) -> tuple[object, ...]:
        with rawpy.imread(io.BytesIO(data)) as raw:
            # (H, W) uint16 samples, hashed in place (a copy only where the view has margins)
            sensor = hashlib.sha256(np.ascontiguousarray(raw.raw_image_visible).data).digest()
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                return raw.sizes, sensor, None
            preview = _preview_image(thumb.data)
            return raw.sizes, sensor, thumb.format, hashlib.sha256(preview).digest()

    try:
        before = reading(old)
    except Exception as err:  # a DNG LibRaw cannot read: a write could not be checked
        raise WriteError(f"LibRaw cannot read this DNG to check a write ({err})") from None
    try:
        after = reading(new)
    except Exception as err:  # any LibRaw error on the new file means it must not be installed
        raise WriteError(f"verification failed: the DNG does not read back ({err})") from None
    if after != before:
        raise WriteError("verification failed: the DNG's sensor data or preview changed")


def _preview_image(thumb: object) -> bytes:
    """What a RAW's preview shows, as LibRaw hands it out: a JPEG's coding segments and image
    data (not its APPn segments: LibRaw writes the RAW's EXIF, our caption too, into a
    preview without one), or a bitmap's samples."""
    if not isinstance(thumb, bytes):
        return bytes(thumb.tobytes())  # type: ignore[attr-defined]  # (H, W, 3) uint8
    try:
        segments, sos = parse_jpeg(thumb)
    except WriteError:  # a preview odd to our parser: its decoded pixels (slower)
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(thumb)) as img:
                return img.tobytes()
    kept = [thumb[seg.start : seg.end] for seg in segments if not 0xE0 <= seg.marker <= 0xEF]
    return b"".join(kept) + thumb[sos:]


def read_texts(data: bytes, fmt: str = "TIFF") -> InFileText:
    """The caption-bearing parts of a TIFF's or DNG's bytes: the file is one TIFF block; its
    XMP packet is IFD0's tag 700. Raises WriteError."""
    blocks = [readable_tag(data, t) for t in TIFF_IPTC_TAGS]
    iptc, keywords = tiff_iptc_caption(*blocks), tiff_iptc_keywords(*blocks)
    return InFileText(fmt, data, read_tag(data, TAG_XMP, "TIFF"), iptc, keywords)


def exif_span(data: bytes) -> tuple[int, int] | None:
    """A TIFF file is its TIFF block."""
    return 0, len(data)
