"""Find the photos in a library: a recursive, deterministic, streaming walk.

:func:`discover_photos` yields one :class:`PhotoFile` per photo (path + stat, never pixels) in
sorted order, so 50,000 photos cost a few MB. Hidden files and folders (``.name``), sidecars,
NAS thumbnail folders and photo applications' libraries are skipped; symlinks are followed
without looping; photos are recognised by their content (magic bytes), and a file with a photo
extension that is not a readable photo is still yielded so that the run reports why it failed.
An unreadable folder becomes a :class:`DiscoveryFailure` and the walk goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from photocap.image import RAW_EXTENSIONS, has_image_extension, sniff_file

# The camera's own rendering of a RAW+JPEG (or RAW+HEIF) shot: the same stem, one folder.
PAIR_LEAD_EXTENSIONS = frozenset({".jpg", ".jpeg", ".heic", ".heif", ".hif"})

# Files next to photos that are never photos themselves.
SIDECAR_EXTENSIONS = frozenset({".xmp", ".aae", ".thm", ".pp3", ".dop", ".json"})

# Folders a walk does not enter (like hidden ones; a folder given explicitly is still walked):
# NAS thumbnail and recycle folders, whose JPEGs are copies, not photos to caption (a Synology
# keeps ~5 thumbnails of every photo in @eaDir), and photo applications' managed libraries,
# whose files the application owns: an EXIF rewrite or a new sidecar inside Apple Photos' or
# Aperture's library is a change behind its back.
SKIPPED_FOLDERS = frozenset(
    name.casefold()
    for name in (
        "@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information",
        "__MACOSX", "lost+found",
    )
)  # fmt: skip
APP_LIBRARY_SUFFIXES = (".photoslibrary", ".photolibrary", ".migratedphotolibrary", ".aplibrary",
                        ".lrdata")  # fmt: skip


# A name that is not UTF-8 (a latin-1 archive, an old FAT card) cannot be a row of the index
# (SQLite text is UTF-8), so its photo, or the folder, fails with this reason.
NOT_UTF8 = "name is not valid UTF-8: rename it (e.g. with convmv) to caption it"


@dataclass(frozen=True)
class PhotoFile:
    """A photo found on disk (absolute path, not resolved through symlinks) and its stat.

    ``lead``: for the RAW of a RAW+JPEG pair (one shot, two files: ``IMG_0001.CR2`` and
    ``IMG_0001.JPG`` in one folder), the JPEG, whose caption the RAW shares (see
    :func:`pair_leads`).
    """

    path: Path
    size: int
    mtime_ns: int
    lead: Path | None = None


@dataclass(frozen=True)
class DiscoveryFailure:
    """A folder or path that could not be walked, with a one-line reason."""

    path: Path
    error: str


def discover_photos(
    roots: Iterable[str | os.PathLike[str]],
) -> Iterator[PhotoFile | DiscoveryFailure]:
    """Yield the photos under ``roots`` (files or folders), recursively, in sorted order.

    A root given explicitly is used even if hidden. Each folder is visited once even when
    symlinks point back up the tree (visited folders are tracked by (st_dev, st_ino)), and
    each photo once when roots overlap (a file given twice, or given and inside a folder given).
    """
    visited: set[tuple[int, int]] = set()
    paths = list(dict.fromkeys(Path(os.path.abspath(os.fspath(root))) for root in roots))
    # Files given by name are found where they are named, not again in a folder walked.
    named = {p for p in paths if os.path.isfile(p)}
    for path in paths:
        if not is_utf8_name(os.fspath(path)):
            yield DiscoveryFailure(path, NOT_UTF8)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            yield DiscoveryFailure(path, "no such file or folder")
            continue
        except OSError as err:
            yield DiscoveryFailure(path, f"cannot access: {err.strerror or err}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, st, visited, named)
        elif stat.S_ISREG(st.st_mode):
            found = _photo_file(path, st, explicit=True)
            if found is not None:
                yield found
            else:
                yield DiscoveryFailure(path, "not an image (unrecognised file content)")


def _walk(
    folder: Path,
    folder_st: os.stat_result,
    visited: set[tuple[int, int]],
    named: set[Path] | frozenset[Path] = frozenset(),
) -> Iterator[PhotoFile | DiscoveryFailure]:
    key = (folder_st.st_dev, folder_st.st_ino)
    if key in visited:
        return  # symlink loop or a folder reachable twice
    visited.add(key)
    try:
        with os.scandir(folder) as it:
            names = sorted(entry.name for entry in it)
    except PermissionError:
        yield DiscoveryFailure(folder, "cannot read folder: permission denied")
        return
    except OSError as err:
        yield DiscoveryFailure(folder, f"cannot read folder: {err.strerror or err}")
        return
    leads = pair_leads(names)
    for name in names:
        if name.startswith("."):
            continue  # hidden files and folders (.thumbnails, .git, ._AppleDouble, ...)
        path = folder / name
        try:
            st = os.stat(path)  # follows symlinks
        except OSError:
            continue  # broken symlink or vanished since listing: nothing to caption
        if not is_utf8_name(name):
            if stat.S_ISDIR(st.st_mode) or (
                stat.S_ISREG(st.st_mode) and _photo_file(path, st, explicit=False) is not None
            ):
                yield DiscoveryFailure(path, NOT_UTF8)
            continue
        if stat.S_ISDIR(st.st_mode):
            if not is_skipped_folder(name):
                yield from _walk(path, st, visited, named)
        elif stat.S_ISREG(st.st_mode) and path not in named:
            found = _photo_file(path, st, explicit=False)
            if found is not None:
                yield replace(found, lead=folder / leads[name]) if name in leads else found


def pair_leads(names: Iterable[str]) -> dict[str, str]:
    """{RAW name: JPEG name} for the RAW+JPEG pairs among the names of one folder.

    A pair is a RAW and exactly one JPEG or HEIF file of the same stem (the case aside, as
    Lightroom pairs them); the camera rendered the JPEG from the same exposure. Several
    candidates (``IMG_1.JPG`` and ``IMG_1.HEIC``) pair nothing: which one the RAW should
    follow is not clear.
    """
    raws: dict[str, list[str]] = {}
    renderings: dict[str, list[str]] = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        ext = ext.lower()
        if ext in RAW_EXTENSIONS:
            raws.setdefault(stem.casefold(), []).append(name)
        elif ext in PAIR_LEAD_EXTENSIONS:
            renderings.setdefault(stem.casefold(), []).append(name)
    return {
        raw[0]: lead[0]
        for stem, raw in raws.items()
        if len(raw) == 1 and len(lead := renderings.get(stem, [])) == 1
    }


def is_utf8_name(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (Python holds them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_skipped_folder(name: str) -> bool:
    """True for a folder a walk does not enter: see SKIPPED_FOLDERS, APP_LIBRARY_SUFFIXES."""
    folded = name.casefold()
    return folded in SKIPPED_FOLDERS or folded.endswith(APP_LIBRARY_SUFFIXES)


def _photo_file(path: Path, st: os.stat_result, explicit: bool) -> PhotoFile | None:
    """A PhotoFile if ``path`` is (or claims to be) a photo, else None."""
    ext = path.suffix.lower()
    if ext in SIDECAR_EXTENSIONS and not explicit:
        return None
    try:
        kind = sniff_file(path)
    except OSError:
        kind = None  # unreadable: keep it if it claims to be a photo, the decode reports why
    if kind is not None or has_image_extension(path):
        return PhotoFile(path, st.st_size, st.st_mtime_ns)
    return None


def iter_photo_files(roots: Iterable[str | os.PathLike[str]]) -> Iterator[PhotoFile]:
    """Like :func:`discover_photos` but only the photos (failures dropped)."""
    for item in discover_photos(roots):
        if isinstance(item, PhotoFile):
            yield item
