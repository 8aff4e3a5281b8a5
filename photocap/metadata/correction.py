"""A person's correction of a caption (``photocap serve``), written as a person's caption.

A caption typed by a person in the gallery goes where photocap writes its own, with the same
guarantees: the sidecar merged and written atomically and verified
(:func:`~photocap.metadata.sidecars.save_sidecar`); inside the file only when photocap had
written its caption there (``--write exif``), through the exif writer's lossless, verified
rewrite. Then photocap's record of having written those texts is dropped (its provenance), so
that from now on they are a person's caption (:mod:`photocap.metadata.authorship`): no later
run overwrites or hides them, and ``photocap revert`` leaves them alone.

Other languages of the description (``de-DE``, ...) are kept as they are: the correction is the
``x-default`` text, as photocap's caption was. The alt text follows the correction (the model's
would describe what the person just said is wrong), unless a person wrote one of their own. In
the file, the exif writer's rules hold: a person's text there (an XPComment, say) is kept.
Nothing is left half done: when the sidecar cannot be saved after the photo was rewritten, both
are put back as they were.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from photocap.errors import WriteError, one_line
from photocap.metadata.authorship import (
    alt_text_for,
    is_blank_alt_text,
    is_blank_description,
    is_our_alt_text,
)
from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.provenance import read_provenance, write_provenance
from photocap.metadata.sidecars import (
    SidecarName,
    find_sidecars,
    load_or_new,
    save_sidecar,
    sidecar_for_write,
    sidecar_path,
)
from photocap.metadata.xmp import NS_DC, NS_IPTC, XmpDocument
from photocap.safeio import atomic_write
from photocap.writers import CaptionRecord, WriteOptions, WriteOutcome

# The longest correction taken (a caption is a sentence; XMP has no limit of its own).
MAX_CAPTION = 2000


def clean_caption(text: str) -> str:
    """``text`` as a caption: one line, whitespace folded. Raises :class:`WriteError` when it
    is empty or longer than :data:`MAX_CAPTION` characters."""
    caption = " ".join(text.split())
    if not caption:
        raise WriteError("a caption cannot be empty")
    if is_blank_description(caption):
        raise WriteError(
            f"{caption!r} is what cameras write when nobody wrote a caption, so photocap would "
            "not keep it as a person's: write a few more words"
        )
    if len(caption) > MAX_CAPTION:
        raise WriteError(f"a caption has at most {MAX_CAPTION} characters")
    return caption


def our_sidecar_name(photo: Path) -> SidecarName:
    """Which naming form holds photocap's record for ``photo``: the stem form
    (``--sidecar-name stem``) when only that sidecar has one, else the full form."""
    for sidecar in find_sidecars(photo):
        try:
            prov = read_provenance(XmpDocument.load(sidecar))
        except WriteError:
            continue
        if prov.description is not None or prov.exif_description is not None:
            return "stem" if sidecar == sidecar_path(photo, "stem") else "full"
    return "full"


def current_caption(photo: Path) -> str | None:
    """The ``x-default`` description of the photo's sidecar (the text a correction replaces),
    or None: one language, never the index's languages joined."""
    for sidecar in find_sidecars(photo):
        try:
            text = XmpDocument.load(sidecar).get_default(NS_DC, "description")
        except WriteError:
            continue
        if text:
            return text
    return None


def write_human_caption(photo: Path, text: str) -> list[WriteOutcome]:
    """Write ``text`` as a person's caption of ``photo``: into the file first where photocap
    wrote its caption there (its provenance says so), then into the sidecar. Returns one
    outcome per place.

    In the file, the exif writer's rules hold (a person's text there, or in another language or
    sidecar, is never replaced: photocap's caption is taken out of the file instead). Raises
    :class:`WriteError` when the photo is gone or the sidecar cannot be written; the photo and
    the sidecar are then put back as they were."""
    caption = clean_caption(text)
    if not photo.is_file():
        raise WriteError(f"the photo is no longer at {photo}: nothing written")
    if photo.stat().st_size == 0:
        raise WriteError(f"{photo.name} is an empty file, not a photo: nothing written")
    naming = our_sidecar_name(photo)
    target = sidecar_for_write(photo, naming)
    before_sidecar = target.read_bytes() if target.is_file() else None
    outcomes: list[WriteOutcome] = []
    in_file = _ours_in_file(target)
    before_photo = photo.read_bytes() if in_file else None
    if in_file:
        record = CaptionRecord(
            path=photo, caption=caption, score=0.0, alternatives=(), model_id="person",
            captioned_at=datetime.now(timezone.utc),
        )  # fmt: skip
        # The exif writer records these texts as its own; that record is dropped below.
        outcome = ExifWriter(WriteOptions(sidecar_name=naming)).write(record)
        outcomes.append(outcome)
    written = bool(outcomes) and outcomes[0].status in ("written", "unchanged")
    try:
        outcomes.append(_write_sidecar(photo, target, caption, forget_file=written))
    except WriteError:
        # Never a photo holding the person's text with a record calling it photocap's (a
        # later run would replace it, revert would take it out): both as they were.
        if before_photo is not None and any(o.changed_photo for o in outcomes):
            atomic_write(photo, before_photo, preserve_mtime=True)
        if before_sidecar is not None:
            atomic_write(target, before_sidecar, preserve_mtime=False)
        elif target.is_file():
            target.unlink()
        raise
    return outcomes


def _ours_in_file(sidecar: Path) -> bool:
    """photocap's record says it wrote its caption into the photo."""
    try:
        doc, _ = load_or_new(sidecar)
    except WriteError:
        return False
    return read_provenance(doc).exif_description is not None


def _write_sidecar(photo: Path, target: Path, caption: str, *, forget_file: bool) -> WriteOutcome:
    doc, _existed = load_or_new(target)
    prov = read_provenance(doc)
    changed = doc.get_default(NS_DC, "description") != caption
    doc.set_default(NS_DC, "description", caption)
    # The alt text follows, unless a person wrote one of their own (kept).
    alt = doc.get_default(NS_IPTC, "AltTextAccessibility")
    if is_blank_alt_text(alt) or is_our_alt_text(alt, prov.alt_text):
        doc.set_default(NS_IPTC, "AltTextAccessibility", alt_text_for(caption))
        prov.alt_text = prov.previous_alt_text = None
    # Not photocap's text any more: a person's, kept by every later run and by revert.
    prov.description = prov.previous_description = None
    # The sidecar holds a person's work now: revert must not remove it as photocap's own.
    prov.created_sidecar = False
    if forget_file:
        # The file holds the person's caption: photocap's record of its own texts there, and the
        # way back to the bytes before them, would let revert take the person's out.
        prov.forget_exif(alt_text=True)
    write_provenance(doc, prov)
    try:
        save_sidecar(target, doc)
    except WriteError as err:
        raise WriteError(
            f"the caption could not be saved in {target.name}: {one_line(err)}"
        ) from None
    return WriteOutcome("xmp", photo, "written" if changed else "unchanged")
