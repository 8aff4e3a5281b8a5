"""The containers photocap reads and rewrites metadata in: JPEG marker segments, the EXIF TIFF
block and its IFDs, WebP RIFF chunks, PNG chunks; and telling a file's format from its first
bytes.

Parsers and low-level builders only, with no policy: what may change and how a change is
verified lives in :mod:`photocap.exif`; what the file says about its caption in
:mod:`photocap.embedded`. Damage raises :class:`~photocap.errors.WriteError` with one line.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from photocap.errors import WriteError

TAG_IMAGE_DESCRIPTION = 0x010E
TAG_MAKE, TAG_MODEL = 0x010F, 0x0110
TAG_XMP = 0x02BC  # the XMP packet of a TIFF file (700)
TAG_XP_COMMENT = 0x9C9C
TYPE_BYTE, TYPE_ASCII, TYPE_LONG, TYPE_IFD = 1, 2, 4, 13
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
SUB_IFD_TAGS = {0x8769, 0x8825, 0xA005, 0x014A}  # Exif, GPS, Interop, SubIFDs

TYPE_SHORT, TYPE_RATIONAL = 3, 5
NEW_IFD0_DEFAULTS: dict[int, tuple[int, bytes] | None] = {
    0x011A: (TYPE_RATIONAL, struct.pack("<II", 72, 1)),  # XResolution
    0x011B: (TYPE_RATIONAL, struct.pack("<II", 72, 1)),  # YResolution
    0x0128: (TYPE_SHORT, struct.pack("<H", 2)),  # ResolutionUnit: inches
    0x0213: (TYPE_SHORT, struct.pack("<H", 1)),  # YCbCrPositioning: centered
}

EXIF_HEADER = b"Exif\x00\x00"
MAX_SEGMENT = 0xFFFF  # a JPEG segment's length field (includes its own 2 bytes)
MAX_PHOTO_BYTES = 2 * 1024**3

SOI, SOS, APP0, APP1 = 0xD8, 0xDA, 0xE0, 0xE1
IN_FILE_FORMATS = ("JPEG", "WebP", "TIFF", "PNG", "DNG")  # formats --write exif changes in place


# --------------------------------------------------------------------------- format sniffing


def detect_format(data: bytes, name: str | Path | None = None) -> str:
    """A short format name from a file's bytes (its first ones are enough) and, for RAW, its
    name: "JPEG", "WebP", "RAW", ... as :func:`photocap.image.sniff_format` finds it, and
    "DNG" for the RAW that Adobe made to hold its metadata inside (a TIFF named ``.dng``)."""
    from photocap.image import SNIFF_BYTES, sniff_format

    kind = sniff_format(data[:SNIFF_BYTES], name)
    if kind == "RAW" and name is not None and Path(name).suffix.lower() == ".dng":
        return "DNG"
    return {"WEBP": "WebP", "HEIF": "HEIC"}.get(kind, kind) if kind else "this file type"


def detect_file_format(path: Path) -> str:
    """:func:`detect_format` of a file, reading only its first bytes."""
    from photocap.image import SNIFF_BYTES

    with open(path, "rb") as fh:
        return detect_format(fh.read(SNIFF_BYTES), path)


# --------------------------------------------------------------------------- JPEG segments


@dataclass(frozen=True)
class Segment:
    """One marker segment before SOS: ``data[start:end]`` is FF, marker, length, payload."""

    marker: int
    start: int
    end: int


def parse_jpeg(data: bytes) -> tuple[list[Segment], int]:
    """(segments between SOI and SOS, offset of the SOS marker). Raises WriteError."""
    if data[:2] != b"\xff\xd8":
        raise WriteError("not a JPEG (no SOI marker)")
    pos, segments = 2, list[Segment]()
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise WriteError(f"corrupt JPEG: no marker at byte {pos}")
        start = pos
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes are allowed before a marker
            pos += 1
        if pos >= len(data):
            raise WriteError("corrupt JPEG: truncated before image data")
        marker = data[pos]
        pos += 1
        if marker == SOS:
            return segments, start
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM / RSTn: no length
            segments.append(Segment(marker, start, pos))
            continue
        if marker in (SOI, 0xD9, 0x00):
            raise WriteError(f"corrupt JPEG: unexpected marker FF{marker:02X} at byte {start}")
        if pos + 2 > len(data):
            raise WriteError("corrupt JPEG: truncated segment")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > len(data):
            raise WriteError(f"corrupt JPEG: bad segment length at byte {start}")
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


# --------------------------------------------------------------------------- TIFF / IFDs


@dataclass(frozen=True)
class Entry:
    tag: int
    type: int
    count: int
    raw: bytes  # the 4-byte value/offset field, as stored

    def size(self) -> int:
        return TYPE_SIZES.get(self.type, 1) * self.count


class Tiff:
    """Read-only view of a TIFF block (either byte order), bounds-checked: an EXIF block, or a
    whole TIFF file (``what`` names it in errors)."""

    def __init__(self, data: bytes, what: str = "EXIF") -> None:
        self.what = what
        if data[:4] == b"II*\x00":
            self.end = "<"
        elif data[:4] == b"MM\x00*":
            self.end = ">"
        else:
            raise WriteError(f"corrupt {what}: bad TIFF header")
        self.data = data
        self.ifd0 = self.u32(4)

    def u16(self, off: int) -> int:
        if off + 2 > len(self.data):
            raise WriteError(f"corrupt {self.what}: offset out of range")
        return int(struct.unpack(self.end + "H", self.data[off : off + 2])[0])

    def u32(self, off: int) -> int:
        if off + 4 > len(self.data):
            raise WriteError(f"corrupt {self.what}: offset out of range")
        return int(struct.unpack(self.end + "I", self.data[off : off + 4])[0])

    def read_ifd(self, off: int) -> tuple[list[Entry], int]:
        """(entries, offset of the next IFD or 0)."""
        n = self.u16(off)
        if off + 2 + 12 * n + 4 > len(self.data):
            raise WriteError(f"corrupt {self.what}: IFD runs past the end")
        entries = []
        for i in range(n):
            p = off + 2 + 12 * i
            tag, typ, count = struct.unpack(self.end + "HHI", self.data[p : p + 8])
            entries.append(Entry(tag, typ, count, self.data[p + 8 : p + 12]))
        return entries, self.u32(off + 2 + 12 * n)

    def check_chain(self) -> None:
        """Raise WriteError when the chain of IFDs from IFD0 (IFD0, IFD1, ... by their next
        pointers) leads back into IFD0: its next pointer points to itself or inside it, or a
        later IFD's points back to it. A new IFD0 copies the old one's next pointer, so such a
        file would come out worse (the old IFD0 read as a bogus IFD1). Other damage further
        down the chain (a cycle among later IFDs, a pointer out of range) is left as it is:
        those bytes are copied, never followed."""
        if not self.ifd0:
            return
        entries, nxt = self.read_ifd(self.ifd0)
        ifd0_end = self.ifd0 + 2 + 12 * len(entries) + 4
        seen: set[int] = set()
        depth = 0
        while nxt and nxt not in seen:  # a cycle among later IFDs ends the walk
            if self.ifd0 <= nxt < ifd0_end:
                where = "to itself" if depth == 0 and nxt == self.ifd0 else "back into IFD0"
                raise WriteError(
                    f"corrupt {self.what}: IFD{depth}'s next-IFD pointer points {where}; "
                    "not written"
                )
            seen.add(nxt)
            try:
                _, nxt = self.read_ifd(nxt)
            except WriteError:
                return  # out of range: copied as it is, never followed
            depth += 1

    def value(self, entry: Entry) -> bytes:
        size = entry.size()
        if size <= 4:
            return entry.raw[:size]
        off = int(struct.unpack(self.end + "I", entry.raw)[0])
        if off + size > len(self.data):
            raise WriteError(f"corrupt {self.what}: value out of range")
        return self.data[off : off + size]

    def longs(self, entry: Entry) -> list[int]:
        raw = self.value(entry)
        return [int(v) for v in struct.unpack(f"{self.end}{len(raw) // 4}I", raw)]

    def ifd0_entries(self) -> list[Entry]:
        return self.read_ifd(self.ifd0)[0] if self.ifd0 else []

    def references(self, skip_ifd0_tags: set[int]) -> list[tuple[int, int]]:
        """(start, end) of everything in the block something points to, except IFD0 itself
        and the out-of-line data of ``skip_ifd0_tags``. LONG values that might be pointers
        to unknown structures count as zero-length references (conservative)."""
        refs: list[tuple[int, int]] = []
        seen: set[int] = set()
        queue = [(self.ifd0, True)] if self.ifd0 else []
        while queue:
            off, is_ifd0 = queue.pop()
            if off in seen or off == 0 or len(seen) > 64:
                continue
            seen.add(off)
            entries, nxt = self.read_ifd(off)
            if not is_ifd0:
                refs.append((off, off + 2 + 12 * len(entries) + 4))
            for e in entries:
                if is_ifd0 and e.tag in skip_ifd0_tags:
                    continue
                if e.size() > 4:
                    start = int(struct.unpack(self.end + "I", e.raw)[0])
                    refs.append((start, start + e.size()))
                if e.type in (TYPE_LONG, TYPE_IFD) and e.count <= 4096:
                    values = self.longs(e)
                    refs.extend((v, v) for v in values)
                    if e.tag in SUB_IFD_TAGS:
                        queue.extend((v, False) for v in values)
            if nxt and is_ifd0:  # IFD1 (thumbnail). Sub-IFD "next" fields are often junk.
                refs.append((nxt, nxt))
                queue.append((nxt, False))
        return refs


def read_tag(tiff: bytes | None, tag: int, what: str = "EXIF") -> bytes | None:
    """The raw value of an IFD0 tag, or None."""
    if not tiff:
        return None
    t = Tiff(tiff, what)
    for e in t.ifd0_entries():
        if e.tag == tag:
            return t.value(e)
    return None


# A camera RAW that is TIFF inside: TIFF (DNG, NEF, CR2, ARW, PEF, ...), Olympus ORF ("IIRO",
# "IIRS", "MMOR") and Panasonic RW2 ("IIU\0") headers; IFD0 offset at byte 4 in all of them.
TIFF_FILE_HEADERS = (b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")
TYPES_OF_BYTES = (TYPE_BYTE, TYPE_ASCII, 7)  # BYTE, ASCII, UNDEFINED: no byte order inside
# Photoshop types a TIFF's IPTC-NAA record (33723) LONG, yet writes the record's bytes in order.
_BLOB_TYPES = (*TYPES_OF_BYTES, TYPE_LONG)
MAX_TIFF_FILE_VALUE = 4 * 1024 * 1024  # an XMP packet of a DNG is KBs


def read_tiff_file_tags(
    fh: BinaryIO, tags: set[int], optional: Collection[int] = ()
) -> dict[int, tuple[int, bytes]] | None:
    """IFD0's ``tags`` of a TIFF-structured file open at ``fh``, as {tag: (type, value bytes)},
    for values that are bytes (text, XMP, an IPTC record typed BYTE, UNDEFINED or LONG), as
    stored; None when the file is not TIFF inside.

    Reads by seeking, not the whole file: a camera RAW is tens of MB, and its IFD0 and values
    can be anywhere in it (Adobe appends a DNG's updated XMP at the end). Damage raises
    :class:`WriteError`, except that a tag of ``optional`` whose value cannot be read is left
    out.
    """
    fh.seek(0)
    header = fh.read(8)
    if len(header) < 8 or header[:4] not in TIFF_FILE_HEADERS:
        return None
    end = "<" if header[:2] == b"II" else ">"

    def read_at(offset: int, size: int) -> bytes:
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise WriteError("corrupt TIFF: offset out of range")
        return data

    (ifd0,) = struct.unpack(end + "I", header[4:8])
    (count,) = struct.unpack(end + "H", read_at(ifd0, 2))
    table = read_at(ifd0 + 2, 12 * count)
    found: dict[int, tuple[int, bytes]] = {}
    for i in range(0, len(table), 12):
        tag, typ, n = struct.unpack(end + "HHI", table[i : i + 8])
        if tag not in tags or typ not in _BLOB_TYPES or tag in found:
            continue
        size = n * TYPE_SIZES[typ]
        field = table[i + 8 : i + 12]  # the value itself, or its offset when over 4 bytes
        (offset,) = struct.unpack(end + "I", field)
        try:
            if size > MAX_TIFF_FILE_VALUE:
                raise WriteError(f"TIFF tag {tag} too large ({size} bytes)")
            found[tag] = (typ, field[:size] if size <= 4 else read_at(offset, size))
        except WriteError:
            if tag not in optional:
                raise
    return found


def decode_ascii(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace").strip()


def decode_xp(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    if len(raw) % 2:
        raw = raw[:-1]
    return raw.decode("utf-16-le", errors="replace").split("\x00", 1)[0].strip()


def encode_ascii(text: str) -> tuple[int, bytes]:
    return TYPE_ASCII, text.encode("utf-8") + b"\x00"


def encode_xp(text: str) -> tuple[int, bytes]:
    return TYPE_BYTE, text.encode("utf-16-le") + b"\x00\x00"


def set_ifd0_tags(
    tiff: bytes | None, updates: dict[int, tuple[int, bytes] | None], what: str = "EXIF"
) -> bytes:
    """A new TIFF block: the old one byte for byte plus a new IFD0 with ``updates`` applied.

    ``updates`` maps tag -> (type, value bytes), or None to remove the tag. Old IFD0 entries are
    copied verbatim (their offsets still point into the unchanged old bytes).
    """
    if tiff is None:
        tiff = b"II*\x00\x00\x00\x00\x00"  # empty little-endian TIFF, IFD0 comes next
    t = Tiff(tiff, what)
    t.check_chain()  # the new IFD0 copies the old one's next pointer
    entries, next_ifd = t.read_ifd(t.ifd0) if t.ifd0 else ([], 0)
    base = tiff
    # If the old IFD0 is at the very end and nothing else points into it (photocap appended
    # it last time), cut it off instead of leaving it behind as dead bytes.
    if t.ifd0 >= 8:
        try:
            refs = t.references(skip_ifd0_tags=set(updates))
        except WriteError:  # something odd in other IFDs: do not risk cutting anything
            refs = [(len(tiff), len(tiff))]
        own_kept = [e for e in entries if e.tag not in updates and e.size() > 4]
        if all(s < t.ifd0 and end <= t.ifd0 for s, end in refs) and not any(
            int(struct.unpack(t.end + "I", e.raw)[0]) >= t.ifd0 for e in own_kept
        ):
            base = tiff[: t.ifd0]
    e_ = t.end
    kept = [e for e in entries if e.tag not in updates]
    new_values = {tag: v for tag, v in updates.items() if v is not None}
    count = len(kept) + len(new_values)
    out = bytearray(base)
    if len(out) % 2:
        out += b"\x00"  # TIFF offsets are word-aligned
    ifd_off = len(out)
    data_off = ifd_off + 2 + 12 * count + 4
    table: list[tuple[int, bytes]] = [
        (e.tag, struct.pack(e_ + "HHI", e.tag, e.type, e.count) + e.raw) for e in kept
    ]
    blobs = bytearray()
    for tag, (typ, value) in sorted(new_values.items()):
        n = len(value) // TYPE_SIZES[typ]
        if len(value) <= 4:
            field = value.ljust(4, b"\x00")
        else:
            field = struct.pack(e_ + "I", data_off + len(blobs))
            blobs += value
            if len(blobs) % 2:
                blobs += b"\x00"
        table.append((tag, struct.pack(e_ + "HHI", tag, typ, n) + field))
    table.sort(key=lambda item: item[0])  # TIFF: entries in ascending tag order
    out += struct.pack(e_ + "H", count)
    for _, raw in table:
        out += raw
    out += struct.pack(e_ + "I", next_ifd)
    out += blobs
    out[4:8] = struct.pack(e_ + "I", ifd_off)
    return bytes(out)


# --------------------------------------------------------------------------- WebP chunks

VP8X_XMP, VP8X_EXIF, VP8X_ALPHA = 0x04, 0x08, 0x10
# Chunks that come before EXIF in an extended WebP (container spec order); EXIF goes after
# the last of them, so XMP and unknown chunks stay after it.
WEBP_BEFORE_EXIF = {b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L"}


@dataclass(frozen=True)
class Chunk:
    """One RIFF chunk: ``data[start:end]`` is FourCC, size, payload and the pad byte."""

    fourcc: bytes
    start: int
    end: int
    size: int  # payload bytes

    def payload(self, data: bytes) -> bytes:
        return data[self.start + 8 : self.start + 8 + self.size]


def parse_webp(data: bytes) -> tuple[list[Chunk], int]:
    """(chunks of the RIFF ``WEBP`` form, offset where the RIFF data ends). Raises WriteError."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise WriteError("not a WebP (no RIFF WEBP header)")
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = 8 + riff_size
    if end > len(data):
        raise WriteError("corrupt WebP: truncated")
    pos, chunks = 12, list[Chunk]()
    while pos < end:
        if pos + 8 > end:
            raise WriteError(f"corrupt WebP: truncated chunk header at byte {pos}")
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + size > end:
            raise WriteError(f"corrupt WebP: chunk {fourcc!r} runs past the end")
        stop = min(pos + 8 + size + (size & 1), end)
        chunks.append(Chunk(fourcc, pos, stop, size))
        pos = stop
    if not chunks:
        raise WriteError("corrupt WebP: no chunks")
    return chunks, end


def webp_exif_tiff(data: bytes, chunks: list[Chunk]) -> tuple[int | None, bytes | None, bool]:
    """(index of the EXIF chunk, its TIFF block, whether it carried an "Exif\\0\\0" prefix)."""
    for i, chunk in enumerate(chunks):
        if chunk.fourcc == b"EXIF":
            payload = chunk.payload(data)
            if payload.startswith(EXIF_HEADER):  # some writers add the JPEG-style prefix
                return i, payload[len(EXIF_HEADER) :], True
            return i, payload, False
    return None, None, False


def webp_canvas(data: bytes, chunk: Chunk) -> tuple[int, int, bool]:
    """(width, height, has alpha) from a simple WebP's VP8 / VP8L bitstream header."""
    payload = chunk.payload(data)
    if chunk.fourcc == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", payload[6:10])
        return width & 0x3FFF, height & 0x3FFF, False
    if chunk.fourcc == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        (bits,) = struct.unpack("<I", payload[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    raise WriteError("unusual WebP bitstream header; not written")


# --------------------------------------------------------------------------- PNG chunks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"  # the iTXt chunk holding the XMP packet (XMP spec part 3)
# ImageMagick's (and older exiftool's) EXIF before eXIf existed: hex text in a text chunk.
PNG_RAW_EXIF_KEYWORDS = (b"Raw profile type exif", b"Raw profile type APP1")
PNG_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
MAX_PNG_TEXT = 16 * 1024 * 1024  # a text chunk inflated past this is not metadata: refused


@dataclass(frozen=True)
class PngChunk:
    """One PNG chunk: ``data[start:end]`` is length, type, payload and CRC."""

    type: bytes
    start: int
    end: int

    def payload(self, data: bytes) -> bytes:
        return data[self.start + 8 : self.end - 4]


def parse_png(data: bytes) -> tuple[list[PngChunk], int]:
    """(chunks from IHDR to IEND, offset after IEND), every CRC checked. Raises WriteError."""
    if not data.startswith(PNG_SIGNATURE):
        raise WriteError("not a PNG (no PNG signature)")
    pos, chunks = len(PNG_SIGNATURE), list[PngChunk]()
    while not chunks or chunks[-1].type != b"IEND":
        if pos + 12 > len(data):
            raise WriteError("corrupt PNG: truncated (no IEND chunk)")
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + size
        if size > 0x7FFFFFFF or end > len(data) or not kind.isalpha():
            raise WriteError(f"corrupt PNG: bad chunk at byte {pos}")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise WriteError(f"corrupt PNG: {kind.decode('latin-1')} chunk fails its CRC")
        if not chunks and kind != b"IHDR":
            raise WriteError("corrupt PNG: does not start with IHDR")
        chunks.append(PngChunk(kind, pos, end))
        pos = end
    return chunks, pos


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A whole chunk: length, type, payload, CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_xmp_payload(packet: bytes) -> bytes:
    """An uncompressed iTXt payload holding ``packet`` (the XMP spec forbids compressing it)."""
    return PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + packet


def png_keyword(payload: bytes) -> bytes:
    """A text chunk's keyword: up to the first NUL (at most 79 bytes)."""
    return payload[: payload.find(b"\x00")] if b"\x00" in payload[:80] else b""


def png_text_value(kind: bytes, payload: bytes) -> bytes:
    """The text of a tEXt, zTXt or iTXt chunk, inflated (at most :data:`MAX_PNG_TEXT`).
    Raises WriteError."""
    rest = payload[len(png_keyword(payload)) + 1 :]
    compressed = kind == b"zTXt"
    if kind == b"zTXt":
        rest = rest[1:]  # the compression method
    elif kind == b"iTXt":
        if len(rest) < 2:
            raise WriteError("corrupt PNG: short iTXt chunk")
        compressed = rest[0] == 1
        parts = rest[2:].split(b"\x00", 2)  # language tag, translated keyword, text
        if len(parts) != 3:
            raise WriteError("corrupt PNG: malformed iTXt chunk")
        rest = parts[2]
    if not compressed:
        return rest
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(rest, MAX_PNG_TEXT)
    except zlib.error:
        raise WriteError("corrupt PNG: a compressed text chunk does not inflate") from None
    if inflate.unconsumed_tail:
        raise WriteError(f"PNG text chunk inflates past {MAX_PNG_TEXT // 2**20} MB; not read")
    return text


def png_raw_profile(text: bytes) -> bytes | None:
    """The bytes of an ImageMagick raw profile ("\\nexif\\n   <length>\\n<hex lines>"), or None
    when it is not one."""
    lines = text.split(b"\n", 3)
    if len(lines) != 4:
        return None
    try:
        raw = bytes.fromhex(lines[3].decode("ascii"))
    except ValueError:
        return None
    return raw[len(EXIF_HEADER) :] if raw.startswith(EXIF_HEADER) else raw


def png_texts(chunks: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """(the EXIF TIFF block, the XMP packet) of a PNG's (type, payload) chunks: the first
    ``eXIf`` (else a raw EXIF profile) and the first XMP ``iTXt``. Raises WriteError."""
    tiff = packet = legacy = None
    for kind, payload in chunks:
        if kind == b"eXIf" and tiff is None:  # some writers add the JPEG-style prefix
            tiff = payload[len(EXIF_HEADER) :] if payload.startswith(EXIF_HEADER) else payload
        elif kind == b"iTXt" and packet is None and png_keyword(payload) == PNG_XMP_KEYWORD:
            packet = png_text_value(kind, payload)
        elif (
            kind in PNG_TEXT_TYPES
            and legacy is None
            and png_keyword(payload) in PNG_RAW_EXIF_KEYWORDS
        ):
            legacy = png_raw_profile(png_text_value(kind, payload))
    return (tiff if tiff is not None else legacy), packet


def read_png_file_chunks(fh: BinaryIO) -> list[tuple[bytes, bytes]]:
    """The (type, payload) of the chunks :func:`png_texts` looks at, of the PNG open at ``fh``,
    by seeking past the rest (the image data is most of a PNG). Raises WriteError."""
    fh.seek(0)
    if fh.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        raise WriteError("not a PNG (no PNG signature)")
    wanted = {PNG_XMP_KEYWORD, *PNG_RAW_EXIF_KEYWORDS}
    found: list[tuple[bytes, bytes]] = []
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise WriteError("corrupt PNG: truncated (no IEND chunk)")
        (size,) = struct.unpack(">I", head[:4])
        kind = head[4:]
        if kind == b"IEND":
            return found
        start = fh.tell()
        if kind == b"eXIf" or kind in PNG_TEXT_TYPES:
            payload = fh.read(min(size, 80))  # the keyword, to tell whether it is wanted
            if kind == b"eXIf" or png_keyword(payload) in wanted:
                if size > MAX_PNG_TEXT:
                    raise WriteError(f"PNG {kind.decode()} chunk too large ({size} bytes)")
                payload += fh.read(size - len(payload))
                if len(payload) != size:
                    raise WriteError("corrupt PNG: truncated chunk")
                found.append((kind, payload))
        fh.seek(start + size + 4)  # past the payload and the CRC
