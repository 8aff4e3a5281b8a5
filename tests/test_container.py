"""The container parsers: reading a TIFF-structured file's IFD0 tags by seeking."""

from __future__ import annotations

import io
import struct

import pytest

from photocap.container import read_tiff_file_tags
from photocap.errors import WriteError


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
