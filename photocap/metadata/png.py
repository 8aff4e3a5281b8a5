"""PNG: where a caption goes in a PNG file, and how it is put there losslessly.

A PNG keeps its EXIF in an ``eXIf`` chunk (a TIFF block) and its XMP packet in an ``iTXt``
chunk with the keyword :data:`PNG_XMP_KEYWORD`; older tools wrote EXIF as hex text in a text
chunk ("Raw profile type exif"), which is read too.

* **Parse**: :func:`parse_png`; from a large file by seeking past the image data,
  :func:`read_png_file_chunks`; the texts of chunks, :func:`png_texts`.
* **Read texts**: :func:`read_texts`.
* **Rebuild**: :func:`rebuild_png` replaces the ``eXIf`` chunk and the XMP ``iTXt`` chunk
  where they are, or adds them just before the image data; every other chunk and anything
  after ``IEND`` is copied byte for byte.
* **Verify**: :func:`verify_png`: only those chunks differ, our texts read back, and every
  frame of an animated PNG decodes to the same pixels.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from photocap.errors import MetadataError, WriteError
from photocap.metadata.edit import FileEdit, InFileText, verify_same_frames
from photocap.metadata.ifd import EXIF_HEADER, NEW_IFD0_DEFAULTS, set_ifd0_tags, verify_tags
from photocap.metadata.xmp import XmpDocument, apply_xmp_edit, parse_packet, verify_xmp_edit

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
        raise MetadataError("not a PNG (no PNG signature)")
    pos, chunks = len(PNG_SIGNATURE), list[PngChunk]()
    while not chunks or chunks[-1].type != b"IEND":
        if pos + 12 > len(data):
            raise MetadataError("corrupt PNG: truncated (no IEND chunk)")
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + size
        if size > 0x7FFFFFFF or end > len(data) or not kind.isalpha():
            raise MetadataError(f"corrupt PNG: bad chunk at byte {pos}")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise MetadataError(f"corrupt PNG: {kind.decode('latin-1')} chunk fails its CRC")
        if not chunks and kind != b"IHDR":
            raise MetadataError("corrupt PNG: does not start with IHDR")
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
            raise MetadataError("corrupt PNG: short iTXt chunk")
        compressed = rest[0] == 1
        parts = rest[2:].split(b"\x00", 2)  # language tag, translated keyword, text
        if len(parts) != 3:
            raise MetadataError("corrupt PNG: malformed iTXt chunk")
        rest = parts[2]
    if not compressed:
        return rest
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(rest, MAX_PNG_TEXT)
    except zlib.error:
        raise MetadataError("corrupt PNG: a compressed text chunk does not inflate") from None
    if inflate.unconsumed_tail:
        raise MetadataError(f"PNG text chunk inflates past {MAX_PNG_TEXT // 2**20} MB; not read")
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
        raise MetadataError("not a PNG (no PNG signature)")
    wanted = {PNG_XMP_KEYWORD, *PNG_RAW_EXIF_KEYWORDS}
    found: list[tuple[bytes, bytes]] = []
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise MetadataError("corrupt PNG: truncated (no IEND chunk)")
        (size,) = struct.unpack(">I", head[:4])
        kind = head[4:]
        if kind == b"IEND":
            return found
        start = fh.tell()
        if kind == b"eXIf" or kind in PNG_TEXT_TYPES:
            payload = fh.read(min(size, 80))  # the keyword, to tell whether it is wanted
            if kind == b"eXIf" or png_keyword(payload) in wanted:
                if size > MAX_PNG_TEXT:
                    raise MetadataError(f"PNG {kind.decode()} chunk too large ({size} bytes)")
                payload += fh.read(size - len(payload))
                if len(payload) != size:
                    raise MetadataError("corrupt PNG: truncated chunk")
                found.append((kind, payload))
        fh.seek(start + size + 4)  # past the payload and the CRC


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
    """:func:`~photocap.metadata.png.png_texts` of the ``found`` chunks only."""
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
        verify_tags(old_tiff, new_tiff, edit.tags)
    if edit.xmp:
        found = _png_found(new, new_chunks, PNG_XMP_KEYWORD)
        if len(found) > 1:
            raise WriteError("verification failed: more than one XMP chunk")
        _, old_packet = _png_texts(old, old_chunks, _png_found(old, old_chunks, PNG_XMP_KEYWORD))
        verify_xmp_edit(old_packet, _png_texts(new, new_chunks, found)[1], edit.xmp)
    verify_same_frames(old, new, "PNG")


def read_texts(data: bytes, fmt: str = "PNG") -> InFileText:
    """The caption-bearing parts of a PNG's bytes: its EXIF is an eXIf chunk, its XMP packet
    an iTXt chunk. Raises WriteError."""
    pngs = parse_png(data)[0]
    return InFileText("PNG", *png_texts([(c.type, c.payload(data)) for c in pngs]), None)


def read_file_texts(photo: Path) -> InFileText:
    """:func:`read_texts` of a PNG file, seeking past the image data."""
    with open(photo, "rb") as fh:
        return InFileText("PNG", *png_texts(read_png_file_chunks(fh)), None)


def exif_span(data: bytes) -> tuple[int, int] | None:
    """Where the EXIF TIFF block lies in the PNG ``data`` (the eXIf chunk's payload, past an
    ``Exif\\0\\0`` prefix some writers add); None: there is none."""
    chunk = next((c for c in parse_png(data)[0] if c.type == b"eXIf"), None)
    if chunk is None:
        return None
    start = chunk.start + 8
    return start + (len(EXIF_HEADER) if data[start:].startswith(EXIF_HEADER) else 0), (
        chunk.end - 4
    )
