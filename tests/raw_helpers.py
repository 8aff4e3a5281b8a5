"""Minimal Adobe DNG files for the RAW tests, written by hand (no RAW writer exists for Python).

A DNG is a TIFF: IFD0 holds the camera's preview JPEG (NewSubfileType 1) and points through
SubIFDs to the sensor data, 16-bit Bayer (CFA) samples, uncompressed. LibRaw reads both.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import Image

_FORMATS = {1: "B", 3: "H", 4: "I"}
Tag = tuple[int, int, object]  # (tag, TIFF type, values): 2 takes a str, 5 and 10 (pairs)


def _ifd(entries: list[Tag], at: int) -> bytes:
    """One little-endian IFD placed at offset ``at``, its out-of-line values right after it."""
    entries = sorted(entries, key=lambda e: e[0])
    head, extra = struct.pack("<H", len(entries)), b""
    data_at = at + 2 + 12 * len(entries) + 4
    for tag, typ, values in entries:
        if typ == 2:
            raw, count = str(values).encode() + b"\0", len(str(values)) + 1
        elif typ in (5, 10):  # RATIONAL, SRATIONAL
            pairs = list(values)  # type: ignore[call-overload]
            fmt = "<II" if typ == 5 else "<ii"
            raw, count = b"".join(struct.pack(fmt, *p) for p in pairs), len(pairs)
        else:
            nums = list(values)  # type: ignore[call-overload]
            raw, count = struct.pack(f"<{len(nums)}{_FORMATS[typ]}", *nums), len(nums)
        if len(raw) <= 4:
            head += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, typ, count, data_at + len(extra))
            extra += raw + b"\0" * (len(raw) % 2)
    return head + struct.pack("<I", 0) + extra


def make_dng(
    path: Path,
    *,
    preview: tuple[int, int] | None = (64, 48),
    colour: tuple[int, int, int] = (30, 160, 40),
    orientation: int = 1,
    taken: str | None = None,
    sensor: tuple[int, int] = (128, 96),
    picture: Image.Image | None = None,
    ifd0: list[Tag] | None = None,
) -> Path:
    """A DNG with a ``preview``-sized JPEG of one ``colour`` (or of ``picture``; or none: IFD0
    is then the sensor data itself), EXIF ``orientation``, DateTime ``taken`` ("YYYY:MM:DD
    HH:MM:SS"), ``sensor``-sized 16-bit sensor data and more ``ifd0`` tags (a caption)."""
    width, height = sensor
    cfa = b"\xe8\x03" * (width * height)  # 1000 in every photosite
    jpeg = b""
    if picture is not None:
        preview = picture.size
    if preview:
        buf = io.BytesIO()
        (picture or Image.new("RGB", preview, colour)).save(buf, "JPEG", quality=92)
        jpeg = buf.getvalue() + b"\0" * (len(buf.getvalue()) % 2)
    cfa_at = 8 + len(jpeg)
    ifd0_at = cfa_at + len(cfa)
    camera: list[Tag] = [
        (271, 2, "Canon"), (272, 2, "EOS Test"), (274, 3, [orientation]),
        (0xC612, 1, [1, 4, 0, 0]), (0xC614, 2, "Canon EOS Test"),  # DNGVersion, camera model
        (0xC621, 10, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),
    ]  # fmt: skip
    if taken:
        camera.append((306, 2, taken))
    camera += ifd0 or []
    sensor_tags: list[Tag] = [
        (254, 4, [0]), (256, 4, [width]), (257, 4, [height]), (258, 3, [16]), (259, 3, [1]),
        (262, 3, [32803]), (273, 4, [cfa_at]), (277, 3, [1]), (278, 4, [height]),
        (279, 4, [len(cfa)]), (0x828D, 3, [2, 2]), (0x828E, 1, [0, 1, 1, 2]),
        (0xC61D, 4, [4095]),  # CFA, RGGB, white level
    ]  # fmt: skip
    if not preview:
        body = _ifd(camera + sensor_tags, ifd0_at)
    else:
        preview_tags: list[Tag] = [
            (254, 4, [1]), (256, 4, [preview[0]]), (257, 4, [preview[1]]), (258, 3, [8, 8, 8]),
            (259, 3, [7]), (262, 3, [6]), (273, 4, [8]), (277, 3, [3]), (278, 4, [preview[1]]),
            (279, 4, [len(jpeg)]),
        ]  # fmt: skip
        size0 = len(_ifd([*camera, *preview_tags, (330, 4, [0])], ifd0_at))
        body = _ifd([*camera, *preview_tags, (330, 4, [ifd0_at + size0])], ifd0_at)
        body += _ifd(sensor_tags, ifd0_at + size0)
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd0_at) + jpeg + cfa + body)
    return path


def point_strips_past_the_end(path: Path) -> Path:
    """Damage a DNG made with ``preview=None``: its sensor data offset points 200 bytes before
    the end of the file, so LibRaw reads past it (and complains on stderr)."""
    data = bytearray(path.read_bytes())
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 273:  # StripOffsets
            data[entry + 8 : entry + 12] = struct.pack("<I", len(data) - 200)
    path.write_bytes(bytes(data))
    return path
