"""The container parsers: reading a TIFF-structured file's IFD0 tags by seeking; PNG chunks."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from photocap.errors import WriteError
from photocap.metadata.ifd import read_tiff_file_tags, set_ifd0_tags
from photocap.metadata.png import (
    MAX_PNG_TEXT,
    PNG_SIGNATURE,
    parse_png,
    png_chunk,
    png_texts,
    png_xmp_payload,
    read_png_file_chunks,
)


def tiff_file(header: bytes, end: str, text: bytes, at: int = 4096) -> bytes:
    """``header`` (4 bytes), IFD0 at 8 with ImageDescription (ASCII) and Orientation (SHORT),
    the text stored at offset ``at``."""
    ifd = struct.pack(end + "H", 2)
    ifd += struct.pack(end + "HHII", 270, 2, len(text), at)
    ifd += struct.pack(end + "HHI", 274, 3, 1) + struct.pack(end + "H", 6) + b"\0\0"
    ifd += struct.pack(end + "I", 0)
    data = header + struct.pack(end + "I", 8) + ifd
    return data.ljust(at, b"\0") + text


@pytest.mark.parametrize(
    ("header", "end"),
    [(b"II*\0", "<"), (b"MM\0*", ">"), (b"IIRO", "<"), (b"MMOR", ">"), (b"IIU\0", "<")],
)
def test_ifd0_text_of_any_tiff_based_raw(header: bytes, end: str) -> None:
    # TIFF (DNG, NEF, CR2, ARW, PEF), Olympus ORF and Panasonic RW2 headers, either byte order.
    data = tiff_file(header, end, b"Grandpa's 80th\0", at=300_000)
    got = read_tiff_file_tags(io.BytesIO(data), {270, 274, 700})
    assert got == {270: (2, b"Grandpa's 80th\0")}  # SHORT values are not read; 700 is absent


def test_not_tiff_inside_and_damage() -> None:
    assert read_tiff_file_tags(io.BytesIO(b"FUJIFILMCCD-RAW 0201"), {270}) is None  # RAF
    cut = tiff_file(b"II*\0", "<", b"Grandpa's 80th\0")[:-4]
    with pytest.raises(WriteError, match="out of range"):
        read_tiff_file_tags(io.BytesIO(cut), {270})


def png_file(*middle: bytes) -> bytes:
    """A PNG: IHDR, the ``middle`` chunks, IEND (no real pixels: the parsers do not decode)."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + b"".join(middle) + png_chunk(b"IEND", b"")


def test_new_ifd0_refuses_a_chain_back_into_ifd0_and_copies_other_next_pointers() -> None:
    data = bytearray(tiff_file(b"II*\0", "<", b"A scan.\0"))
    next_at = 8 + 2 + 12 * 2
    caption = {270: (2, b"Ours.\0")}
    for bad in (8, 8 + 2 + 12):  # IFD0 itself; its second entry
        data[next_at : next_at + 4] = struct.pack("<I", bad)
        with pytest.raises(WriteError, match=r"^corrupt TIFF: IFD0's next-IFD pointer points"):
            set_ifd0_tags(bytes(data), caption, "TIFF")
    data[next_at : next_at + 4] = struct.pack("<I", 1 << 20)  # out of range: kept as it is
    new = set_ifd0_tags(bytes(data), caption, "TIFF")
    (ifd0,) = struct.unpack("<I", new[4:8])
    assert new[ifd0 + 2 + 12 * 2 : ifd0 + 2 + 12 * 2 + 4] == struct.pack("<I", 1 << 20)


def test_png_texts_found_in_memory_and_by_seeking() -> None:
    # eXIf (with the JPEG-style prefix some writers add), the XMP iTXt, and a text chunk after
    # a large IDAT that the seeking reader skips without reading.
    tiff = b"MM\0*\0\0\0\x08" + b"\0" * 6
    data = png_file(
        png_chunk(b"tEXt", b"Software\0GIMP"),
        png_chunk(b"eXIf", b"Exif\0\0" + tiff),
        png_chunk(b"IDAT", b"\0" * 1_000_000),
        png_chunk(b"iTXt", png_xmp_payload(b"<x:xmpmeta/>")),
    )
    chunks, end = parse_png(data + b"trailer")
    assert [c.type for c in chunks] == [b"IHDR", b"tEXt", b"eXIf", b"IDAT", b"iTXt", b"IEND"]
    assert end == len(data)
    in_memory = png_texts([(c.type, c.payload(data)) for c in chunks])
    assert in_memory == (tiff, b"<x:xmpmeta/>")
    fh = CountingReader(data)
    found = read_png_file_chunks(fh)
    assert [k for k, _ in found] == [b"eXIf", b"iTXt"] and png_texts(found) == in_memory
    assert fh.bytes_read < 1000  # the image data was seeked past, not read


class CountingReader(io.BytesIO):
    """A file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out


def test_png_raw_exif_profile_read_when_there_is_no_exif_chunk() -> None:
    tiff = b"II*\0\x08\0\0\0" + b"\0" * 6
    hexed = (b"Exif\0\0" + tiff).hex()
    text = f"\nexif\n{len(hexed) // 2:8d}\n{hexed[:20]}\n{hexed[20:]}\n".encode()
    ztxt = png_chunk(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(text))
    assert png_texts([(b"zTXt", ztxt[8:-4])]) == (tiff, None)


def test_png_damage_and_inflation_bombs_are_refused() -> None:
    good = png_file(png_chunk(b"IDAT", b"x"))
    with pytest.raises(WriteError, match="IDAT chunk fails its CRC"):
        parse_png(good[:-14] + b"y" + good[-13:])
    with pytest.raises(WriteError, match="no IEND"):
        parse_png(good[:-12])
    with pytest.raises(WriteError, match="no IEND"):
        read_png_file_chunks(io.BytesIO(good[:-12]))
    with pytest.raises(WriteError, match="does not start with IHDR"):
        parse_png(PNG_SIGNATURE + good[33:])
    # 1 KB that inflates past the limit: refused, not inflated into memory
    bomb = zlib.compress(b"\0" * (MAX_PNG_TEXT + 1), 9)
    payload = b"XML:com.adobe.xmp\0\x01\x00\0\0" + bomb
    with pytest.raises(WriteError, match="inflates past"):
        png_texts([(b"iTXt", payload)])
