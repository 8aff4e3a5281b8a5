"""XMP sidecars as files: naming, finding, fingerprints, loading and saving, adoption.

``photo.jpg`` -> ``photo.jpg.xmp`` by default (darktable, digiKam), ``photo.xmp`` with
``--sidecar-name stem`` (Lightroom; of a RAW+JPEG pair, the RAW's). A capitalised ``.XMP`` is the
same sidecar. :func:`sidecar_stamp` fingerprints a photo's sidecars for the index (a re-run
notices another app's edit from a few ``stat`` calls); :func:`adopt_sidecar` moves photocap's
own sidecar along with a moved photo. Saving re-parses the document and writes it atomically
(:func:`save_sidecar`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

from photocap.errors import SidecarTaken, WriteError
from photocap.image import IMAGE_EXTENSIONS, RAW_EXTENSIONS
from photocap.metadata.provenance import Provenance, read_provenance, write_provenance
from photocap.metadata.xmp import NS_DC, NS_IPTC, XmpDocument
from photocap.safeio import atomic_delete, atomic_write, check_writable, fsync_dir

# File extensions of photos that could share a stem-named sidecar (x.jpg + x.png -> x.xmp; a
# RAW+JPEG pair x.cr2 + x.jpg -> x.xmp).
PHOTO_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS | {".jxl"}


SidecarName = Literal["full", "stem"]


def sidecar_path(photo: Path, naming: SidecarName = "full") -> Path:
    """``photo.jpg`` -> ``photo.jpg.xmp`` (``full``) or ``photo.xmp`` (``stem``, Lightroom).

    An existing sidecar whose extension is in capitals (``photo.JPG.XMP``, as some cameras and
    Windows tools name it) is the photo's sidecar on a case-sensitive file system too: it is
    merged into, and a person's caption in it is kept, instead of a second sidecar appearing.
    """
    base = photo.with_suffix("") if naming == "stem" else photo
    lower = base.with_name(base.name + ".xmp")
    if not (lower.exists() or lower.is_symlink()):
        upper = base.with_name(base.name + ".XMP")
        if upper.exists() or upper.is_symlink():
            return upper
    return lower


def stem_siblings(photo: Path) -> list[Path]:
    """Other photos in the folder that a stem-named sidecar would also belong to.

    Probes the few candidate names (``x.png``, ``x.JPG``, ...) instead of listing the folder:
    listing it for every photo made a run over one big folder quadratic in its size.
    """
    if photo.name.startswith("."):
        return []
    found: set[Path] = set()
    for ext in PHOTO_EXTENSIONS:
        for variant in {ext, ext.upper()}:
            candidate = photo.with_name(photo.stem + variant)
            if candidate.name == photo.name:
                continue
            try:
                if candidate.is_file() and not os.path.samefile(candidate, photo):
                    found.add(candidate)  # samefile: case-insensitive file systems
            except OSError:
                continue
    return sorted(found)


def photos_for_sidecar(sidecar: Path) -> list[Path]:
    """The photo(s) a sidecar belongs to: ``x.jpg.xmp`` -> x.jpg; ``x.xmp`` -> x.* photos."""
    inner = Path(sidecar.stem)  # "x.jpg" for x.jpg.xmp, "x" for x.xmp
    if inner.suffix.lower() in PHOTO_EXTENSIONS:
        return [sidecar.with_name(inner.name)]
    try:
        entries = list(sidecar.parent.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.stem == sidecar.stem and p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file()
    )


def stem_owner(photos: list[Path]) -> Path | None:
    """Which of the photos sharing a stem owns the stem-named sidecar: the RAW of a RAW+JPEG
    pair (Lightroom's convention: ``IMG_0001.xmp`` describes ``IMG_0001.CR2``); None when
    that is ambiguous (no RAW, or several)."""
    raws = [p for p in photos if p.suffix.lower() in RAW_EXTENSIONS]
    return raws[0] if len(raws) == 1 else None


def find_sidecars(photo: Path) -> list[Path]:
    """Existing sidecars of ``photo``, both naming forms, full form first.

    The stem form is only counted when no other photo shares the stem (it would be ambiguous),
    or when ``photo`` is the RAW of a RAW+JPEG pair (:func:`stem_owner`).
    """
    found = [sidecar_path(photo, "full")]
    stem = sidecar_path(photo, "stem")
    if stem.exists() or stem.is_symlink():  # cheap check first
        others = stem_siblings(photo)
        if not others or stem_owner([photo, *others]) == photo:
            found.append(stem)
    return [p for p in found if p.exists() or p.is_symlink()]


def sidecar_stamp(photo: Path) -> str:
    """A fingerprint of the sidecars ``photo`` may have: the name, size and mtime of each one
    that exists (either naming form, either case); ``""`` when there are none.

    The index keeps it, so a re-run that skips an unchanged photo still notices that another
    app wrote in its sidecar (a caption a person typed in digiKam), or that it was deleted,
    from two to four ``stat`` calls and without parsing anything. The names are those
    :func:`sidecar_path` picks (the capitalised one only when the other is missing). A
    stem-named sidecar counts even when it belongs to the RAW of a pair: noticing too much
    costs one look, too little a stale index.
    """
    # Plain strings, not Path: this runs for every photo of an unchanged re-run.
    folder, name = os.path.split(os.fspath(photo))
    parts = []
    for base in dict.fromkeys((name, os.path.splitext(name)[0])):  # one if there is no suffix
        for ext in (".xmp", ".XMP"):
            try:
                st = os.stat(os.path.join(folder, base + ext))  # a symlink: its target's
            except (OSError, ValueError):
                continue
            parts.append(f"{base}{ext}:{st.st_size}:{st.st_mtime_ns}")
            break  # as in sidecar_path: photo.jpg.xmp hides photo.jpg.XMP
    return "/".join(parts)  # "/" never occurs in a file name


def sidecar_for_write(photo: Path, naming: SidecarName) -> Path:
    """The sidecar to write for ``photo``; refuses a stem name two photos would share.

    Of a RAW+JPEG pair the RAW gets the stem sidecar; the JPEG gets :class:`SidecarTaken`.
    """
    target = sidecar_path(photo, naming)
    if naming == "stem":
        others = stem_siblings(photo)
        owner = stem_owner([photo, *others]) if others else photo
        if owner is not None and owner != photo:
            # No file names: the summary shows it once, with the count of photos.
            raise SidecarTaken(
                "the stem-named sidecar belongs to the RAW of this RAW+JPEG pair "
                "(--sidecar-name full gives this photo its own)"
            )
        if owner is None:
            raise WriteError(
                f"{target.name} would be shared by {photo.name} and {others[0].name}; "
                "refusing to merge two photos' captions (use --sidecar-name full)"
            )
    return target


def load_or_new(path: Path) -> tuple[XmpDocument, bool]:
    """(document, existed). Bad sidecars raise :class:`WriteError`; they are never replaced."""
    if path.is_dir():
        raise WriteError(f"sidecar path is a folder: {path}")
    if not path.exists() and not path.is_symlink():
        return XmpDocument.new(), False
    return XmpDocument.load(path), True


def save_sidecar(path: Path, doc: XmpDocument) -> None:
    """Serialise, re-parse the result (must round-trip), and write it atomically."""
    data = doc.serialize()
    check = XmpDocument.parse(data, str(path))  # our own output must be valid XMP

    def verify(tmp: Path) -> None:
        again = XmpDocument.parse(tmp.read_bytes(), str(tmp))
        for ns, name in ((NS_DC, "description"), (NS_IPTC, "AltTextAccessibility")):
            if again.get_lang_alt(ns, name) != check.get_lang_alt(ns, name):
                raise WriteError(f"verification failed writing {path}")

    check_writable(path, in_place=True)
    atomic_write(path, data, preserve_mtime=False, verify=verify)


def adopt_sidecar(old_photo: Path, photo: Path, naming: SidecarName) -> bool:
    """Move the sidecar photocap created for ``old_photo`` to ``photo``, the same photo moved
    or renamed (nothing is at ``old_photo`` now; a file manager moves the photo alone), so
    that its caption, and what photocap recorded about the file for ``photocap revert`` (a
    person's in-file caption it replaced, say), go with the photo instead of staying behind
    as an orphan. True when it was moved.

    Only the full-form sidecar (``IMG_1.jpg.xmp`` names one photo; a stem-named one may be a
    RAW's), only one holding nothing but photocap's own (one another app wrote in too is not
    photocap's to move), never over a sidecar already at the new place, and never across file
    systems: a hard link, then the old name removed.
    """
    old = sidecar_path(old_photo, "full")
    try:
        if os.path.lexists(old_photo) or old.is_symlink() or not old.is_file():
            return False
        target = sidecar_for_write(photo, naming)
        if os.path.lexists(target) or not _holds_only_photocap(XmpDocument.load(old)):
            return False
        os.link(old, target)  # fails, rather than replaces, if a file appeared there meanwhile
    except (OSError, WriteError):  # SidecarTaken is a WriteError
        return False
    with contextlib.suppress(WriteError):  # else two identical sidecars rather than none
        atomic_delete(old)
    fsync_dir(target.parent)
    return True


def _holds_only_photocap(doc: XmpDocument) -> bool:
    """A sidecar photocap created that holds nothing but its caption, alt text and record:
    what ``photocap revert`` would delete."""
    prov = read_provenance(doc)
    if not prov.created_sidecar:
        return False
    rest = XmpDocument.parse(doc.serialize())  # a copy
    for ns, name, written in (
        (NS_DC, "description", prov.description),
        (NS_IPTC, "AltTextAccessibility", prov.alt_text),
    ):
        if written is not None and rest.get_default(ns, name) == written:
            rest.put_default(ns, name, None)
    write_provenance(rest, Provenance())  # nothing recorded: the photocap fields go
    return rest.is_empty()


def read_caption(photo: Path) -> str | None:
    """The x-default description from the photo's sidecar (either naming form), if any."""
    for path in find_sidecars(photo):
        try:
            text = XmpDocument.load(path).get_default(NS_DC, "description")
        except WriteError:
            continue
        if text:
            return text
    return None


def read_keywords(photo: Path) -> list[str]:
    """The keywords people gave ``photo`` in its sidecars (either naming form): ``dc:subject``
    (digiKam, darktable, Lightroom, exiftool) and Lightroom's hierarchical subjects, each level
    of "Places|France|Paris" a keyword; each once, in order. Unreadable sidecars count as
    holding none."""
    found: list[str] = []
    for sidecar in find_sidecars(photo):
        try:
            doc = XmpDocument.load(sidecar)
        except WriteError:
            continue
        found += doc.keywords()
    return list(dict.fromkeys(found))
