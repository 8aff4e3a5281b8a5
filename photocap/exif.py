"""Captions inside JPEG, WebP, TIFF, PNG and DNG files, written losslessly.

``--write exif`` puts the caption in EXIF ``ImageDescription`` (UTF-8) and ``XPComment``
(UTF-16LE, the "Comments" field of Windows Explorer). It also goes into the file's embedded XMP
packet (``dc:description``, with the alt text in ``Iptc4xmpCore:AltTextAccessibility``),
merged into the packet the file has or in a new one after the EXIF block, so that software
reading either place shows the same caption (the Metadata Working Group's rule; see
:mod:`photocap.embedded`). A description a person wrote in EXIF, the XMP packet or IPTC is
kept. JPEG, WebP, TIFF, PNG and DNG are written in-file; every other format returns ``skipped``
(the caption stays in the sidecar; no other camera RAW is ever written: their makers' apps and
Lightroom keep a CR2's or NEF's metadata in a sidecar, but a DNG's inside it).

How the file stays intact:

* **Segment surgery, not re-encoding.** The JPEG is split into its marker segments up to SOS;
  only the Exif APP1 segment and the standard XMP APP1 segment are replaced (or inserted: Exif
  after SOI/JFIF APP0, XMP after Exif). Every other byte - JFIF APP0, Extended XMP, ICC APP2,
  IPTC APP13, COM, tables, the entropy-coded scan and anything after EOI - is copied byte for
  byte, so decoded pixels are identical. The XMP packet is merged, never replaced: every
  property, language and comment in it is kept, and it is checked to say the same as before
  apart from our two texts. (piexif.insert is not used: it drops JFIF APP0 and can add a
  second Exif block.) The extra images of a Multi-Picture file (after EOI) must still be where
  its index says, or nothing is written.
* **Chunk surgery for WebP.** A WebP file is a RIFF list of chunks; only the ``EXIF`` and
  ``XMP `` chunks are replaced or added (after the image data, EXIF then XMP, as the container
  spec orders them), and the ``VP8X`` header's EXIF and XMP flags set. A "simple" WebP (one
  ``VP8``/``VP8L`` chunk) gets the ``VP8X`` header the extended format requires, its canvas
  size read from the bitstream. Every other chunk is copied byte for byte.
* **TIFF: a new first IFD.** A TIFF file is one TIFF block, changed as an EXIF block is
  (below): its IFD0 entries plus ours (the XMP packet is tag 700) go into a new IFD0 appended at
  the end; pages, strips and other IFDs stay byte for byte, and every page must decode to the
  same pixels. A DNG is a TIFF and is written the same way (as Adobe's apps append its
  metadata); LibRaw must then read the same sensor data and preview from it.
* **PNG: chunk surgery.** Only the ``eXIf`` chunk (a TIFF block, changed as below) and the
  ``iTXt`` chunk of the XMP packet are replaced, or added before the image data; every other
  chunk and anything after ``IEND`` is copied byte for byte, and every frame of an animated PNG
  must decode to the same pixels.
* **No EXIF re-serialisation.** piexif's load/dump silently drops tags it does not know and
  moves maker notes, breaking their internal offsets. Instead the original TIFF block is kept
  byte for byte and a *new IFD0* (old entries plus ours) is appended at its end, with the header
  pointing to it. Every existing offset (Exif IFD, GPS, maker note, thumbnail) stays valid. On a
  re-caption, an IFD0 that photocap appended is replaced rather than stacked when nothing else
  points into it.
* **Verified before it replaces anything.** The new file is parsed again: our text is there,
  every other segment (chunk) and the image data are identical, exactly one EXIF block, piexif
  reads the same tags as before, Pillow opens and decodes it (WebP: to the same pixels). Only
  then does the atomic rename happen (see :mod:`photocap.safeio`); the photo's mtime and
  permissions are kept.

Provenance (what photocap wrote, what it replaced) lives in the photo's XMP sidecar, in the
photocap namespace, so a later run never overwrites a description a person wrote.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from photocap.container import (
    APP0,
    EXIF_HEADER,
    IN_FILE_FORMATS,
    MAX_PHOTO_BYTES,
    MAX_SEGMENT,
    NEW_IFD0_DEFAULTS,
    PNG_XMP_KEYWORD,
    SUB_IFD_TAGS,
    TAG_IMAGE_DESCRIPTION,
    TAG_XMP,
    TAG_XP_COMMENT,
    TYPE_BYTE,
    TYPE_SIZES,
    VP8X_ALPHA,
    VP8X_EXIF,
    VP8X_XMP,
    WEBP_BEFORE_EXIF,
    Entry,
    PngChunk,
    Segment,
    Tiff,
    detect_file_format,
    detect_format,
    encode_ascii,
    encode_xp,
    exif_tiff,
    mpf_images,
    parse_jpeg,
    parse_png,
    parse_webp,
    png_chunk,
    png_keyword,
    png_texts,
    png_xmp_payload,
    read_tag,
    set_ifd0_tags,
    webp_canvas,
    webp_exif_tiff,
)
from photocap.embedded import (
    InFileText,
    parse_packet,
    read_in_file_text,
    xmp_app1,
    xmp_description,
    xmp_segment,
)
from photocap.errors import SidecarTaken, WriteError
from photocap.patch import MAX_PATCH_BYTES, apply_patch, decode_patch, diff_bytes, encode_patch
from photocap.safeio import (
    atomic_write,
    check_replaceable,
    check_writable,
    describe_os_error,
    read_capped,
)
from photocap.writers import (
    CaptionRecord,
    WriteOptions,
    WriteOutcome,
    is_blank_description,
    register_writer,
)
from photocap.xmp import (
    NS_DC,
    NS_IPTC,
    Provenance,
    XmpDocument,
    alt_text_for,
    human_caption_in_sidecars,
    load_or_new,
    one_line,
    read_provenance,
    save_sidecar,
    sidecar_for_write,
    stamp,
    write_provenance,
)


def _chunk_bytes(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" * (len(payload) & 1))


def rebuild_webp(data: bytes, edit: FileEdit) -> bytes:
    """The WebP ``data`` with ``edit`` applied to its EXIF and XMP chunks; verified in memory."""
    new = data
    if edit.tags:
        new = _webp_with_exif(new, edit.tags)
    if edit.xmp:
        new = _webp_with_xmp(new, edit.xmp, edit.drop_empty_xmp)
    verify_webp(data, new, edit)
    return new


def _webp_with_exif(data: bytes, updates: dict[int, tuple[int, bytes] | None]) -> bytes:
    chunks, riff_end = parse_webp(data)
    index, tiff, prefixed = webp_exif_tiff(data, chunks)
    if tiff is None:
        updates = {**NEW_IFD0_DEFAULTS, **updates}
    new_tiff = set_ifd0_tags(tiff, updates)
    exif = _chunk_bytes(b"EXIF", (EXIF_HEADER if prefixed else b"") + new_tiff)
    parts = [data[c.start : c.end] for c in chunks]
    if index is not None:
        parts[index] = exif
    else:
        before = [i for i, c in enumerate(chunks) if c.fourcc in WEBP_BEFORE_EXIF]
        if not before:
            raise WriteError("corrupt WebP: no image data chunk")
        parts.insert(before[-1] + 1, exif)
    if chunks[0].fourcc == b"VP8X":
        header = bytearray(parts[0])
        header[8] |= VP8X_EXIF  # the flags byte, first of the payload
        parts[0] = bytes(header)
    else:  # simple format: the extended format's header comes first
        if len(chunks) != 1:
            raise WriteError("unusual WebP layout (simple format with extra chunks); not written")
        width, height, alpha = webp_canvas(data, chunks[0])
        flags = VP8X_EXIF | (VP8X_ALPHA if alpha else 0)
        payload = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
        parts.insert(0, _chunk_bytes(b"VP8X", payload + (height - 1).to_bytes(3, "little")))
    return _riff(parts, data[riff_end:])


def _webp_with_xmp(data: bytes, changes: dict[tuple[str, str], str | None], drop: bool) -> bytes:
    """The XMP chunk merged (or added after EXIF, or with ``drop`` dropped when left empty),
    and the VP8X header's XMP flag to match. Called after the EXIF chunk is in place."""
    chunks, riff_end = parse_webp(data)
    if chunks[0].fourcc != b"VP8X":
        raise WriteError("unusual WebP layout (no VP8X header); not written")
    found = [i for i, c in enumerate(chunks) if c.fourcc == b"XMP "]
    if len(found) > 1:
        raise WriteError("the photo holds two XMP packets; not written")
    doc = parse_packet(chunks[found[0]].payload(data)) if found else XmpDocument.new()
    apply_xmp_edit(doc, changes)
    parts = [data[c.start : c.end] for c in chunks]
    chunk = b"" if drop and doc.is_empty() else _chunk_bytes(b"XMP ", doc.serialize())
    if found:
        parts[found[0]] = chunk
    else:  # XMP follows EXIF (container spec order)
        after = [i for i, c in enumerate(chunks) if c.fourcc in WEBP_BEFORE_EXIF | {b"EXIF"}]
        parts.insert(after[-1] + 1, chunk)
    header = bytearray(parts[0])
    header[8] = (header[8] | VP8X_XMP) if chunk else (header[8] & ~VP8X_XMP)
    parts[0] = bytes(header)
    return _riff(parts, data[riff_end:])


def _riff(parts: list[bytes], trailer: bytes) -> bytes:
    body = b"".join(parts)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body + trailer


def verify_webp(old: bytes, new: bytes, edit: FileEdit) -> None:
    """Raise WriteError unless ``new`` differs from ``old`` only in the EXIF and XMP chunks
    ``edit`` changes, the VP8X flags for them (or a new VP8X header) and the intended texts,
    and decodes to the same pixels."""
    old_chunks, old_end = parse_webp(old)
    new_chunks, new_end = parse_webp(new)
    if old[old_end:] != new[new_end:]:
        raise WriteError("verification failed: data after the WebP changed")
    ours = {b"VP8X"} | ({b"EXIF"} if edit.tags else set()) | ({b"XMP "} if edit.xmp else set())
    keep = [old[c.start : c.end] for c in old_chunks if c.fourcc not in ours]
    got = [new[c.start : c.end] for c in new_chunks if c.fourcc not in ours]
    if keep != got:
        raise WriteError("verification failed: other WebP chunks changed")
    old_x = [c.payload(old) for c in old_chunks if c.fourcc == b"VP8X"]
    new_x = [c.payload(new) for c in new_chunks if c.fourcc == b"VP8X"]
    if len(new_x) != 1 or new_chunks[0].fourcc != b"VP8X":
        raise WriteError("verification failed: VP8X header missing")
    flags = new_x[0][0]
    if edit.tags and not flags & VP8X_EXIF:
        raise WriteError("verification failed: VP8X header without the EXIF flag")
    has_xmp = any(c.fourcc == b"XMP " for c in new_chunks)
    if edit.xmp and bool(flags & VP8X_XMP) != has_xmp:
        raise WriteError("verification failed: VP8X XMP flag does not match")
    if old_x:
        mask = (VP8X_EXIF if edit.tags else 0) | (VP8X_XMP if edit.xmp else 0)
        if old_x[0][1:] != new_x[0][1:] or (old_x[0][0] | mask) != (flags | mask):
            raise WriteError("verification failed: VP8X header changed")
    if edit.tags:
        _, old_tiff, _ = webp_exif_tiff(old, old_chunks)
        _, new_tiff, _ = webp_exif_tiff(new, new_chunks)
        if new_tiff is None or sum(c.fourcc == b"EXIF" for c in new_chunks) != 1:
            raise WriteError("verification failed: not exactly one EXIF chunk")
        _verify_tags(old_tiff, new_tiff, edit.tags)
    if edit.xmp:
        old_packets = [c.payload(old) for c in old_chunks if c.fourcc == b"XMP "]
        new_packets = [c.payload(new) for c in new_chunks if c.fourcc == b"XMP "]
        if len(new_packets) > 1:
            raise WriteError("verification failed: more than one XMP chunk")
        _verify_xmp(
            old_packets[0] if old_packets else None,
            new_packets[0] if new_packets else None,
            edit.xmp,
        )
    _verify_same_frames(old, new, "WebP")


# --------------------------------------------------------------------------- PNG


def rebuild_png(data: bytes, edit: FileEdit) -> bytes:
    """The PNG ``data`` with ``edit`` applied to its ``eXIf`` chunk and XMP ``iTXt`` chunk;
    verified in memory.

    Either chunk is replaced where it is, or added just before the image data (``IDAT``, or an
    animated PNG's ``acTL`` and ``fcTL`` ahead of it): readers that stop at the image
    (browsers, Pillow before ``load``) still see it, and every version of the spec allows
    ``eXIf`` there. Every other chunk is copied byte for byte.
    """
    new = data
    if edit.tags:
        chunks, _ = parse_png(new)
        found = _png_found(new, chunks, b"eXIf")
        if len(found) > 1:
            raise WriteError("the photo holds two eXIf chunks; not written")
        tiff, _ = _png_texts(new, chunks, found)
        updates = edit.tags if tiff is not None else {**NEW_IFD0_DEFAULTS, **edit.tags}
        new = _png_put(new, chunks, found, png_chunk(b"eXIf", set_ifd0_tags(tiff, updates)))
    if edit.xmp:
        chunks, _ = parse_png(new)
        found = _png_found(new, chunks, PNG_XMP_KEYWORD)
        if len(found) > 1:
            raise WriteError("the photo holds two XMP packets; not written")
        _, packet = _png_texts(new, chunks, found)
        doc = parse_packet(packet) if packet is not None else XmpDocument.new()
        apply_xmp_edit(doc, edit.xmp)
        drop = edit.drop_empty_xmp and doc.is_empty()
        chunk = b"" if drop else png_chunk(b"iTXt", png_xmp_payload(doc.serialize()))
        new = _png_put(new, chunks, found, chunk)
    verify_png(data, new, edit)
    return new


def _png_found(data: bytes, chunks: list[PngChunk], what: bytes) -> list[int]:
    """Where a PNG's ``eXIf`` chunks are (``what=b"eXIf"``), or its XMP ``iTXt`` chunks
    (``what=PNG_XMP_KEYWORD``)."""
    if what == b"eXIf":
        return [i for i, c in enumerate(chunks) if c.type == what]
    return [
        i
        for i, c in enumerate(chunks)
        if c.type == b"iTXt" and png_keyword(c.payload(data)) == what
    ]


def _png_texts(
    data: bytes, chunks: list[PngChunk], found: list[int]
) -> tuple[bytes | None, bytes | None]:
    """:func:`~photocap.container.png_texts` of the ``found`` chunks only."""
    return png_texts([(chunks[i].type, chunks[i].payload(data)) for i in found])


# Where a new chunk goes: before the image data, and before an animated PNG's control chunks,
# which encoders write just ahead of it.
PNG_IMAGE_START = (b"acTL", b"fcTL", b"IDAT")


def _png_put(data: bytes, chunks: list[PngChunk], found: list[int], chunk: bytes) -> bytes:
    """``chunk`` in place of ``chunks[found[0]]``, or, when none was found, before the image
    (:data:`PNG_IMAGE_START`)."""
    if found:
        old = chunks[found[0]]
        return data[: old.start] + chunk + data[old.end :]
    at = next((c.start for c in chunks if c.type in PNG_IMAGE_START), None)
    if at is None:
        raise WriteError("corrupt PNG: no image data (IDAT)")
    return data[:at] + chunk + data[at:]


def verify_png(old: bytes, new: bytes, edit: FileEdit) -> None:
    """Raise WriteError unless ``new`` differs from ``old`` only in the ``eXIf`` and XMP chunks
    ``edit`` changes, with the intended texts, and decodes to the same pixels (every frame of
    an animated PNG)."""
    old_chunks, old_end = parse_png(old)
    new_chunks, new_end = parse_png(new)
    if old[old_end:] != new[new_end:]:
        raise WriteError("verification failed: data after the PNG changed")
    ours = ([b"eXIf"] if edit.tags else []) + ([PNG_XMP_KEYWORD] if edit.xmp else [])
    old_ours = {i for what in ours for i in _png_found(old, old_chunks, what)}
    new_ours = {i for what in ours for i in _png_found(new, new_chunks, what)}
    keep = [old[c.start : c.end] for i, c in enumerate(old_chunks) if i not in old_ours]
    if keep != [new[c.start : c.end] for i, c in enumerate(new_chunks) if i not in new_ours]:
        raise WriteError("verification failed: other PNG chunks changed")
    if edit.tags:
        found = _png_found(new, new_chunks, b"eXIf")
        new_tiff, _ = _png_texts(new, new_chunks, found)
        if len(found) != 1 or new_tiff is None:
            raise WriteError("verification failed: not exactly one eXIf chunk")
        old_tiff, _ = _png_texts(old, old_chunks, _png_found(old, old_chunks, b"eXIf"))
        _verify_tags(old_tiff, new_tiff, edit.tags)
    if edit.xmp:
        found = _png_found(new, new_chunks, PNG_XMP_KEYWORD)
        if len(found) > 1:
            raise WriteError("verification failed: more than one XMP chunk")
        _, old_packet = _png_texts(old, old_chunks, _png_found(old, old_chunks, PNG_XMP_KEYWORD))
        _verify_xmp(old_packet, _png_texts(new, new_chunks, found)[1], edit.xmp)
    _verify_same_frames(old, new, "PNG")


# --------------------------------------------------------------------------- rewrite + verify


def _load_piexif(tiff: bytes | None) -> dict[str, object] | None:
    """piexif's view of an EXIF block (an independent parser used as a cross-check)."""
    if tiff is None or not _fits_for_piexif(tiff):
        return None
    import piexif

    try:
        loaded: dict[str, object] = piexif.load(EXIF_HEADER + tiff)
    except Exception:  # piexif raises many types on odd data; the check is advisory then
        return None
    return loaded


# The sub-IFDs piexif reads: Exif and GPS from IFD0, Interop from the Exif IFD.
_PIEXIF_SUB_IFDS: dict[int, tuple[int, ...]] = {0x8769: (0xA005,), 0x8825: (), 0xA005: ()}
_INTEGER_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i"}  # TIFF type -> struct code


def _fits_for_piexif(tiff: bytes) -> bool:
    """Whether every IFD piexif reads lies inside the block, each value too.

    piexif builds a struct format of ``count`` characters before it looks for the data, so one
    corrupt count (up to 4 G) costs gigabytes of memory and minutes (found by fuzzing). Such a
    block is corrupt, and the cross-check is skipped for it, as when piexif raises.
    """
    try:
        t = Tiff(tiff)
        entries, next_ifd = t.read_ifd(t.ifd0)
        queue: list[tuple[list[Entry], tuple[int, ...]]] = [(entries, (0x8769, 0x8825))]
        if next_ifd:  # IFD1, the thumbnail's
            queue.append((t.read_ifd(next_ifd)[0], ()))
        while queue:
            entries, follow = queue.pop()
            for entry in entries:
                if entry.size() > len(tiff):
                    return False
                if entry.tag in follow:
                    code = _INTEGER_TYPES.get(entry.type)
                    if code is None or entry.count != 1:
                        return False  # piexif fails on such a pointer: nothing to compare
                    size = TYPE_SIZES[entry.type]
                    (pointer,) = struct.unpack(t.end + code, entry.raw[:size])
                    if pointer <= 0:
                        return False
                    queue.append((t.read_ifd(pointer)[0], _PIEXIF_SUB_IFDS[entry.tag]))
    except WriteError:
        return False
    return True


def _same_tags(before: dict[str, object], after: dict[str, object], ours: set[int]) -> bool:
    for ifd in ("0th", "Exif", "GPS", "Interop", "1st"):
        old = dict(before.get(ifd) or {})  # type: ignore[call-overload]
        new = dict(after.get(ifd) or {})  # type: ignore[call-overload]
        if ifd == "0th":
            old = {k: v for k, v in old.items() if k not in ours}
            new = {k: v for k, v in new.items() if k not in ours}
        if old != new:
            return False
    return before.get("thumbnail") == after.get("thumbnail")


@dataclass
class FileEdit:
    """The changes a rewrite makes: IFD0 tags, and x-default texts of the embedded XMP."""

    tags: dict[int, tuple[int, bytes] | None] = field(default_factory=dict)  # None removes
    xmp: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (ns, name) -> text
    drop_empty_xmp: bool = False  # a packet left empty goes (a revert of one photocap added)

    def __bool__(self) -> bool:
        return bool(self.tags or self.xmp)


def _after_app0(segments: list[Segment]) -> int:
    """Where a new APP1 goes: after SOI, or after a leading JFIF/JFXX APP0 (both specs agree)."""
    at = 2
    for seg in segments:
        if seg.marker != APP0:
            break
        at = seg.end
    return at


def rebuild_jpeg(data: bytes, edit: FileEdit) -> bytes:
    """The JPEG ``data`` with ``edit`` applied to its Exif block and XMP packet; verified in
    memory."""
    new = data
    if edit.tags:
        segments, _ = parse_jpeg(new)
        index, tiff = exif_tiff(new, segments)
        updates = edit.tags
        if tiff is None:
            # A new EXIF block gets the IFD0 tags EXIF requires, as exiftool adds them.
            updates = {**NEW_IFD0_DEFAULTS, **updates}
        new_tiff = set_ifd0_tags(tiff, updates)
        length = 2 + len(EXIF_HEADER) + len(new_tiff)
        if length > MAX_SEGMENT:
            raise WriteError(f"EXIF block would exceed 64 KB ({length} bytes); not written")
        app1 = b"\xff\xe1" + struct.pack(">H", length) + EXIF_HEADER + new_tiff
        if index is not None:
            seg = segments[index]
            new = new[: seg.start] + app1 + new[seg.end :]
        else:
            at = _after_app0(segments)
            new = new[:at] + app1 + new[at:]
    if edit.xmp:
        segments, _ = parse_jpeg(new)
        index, packet = xmp_segment(new, segments)
        doc = XmpDocument.new() if packet is None else parse_packet(packet)
        apply_xmp_edit(doc, edit.xmp)
        app1 = b"" if edit.drop_empty_xmp and doc.is_empty() else xmp_app1(doc)
        if index is not None:
            seg = segments[index]
            new = new[: seg.start] + app1 + new[seg.end :]
        else:  # XMP follows Exif (XMP spec part 3), or goes where Exif would
            exif_index, _ = exif_tiff(new, segments)
            at = _after_app0(segments) if exif_index is None else segments[exif_index].end
            new = new[:at] + app1 + new[at:]
    verify_jpeg(data, new, edit)
    return new


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
    _verify_tags(old, new, updates)  # the XMP tag too: it reads back as serialised
    if edit.xmp:
        _verify_xmp(read_tag(old, TAG_XMP), read_tag(new, TAG_XMP), edit.xmp)
    if dng:  # Pillow decodes no sensor data, and often not the preview in IFD0 either
        _verify_same_raw(old, new)
    else:
        _verify_same_frames(old, new, "TIFF")


def _verify_same_raw(old: bytes, new: bytes) -> None:
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


def _verify_same_frames(old: bytes, new: bytes, kind: str) -> None:
    """Raise WriteError unless both files decode to the same frames (an animated WebP's, a
    TIFF's pages): size, mode and pixels, compared one frame at a time (memory)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # A bomb warning, or Pillow's complaint about a damaged tag that both files keep as
            # it is ("Truncated File Read"): the frames are what is judged here, not printed.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(old)) as a, Image.open(io.BytesIO(new)) as b:
                frames = getattr(a, "n_frames", 1)
                same = frames == getattr(b, "n_frames", 1)
                for i in range(frames if same else 0):
                    a.seek(i)
                    b.seek(i)
                    if (a.size, a.mode) != (b.size, b.mode) or a.tobytes() != b.tobytes():
                        same = False
                        break
    except Exception as err:  # any decoder error means we must not install this file
        raise WriteError(f"verification failed: {kind} does not decode ({err})") from None
    if not same:
        raise WriteError("verification failed: pixels changed")


def apply_xmp_edit(doc: XmpDocument, changes: dict[tuple[str, str], str | None]) -> None:
    """Set (or, for None, remove) the x-default entry of each lang-alt property."""
    for (ns, name), text in changes.items():
        doc.put_default(ns, name, text)


def verify_jpeg(old: bytes, new: bytes, edit: FileEdit) -> None:
    """Raise WriteError unless ``new`` differs from ``old`` only as ``edit`` says."""
    old_segs, old_sos = parse_jpeg(old)
    new_segs, new_sos = parse_jpeg(new)
    if old[old_sos:] != new[new_sos:]:
        raise WriteError("verification failed: image data changed")
    old_index, old_tiff = exif_tiff(old, old_segs)
    new_index, new_tiff = exif_tiff(new, new_segs)
    old_x, old_packet = xmp_segment(old, old_segs)
    new_x, new_packet = xmp_segment(new, new_segs)
    ours_old = {old_index if edit.tags else None, old_x if edit.xmp else None}
    ours_new = {new_index if edit.tags else None, new_x if edit.xmp else None}
    old_other = [old[s.start : s.end] for i, s in enumerate(old_segs) if i not in ours_old]
    new_other = [new[s.start : s.end] for i, s in enumerate(new_segs) if i not in ours_new]
    if old_other != new_other:
        raise WriteError("verification failed: other JPEG segments changed")
    old_mp, new_mp = mpf_images(old, old_segs), mpf_images(new, new_segs)
    if [old[a:b] for a, b in old_mp] != [new[a:b] for a, b in new_mp]:
        raise WriteError(
            "its Multi-Picture index (depth map, gain map or second view) precedes the EXIF "
            "or XMP block and would lose its images; not written"
        )
    if edit.tags:
        if new_index is None or new_tiff is None:
            raise WriteError("verification failed: EXIF block missing")
        _verify_tags(old_tiff, new_tiff, edit.tags)
    if edit.xmp:
        _verify_xmp(old_packet, new_packet, edit.xmp)


def _verify_xmp(
    old: bytes | None, new: bytes | None, changes: dict[tuple[str, str], str | None]
) -> None:
    """Our texts read back from the new packet; with them taken out, both packets say the same."""
    after = parse_packet(new) if new is not None else None
    for (ns, name), text in changes.items():
        got = after.get_default(ns, name) if after is not None else None
        if got != text:
            raise WriteError(f"verification failed: XMP {name} not as written")

    def rest(packet: bytes | None) -> bytes:
        if packet is None:
            return b""
        doc = parse_packet(packet)
        for ns, name in changes:
            doc.remove_default(ns, name)
        for elem in doc.root.iter():  # layout whitespace is not content (RDF/XML ignores it)
            if elem.text is not None and not elem.text.strip() and len(elem) == 0:
                elem.text = None
        return b"" if doc.is_empty() else doc.serialize()

    if rest(old) != rest(new):
        raise WriteError("verification failed: other XMP properties changed")


def _verify_tags(
    old_tiff: bytes | None, new_tiff: bytes, updates: dict[int, tuple[int, bytes] | None]
) -> None:
    """Our tags read back as written; piexif sees every other tag unchanged."""
    for tag, want in updates.items():
        got = read_tag(new_tiff, tag)
        if (want is None and got is not None) or (want is not None and got != want[1]):
            raise WriteError(f"verification failed: EXIF tag 0x{tag:04X} not as written")
    before, after = _load_piexif(old_tiff), _load_piexif(new_tiff)
    if before is not None and (after is None or not _same_tags(before, after, set(updates))):
        raise WriteError("verification failed: existing EXIF tags changed")


def verify_jpeg_decodes(path: Path) -> None:
    """Pillow must open and fully decode the JPEG file.

    It is decoded at 1/8 scale: every block is still read (damage is still found), but a
    100-MP photo costs what a 1.6-MP one does, and Pillow's pixel limit, meant for untrusted
    input, does not refuse a camera's own large photo.
    """

    from photocap.image import open_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in _verify_same_frames
            with open_jpeg(path.read_bytes()) as img:
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except Exception as err:  # any decoder error means we must not install this file
        raise WriteError(f"verification failed: written file does not decode ({err})") from None


@dataclass(frozen=True)
class Rewrite:
    """A photo's bytes before and after one rewrite (kept for its undo record)."""

    old: bytes
    new: bytes


def rewrite_photo(
    photo: Path,
    plan: Callable[[InFileText], FileEdit | None],
    *,
    touch: bool = False,
    dry_run: bool = False,
    scrub: list[str] | None = None,
) -> Rewrite | None:
    """Apply ``plan(what the file holds)`` to a JPEG, WebP, TIFF, PNG or DNG in place, safely.
    None: nothing to do.

    ``plan`` sees the file's current texts and returns the changes, or None to leave the file
    alone. ``scrub``: texts taken out that must not stay behind as dead bytes either
    (:func:`scrub_texts`).
    """
    data = read_capped(photo, MAX_PHOTO_BYTES, "photo")
    current = read_in_file_text(data, photo)
    edit = plan(current)
    if not edit:
        return None
    rebuilds = {"WebP": rebuild_webp, "TIFF": rebuild_tiff, "DNG": rebuild_dng, "PNG": rebuild_png}
    new = rebuilds.get(current.format, rebuild_jpeg)(data, edit)
    if scrub:
        new = scrub_texts(new, current.format, scrub)
    # The WebP, TIFF and PNG rebuilds decoded every frame of ``new`` to the old pixels (the DNG
    # rebuild: LibRaw read the same sensor data and preview), and atomic_write reads the file
    # back and checks it holds exactly ``new``: decoding it again would tell nothing more. A
    # JPEG's rebuild compares its scan bytes without decoding them.
    verify = verify_jpeg_decodes if current.format == "JPEG" else None
    if not dry_run:
        atomic_write(photo, new, preserve_mtime=not touch, verify=verify)
    return Rewrite(data, new)


def _tiff_block_span(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Where the file's TIFF block (its EXIF; a TIFF's or DNG's whole file) lies in ``data``."""
    if fmt in ("TIFF", "DNG"):
        return 0, len(data)
    if fmt == "JPEG":
        segments, _ = parse_jpeg(data)
        index, _tiff = exif_tiff(data, segments)
        return None if index is None else (segments[index].start + 10, segments[index].end)
    if fmt == "PNG":
        chunk = next((c for c in parse_png(data)[0] if c.type == b"eXIf"), None)
        if chunk is None:
            return None
        start = chunk.start + 8
        return start + (len(EXIF_HEADER) if data[start:].startswith(EXIF_HEADER) else 0), (
            chunk.end - 4
        )
    chunks, _ = parse_webp(data)
    index, tiff, prefixed = webp_exif_tiff(data, chunks)
    if index is None or tiff is None:
        return None
    start = chunks[index].start + 8 + (len(EXIF_HEADER) if prefixed else 0)
    return start, start + len(tiff)


def scrub_texts(data: bytes, fmt: str, texts: list[str]) -> bytes:
    """``data`` with every copy of ``texts`` (UTF-8, UTF-16) that nothing in its TIFF block
    points to overwritten with zero bytes: a caption photocap took out, left behind as dead
    bytes by an IFD0 appended after ours. What the file says (every tag, text and pixel) must
    read the same afterwards, or ``data`` is returned as it is."""
    span = _tiff_block_span(data, fmt)
    if span is None:
        return data
    start, end = span
    tiff = data[start:end]
    needles = {t.encode(enc) for t in texts if len(t) >= 4 for enc in ("utf-8", "utf-16-le")}
    hits = []
    for needle in needles:
        at = tiff.find(needle)
        while at >= 0:
            hits.append((at, at + len(needle)))
            at = tiff.find(needle, at + 1)
    if not hits:
        return data
    try:
        refs = _all_references(Tiff(tiff, "TIFF" if fmt in ("TIFF", "DNG") else "EXIF"))
    except (WriteError, struct.error):
        return data  # a block we cannot map whole: nothing is cut blind

    def used(a: int, b: int) -> bool:  # a pointer into the hit, or a value overlapping it
        return any((s < b and a < e) or a <= s < b for s, e in refs)

    out = bytearray(tiff)
    for a, b in hits:
        if not used(a, b):
            out[a:b] = bytes(b - a)
    if out == tiff:
        return data
    new = data[:start] + bytes(out) + data[end:]
    if fmt == "PNG":  # the eXIf chunk's CRC covers what changed
        chunk = next(c for c in parse_png(data)[0] if c.type == b"eXIf")
        body = new[chunk.start + 4 : chunk.end - 4]
        new = new[: chunk.end - 4] + struct.pack(">I", zlib.crc32(body)) + new[chunk.end :]
    try:
        same = _same_reading(data, new, fmt) and _load_piexif(tiff) == _load_piexif(bytes(out))
        if same and fmt == "DNG":
            _verify_same_raw(data, new)
        elif same and fmt == "TIFF":
            _verify_same_frames(data, new, "TIFF")
    except WriteError:
        return data
    return new if same else data


# Offset tag -> its byte-count tag: image data (strips, tiles), a thumbnail, free space.
_DATA_RANGES = {0x0111: 0x0117, 0x0144: 0x0145, 0x0201: 0x0202, 0x0120: 0x0121}


def _all_references(t: Tiff) -> list[tuple[int, int]]:
    """(start, end) of every byte of a TIFF block something points to: every IFD reached
    from IFD0 (the chain of pages by next pointers, and sub-IFDs), its table, its values, and
    the strips, tiles and thumbnail it locates. Integer values that could be offsets into an
    unknown structure count as zero-length references. Raises WriteError where the block
    cannot be walked (a chain out of range): then nothing may be taken as unreferenced."""
    refs: list[tuple[int, int]] = []
    seen: set[int] = set()
    queue = [t.ifd0]
    while queue:
        off = queue.pop()
        if not off or off in seen:
            continue
        if len(seen) > 4096:
            raise WriteError("too many IFDs to map")
        seen.add(off)
        entries, nxt = t.read_ifd(off)
        refs.append((off, off + 2 + 12 * len(entries) + 4))
        numbers: dict[int, list[int]] = {}
        for e in entries:
            if e.size() > 4:
                start = int(struct.unpack(t.end + "I", e.raw)[0])
                refs.append((start, start + e.size()))
            if e.type in (3, 4, 13) and e.count <= 1 << 16:  # SHORT, LONG, IFD
                raw = t.value(e)
                code = "H" if e.type == 3 else "I"
                values = [int(v) for v in struct.unpack(f"{t.end}{e.count}{code}", raw)]
                numbers[e.tag] = values
                refs.extend((v, v) for v in values)
                if e.tag in SUB_IFD_TAGS:
                    queue.extend(values)
        for at_tag, size_tag in _DATA_RANGES.items():
            starts, sizes = numbers.get(at_tag, []), numbers.get(size_tag, [])
            if len(starts) != len(sizes) and starts:  # which bytes are whose: unknown
                raise WriteError("offsets without their sizes")
            refs += [(a, a + n) for a, n in zip(starts, sizes, strict=bool(starts))]
        queue.append(nxt)
    return refs


def _same_reading(old: bytes, new: bytes, fmt: str) -> bool:
    """Both files hold the same caption-bearing texts and the same IFD0 entries."""
    name = f"photo.{fmt.lower()}"  # a DNG is told from other TIFF-based RAWs by its name
    a, b = read_in_file_text(old, name), read_in_file_text(new, name)
    ta = Tiff(a.tiff, "TIFF") if a.tiff else None
    tb = Tiff(b.tiff, "TIFF") if b.tiff else None
    entries_a = [(e, ta.value(e)) for e in ta.ifd0_entries()] if ta else []
    entries_b = [(e, tb.value(e)) for e in tb.ifd0_entries()] if tb else []
    return (a.description, a.comment, a.packet, a.iptc_caption) == (
        b.description,
        b.comment,
        b.packet,
        b.iptc_caption,
    ) and entries_a == entries_b


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_bytes(prov: Provenance, data: bytes) -> bytes | None:
    """The photo as it was before photocap's first write into it, from its undo record; None
    when the record is missing or damaged, or ``data`` is no longer the file photocap wrote
    (another app changed it since)."""
    if prov.exif_undo is None or prov.exif_written_sha256 != _sha256(data):
        return None
    try:
        original = apply_patch(data, decode_patch(prov.exif_undo))
    except WriteError:
        return None
    return original if _sha256(original) == prov.exif_original_sha256 else None


def record_undo(prov: Provenance, rewrite: Rewrite, caption: str) -> None:
    """Keep in ``prov`` the patch from the file just written back to the photo's original
    bytes (:mod:`photocap.patch`), when they are known: the file before this rewrite if
    photocap had never written into it, or what the previous record leads back to. A patch
    over ``MAX_PATCH_BYTES`` is not kept (revert then restores the texts)."""
    if prov.exif_undo is not None:
        original = original_bytes(prov, rewrite.old)
    elif prov.exif_description is None and prov.exif_alt_text is None:
        # Never written by photocap, as far as its record goes; but our caption already in
        # the file (a copy of a captioned photo) means these are not the user's own bytes.
        original = None if caption.encode() in rewrite.old else rewrite.old
    else:
        original = None  # written before undo records existed: texts only
    prov.forget_undo()
    if original is None:
        return
    patch = encode_patch(diff_bytes(rewrite.new, original))
    if len(patch) <= MAX_PATCH_BYTES:
        prov.exif_undo = patch
        prov.exif_written_sha256 = _sha256(rewrite.new)
        prov.exif_original_sha256 = _sha256(original)


def restore_edit(
    prov: Provenance, text: InFileText, notes: list[str] | None = None, *, alt_text: bool = True
) -> FileEdit | None:
    """The edit that puts back what the exif writer replaced in a file, wherever the file still
    holds what it wrote (``prov``): ImageDescription, XPComment, the embedded XMP description
    and, with ``alt_text``, the alt text. A text edited since is left, with a line in ``notes``.
    None: nothing to put back. ``photocap revert`` uses it, and the writer when a person's
    caption came after ours."""
    notes = [] if notes is None else notes
    written = prov.exif_description
    edit = FileEdit(drop_empty_xmp=prov.exif_added_xmp == "True")
    if written is not None and text.description == written:
        before = prov.exif_previous_description
        edit.tags[TAG_IMAGE_DESCRIPTION] = encode_ascii(before) if before is not None else None
    elif written is not None:
        notes.append("EXIF description was edited after photocap wrote it; left as is")
    if written is not None and text.comment == written:
        before = prov.exif_previous_comment
        edit.tags[TAG_XP_COMMENT] = encode_xp(before) if before is not None else None
    doc = text.xmp()  # the embedded packet (JPEG, WebP, TIFF, PNG, DNG)
    fields = [(NS_DC, "description", written, prov.exif_previous_xmp_description)]
    if alt_text:
        fields.append((NS_IPTC, "AltTextAccessibility", prov.exif_alt_text,
                       prov.exif_previous_alt_text))  # fmt: skip
    for ns, name, ours, before_text in fields:
        current = doc.get_default(ns, name) if doc is not None else None
        if ours is not None and current == ours:
            edit.xmp[(ns, name)] = before_text
        elif ours is not None and current is not None and name == "description":
            notes.append("embedded XMP description was edited after photocap; left as is")
    return edit or None


def read_exif_caption(photo: Path) -> tuple[str | None, str | None]:
    """(ImageDescription, XPComment) of a JPEG, WebP, TIFF, PNG or DNG; (None, None) for other
    formats."""
    data = read_capped(photo, MAX_PHOTO_BYTES, "photo")
    if detect_format(data, photo) not in IN_FILE_FORMATS:
        return None, None
    text = read_in_file_text(data, photo)
    return text.description, text.comment


# --------------------------------------------------------------------------- the writer


@dataclass
class _PlanSeen:
    """What the exif writer's plan found in the photo, for the outcome and the provenance."""

    human: str | None = None  # a caption a person wrote (in the file or a sidecar)
    claim: bool = False  # our caption or alt text differs from what the provenance records
    wrote_alt: bool = False  # the alt text in the embedded XMP is ours (now or before)
    retracted: bool = False  # our caption left the file: a person's came after it


class ExifWriter:
    """``--write exif``: ImageDescription + XPComment inside JPEG, WebP, TIFF, PNG and DNG files,
    and the embedded XMP description and alt text."""

    name = "exif"

    def __init__(self, options: WriteOptions) -> None:
        self.options = options

    def write(self, record: CaptionRecord) -> WriteOutcome:
        photo = record.path
        try:
            fmt = detect_file_format(photo)
            if fmt not in IN_FILE_FORMATS:
                return WriteOutcome(
                    self.name, photo, "skipped", f"exif not supported for {fmt}; caption in sidecar"
                )
            check_replaceable(Path(os.path.realpath(photo)))  # a dry run says so too
            # Provenance is checked (and a bad sidecar refused) before the photo is touched.
            sidecar = sidecar_for_write(photo, self.options.sidecar_name)
            doc, existed = load_or_new(sidecar)
            if not self.options.dry_run:
                # The record of what we write (and the way back) goes into the sidecar: one
                # that cannot be written (read-only) means the photo is not touched either.
                check_writable(sidecar, in_place=True)
            prov = read_provenance(doc)
            caption = " ".join(record.caption.split())
            alt = alt_text_for(caption)
            seen = _PlanSeen()
            # A person's caption in a sidecar (digiKam's, say) keeps ours out of the file too:
            # apps reading the file would show ours, apps reading the sidecar theirs.
            in_sidecar, _ = human_caption_in_sidecars(photo)

            def before_us(found: str | None) -> str | None:
                """What a text in the file was before photocap wrote there. Our caption with no
                provenance for it (the photo was copied, or moved without its sidecar, after
                photocap wrote into it) is ours: nothing of anyone's to give back."""
                return None if found == caption else found

            def plan(text: InFileText) -> FileEdit | None:
                desc, comment = text.description, text.comment
                written = prov.exif_description
                seen.human = in_sidecar or text.human_caption(written, prov.description, caption)
                if seen.human is not None and not self.options.overwrite_human:
                    # A person's caption keeps ours out of the file. If ours is there already
                    # (theirs came later), it would hide theirs from apps that read the file
                    # first: ours goes, the alt text stays.
                    retract = restore_edit(prov, text, alt_text=False)
                    seen.retracted = retract is not None
                    return retract
                edit = FileEdit()
                if desc != caption:
                    edit.tags[TAG_IMAGE_DESCRIPTION] = encode_ascii(caption)
                comment_ours = comment is not None and comment in (written, caption)
                if comment != caption and (
                    is_blank_description(comment) or comment_ours or self.options.overwrite_human
                ):
                    edit.tags[TAG_XP_COMMENT] = encode_xp(caption)
                if not (desc is not None and desc == written):
                    # first write over someone else's (or no) text: remember it
                    prov.exif_previous_description = before_us(desc)
                    prov.exif_previous_comment = None if comment_ours else comment
                seen.claim = written != caption
                # The caption and alt text go into the embedded XMP too (MWG).
                packet = text.xmp()
                if packet is None:
                    prov.exif_added_xmp = "True"
                xdesc = xmp_description(packet)
                if xdesc != caption:
                    edit.xmp[(NS_DC, "description")] = caption
                if xdesc is None or xdesc != written:
                    prov.exif_previous_xmp_description = before_us(xdesc)
                cur_alt = packet.get_default(NS_IPTC, "AltTextAccessibility") if packet else None
                alt_ours = cur_alt is not None and cur_alt in (prov.exif_alt_text, alt)
                alt_empty = not (cur_alt and cur_alt.strip())
                if alt_empty or alt_ours or self.options.overwrite_human:
                    if cur_alt != alt:
                        edit.xmp[(NS_IPTC, "AltTextAccessibility")] = alt
                    if not alt_ours:
                        prov.exif_previous_alt_text = cur_alt
                    seen.claim = seen.claim or prov.exif_alt_text != alt
                    seen.wrote_alt = True
                return edit or None

            # A caption of ours the file no longer points to (re-captioned over an IFD0 another
            # app appended after ours, or taken out for a person's) leaves no dead bytes.
            stale = [t for t in (prov.exif_description,) if t and t != caption]
            changed = rewrite_photo(
                photo, plan, touch=self.options.touch, dry_run=self.options.dry_run, scrub=stale
            )
            rewrote = changed is not None and not self.options.dry_run  # the bytes are new
            if changed is not None and rewrote:
                record_undo(prov, changed, caption)  # before the record says "ours" below
            if seen.human is not None and not self.options.overwrite_human:
                if seen.retracted and not self.options.dry_run:
                    prov.forget_exif(alt_text=False)
                    write_provenance(doc, prov)
                    try:
                        save_sidecar(sidecar, doc)
                    except WriteError as err:
                        return self._unrecorded(photo, changed, err)
                return WriteOutcome(
                    self.name, photo, "kept_human", "kept human caption",
                    human_caption=seen.human, changed_photo=rewrote,
                )  # fmt: skip
            if changed is None and not seen.claim:
                return WriteOutcome(self.name, photo, "unchanged")
            prov.exif_description = caption
            if seen.wrote_alt:
                prov.exif_alt_text = alt
            if not existed:
                prov.created_sidecar = True
            stamp(prov, record)
            write_provenance(doc, prov)
            if not self.options.dry_run:
                try:
                    save_sidecar(sidecar, doc)
                except WriteError as err:
                    return self._unrecorded(photo, changed, err)
        except SidecarTaken as err:  # no sidecar of its own to record provenance in
            return WriteOutcome(self.name, photo, "skipped", one_line(err))
        except WriteError as err:
            return WriteOutcome(self.name, photo, "failed", one_line(err))
        except OSError as err:
            return WriteOutcome(self.name, photo, "failed", describe_os_error(err, photo))
        return WriteOutcome(
            self.name, photo, "written", human_caption=seen.human, changed_photo=rewrote
        )

    def _unrecorded(self, photo: Path, rewrite: Rewrite | None, err: WriteError) -> WriteOutcome:
        """The photo was written but its record could not be saved (a full disk): without it
        revert could not take the caption back, so the photo gets its bytes back first."""
        if rewrite is None or self.options.dry_run:
            return WriteOutcome(self.name, photo, "failed", one_line(err))
        try:
            atomic_write(photo, rewrite.old, preserve_mtime=True)
        except WriteError as undo_err:
            return WriteOutcome(
                self.name, photo, "failed",
                f"caption written to EXIF but its record not saved ({one_line(err)}); putting "
                f"the photo back failed too: {one_line(undo_err)}",
                changed_photo=True,
            )  # fmt: skip
        return WriteOutcome(
            self.name, photo, "failed",
            f"not written in the file: its record could not be saved ({one_line(err)})",
        )  # fmt: skip

    def close(self) -> None:
        """Nothing buffered: each photo is rewritten (atomically) in :meth:`write`."""


register_writer("exif", ExifWriter)
