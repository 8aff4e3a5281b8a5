"""``photocap revert``: take back what photocap wrote, restoring what was there before.

Everything photocap writes is recorded in the photo's XMP sidecar (photocap namespace): the
exact texts it wrote and the values they replaced. Reverting therefore only touches files with
that provenance and only values that are still photocap's own - a caption a person edited after
photocap wrote it is left alone. Per sidecar:

* ``exif``: the photo's ImageDescription / XPComment, and the embedded XMP description and
  alt text, get their earlier values back (or are removed; an XMP packet left
  empty goes), with the same lossless, verified, atomic rewrite the writer uses.
* ``xmp``: ``dc:description`` / ``AltTextAccessibility`` x-default entries get their earlier
  values back (or are removed); every other field stays as it is.
* The photocap fields go; a sidecar photocap created from nothing that is now empty is deleted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from photocap.errors import WriteError, one_line
from photocap.index import PhotoIndex
from photocap.library import is_skipped_folder
from photocap.metadata.infile import (
    IN_FILE_FORMATS,
    MAX_PHOTO_BYTES,
    detect_file_format,
    rewrite_photo,
)
from photocap.metadata.provenance import (
    Provenance,
    original_bytes,
    read_provenance,
    restore_edit,
    write_provenance,
)
from photocap.metadata.sidecars import find_sidecars, photos_for_sidecar, save_sidecar, stem_owner
from photocap.metadata.xmp import NS_DC, NS_IPTC, NS_PHOTOCAP, XmpDocument
from photocap.safeio import (
    atomic_delete,
    atomic_write,
    check_replaceable,
    check_writable,
    describe_os_error,
    read_capped,
)

RevertStatus = Literal["reverted", "deleted", "unchanged", "failed"]


@dataclass(frozen=True)
class RevertOutcome:
    """What revert did with one sidecar (and the photo it belongs to)."""

    path: Path  # the sidecar
    status: RevertStatus
    message: str = ""  # one line: why it failed / what was left alone
    photo: Path | None = None  # the photo whose in-file texts were (or would be) put back


def find_photocap_sidecars(paths: Iterable[Path]) -> list[Path]:
    """Sidecars named by ``paths``: folders are walked as ``photocap caption`` walks them
    (symlinked folders followed, each folder once; hidden, NAS and app-library folders not
    entered), photos map to theirs."""
    found: dict[Path, None] = {}
    visited: set[tuple[int, int]] = set()
    for path in paths:
        path = Path(os.path.abspath(path))
        if path.is_dir():
            for sidecar in _walk_sidecars(path, visited):
                found[sidecar] = None
        elif path.suffix.lower() == ".xmp":
            found[path] = None
        else:
            for sidecar in find_sidecars(path):
                found[sidecar] = None
    return list(found)


def _walk_sidecars(folder: Path, visited: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = os.stat(folder)
    except OSError:
        return
    if (st.st_dev, st.st_ino) in visited:
        return  # a symlink loop, or a folder reachable twice
    visited.add((st.st_dev, st.st_ino))
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        path = folder / name
        if name.startswith("."):
            continue
        if path.is_dir():  # follows symlinks, as the caption walk does
            if not is_skipped_folder(name):
                yield from _walk_sidecars(path, visited)
        elif name.lower().endswith(".xmp") and path.is_file():
            yield path


def revert_paths(
    paths: Iterable[Path],
    writers: Iterable[str] = ("xmp", "exif"),
    *,
    touch: bool = False,
    dry_run: bool = False,
    index: PhotoIndex | None = None,
) -> Iterator[RevertOutcome]:
    """Revert every sidecar (and photo) with photocap provenance under ``paths``.

    Yields one outcome per sidecar that carries photocap's namespace; files without it are not
    reported. Never raises for one file's failure. With ``index``, the rows below ``paths``
    whose photo no longer holds anything of photocap's lose their caption at the end
    (:meth:`PhotoIndex.forget_captions`), so that search no longer finds it.
    """
    paths = list(paths)
    chosen = set(writers)
    photos: list[Path] = []  # those of the sidecars reverted (a sidecar may be named alone)
    for sidecar in find_photocap_sidecars(paths):
        outcome = revert_sidecar(sidecar, chosen, touch=touch, dry_run=dry_run)
        if outcome is not None:
            if outcome.status in ("reverted", "deleted"):
                photos += photos_for_sidecar(sidecar)
            yield outcome
    if index is not None and not dry_run:
        rows = index.captioned_under([*paths, *photos])
        index.forget_captions([p for p in rows if not _holds_photocap(Path(p))])


def _sha256_of(photo: Path) -> str | None:
    try:
        return hashlib.sha256(read_capped(photo, MAX_PHOTO_BYTES, "photo")).hexdigest()
    except WriteError:
        return None


def _holds_photocap(photo: Path) -> bool:
    """True while a sidecar of ``photo`` still has photocap's record (a revert that failed,
    or one of the writers not chosen): its caption is still somewhere."""
    for sidecar in find_sidecars(photo):
        try:
            if XmpDocument.load(sidecar).has_namespace(NS_PHOTOCAP):
                return True
        except WriteError:
            return True  # unreadable: not known to be gone
    return False


def revert_sidecar(
    sidecar: Path, writers: set[str], *, touch: bool = False, dry_run: bool = False
) -> RevertOutcome | None:
    """Revert one sidecar; None when it holds nothing of photocap's."""
    try:
        doc = XmpDocument.load(sidecar)
    except WriteError as err:
        # Only a sidecar that mentions photocap is ours to complain about.
        try:
            mentions = NS_PHOTOCAP.encode() in sidecar.read_bytes()[: 16 * 1024 * 1024]
        except OSError:
            mentions = False
        return RevertOutcome(sidecar, "failed", one_line(err)) if mentions else None
    if not doc.has_namespace(NS_PHOTOCAP):
        return None
    prov = read_provenance(doc)
    created = prov.created_sidecar
    try:
        # The sidecar is saved (or deleted) after the photo is put back: one that cannot be
        # (read-only) would keep a record of a write that is gone. Neither is touched then.
        check_writable(sidecar, in_place=True)
    except WriteError as err:
        return RevertOutcome(sidecar, "failed", one_line(err))
    notes: list[str] = []
    changed = False
    photo: Path | None = None
    try:
        if "exif" in writers and (
            prov.exif_description is not None
            or prov.exif_alt_text is not None
            or prov.exif_undo is not None
        ):
            photo = _revert_exif(sidecar, prov, notes, touch=touch, dry_run=dry_run)
            changed = True
        if "xmp" in writers and (prov.description is not None or prov.alt_text is not None):
            _revert_xmp(doc, prov, notes)
            changed = True
    except WriteError as err:
        return RevertOutcome(sidecar, "failed", one_line(err))
    except OSError as err:
        return RevertOutcome(sidecar, "failed", describe_os_error(err, sidecar))
    if not changed:
        return RevertOutcome(sidecar, "unchanged", "nothing of the chosen writers to revert")
    write_provenance(doc, prov)
    message = "; ".join(notes)
    try:
        if created and not doc.has_namespace(NS_PHOTOCAP) and doc.is_empty():
            if not dry_run:
                atomic_delete(sidecar)
            return RevertOutcome(sidecar, "deleted", message, photo)
        if not dry_run:
            save_sidecar(sidecar, doc)
    except WriteError as err:
        return RevertOutcome(sidecar, "failed", one_line(err))
    return RevertOutcome(sidecar, "reverted", message, photo)


def _revert_xmp(doc: XmpDocument, prov: Provenance, notes: list[str]) -> None:
    fields = (
        (NS_DC, "description", prov.description, prov.previous_description, "description"),
        (NS_IPTC, "AltTextAccessibility", prov.alt_text, prov.previous_alt_text, "alt text"),
    )
    for ns, name, written, previous, label in fields:
        if written is None:
            continue
        if doc.get_default(ns, name) != written:
            notes.append(f"{label} was edited after photocap wrote it; left as is")
            continue
        doc.put_default(ns, name, previous)
    prov.description = prov.alt_text = None
    prov.previous_description = prov.previous_alt_text = None


def _revert_exif(
    sidecar: Path, prov: Provenance, notes: list[str], *, touch: bool, dry_run: bool
) -> Path:
    """Put back the in-file texts of the photo of ``sidecar``; returns that photo."""
    photos = [p for p in photos_for_sidecar(sidecar) if p.is_file()]
    in_file = []  # photos of a format photocap writes EXIF into (JPEG, WebP, TIFF, PNG, DNG)
    for p in photos:
        if detect_file_format(p) in IN_FILE_FORMATS:
            in_file.append(p)
    if len(in_file) > 1:
        # A stem-named sidecar shared by a RAW+JPEG pair (IMG_1.xmp): the photo photocap
        # wrote is the one with the written hash, or, by Lightroom's rule, the RAW.
        written = [p for p in in_file if _sha256_of(p) == prov.exif_written_sha256]
        owner = stem_owner(in_file)
        in_file = written if len(written) == 1 else [owner] if owner is not None else in_file
    if len(in_file) != 1:
        raise WriteError(
            f"cannot tell which photo {sidecar.name} belongs to"
            if in_file
            else f"photo for {sidecar.name} not found"
        )
    photo = in_file[0]
    check_replaceable(Path(os.path.realpath(photo)))  # a dry run says what the write would
    data = read_capped(photo, MAX_PHOTO_BYTES, "photo")
    original = original_bytes(prov, data)
    if original is not None:
        # Nobody changed the photo since photocap wrote it: its exact bytes come back.
        if not dry_run and original != data:
            atomic_write(photo, original, preserve_mtime=not touch)
        prov.forget_exif()
        return photo
    if prov.exif_undo is not None:
        notes.append("the photo changed since photocap wrote it: photocap's texts taken out")
    # Ours goes from where the file points, and from bytes nothing points to any more.
    ours = [t for t in (prov.exif_description, prov.exif_alt_text) if t]
    rewrite_photo(photo, lambda text: restore_edit(prov, text, notes), touch=touch,
                  dry_run=dry_run, scrub=ours)  # fmt: skip
    prov.forget_exif()
    return photo
