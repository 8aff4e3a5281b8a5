"""In-file metadata as a whole: which format module handles a file, reading what it says, and
rewriting it safely.

* :func:`detect_format` tells a file's format from its first bytes; :data:`FORMATS` maps each
  format written in-file to its module (:mod:`~photocap.metadata.jpeg`,
  :mod:`~photocap.metadata.webp`, :mod:`~photocap.metadata.png`,
  :mod:`~photocap.metadata.tiff`), each with ``read_texts``, ``rebuild`` and ``exif_span``.
  In-file captions for a new format (AVIF, JPEG XL) are one more such module, listed there.
* :func:`read_in_file_text` / :func:`read_photo_text` gather what a file says about its
  caption (HEIC and AVIF through Pillow, for the look for a person's caption).
* :func:`rewrite_photo` applies a plan to a file: rebuilt and verified in memory by the
  format's module, dead bytes of a caption taken out cleared (:func:`scrub_texts`), then
  written atomically and read back (:func:`photocap.safeio.atomic_write`).
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from photocap.errors import MetadataError, WriteError
from photocap.metadata import jpeg, png, webp
from photocap.metadata import tiff as tiff_format
from photocap.metadata.edit import FileEdit, InFileText, verify_same_frames
from photocap.metadata.ifd import (
    EXIF_HEADER,
    Tiff,
    all_references,
    load_piexif,
)
from photocap.safeio import atomic_write, read_capped

MAX_PHOTO_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class InFileFormat:
    """What a format's module offers for in-file captions."""

    read_texts: Callable[[bytes, str], InFileText]  # (file bytes, format name) -> its texts
    rebuild: Callable[[bytes, FileEdit], bytes]  # the file with the edit applied, verified
    exif_span: Callable[[bytes], tuple[int, int] | None]  # where its EXIF TIFF block lies
    # A check of the written file, read back (None: the rebuild's own checks decoded it).
    verify_written: Callable[[Path], None] | None = None


# The formats --write exif changes in place, each with its module's functions. A new format
# (AVIF, JPEG XL) is one module with the same four things, and one line here.
FORMATS: dict[str, InFileFormat] = {
    # A JPEG's rebuild compares its scan bytes without decoding them: decoded once written.
    "JPEG": InFileFormat(jpeg.read_texts, jpeg.rebuild_jpeg, jpeg.exif_span,
                         jpeg.verify_jpeg_decodes),
    "WebP": InFileFormat(webp.read_texts, webp.rebuild_webp, webp.exif_span),
    "TIFF": InFileFormat(tiff_format.read_texts, tiff_format.rebuild_tiff, tiff_format.exif_span),
    "PNG": InFileFormat(png.read_texts, png.rebuild_png, png.exif_span),
    "DNG": InFileFormat(tiff_format.read_texts, tiff_format.rebuild_dng, tiff_format.exif_span),
}  # fmt: skip
IN_FILE_FORMATS = tuple(FORMATS)  # ("JPEG", "WebP", "TIFF", "PNG", "DNG")


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


def read_in_file_text(data: bytes, name: str | Path | None = None) -> InFileText:
    """The caption-bearing parts of a JPEG's, WebP's, TIFF's, PNG's or (by its ``name``) a
    DNG's bytes. Raises WriteError."""
    fmt = detect_format(data, name)
    if fmt not in FORMATS:  # read as a JPEG: its parser says in one line what is wrong
        fmt = "JPEG"
    return FORMATS[fmt].read_texts(data, fmt)


# Formats whose own captions (EXIF ImageDescription, XMP) Pillow reads, for the human check;
# photocap writes none of them (their caption goes to the sidecar).
PILLOW_TEXT_FORMATS = ("HEIC", "AVIF")


def read_photo_text(photo: Path) -> InFileText | None:
    """The captions a photo file holds, for JPEG, WebP, TIFF, PNG, :data:`PILLOW_TEXT_FORMATS`
    and camera RAW files that are TIFF inside; None for other formats (CR3, RAF, GIF, ...). Raises
    WriteError when the file cannot be read."""
    try:
        fmt = detect_file_format(photo)  # its first bytes: a 50 MB RAW is not read for nothing
        if fmt in ("TIFF", "DNG", "RAW"):
            return tiff_format.read_file_texts(photo, fmt)
        if fmt == "PNG":  # its text chunks, by seeking past the image data
            return png.read_file_texts(photo)
    except OSError as err:
        raise MetadataError(f"cannot read photo: {err.strerror}") from None
    if fmt not in ("JPEG", "WebP", *PILLOW_TEXT_FORMATS):
        return None
    if fmt == "JPEG":
        # Its metadata segments come before the image data: the head of the file is enough,
        # unless they run past it (a big ICC profile, say).
        try:
            with open(photo, "rb") as fh:
                return read_in_file_text(fh.read(jpeg.JPEG_HEAD_BYTES))
        except (WriteError, OSError):
            pass
    if fmt == "WebP":  # its EXIF and XMP chunks come after the image data
        return read_in_file_text(read_capped(photo, MAX_PHOTO_BYTES, "photo"))
    from PIL import Image

    from photocap.image import register_heif

    try:
        if fmt in ("HEIC", "AVIF"):
            register_heif("HEIF" if fmt == "HEIC" else fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a large photo's bomb warning: headers only here
            with Image.open(photo) as img:  # reads the headers, not the pixels
                exif = img.getexif()
                tiff = exif.tobytes()[len(EXIF_HEADER) :] if len(exif) else None
                packet = img.info.get("xmp") or getattr(img, "tag_v2", {}).get(700)
    except Exception as err:  # any reader error: the caller decides what an unreadable file means
        raise MetadataError(f"cannot read the photo's metadata: {err}") from None
    if isinstance(packet, str):
        packet = packet.encode()
    return InFileText(fmt, tiff, packet if isinstance(packet, bytes) else None, None)


@dataclass(frozen=True)
class Rewrite:
    """A photo's bytes before and after one rewrite (kept for its undo record)."""

    old: bytes
    new: bytes


def rewrite_photo(
    photo: Path,
    plan: Callable[[InFileText], FileEdit | None],
    *,
    touch: bool = False,
    dry_run: bool = False,
    scrub: list[str] | None = None,
) -> Rewrite | None:
    """Apply ``plan(what the file holds)`` to a JPEG, WebP, TIFF, PNG or DNG in place, safely.
    None: nothing to do.

    ``plan`` sees the file's current texts and returns the changes, or None to leave the file
    alone. ``scrub``: texts taken out that must not stay behind as dead bytes either
    (:func:`scrub_texts`).
    """
    data = read_capped(photo, MAX_PHOTO_BYTES, "photo")
    current = read_in_file_text(data, photo)
    edit = plan(current)
    if not edit:
        return None
    fmt = FORMATS[current.format]
    new = fmt.rebuild(data, edit)
    if scrub:
        new = scrub_texts(new, current.format, scrub)
    # The WebP, TIFF and PNG rebuilds decoded every frame of ``new`` to the old pixels (the DNG
    # rebuild: LibRaw read the same sensor data and preview), and atomic_write reads the file
    # back and checks it holds exactly ``new``: decoding it again would tell nothing more.
    if not dry_run:
        atomic_write(photo, new, preserve_mtime=not touch, verify=fmt.verify_written)
    return Rewrite(data, new)


def scrub_texts(data: bytes, fmt: str, texts: list[str]) -> bytes:
    """``data`` with every copy of ``texts`` (UTF-8, UTF-16) that nothing in its TIFF block
    points to overwritten with zero bytes: a caption photocap took out, left behind as dead
    bytes by an IFD0 appended after ours. What the file says (every tag, text and pixel) must
    read the same afterwards, or ``data`` is returned as it is."""
    span = FORMATS[fmt].exif_span(data)
    if span is None:
        return data
    start, end = span
    tiff = data[start:end]
    needles = {t.encode(enc) for t in texts if len(t) >= 4 for enc in ("utf-8", "utf-16-le")}
    hits = []
    for needle in needles:
        at = tiff.find(needle)
        while at >= 0:
            hits.append((at, at + len(needle)))
            at = tiff.find(needle, at + 1)
    if not hits:
        return data
    try:
        refs = all_references(Tiff(tiff, "TIFF" if fmt in ("TIFF", "DNG") else "EXIF"))
    except (WriteError, struct.error):
        return data  # a block we cannot map whole: nothing is cut blind

    def used(a: int, b: int) -> bool:  # a pointer into the hit, or a value overlapping it
        return any((s < b and a < e) or a <= s < b for s, e in refs)

    out = bytearray(tiff)
    for a, b in hits:
        if not used(a, b):
            out[a:b] = bytes(b - a)
    if out == tiff:
        return data
    new = data[:start] + bytes(out) + data[end:]
    if fmt == "PNG":  # the eXIf chunk's CRC covers what changed
        chunk = next(c for c in png.parse_png(data)[0] if c.type == b"eXIf")
        body = new[chunk.start + 4 : chunk.end - 4]
        new = new[: chunk.end - 4] + struct.pack(">I", zlib.crc32(body)) + new[chunk.end :]
    try:
        same = _same_reading(data, new, fmt) and load_piexif(tiff) == load_piexif(bytes(out))
        if same and fmt == "DNG":
            tiff_format.verify_same_raw(data, new)
        elif same and fmt == "TIFF":
            verify_same_frames(data, new, "TIFF")
    except WriteError:
        return data
    return new if same else data


def _same_reading(old: bytes, new: bytes, fmt: str) -> bool:
    """Both files hold the same caption-bearing texts and the same IFD0 entries."""
    name = f"photo.{fmt.lower()}"  # a DNG is told from other TIFF-based RAWs by its name
    a, b = read_in_file_text(old, name), read_in_file_text(new, name)
    ta = Tiff(a.tiff, "TIFF") if a.tiff else None
    tb = Tiff(b.tiff, "TIFF") if b.tiff else None
    entries_a = [(e, ta.value(e)) for e in ta.ifd0_entries()] if ta else []
    entries_b = [(e, tb.value(e)) for e in tb.ifd0_entries()] if tb else []
    return (a.description, a.comment, a.packet, a.iptc_caption) == (
        b.description,
        b.comment,
        b.packet,
        b.iptc_caption,
    ) and entries_a == entries_b


def read_exif_caption(photo: Path) -> tuple[str | None, str | None]:
    """(ImageDescription, XPComment) of a JPEG, WebP, TIFF, PNG or DNG; (None, None) for other
    formats."""
    data = read_capped(photo, MAX_PHOTO_BYTES, "photo")
    if detect_format(data, photo) not in IN_FILE_FORMATS:
        return None, None
    text = read_in_file_text(data, photo)
    return text.description, text.comment
