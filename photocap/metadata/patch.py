"""Byte patches: how ``photocap revert`` gives back a photo's exact bytes.

An in-file write (:mod:`photocap.metadata.exif_writer`) changes a few metadata bytes of a photo
and keeps the rest: a JPEG's Exif and XMP segments, a PNG's ``eXIf``/``iTXt`` chunks, a TIFF's
header pointer and an IFD0 appended at its end. What the write replaced is therefore small, and
it is kept as a *patch* from the written file back to the original one: a few splices ``(start,
end, bytes)`` on the written file. The patch is stored (compressed, base64) in photocap's
provenance record in the sidecar, beside the SHA-256 of the original file and of the file as
photocap wrote it. While the photo still has the written hash (nobody changed it since), revert
applies the patch and checks that the result has the original hash: byte for byte the photo the
user had.

:func:`diff_bytes` finds the splices without knowing any file format. It trims the common
prefix and suffix, then anchors on a block of the target found in the source (``bytes.find``,
C speed) and recurses on both sides; a region it cannot anchor becomes one splice. Any
alignment gives a correct patch (:func:`apply_patch` reproduces the target exactly); a good
one gives a small patch. Callers check the patch against ``MAX_PATCH_BYTES``.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass

from photocap.errors import MetadataError, WriteError

# The most an encoded patch may take in a sidecar. A JPEG's rewritten Exif block costs a few
# dozen bytes; a merged XMP packet is carried whole (compressed). Past this the photo is still
# written, and revert falls back to restoring the texts (see photocap.metadata.revert).
MAX_PATCH_BYTES = 64 * 1024


_SMALL = 1024  # regions both this small become one splice: anchoring would save little


_PROBE = 64  # bytes of the target looked for in the source as an anchor


_FORMAT = b"PCP1"  # patch format version, inside the compressed stream


@dataclass(frozen=True)
class Splice:
    """Replace ``source[start:end]`` with ``data``."""

    start: int
    end: int
    data: bytes


def _common_prefix(a: bytes, a0: int, a1: int, b: bytes, b0: int, b1: int) -> int:
    """Length of the longest common prefix of ``a[a0:a1]`` and ``b[b0:b1]``."""
    n = min(a1 - a0, b1 - b0)
    va, vb = memoryview(a), memoryview(b)
    lo, step = 0, 1 << 16
    while lo < n:  # whole blocks first (C compares), then a binary search in the first miss
        hi = min(n, lo + step)
        if va[a0 + lo : a0 + hi] == vb[b0 + lo : b0 + hi]:
            lo = hi
            continue
        good, bad = lo, hi  # a[.. good) equal, a[.. bad) not
        while bad - good > 1:
            mid = (good + bad) // 2
            if va[a0 + good : a0 + mid] == vb[b0 + good : b0 + mid]:
                good = mid
            else:
                bad = mid
        return good
    return n


def _common_suffix(a: bytes, a0: int, a1: int, b: bytes, b0: int, b1: int) -> int:
    """Length of the longest common suffix of ``a[a0:a1]`` and ``b[b0:b1]``."""
    n = min(a1 - a0, b1 - b0)
    va, vb = memoryview(a), memoryview(b)
    lo, step = 0, 1 << 16
    while lo < n:
        hi = min(n, lo + step)
        if va[a1 - hi : a1 - lo] == vb[b1 - hi : b1 - lo]:
            lo = hi
            continue
        good, bad = lo, hi
        while bad - good > 1:
            mid = (good + bad) // 2
            if va[a1 - mid : a1 - good] == vb[b1 - mid : b1 - good]:
                good = mid
            else:
                bad = mid
        return good
    return n


def diff_bytes(source: bytes, target: bytes) -> list[Splice]:
    """Splices that turn ``source`` into ``target`` (sorted, non-overlapping)."""
    out: list[Splice] = []
    # An explicit stack instead of recursion: (source start, end, target start, end)
    todo = [(0, len(source), 0, len(target))]
    while todo:
        s0, s1, t0, t1 = todo.pop()
        p = _common_prefix(source, s0, s1, target, t0, t1)
        s0, t0 = s0 + p, t0 + p
        q = _common_suffix(source, s0, s1, target, t0, t1)
        s1, t1 = s1 - q, t1 - q
        if s0 == s1 and t0 == t1:
            continue
        anchor = None
        if min(s1 - s0, t1 - t0) > _SMALL:
            anchor = _find_anchor(source, s0, s1, target, t0, t1)
        if anchor is None:
            out.append(Splice(s0, s1, target[t0:t1]))
            continue
        s_at, t_at = anchor  # source[s_at:s_at+_PROBE] == target[t_at:t_at+_PROBE]
        todo.append((s_at, s1, t_at, t1))  # the match itself is trimmed as a common prefix
        todo.append((s0, s_at, t0, t_at))
    out.sort(key=lambda s: s.start)
    return out


def _find_anchor(
    source: bytes, s0: int, s1: int, target: bytes, t0: int, t1: int
) -> tuple[int, int] | None:
    """A block of ``target[t0:t1]`` found once in ``source[s0:s1]``: (source at, target at)."""
    span = t1 - t0 - _PROBE
    for frac in (0.5, 0.25, 0.75, 0.125, 0.875, 0.0, 1.0):
        t_at = t0 + int(span * frac)
        probe = target[t_at : t_at + _PROBE]
        if len(set(probe)) < 8:  # padding or a flat run: found everywhere, anchors nothing
            continue
        s_at = source.find(probe, s0, s1)
        if s_at >= 0 and source.find(probe, s_at + 1, s1) < 0:
            return s_at, t_at
    return None


def apply_patch(source: bytes, splices: list[Splice]) -> bytes:
    """``source`` with ``splices`` applied (as :func:`diff_bytes` made them)."""
    parts: list[bytes] = []
    at = 0
    for s in splices:
        if s.start < at or s.end < s.start or s.end > len(source):
            raise WriteError("undo record is damaged (its splices do not fit the file)")
        parts += [source[at : s.start], s.data]
        at = s.end
    parts.append(source[at:])
    return b"".join(parts)


def encode_patch(splices: list[Splice]) -> str:
    """A patch as text for a sidecar: base64 of the zlib-compressed splices."""
    raw = [_FORMAT, struct.pack("<I", len(splices))]
    for s in splices:
        raw += [struct.pack("<QQI", s.start, s.end, len(s.data)), s.data]
    return base64.b64encode(zlib.compress(b"".join(raw), 9)).decode("ascii")


def decode_patch(text: str) -> list[Splice]:
    """:func:`encode_patch`'s text back as splices; WriteError if it is not one."""
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
        if raw[:4] != _FORMAT:
            raise ValueError("unknown patch format")
        (count,) = struct.unpack_from("<I", raw, 4)
        at, out = 8, []
        for _ in range(count):
            start, end, size = struct.unpack_from("<QQI", raw, at)
            at += 20
            if at + size > len(raw):
                raise ValueError("truncated")
            out.append(Splice(start, end, raw[at : at + size]))
            at += size
    except (ValueError, zlib.error, struct.error, UnicodeEncodeError) as err:
        raise MetadataError(f"undo record is damaged ({err})") from None
    return out
