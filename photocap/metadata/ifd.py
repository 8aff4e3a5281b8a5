"""The TIFF structure every EXIF block and every TIFF file shares: IFDs, entries, values.

An EXIF block (a JPEG's APP1, a WebP's ``EXIF`` chunk, a PNG's ``eXIf`` chunk) is a TIFF block,
and a TIFF or DNG file is one too. This module parses one (:class:`Tiff`), reads a tag
(:func:`read_tag`; from a large file by seeking, :func:`read_tiff_file_tags`), and changes IFD0
the lossless way photocap writes: a *new* IFD0 (the old entries plus ours) appended at the end
and the header pointed at it, so that every existing offset (Exif IFD, GPS, maker notes,
thumbnail, strips) stays valid (:func:`set_ifd0_tags`). It also cross-checks a rebuilt block
with piexif, an independent parser (:func:`verify_tags`), and maps every byte something points
to (:func:`all_references`), so that a caption left behind as dead bytes can be cleared.

Parsers and builders only, no policy. Damage raises :class:`~photocap.errors.WriteError`
with one line.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

from photocap.errors import MetadataError, WriteError

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
            raise MetadataError(f"corrupt {what}: bad TIFF header")
        self.data = data
        self.ifd0 = self.u32(4)

    def u16(self, off: int) -> int:
        if off + 2 > len(self.data):
            raise MetadataError(f"corrupt {self.what}: offset out of range")
        return int(struct.unpack(self.end + "H", self.data[off : off + 2])[0])

    def u32(self, off: int) -> int:
        if off + 4 > len(self.data):
            raise MetadataError(f"corrupt {self.what}: offset out of range")
        return int(struct.unpack(self.end + "I", self.data[off : off + 4])[0])

    def read_ifd(self, off: int) -> tuple[list[Entry], int]:
        """(entries, offset of the next IFD or 0)."""
        n = self.u16(off)
        if off + 2 + 12 * n + 4 > len(self.data):
            raise MetadataError(f"corrupt {self.what}: IFD runs past the end")
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
                raise MetadataError(
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
            raise MetadataError(f"corrupt {self.what}: value out of range")
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
            raise MetadataError("corrupt TIFF: offset out of range")
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
                raise MetadataError(f"TIFF tag {tag} too large ({size} bytes)")
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


def load_piexif(tiff: bytes | None) -> dict[str, object] | None:
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


def verify_tags(
    old_tiff: bytes | None, new_tiff: bytes, updates: dict[int, tuple[int, bytes] | None]
) -> None:
    """Our tags read back as written; piexif sees every other tag unchanged."""
    for tag, want in updates.items():
        got = read_tag(new_tiff, tag)
        if (want is None and got is not None) or (want is not None and got != want[1]):
            raise WriteError(f"verification failed: EXIF tag 0x{tag:04X} not as written")
    before, after = load_piexif(old_tiff), load_piexif(new_tiff)
    if before is not None and (after is None or not _same_tags(before, after, set(updates))):
        raise WriteError("verification failed: existing EXIF tags changed")


# Offset tag -> its byte-count tag: image data (strips, tiles), a thumbnail, free space.
_DATA_RANGES = {0x0111: 0x0117, 0x0144: 0x0145, 0x0201: 0x0202, 0x0120: 0x0121}


def all_references(t: Tiff) -> list[tuple[int, int]]:
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
