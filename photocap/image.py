"""Open and decode one photo safely, fast, and the same way every time.

Everything here runs in decode worker processes (see :mod:`photocap.pipeline`), so it imports
only Pillow and numpy (pillow-heif and rawpy on first use) — never torch. A photo is read once:
the bytes are hashed (for incremental runs and moved-file detection) and decoded from memory.
JPEGs are decoded at reduced scale with ``draft`` (a 12-MP photo decodes in ~40 ms instead of
~140 ms), a camera RAW file through its embedded preview JPEG, EXIF orientation is applied, odd
modes are converted to RGB, and the result is squashed by the model's :class:`Preset` into a small
uint8 array (3, S, S). Every failure becomes an :class:`~photocap.errors.ImageError` with one
clear line; :func:`decode_photo` turns it into a :class:`DecodeFailure` value instead of raising.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from photocap.errors import ImageError, one_line
from photocap.safeio import read_sized

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from photocap.preset import Preset

# Pillow logs some decode failures at ERROR level ("More samples per pixel than can be decoded"
# for a corrupt TIFF); with no handler anywhere, Python prints them to stderr, beside photocap's
# own one-line error for the same file. A NullHandler keeps them off the terminal; a program
# that configures logging still gets them.
logging.getLogger("PIL").addHandler(logging.NullHandler())

# Extensions we treat as photos even when the content sniff fails, so that a broken "x.jpg" is
# reported as a failure instead of being silently ignored.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".dib",
        ".gif", ".heic", ".heif", ".hif", ".avif",
    }
)  # fmt: skip

# Camera RAW files, captioned from the preview JPEG the camera embedded in them (rawpy/LibRaw).
# Most are TIFF inside and are told from a TIFF photo by their extension; CR2, CR3, RAF, ORF and
# RW2 also by their first bytes.
RAW_EXTENSIONS = frozenset(
    {
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
        ".rw2", ".pef", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".rwl", ".erf", ".mrw", ".kdc",
        ".dcr", ".mef", ".mos",
    }
)  # fmt: skip
_RAW_MAGIC = (b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")  # RAF, ORF, RW2
# LibRaw's "flip" (the RAW's orientation) -> the transpose that makes the preview upright.
_RAW_FLIP = {3: "ROTATE_180", 5: "ROTATE_90", 6: "ROTATE_270"}

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
SNIFF_BYTES = 32
# A file is read whole before it is decoded: a bound on that keeps a decode worker's memory
# flat. No photo within the pixel limit comes near it (89 MP of 16-bit RGBA, uncompressed, is
# 712 MB; a JPEG at twice the limit ~100 MB); a bigger file would be refused after the read.
MAX_DECODE_BYTES = 1024**3


@dataclass(frozen=True)
class DecodedPhoto:
    """A decoded photo, small enough to send between processes (~150 KB at 224 px)."""

    path: str
    pixels: np.ndarray  # uint8 (3, S, S), exactly what Preset.to_uint8 would produce
    content_hash: str  # blake2b-256 hex of the file bytes
    # blake2b-256 hex of ``pixels``: what the model sees. Unchanged after an edit of the file's
    # metadata only (a rating, keywords, a caption written in another app), so the photo's
    # caption is kept instead of computed again.
    pixels_hash: str
    size: int  # bytes, as read
    mtime_ns: int  # as read
    width: int  # as displayed (after EXIF orientation)
    height: int
    format: str  # "JPEG", "PNG", ...
    date_taken: str | None  # EXIF DateTimeOriginal as ISO 8601 ("2023-05-01T12:34:56")
    camera: str | None  # EXIF "Make Model"


@dataclass(frozen=True)
class DecodeFailure:
    """A photo that could not be decoded, with a one-line reason."""

    path: str
    error: str
    size: int | None = None
    mtime_ns: int | None = None


def sniff_format(head: bytes, name: str | os.PathLike[str] | None = None) -> str | None:
    """Recognise an image by its first bytes (magic numbers); ``None`` if not an image we read.

    ``name`` (the file's name) tells a camera RAW file that is TIFF inside ("RAW") from a TIFF.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        is_raw = name is not None and os.path.splitext(name)[1].lower() in RAW_EXTENSIONS
        return "RAW" if is_raw or head[8:10] == b"CR" else "TIFF"
    if head.startswith(_RAW_MAGIC):
        return "RAW"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        # The major brand may be generic (mif1); the compatible brands follow in the same box.
        brands = {brand} | {head[i : i + 4] for i in range(16, min(len(head), 32), 4)}
        if brand == b"crx ":  # Canon CR3
            return "RAW"
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    return None


def sniff_file(path: str | os.PathLike[str]) -> str | None:
    """:func:`sniff_format` on a file's first bytes. Raises ``OSError`` if it cannot be read."""
    with open(path, "rb") as f:
        return sniff_format(f.read(SNIFF_BYTES), path)


def has_image_extension(path: str | os.PathLike[str]) -> bool:
    ext = os.path.splitext(path)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in RAW_EXTENSIONS


def decode_photo(
    path: str, preset: Preset, max_pixels: int | None = None, heif_thumbnails: bool = False
) -> DecodedPhoto | DecodeFailure:
    """Read, hash and decode one photo into preset-sized pixels. Never raises for a bad photo.

    This is the decode worker's task: it returns a :class:`DecodeFailure` with a one-line reason
    (truncated, not an image, too large, unreadable, vanished) instead of raising, so one bad file
    never stops a run. ``max_pixels`` defaults to Pillow's ``Image.MAX_IMAGE_PIXELS``.
    ``heif_thumbnails``: a HEIC's embedded thumbnail stands in for the photo when it is at least
    the preset's size (``photocap caption --fast-heic``).
    """
    try:
        data, size, mtime_ns = read_bytes(path)
    except ImageError as err:
        return DecodeFailure(path, str(err))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # "Corrupt EXIF data" etc.: we report failures ourselves
            return _decode_bytes(path, data, size, mtime_ns, preset, max_pixels, heif_thumbnails)
    except ImageError as err:
        return DecodeFailure(path, str(err), size, mtime_ns)
    except MemoryError:
        return DecodeFailure(path, "out of memory while decoding", size, mtime_ns)
    except Exception as err:  # a Pillow plugin bug must not kill the run; keep it to one line
        return DecodeFailure(path, f"cannot decode image: {one_line(err, 200)}", size, mtime_ns)


def read_bytes(path: str | os.PathLike[str]) -> tuple[bytes, int, int]:
    """The file's bytes plus (size, mtime_ns) from the same open file. Raises ImageError."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageError("not a regular file")
            if st.st_size > MAX_DECODE_BYTES:
                raise ImageError(
                    f"file too large ({st.st_size // 2**20:,} MB; "
                    f"limit {MAX_DECODE_BYTES // 2**20:,} MB)"
                )
            data = read_sized(f, st.st_size, MAX_DECODE_BYTES)
            if len(data) > MAX_DECODE_BYTES:  # it grew since fstat
                raise ImageError(f"file too large (limit {MAX_DECODE_BYTES // 2**20:,} MB)")
    except FileNotFoundError:
        raise ImageError("file not found (deleted or moved during the run?)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a folder") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data, len(data), st.st_mtime_ns


def hash_bytes(data: bytes) -> str:
    """The content hash stored in the index (blake2b, 256 bit, hex)."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def hash_file(path: str | os.PathLike[str]) -> str:
    """:func:`hash_bytes` of a file, read in chunks."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_image(
    source: str | os.PathLike[str] | bytes,
    draft_size: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Open a photo as an upright RGB image (alpha composited on white). Raises ImageError.

    ``draft_size``: JPEGs are decoded at the smallest DCT scale that keeps both sides at least
    this large. ``max_pixels``: larger images are refused as possible decompression bombs.
    """
    name = None if isinstance(source, bytes) else source
    data = source if isinstance(source, bytes) else read_bytes(source)[0]
    img, _, _ = _open_upright(data, draft_size, max_pixels, name)
    return to_rgb(img)


def _decode_bytes(
    path: str,
    data: bytes,
    size: int,
    mtime_ns: int,
    preset: Preset,
    max_pixels: int | None,
    heif_thumbnails: bool = False,
) -> DecodedPhoto:
    import numpy as np

    content_hash = hash_bytes(data)
    # Draft to the preset size: a 12-MP JPEG decodes at 1/8 scale (504x378, the scale of the
    # Flickr8k photos the model was trained on) in ~45 ms instead of ~55 ms at 1/4 scale.
    img, (width, height), meta = _open_upright(
        data, preset.size, max_pixels, path, heif_thumbnails=heif_thumbnails
    )
    fmt = meta.get("format") or img.format or "?"
    rgb = preset.resize(to_rgb(img))
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))  # (3, S, S)
    return DecodedPhoto(
        path=path,
        pixels=pixels,
        content_hash=content_hash,
        pixels_hash=hash_bytes(pixels.tobytes()),
        size=size,
        mtime_ns=mtime_ns,
        width=width,
        height=height,
        format=str(fmt),
        date_taken=meta.get("date_taken"),
        camera=meta.get("camera"),
    )


def _open_upright(
    data: bytes,
    draft_size: int | None,
    max_pixels: int | None,
    name: str | os.PathLike[str] | None = None,
    *,
    heif_thumbnails: bool = False,
) -> tuple[Image.Image, tuple[int, int], dict[str, str | None]]:
    """Open, size-check, draft, load and orient. Returns (image, displayed (w, h), metadata)."""
    from PIL import Image, ImageOps

    kind = sniff_format(data[:SNIFF_BYTES], name)
    if kind is None:
        raise ImageError("not an image (unrecognised file content)")
    if kind == "RAW":
        return _open_raw(data, draft_size, max_pixels)
    if kind in ("HEIF", "AVIF"):
        register_heif(kind)
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    # A JPEG is decoded at up to 1/8 scale (draft, below), so for a JPEG the limit bounds what
    # is decoded, and the declared size may be up to twice the limit (Pillow's own line for a
    # decompression bomb): every photo of a 100-150 MP medium-format camera (a 102-MP GFX100
    # JPEG decodes at 1456x1092), which a limit on the declared size refused. Larger headers are
    # still refused: a 631-byte file claiming 65000x65000 pixels is a bomb, not a panorama.
    drafted = bool(draft_size) and kind == "JPEG"
    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit and raises above twice it; we apply our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = open_jpeg(data) if drafted else Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError(
            f"image too large ({int(pixels.group(1)):,} pixels)" if pixels else "image too large"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"cannot identify {kind} image (corrupt header?)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"corrupt {kind} image: {one_line(err, 200)}") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}")
    if limit and width * height > (2 * limit if drafted else limit):
        raise ImageError(f"image too large ({width * height:,} pixels; limit {int(limit):,})")

    meta = _read_exif_meta(img)
    orientation = meta.get("orientation")
    if orientation in ("5", "6", "7", "8"):
        width, height = height, width
    meta["format"] = img.format

    if drafted and draft_size:
        # DCT-domain downscaling: the biggest single speed-up for camera JPEGs.
        img.draft("RGB", (draft_size, draft_size))
        if limit and img.width * img.height > limit:
            raise ImageError(f"image too large ({width * height:,} pixels; limit {int(limit):,})")
    elif kind == "HEIF" and heif_thumbnails and draft_size and orientation in (None, "1"):
        # HEVC has no reduced-scale decode, but a phone stores a thumbnail beside the photo (an
        # iPhone: 320x240), upright like it (HEIF rotation applies to both; EXIF orientation,
        # which would not, must be 1). 18 ms instead of 836 ms for a 12-MP HEIC, but captions
        # of 12 of 25 test photos changed, slightly worse on the whole: opt-in (README).
        img = _heif_thumbnail(data, draft_size) or img
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of GIF / WebP / APNG
        img.load()
    except OSError as err:
        raise ImageError(f"truncated or corrupt {kind} image: {one_line(err, 200)}") from None
    except (SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
        raise ImageError(f"corrupt {kind} image: {one_line(err, 200)}") from None

    if orientation and orientation != "1":
        # A corrupt EXIF block must not lose the photo: keep it unrotated.
        with contextlib.suppress(Exception):
            img = ImageOps.exif_transpose(img)
    return img, (width, height), meta


def _heif_thumbnail(data: bytes, min_side: int) -> Image.Image | None:
    """The smallest thumbnail of a HEIF file's primary image with both sides >= ``min_side``,
    decoded; None when it has none (or pillow-heif cannot read it: the caller decodes the
    photo itself)."""
    try:
        import pillow_heif

        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        primary = heif[heif.primary_index]
        boxes = primary.info.get("thumbnails")  # their sizes; each decoded on demand
        count = len(boxes) if isinstance(boxes, list) else 0
        thumbs = [primary.get_thumbnail(i) for i in range(count)]
        big_enough = [t for t in thumbs if min(t.size) >= min_side]
        if not big_enough:
            return None
        return min(big_enough, key=lambda t: t.size[0] * t.size[1]).to_pillow()
    except Exception:  # a damaged thumbnail must not lose the photo
        return None


def _open_raw(
    data: bytes, draft_size: int | None, max_pixels: int | None
) -> tuple[Image.Image, tuple[int, int], dict[str, str | None]]:
    """A camera RAW file, upright, from the preview JPEG the camera embedded in it.

    The preview is what the camera's own screen and photo browsers show: the camera's colours,
    already demosaiced, and decoded (with draft) as fast as any JPEG. A file without a usable
    preview is demosaiced by LibRaw at half size instead (slower, plain colours). The size
    recorded is the sensor's, upright.
    """
    from PIL import Image

    try:
        import rawpy
    except ImportError:
        raise ImageError("RAW files need the rawpy package (pip install rawpy)") from None
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip, sizes = raw.sizes.flip, raw.sizes
            try:
                preview = raw.extract_thumb().data  # JPEG bytes, or an RGB bitmap (H, W, 3)
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                preview = None
            if isinstance(preview, bytes):
                img, _, meta = _open_upright(preview, draft_size, max_pixels)
            elif (
                preview is not None
                and preview.shape[2:] == (3,)
                and str(preview.dtype) == "uint8"
                and min(preview.shape[:2]) >= 160
            ):
                img, meta = Image.fromarray(preview), {}
            else:  # no preview, a tiny or odd one: demosaic at half size
                if limit and sizes.width * sizes.height > 4 * limit:
                    raise ImageError(f"image too large ({sizes.width * sizes.height:,} pixels)")
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
                if rgb.ndim != 3 or rgb.shape[2] not in (1, 3):
                    raise ImageError(f"unsupported RAW data (decoded to shape {rgb.shape})")
                img, meta = Image.fromarray(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb), {}
                # LibRaw's date (rawpy >= 0.24; it unpacks the sensor data, done here anyway).
                taken = getattr(getattr(raw, "other", None), "timestamp", None)
                if taken is not None:
                    meta["date_taken"] = taken.isoformat(timespec="seconds")
    except rawpy.LibRawIOError:  # LibRaw read past the end of the data: not the disk's fault
        raise ImageError("truncated or corrupt RAW file") from None
    except rawpy.LibRawError as err:
        why = err.args[0] if err.args else type(err).__name__  # LibRaw's message is bytes
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        raise ImageError(f"cannot read RAW file: {' '.join(why.split())[:200]}") from None
    if meta.get("orientation") in (None, "1") and flip in _RAW_FLIP:
        img = img.transpose(getattr(Image.Transpose, _RAW_FLIP[flip]))
    width, height = (sizes.height, sizes.width) if flip in (5, 6) else (sizes.width, sizes.height)
    # Date and camera: the preview's EXIF (the camera's own, or the one LibRaw writes into a
    # preview without, from the RAW's), else IFD0 of a TIFF-based RAW. A date in 1970 is
    # LibRaw's time 0: it found none.
    if (meta.get("date_taken") or "") < "1971":
        meta["date_taken"] = None
    if not (meta.get("camera") and meta.get("date_taken")):
        with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as tiff:
            own = _read_exif_meta(tiff)
            meta["camera"] = meta.get("camera") or own.get("camera")
            meta["date_taken"] = meta.get("date_taken") or own.get("date_taken")
    meta["format"] = "RAW"
    return img, (width, height), meta


def open_jpeg(data: bytes) -> Image.Image:
    """Image.open for a JPEG without its open-time pixel limit (the caller applies its own)."""
    from PIL import Image, JpegImagePlugin

    try:
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open reports so
        raise Image.UnidentifiedImageError("cannot identify image file") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited on white; 16-bit is scaled to 8-bit."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("P", "L") and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I") or mode == "F":
        return _wide_to_rgb(img)
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, ...


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images (I;16 PNG, float TIFF) to 8-bit RGB."""
    import numpy as np
    from PIL import Image

    array = np.asarray(img).astype(np.float32)
    if img.mode == "F":
        peak = float(array.max()) if array.size else 1.0
        array = array * 255.0 if peak <= 1.0 else array * (255.0 / peak)
    else:
        array = array / 257.0  # 0..65535 -> 0..255
    gray = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
    return gray.convert("RGB")


def _read_exif_meta(img: Image.Image) -> dict[str, str | None]:
    """date_taken, camera and orientation from EXIF; empty on missing or corrupt EXIF."""
    meta: dict[str, str | None] = {}
    try:
        exif = img.getexif()
        make = _clean(exif.get(0x010F))
        model = _clean(exif.get(0x0110))
        camera: str | None
        if make and model and model.lower().startswith(make.split()[0].lower()):
            camera = model  # "Canon" + "Canon EOS 5D" -> "Canon EOS 5D"
        else:
            camera = " ".join(x for x in (make, model) if x) or None
        meta["camera"] = camera
        taken: object = None
        try:
            taken = exif.get_ifd(0x8769).get(0x9003)  # DateTimeOriginal
        except Exception:
            taken = None
        meta["date_taken"] = _exif_date(_clean(taken) or _clean(exif.get(0x0132)))
        orientation = exif.get(0x0112)
        if orientation is not None:
            meta["orientation"] = str(int(orientation))
    except Exception:  # corrupt EXIF: photo still decodes, metadata is just unknown
        return {}
    return meta


def _clean(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip()
    return text or None


def _exif_date(value: str | None) -> str | None:
    """``"2023:05:01 12:34:56"`` -> ``"2023-05-01T12:34:56"``; junk -> None."""
    if not value:
        return None
    m = re.match(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})", value)
    if not m or m.group(1) == "0000":
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


def register_heif(kind: str) -> None:
    """Make Pillow read ``kind`` (HEIF, AVIF): pillow-heif's opener, registered on first use
    (it is slow to import and optional). Raises ImageError without it."""
    from PIL import features

    if kind == "AVIF" and features.check("avif"):
        return  # Pillow reads AVIF natively
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(
            f"{kind} needs the pillow-heif package (pip install pillow-heif)"
        ) from None
    pillow_heif.register_heif_opener()


def describe_path(path: str | os.PathLike[str]) -> str:
    """A path for one-line messages: control characters (e.g. newlines in names) and bytes that
    are not UTF-8 escaped."""
    text = os.fspath(path)
    if any("\ud800" <= c <= "\udfff" for c in text):  # bytes that are not UTF-8 in a name
        text = os.fsencode(text).decode("utf-8", "backslashreplace")  # shown as \xe9
    if any(ord(c) < 32 for c in text):
        return text.encode("unicode_escape").decode("ascii", "replace")
    return text


__all__ = [
    "IMAGE_EXTENSIONS",
    "RAW_EXTENSIONS",
    "DecodeFailure",
    "DecodedPhoto",
    "decode_photo",
    "describe_path",
    "has_image_extension",
    "hash_bytes",
    "hash_file",
    "open_image",
    "open_jpeg",
    "sniff_file",
    "sniff_format",
    "to_rgb",
]
