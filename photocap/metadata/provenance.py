"""Provenance: photocap's own record of what it wrote and what it replaced, for any target.

It lives in the photo's XMP sidecar, in the photocap namespace (``https://github.com/photocap/ns/1.0/``):
the exact texts photocap wrote to the sidecar and into the file, the values they replaced, the
model, score and date, and, for in-file writes, the way back to the exact original file (a
byte patch, :mod:`photocap.metadata.patch`, with the SHA-256 of both ends). It is how a later
run tells photocap's own captions (updated) from a person's (kept), and how
``photocap revert`` restores what was there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from photocap.errors import WriteError
from photocap.metadata.edit import FileEdit, InFileText
from photocap.metadata.ifd import TAG_IMAGE_DESCRIPTION, TAG_XP_COMMENT, encode_ascii, encode_xp
from photocap.metadata.patch import (
    MAX_PATCH_BYTES,
    apply_patch,
    decode_patch,
    diff_bytes,
    encode_patch,
)
from photocap.metadata.xmp import NS_DC, NS_IPTC, NS_PHOTOCAP, XmpDocument
from photocap.writers import CaptionRecord

if TYPE_CHECKING:  # pragma: no cover
    from photocap.metadata.infile import Rewrite


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_bytes(prov: Provenance, data: bytes) -> bytes | None:
    """The photo as it was before photocap's first write into it, from its undo record; None
    when the record is missing or damaged, or ``data`` is no longer the file photocap wrote
    (another app changed it since)."""
    if prov.exif_undo is None or prov.exif_written_sha256 != _sha256(data):
        return None
    try:
        original = apply_patch(data, decode_patch(prov.exif_undo))
    except WriteError:
        return None
    return original if _sha256(original) == prov.exif_original_sha256 else None


def record_undo(prov: Provenance, rewrite: Rewrite, caption: str) -> None:
    """Keep in ``prov`` the patch from the file just written back to the photo's original
    bytes (:mod:`photocap.metadata.patch`), when they are known: the file before this rewrite if
    photocap had never written into it, or what the previous record leads back to. A patch
    over ``MAX_PATCH_BYTES`` is not kept (revert then restores the texts)."""
    if prov.exif_undo is not None:
        original = original_bytes(prov, rewrite.old)
    elif prov.exif_description is None and prov.exif_alt_text is None:
        # Never written by photocap, as far as its record goes; but our caption already in
        # the file (a copy of a captioned photo) means these are not the user's own bytes.
        original = None if caption.encode() in rewrite.old else rewrite.old
    else:
        original = None  # written before undo records existed: texts only
    prov.forget_undo()
    if original is None:
        return
    patch = encode_patch(diff_bytes(rewrite.new, original))
    if len(patch) <= MAX_PATCH_BYTES:
        prov.exif_undo = patch
        prov.exif_written_sha256 = _sha256(rewrite.new)
        prov.exif_original_sha256 = _sha256(original)


@dataclass
class Provenance:
    """photocap's own record in a sidecar (all fields optional; absent = never written)."""

    description: str | None = None  # the x-default text photocap wrote to dc:description
    alt_text: str | None = None  # the text photocap wrote to AltTextAccessibility
    previous_description: str | None = None  # the human text it replaced (overwrite_human)
    previous_alt_text: str | None = None
    exif_description: str | None = None  # what the exif writer wrote to ImageDescription
    exif_previous_description: str | None = None
    exif_previous_comment: str | None = None  # XPComment before photocap
    # The exif writer also writes the file's embedded XMP packet: what it replaced there, and
    # the alt text it wrote (its caption there is exif_description).
    exif_previous_xmp_description: str | None = None
    exif_alt_text: str | None = None
    exif_previous_alt_text: str | None = None
    exif_added_xmp: str | None = None  # "True": the file had no XMP packet before photocap's
    # How to give back the photo's exact bytes (photocap.metadata.patch): the patch from the file as
    # photocap last wrote it (that file's SHA-256) to the file before photocap's first write.
    exif_undo: str | None = None
    exif_written_sha256: str | None = None
    exif_original_sha256: str | None = None
    model: str | None = None
    score: str | None = None
    date: str | None = None
    created_sidecar: bool = False  # the sidecar did not exist before photocap wrote it

    def forget_exif(self, *, alt_text: bool = True) -> None:
        """Clear the exif writer's record of its caption (and, with ``alt_text``, of its alt
        text) once the file no longer holds it: put back by revert, or taken out for a
        person's (:func:`restore_edit` with the same ``alt_text``)."""
        self.exif_description = self.exif_previous_description = None
        self.exif_previous_comment = self.exif_previous_xmp_description = None
        if alt_text:
            self.exif_alt_text = self.exif_previous_alt_text = self.exif_added_xmp = None
            self.forget_undo()

    def forget_undo(self) -> None:
        """Drop the record of the photo's original bytes (it no longer leads back to them)."""
        self.exif_undo = self.exif_written_sha256 = self.exif_original_sha256 = None


_PROV_FIELDS = {
    # Names chosen not to collide with common tag names (exiftool -Description / -Model).
    "description": "writtenDescription",
    "alt_text": "writtenAltText",
    "previous_description": "previousDescription",
    "previous_alt_text": "previousAltText",
    "exif_description": "exifDescription",
    "exif_previous_description": "exifPreviousDescription",
    "exif_previous_comment": "exifPreviousComment",
    "exif_previous_xmp_description": "exifPreviousXmpDescription",
    "exif_alt_text": "exifAltText",
    "exif_previous_alt_text": "exifPreviousAltText",
    "exif_added_xmp": "exifAddedXmp",
    "exif_undo": "exifUndo",
    "exif_written_sha256": "exifWrittenSha256",
    "exif_original_sha256": "exifOriginalSha256",
    "model": "captionModel",
    "score": "captionScore",
    "date": "captionDate",
}


XMP_OWN_FIELDS = ("description", "alt_text", "previous_description", "previous_alt_text")


EXIF_OWN_FIELDS = (
    "exif_description",
    "exif_previous_description",
    "exif_previous_comment",
    "exif_previous_xmp_description",
    "exif_alt_text",
    "exif_previous_alt_text",
    "exif_added_xmp",
    "exif_undo",
    "exif_written_sha256",
    "exif_original_sha256",
)


def read_provenance(doc: XmpDocument) -> Provenance:
    prov = Provenance()
    for attr, name in _PROV_FIELDS.items():
        setattr(prov, attr, doc.get_text(NS_PHOTOCAP, name))
    prov.created_sidecar = doc.get_text(NS_PHOTOCAP, "createdSidecar") == "True"
    return prov


def write_provenance(doc: XmpDocument, prov: Provenance) -> None:
    """Store ``prov`` in ``doc``; with nothing left to record, the photocap namespace goes."""
    own = [getattr(prov, f) for f in XMP_OWN_FIELDS + EXIF_OWN_FIELDS]
    if all(v is None for v in own):
        for name in [*_PROV_FIELDS.values(), "createdSidecar"]:
            doc.remove(NS_PHOTOCAP, name)
        return
    for attr, name in _PROV_FIELDS.items():
        value = getattr(prov, attr)
        if value is None:
            doc.remove(NS_PHOTOCAP, name)
        else:
            doc.set_text(NS_PHOTOCAP, name, value)
    if prov.created_sidecar:
        doc.set_text(NS_PHOTOCAP, "createdSidecar", "True")
    else:
        doc.remove(NS_PHOTOCAP, "createdSidecar")


def stamp(prov: Provenance, record: CaptionRecord) -> None:
    prov.model = record.model_id
    prov.score = f"{record.score:.4f}"
    prov.date = _iso(record.captioned_at)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def restore_edit(
    prov: Provenance, text: InFileText, notes: list[str] | None = None, *, alt_text: bool = True
) -> FileEdit | None:
    """The edit that puts back what the exif writer replaced in a file, wherever the file still
    holds what it wrote (``prov``): ImageDescription, XPComment, the embedded XMP description
    and, with ``alt_text``, the alt text. A text edited since is left, with a line in ``notes``.
    None: nothing to put back. ``photocap revert`` uses it, and the writer when a person's
    caption came after ours."""
    notes = [] if notes is None else notes
    written = prov.exif_description
    edit = FileEdit(drop_empty_xmp=prov.exif_added_xmp == "True")
    if written is not None and text.description == written:
        before = prov.exif_previous_description
        edit.tags[TAG_IMAGE_DESCRIPTION] = encode_ascii(before) if before is not None else None
    elif written is not None:
        notes.append("EXIF description was edited after photocap wrote it; left as is")
    if written is not None and text.comment == written:
        before = prov.exif_previous_comment
        edit.tags[TAG_XP_COMMENT] = encode_xp(before) if before is not None else None
    doc = text.xmp()  # the embedded packet (JPEG, WebP, TIFF, PNG, DNG)
    fields = [(NS_DC, "description", written, prov.exif_previous_xmp_description)]
    if alt_text:
        fields.append((NS_IPTC, "AltTextAccessibility", prov.exif_alt_text,
                       prov.exif_previous_alt_text))  # fmt: skip
    for ns, name, ours, before_text in fields:
        current = doc.get_default(ns, name) if doc is not None else None
        if ours is not None and current == ours:
            edit.xmp[(ns, name)] = before_text
        elif ours is not None and current is not None and name == "description":
            notes.append("embedded XMP description was edited after photocap; left as is")
    return edit or None
