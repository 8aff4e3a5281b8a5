"""WebP: where a caption goes in a WebP file (RIFF chunks), and how it is put there losslessly.

A WebP file is a RIFF list of chunks; its EXIF lives in an ``EXIF`` chunk and its XMP packet in
an ``XMP `` chunk, both flagged in the ``VP8X`` header of the extended format.

* **Parse**: :func:`parse_webp`, :func:`webp_exif_tiff`, :func:`webp_canvas`.
* **Read texts**: :func:`read_texts`.
* **Rebuild**: :func:`rebuild_webp` replaces or adds only the ``EXIF`` and ``XMP `` chunks
  (after the image data, EXIF then XMP, as the container spec orders them) and sets the
  ``VP8X`` flags; a "simple" WebP (one ``VP8``/``VP8L`` chunk) gets the ``VP8X`` header the
  extended format requires, its canvas size read from the bitstream. Every other chunk is
  copied byte for byte.
* **Verify**: :func:`verify_webp`: only those chunks and flags differ, our texts read back,
  and every frame decodes to the same pixels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from photocap.errors import MetadataError, WriteError
from photocap.metadata.edit import FileEdit, InFileText, verify_same_frames
from photocap.metadata.ifd import EXIF_HEADER, NEW_IFD0_DEFAULTS, set_ifd0_tags, verify_tags
from photocap.metadata.xmp import XmpDocument, apply_xmp_edit, parse_packet, verify_xmp_edit

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
        raise MetadataError("not a WebP (no RIFF WEBP header)")
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = 8 + riff_size
    if end > len(data):
        raise MetadataError("corrupt WebP: truncated")
    pos, chunks = 12, list[Chunk]()
    while pos < end:
        if pos + 8 > end:
            raise MetadataError(f"corrupt WebP: truncated chunk header at byte {pos}")
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + size > end:
            raise MetadataError(f"corrupt WebP: chunk {fourcc!r} runs past the end")
        stop = min(pos + 8 + size + (size & 1), end)
        chunks.append(Chunk(fourcc, pos, stop, size))
        pos = stop
    if not chunks:
        raise MetadataError("corrupt WebP: no chunks")
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
        verify_tags(old_tiff, new_tiff, edit.tags)
    if edit.xmp:
        old_packets = [c.payload(old) for c in old_chunks if c.fourcc == b"XMP "]
        new_packets = [c.payload(new) for c in new_chunks if c.fourcc == b"XMP "]
        if len(new_packets) > 1:
            raise WriteError("verification failed: more than one XMP chunk")
        verify_xmp_edit(
            old_packets[0] if old_packets else None,
            new_packets[0] if new_packets else None,
            edit.xmp,
        )
    verify_same_frames(old, new, "WebP")


def read_texts(data: bytes, fmt: str = "WebP") -> InFileText:
    """The caption-bearing parts of a WebP's bytes: its EXIF and XMP chunks. Raises
    WriteError."""
    chunks, _ = parse_webp(data)
    xmp = next((c.payload(data) for c in chunks if c.fourcc == b"XMP "), None)
    return InFileText("WebP", webp_exif_tiff(data, chunks)[1], xmp, None)


def exif_span(data: bytes) -> tuple[int, int] | None:
    """Where the EXIF TIFF block lies in the WebP ``data``; None: there is none."""
    chunks, _ = parse_webp(data)
    index, tiff, prefixed = webp_exif_tiff(data, chunks)
    if index is None or tiff is None:
        return None
    start = chunks[index].start + 8 + (len(EXIF_HEADER) if prefixed else 0)
    return start, start + len(tiff)
