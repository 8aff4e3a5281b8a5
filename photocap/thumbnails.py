"""Thumbnails for the gallery (``photocap serve``): made fast, cached, bounded.

A thumbnail is made with the run's fast decode (:func:`photocap.image.open_image`: a JPEG
decoded at a reduced DCT scale, a RAW's embedded preview, a HEIF's thumbnail), turned upright
by its EXIF orientation, and kept as a small JPEG in the user cache folder
(``$PHOTOCAP_CACHE/thumbnails``), named by the photo's content hash and the thumbnail's size:
the same photo in two places is made once, and an edited photo gets a new one. The cache is
bounded (:data:`DEFAULT_MAX_BYTES`): past it, the thumbnails seen longest ago go.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path

from PIL import Image

from photocap.errors import ImageError

# Longest side of a grid thumbnail and of the photo's page preview, in pixels.
THUMBNAIL_SIZE = 320
PREVIEW_SIZE = 1280
DEFAULT_MAX_BYTES = 512 * 1024**2
# Larger photos are refused as possible decompression bombs (the run's limit).
MAX_PIXELS = 200_000_000
# Part of every name: a new way of making thumbnails does not reuse the old ones.
_VERSION = "1"


class ThumbnailCache:
    """JPEG thumbnails of photos, made on first request and kept in ``folder``."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes in the folder, counted on first write

    def get(self, photo: Path, content_hash: str | None, size: int = THUMBNAIL_SIZE) -> bytes:
        """The thumbnail of ``photo`` (JPEG bytes, longest side at most ``size``). Raises
        :class:`ImageError` when the photo cannot be decoded, OSError when it cannot be read.

        ``content_hash`` is the index's hash of the photo's bytes; None (a photo that failed)
        names the thumbnail by the file's path, size and mtime instead."""
        path = self.folder / f"{_key(photo, content_hash)}-{size}-v{_VERSION}.jpg"
        try:
            data = path.read_bytes()
            os.utime(path)  # seen now: the last to go when the cache is full
            return data
        except OSError:
            pass
        data = make_thumbnail(photo, size)
        self._keep(path, data)
        return data

    def _keep(self, path: Path, data: bytes) -> None:
        """Write ``path`` atomically (a half-written thumbnail is never served); then, past the
        bound, remove the thumbnails seen longest ago. A cache that cannot be written is
        skipped: the thumbnail was served anyway."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError:
            return
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in _entries(self.folder))
            else:
                self._total += len(data)
            if self._total > self.max_bytes:
                self._total = _evict(self.folder, int(self.max_bytes * 0.9))


def make_thumbnail(photo: Path, size: int) -> bytes:
    """JPEG bytes of ``photo`` upright, its longest side at most ``size`` pixels."""
    from photocap.image import open_image

    img = open_image(photo, draft_size=size, max_pixels=MAX_PIXELS)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    try:
        img.save(out, "JPEG", quality=82, optimize=True)
    except OSError as err:  # pragma: no cover - an RGB image always saves as JPEG
        raise ImageError(f"cannot make a thumbnail: {err}") from err
    return out.getvalue()


def _key(photo: Path, content_hash: str | None) -> str:
    if content_hash:
        return content_hash
    st = os.stat(photo)
    raw = f"{os.fspath(photo)}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _entries(folder: Path) -> list[tuple[Path, int, float]]:
    """(path, bytes, last seen) of each thumbnail in ``folder``."""
    found = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".jpg"):
            try:
                st = entry.stat()
            except OSError:
                continue
            found.append((Path(entry.path), st.st_size, st.st_mtime))
    return found


def _evict(folder: Path, target: int) -> int:
    """Remove the thumbnails seen longest ago until at most ``target`` bytes are left;
    returns the bytes left."""
    entries = sorted(_entries(folder), key=lambda e: e[2])
    total = sum(size for _, size, _ in entries)
    for path, size, _ in entries:
        if total <= target:
            break
        try:
            path.unlink()
            total -= size
        except OSError:
            continue
    return total
