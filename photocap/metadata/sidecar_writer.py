"""XMP sidecars: write captions where photo software reads them, merging, never clobbering.

Where the caption goes (``photo.jpg.xmp`` by default, ``photo.xmp`` with ``--sidecar-name stem``):

* ``dc:description`` - an ``rdf:Alt`` whose ``x-default`` entry (first) is the caption; other
  languages a person wrote (``de-DE``, ...) are kept untouched. Read by Lightroom, digiKam,
  darktable, Immich, exiftool, exiv2.
* ``Iptc4xmpCore:AltTextAccessibility`` - IPTC 2021.1 alt text (lang-alt, <= 250 characters).
* ``photocap:*`` (``https://github.com/photocap/ns/1.0/``) - provenance: model, score, date, the
  exact texts photocap wrote and the values they replaced. It is how a later run knows which
  captions are photocap's own (updated on re-caption) and which a person wrote (kept), and how
  ``photocap revert`` restores the earlier values.

An existing sidecar is parsed with defusedxml (no entity expansion, no external entities, size
cap) and modified as a tree: every other field, namespace, language, attribute and structure
(ratings, keywords, darktable history, Lightroom ``crs:`` settings, unknown namespaces) is
written back unchanged. Writes go through :func:`photocap.safeio.atomic_write` after the new
document has been re-parsed and checked (:func:`photocap.metadata.sidecars.save_sidecar`).

:func:`apply_caption` is the merge as a pure step on a document; :class:`XmpWriter` is the
thin adapter that finds the sidecar, asks it, and saves.
"""

from __future__ import annotations

from photocap.errors import WriteError
from photocap.metadata.authorship import (
    alt_text_for,
    find_human_caption,
    human_description,
    is_blank_alt_text,
    is_our_alt_text,
)
from photocap.metadata.provenance import read_provenance, stamp, write_provenance
from photocap.metadata.sidecars import (
    find_sidecars,
    load_or_new,
    save_sidecar,
    sidecar_for_write,
    sidecar_path,
)
from photocap.metadata.xmp import NS_DC, NS_IPTC, XmpDocument
from photocap.writers import (
    KEPT_HUMAN,
    CaptionRecord,
    OutcomeCode,
    WriteOptions,
    WriteOutcome,
    WriteStatus,
)


def apply_caption(
    doc: XmpDocument,
    record: CaptionRecord,
    *,
    overwrite_human: bool,
    human_elsewhere: bool = False,
    existed: bool = True,
) -> tuple[WriteStatus, bool]:
    """Put ``record`` into ``doc`` following the merge rules; returns (status, doc changed).

    A description counts as photocap's own only while its x-default text is exactly the text
    photocap recorded writing; anything else non-empty was written (or edited) by a person.
    """
    prov = read_provenance(doc)
    caption = " ".join(record.caption.split())
    alt = alt_text_for(caption)
    changed = False

    current = doc.get_default(NS_DC, "description")
    ours = current is not None and current == prov.description
    # A person's caption in any language of this sidecar, or in the file or the other sidecar
    human_here = human_description(doc, prov.description) is not None
    human = human_here or human_elsewhere
    if not human or overwrite_human:
        if not ours:
            prov.previous_description = current  # a person's text, or None/"" when there was none
        if current != caption:
            doc.set_default(NS_DC, "description", caption)
            changed = True
        changed |= prov.description != caption
        prov.description = caption
    elif ours:
        # A person's caption came after ours (another language here, the file, the other
        # sidecar): ours in x-default would hide it in apps that show x-default first. Ours
        # goes, as `photocap revert` does it.
        doc.put_default(NS_DC, "description", prov.previous_description)
        prov.description = prov.previous_description = None
        changed = True

    cur_alt = doc.get_default(NS_IPTC, "AltTextAccessibility")
    alt_ours = is_our_alt_text(cur_alt, prov.alt_text)
    alt_empty = is_blank_alt_text(cur_alt)
    # With a person's description kept, alt text is only added where there is none.
    if alt_empty or overwrite_human or (alt_ours and not human):
        if not alt_ours:
            prov.previous_alt_text = cur_alt
        if cur_alt != alt:
            doc.set_default(NS_IPTC, "AltTextAccessibility", alt)
            changed = True
        changed |= prov.alt_text != alt
        prov.alt_text = alt

    if changed:
        if not existed:
            prov.created_sidecar = True
        stamp(prov, record)
        write_provenance(doc, prov)
    status: WriteStatus = "kept_human" if human and not overwrite_human else "written"
    if status == "written" and not changed:
        status = "unchanged"
    return status, changed


# A new full-form sidecar beside the photo's stem-named one (Lightroom's, Capture One's): the
# caption is where darktable and digiKam read it, but not Lightroom. No file names: the
# summary shows it once, with the count of photos (OutcomeCode.STEM_SIDECAR_BESIDE).
STEM_SIDECAR_BESIDE = (
    "written to a new photo.jpg.xmp beside the photo's photo.xmp, the one Lightroom reads "
    "(--sidecar-name stem writes there)"
)


class XmpWriter:
    """``--write xmp``: caption, alt text and provenance in an XMP sidecar."""

    name = "xmp"

    def __init__(self, options: WriteOptions) -> None:
        self.options = options

    def write(self, record: CaptionRecord) -> WriteOutcome:
        photo = record.path
        try:
            target = sidecar_for_write(photo, self.options.sidecar_name)
            doc, existed = load_or_new(target)
            here = doc.get_default(NS_DC, "description")
            human = find_human_caption(photo, record.caption)
            status, changed = apply_caption(
                doc,
                record,
                overwrite_human=self.options.overwrite_human,
                human_elsewhere=human is not None and human != here,
                existed=existed,
            )
            if changed and not self.options.dry_run:
                save_sidecar(target, doc)
        except (WriteError, OSError) as err:  # SidecarTaken: the JPEG of a RAW+JPEG pair
            return WriteOutcome.failure(self.name, photo, err)
        if status == "kept_human":
            return WriteOutcome(
                self.name, photo, status, KEPT_HUMAN, human_caption=human,
                code=OutcomeCode.KEPT_HUMAN,
            )  # fmt: skip
        if status == "written" and not existed:  # a new sidecar: is the photo's own beside it?
            stem = sidecar_path(photo, "stem")
            if target != stem and stem in find_sidecars(photo):
                return WriteOutcome(
                    self.name, photo, status, STEM_SIDECAR_BESIDE, human_caption=human,
                    code=OutcomeCode.STEM_SIDECAR_BESIDE,
                )  # fmt: skip
        return WriteOutcome(self.name, photo, status, human_caption=human)

    def close(self) -> None:
        """Nothing buffered: every sidecar is written (atomically) in :meth:`write`."""
