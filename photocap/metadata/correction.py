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
alt text would describe what the person just said is wrong).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from photocap.errors import WriteError, one_line
from photocap.metadata.authorship import alt_text_for
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
from photocap.writers import CaptionRecord, WriteOptions, WriteOutcome

# The longest correction taken (a caption is a sentence; XMP has no limit of its own).
MAX_CAPTION = 2000


def clean_caption(text: str) -> str:
    """``text`` as a caption: one line, whitespace folded. Raises :class:`WriteError` when it
    is empty or longer than :data:`MAX_CAPTION` characters."""
    caption = " ".join(text.split())
    if not caption:
        raise WriteError("a caption cannot be empty")
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


def write_human_caption(photo: Path, text: str, *, in_file: bool) -> list[WriteOutcome]:
    """Write ``text`` as a person's caption of ``photo``: into the file first when ``in_file``
    (photocap had written its caption there), then into the sidecar. Returns one outcome per
    place; a failed in-file write leaves the file (and photocap's record of it) as it was, and
    the sidecar still gets the caption. Raises :class:`WriteError` when the sidecar cannot be
    written (nothing was changed then in the sidecar; see the in-file outcome for the file)."""
    caption = clean_caption(text)
    naming = our_sidecar_name(photo)
    outcomes: list[WriteOutcome] = []
    written_in_file = False
    if in_file:
        record = CaptionRecord(
            path=photo, caption=caption, score=0.0, alternatives=(), model_id="person",
            captioned_at=datetime.now(timezone.utc),
        )  # fmt: skip
        # overwrite_human: what is in the file is photocap's caption, or a text this person is
        # replacing on purpose. The exif writer records the texts as its own; that record is
        # dropped below, with the sidecar's.
        writer = ExifWriter(WriteOptions(sidecar_name=naming, overwrite_human=True))
        outcome = writer.write(record)
        outcomes.append(outcome)
        written_in_file = outcome.status in ("written", "unchanged")
    outcomes.append(_write_sidecar(photo, caption, naming, forget_file=written_in_file))
    return outcomes


def _write_sidecar(
    photo: Path, caption: str, naming: SidecarName, *, forget_file: bool
) -> WriteOutcome:
    target = sidecar_for_write(photo, naming)
    doc, _existed = load_or_new(target)
    prov = read_provenance(doc)
    changed = doc.get_default(NS_DC, "description") != caption
    doc.set_default(NS_DC, "description", caption)
    doc.set_default(NS_IPTC, "AltTextAccessibility", alt_text_for(caption))
    # Not photocap's texts any more: a person's, kept by every later run and by revert.
    prov.description = prov.previous_description = None
    prov.alt_text = prov.previous_alt_text = None
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
