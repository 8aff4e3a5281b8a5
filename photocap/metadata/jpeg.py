"""JPEG: where a caption goes in a JPEG file, and how it is put there losslessly.

A JPEG holds its metadata in marker segments before the image data: EXIF in an APP1 segment
(``Exif\0\0`` + a TIFF block, :mod:`~photocap.metadata.ifd`), the standard XMP packet in
another APP1 segment (:data:`XMP_HEADER`), IPTC in a Photoshop APP13 segment (read only).

* **Parse**: :func:`parse_jpeg` splits the file into segments up to SOS; :func:`exif_tiff`,
  :func:`xmp_segment`, :func:`iptc_caption` find the parts; :func:`mpf_images` the extra
  images of a Multi-Picture file (after EOI).
* **Read texts**: :func:`read_texts`.
* **Rebuild**: :func:`rebuild_jpeg` replaces (or inserts: EXIF after SOI/JFIF APP0, XMP after
  EXIF) only those two APP1 segments; every other byte (JFIF, Extended XMP, ICC, IPTC, COM,
  tables, the scan and anything after EOI) is copied byte for byte.
* **Verify**: :func:`verify_jpeg` parses the result again (only our segments differ, our texts
  read back, the MPF images still where their index says); :func:`verify_jpeg_decodes` has
  Pillow decode the written file.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from photocap.errors import MetadataError, WriteError
from photocap.metadata.edit import FileEdit, InFileText
from photocap.metadata.ifd import EXIF_HEADER, NEW_IFD0_DEFAULTS, Tiff, set_ifd0_tags, verify_tags
from photocap.metadata.iptc import photoshop_caption, photoshop_keywords
from photocap.metadata.xmp import XmpDocument, apply_xmp_edit, parse_packet, verify_xmp_edit

MAX_SEGMENT = 0xFFFF  # a JPEG segment's length field (includes its own 2 bytes)


SOI, SOS, APP0, APP1 = 0xD8, 0xDA, 0xE0, 0xE1


@dataclass(frozen=True)
class Segment:
    """One marker segment before SOS: ``data[start:end]`` is FF, marker, length, payload."""

    marker: int
    start: int
    end: int


def parse_jpeg(data: bytes) -> tuple[list[Segment], int]:
    """(segments between SOI and SOS, offset of the SOS marker). Raises WriteError."""
    if data[:2] != b"\xff\xd8":
        raise MetadataError("not a JPEG (no SOI marker)")
    pos, segments = 2, list[Segment]()
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise MetadataError(f"corrupt JPEG: no marker at byte {pos}")
        start = pos
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes are allowed before a marker
            pos += 1
        if pos >= len(data):
            raise MetadataError("corrupt JPEG: truncated before image data")
        marker = data[pos]
        pos += 1
        if marker == SOS:
            return segments, start
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM / RSTn: no length
            segments.append(Segment(marker, start, pos))
            continue
        if marker in (SOI, 0xD9, 0x00):
            raise MetadataError(f"corrupt JPEG: unexpected marker FF{marker:02X} at byte {start}")
        if pos + 2 > len(data):
            raise MetadataError("corrupt JPEG: truncated segment")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > len(data):
            raise MetadataError(f"corrupt JPEG: bad segment length at byte {start}")
        pos += length
        segments.append(Segment(marker, start, pos))


def is_exif_segment(data: bytes, seg: Segment) -> bool:
    return seg.marker == APP1 and data[seg.start + 4 : seg.start + 10] == EXIF_HEADER


def exif_tiff(data: bytes, segments: list[Segment]) -> tuple[int | None, bytes | None]:
    """(index of the first Exif APP1 segment, its TIFF block) or (None, None)."""
    for i, seg in enumerate(segments):
        if is_exif_segment(data, seg):
            return i, data[seg.start + 10 : seg.end]
    return None, None


def mpf_images(data: bytes, segments: list[Segment]) -> list[tuple[int, int]]:
    """(start, end) in ``data`` of each extra image a Multi-Picture index points to.

    A Multi-Picture APP2 segment ("MPF") lists the images stored after the primary one's EOI
    (a stereo pair's second view, a depth map, an Ultra HDR gain map), by offsets counted from
    the segment itself. Resizing a segment that comes *before* it leaves them in place; one
    *after* it moves them away from the index. Entries that do not already point at a JPEG are
    left out: a broken index is not ours to judge.
    """
    spans: list[tuple[int, int]] = []
    for seg in segments:
        if seg.marker != 0xE2 or data[seg.start + 4 : seg.start + 8] != b"MPF\x00":
            continue
        base = seg.start + 8  # the MP Endian field: offsets count from here
        try:
            tiff = Tiff(data[base : seg.end])
            entries, _ = tiff.read_ifd(tiff.ifd0)
            table = next((tiff.value(e) for e in entries if e.tag == 0xB002), b"")
        except WriteError:
            continue
        for i in range(1, len(table) // 16):  # entry 0 is the primary image (offset 0)
            size, offset = struct.unpack(tiff.end + "II", table[16 * i + 4 : 16 * i + 12])
            start = base + offset
            is_jpeg = data[start : start + 2] == b"\xff\xd8"
            if offset and size and start + size <= len(data) and is_jpeg:
                spans.append((start, start + size))
    return spans


APP13 = 0xED


XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"  # standard XMP APP1 (XMP spec part 3)


# Extended XMP parts (APP1 "http://ns.adobe.com/xmp/extension/") are other segments to us:
# copied byte for byte; their GUID stays in the packet's xmpNote:HasExtendedXMP.
PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"


# A segment's length field counts itself (2 bytes) and the header: the rest is the packet.
MAX_XMP_PACKET = 0xFFFF - 2 - len(XMP_HEADER)


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
        raise MetadataError("the photo holds two XMP packets; not written")
    if not found:
        return None, None
    seg = segments[found[0]]
    return found[0], data[seg.start + 4 + len(XMP_HEADER) : seg.end]


def xmp_app1(doc: XmpDocument) -> bytes:
    """The standard XMP APP1 segment for ``doc``; over 64 KB raises :class:`WriteError`."""
    packet = doc.serialize()
    if len(packet) > MAX_XMP_PACKET:
        raise WriteError(
            f"embedded XMP would exceed 64 KB ({len(packet)} bytes; Extended XMP is not "
            "written); not written"
        )
    return b"\xff\xe1" + struct.pack(">H", 2 + len(XMP_HEADER) + len(packet)) + XMP_HEADER + packet


def photoshop_block(data: bytes, segments: Sequence[Segment]) -> bytes:
    """The Photoshop image resource block of a JPEG (its APP13 segments joined)."""
    return b"".join(
        data[seg.start + 4 + len(PHOTOSHOP_HEADER) : seg.end]
        for seg in segments
        if seg.marker == APP13
        and data[seg.start + 4 : seg.start + 4 + len(PHOTOSHOP_HEADER)] == PHOTOSHOP_HEADER
    )


def iptc_caption(data: bytes, segments: Sequence[Segment]) -> str | None:
    """IPTC ``Caption-Abstract`` of a JPEG (Photoshop APP13), or None; damage reads as None."""
    return photoshop_caption(photoshop_block(data, segments))


JPEG_HEAD_BYTES = 256 * 1024  # where a JPEG's metadata segments end, nearly always


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
        verify_tags(old_tiff, new_tiff, edit.tags)
    if edit.xmp:
        verify_xmp_edit(old_packet, new_packet, edit.xmp)


def verify_jpeg_decodes(path: Path) -> None:
    """Pillow must open and fully decode the JPEG file.

    It is decoded at 1/8 scale: every block is still read (damage is still found), but a
    100-MP photo costs what a 1.6-MP one does, and Pillow's pixel limit, meant for untrusted
    input, does not refuse a camera's own large photo.
    """

    from photocap.image import open_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as in verify_same_frames
            with open_jpeg(path.read_bytes()) as img:
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except Exception as err:  # any decoder error means we must not install this file
        raise WriteError(f"verification failed: written file does not decode ({err})") from None


def read_texts(data: bytes, fmt: str = "JPEG") -> InFileText:
    """The caption-bearing parts of a JPEG's bytes (its head is enough: they come before the
    image data). Raises WriteError."""
    segments, _ = parse_jpeg(data)
    tiff = exif_tiff(data, segments)[1]
    irb = photoshop_block(data, segments)
    packet = xmp_segment(data, segments)[1]
    return InFileText("JPEG", tiff, packet, photoshop_caption(irb), photoshop_keywords(irb))


def exif_span(data: bytes) -> tuple[int, int] | None:
    """Where the EXIF TIFF block lies in the JPEG ``data``; None: there is none."""
    segments, _ = parse_jpeg(data)
    index, _tiff = exif_tiff(data, segments)
    return None if index is None else (segments[index].start + 10, segments[index].end)
