"""IPTC-IIM: the ``Caption-Abstract`` and ``Keywords`` older tools wrote, read only.

photocap never writes IPTC (an existing block keeps its digest valid that way; Metadata Working
Group readers take EXIF before IPTC in any case), but a caption a person wrote there is theirs
(:mod:`photocap.metadata.authorship`). It lives in an IIM record, inside a Photoshop image
resource block (a JPEG's APP13, a TIFF's tag 34377) or bare (a TIFF's IPTC-NAA tag).
"""

from __future__ import annotations

import struct

IPTC_RESOURCE = 0x0404  # the IPTC-NAA record in a Photoshop image resource block


IPTC_CAPTION = (2, 120)  # IIM record 2, dataset 120: Caption-Abstract
IPTC_KEYWORDS = (2, 25)  # Keywords, one dataset per keyword


def photoshop_caption(irb: bytes) -> str | None:
    """The Caption-Abstract in a Photoshop image resource block, or None."""
    return _iim_caption(_image_resource(irb, IPTC_RESOURCE))


def tiff_iptc_caption(iptc_naa: bytes | None, photoshop: bytes | None) -> str | None:
    """IPTC ``Caption-Abstract`` of a TIFF, from IFD0's IPTC-NAA tag (the IIM record itself;
    Photoshop types it LONG, but its bytes are the record's, in order) or else from its
    Photoshop image resource block; None when neither holds one. Damage reads as None."""
    return _iim_caption(iptc_naa) or _iim_caption(_image_resource(photoshop or b"", IPTC_RESOURCE))


def photoshop_keywords(irb: bytes) -> tuple[str, ...]:
    """The IPTC Keywords in a Photoshop image resource block (a JPEG's APP13), in order."""
    return _iim_texts(_image_resource(irb, IPTC_RESOURCE), IPTC_KEYWORDS)


def tiff_iptc_keywords(iptc_naa: bytes | None, photoshop: bytes | None) -> tuple[str, ...]:
    """IPTC Keywords of a TIFF, from the places :func:`tiff_iptc_caption` reads."""
    return _iim_texts(iptc_naa, IPTC_KEYWORDS) or _iim_texts(
        _image_resource(photoshop or b"", IPTC_RESOURCE), IPTC_KEYWORDS
    )


def _iim_texts(record: bytes | None, wanted: tuple[int, int]) -> tuple[str, ...]:
    """Every dataset ``wanted`` of an IPTC-IIM record as text (see :func:`_iim_caption`)."""
    found = [] if record is None else _iim_datasets(record, wanted)
    return tuple(t for t in (_text(raw).strip() for raw in found) if t)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


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
    found = _iim_datasets(record, wanted, first=True)
    return found[0] if found else None


def _iim_datasets(record: bytes, wanted: tuple[int, int], first: bool = False) -> list[bytes]:
    """The datasets (record, number) of an IPTC-IIM stream, in order (damage ends the walk)."""
    found: list[bytes] = []
    pos = 0
    while pos + 5 <= len(record) and record[pos] == 0x1C:
        number = (record[pos + 1], record[pos + 2])
        (size,) = struct.unpack(">H", record[pos + 3 : pos + 5])
        pos += 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes hold the length
            width = size & 0x7FFF
            if width > 4 or pos + width > len(record):
                return found
            size = int.from_bytes(record[pos : pos + width], "big")
            pos += width
        if pos + size > len(record):
            return found
        if number == wanted:
            found.append(record[pos : pos + size])
            if first:
                return found
        pos += size
    return found
