"""Captions inside JPEG, WebP, TIFF, PNG and DNG files, written losslessly.

``--write exif`` puts the caption in EXIF ``ImageDescription`` (UTF-8) and ``XPComment``
(UTF-16LE, the "Comments" field of Windows Explorer). It also goes into the file's embedded XMP
packet (``dc:description``, with the alt text in ``Iptc4xmpCore:AltTextAccessibility``), merged
into the packet the file has or in a new one after the EXIF block, so that software reading
either place shows the same caption (the Metadata Working Group's rule). A description a person
wrote in EXIF, the XMP packet or IPTC is kept. JPEG, WebP, TIFF, PNG and DNG are written
in-file; every other format returns ``skipped`` (the caption stays in the sidecar; no other
camera RAW is ever written: their makers' apps and Lightroom keep a CR2's or NEF's metadata in a
sidecar, but a DNG's inside it).

How the file stays intact:

* **Segment surgery, not re-encoding.** The JPEG is split into its marker segments up to SOS;
  only the Exif APP1 segment and the standard XMP APP1 segment are replaced (or inserted: Exif
  after SOI/JFIF APP0, XMP after Exif). Every other byte - JFIF APP0, Extended XMP, ICC APP2,
  IPTC APP13, COM, tables, the entropy-coded scan and anything after EOI - is copied byte for
  byte, so decoded pixels are identical. The XMP packet is merged, never replaced: every
  property, language and comment in it is kept, and it is checked to say the same as before
  apart from our two texts. (piexif.insert is not used: it drops JFIF APP0 and can add a
  second Exif block.) The extra images of a Multi-Picture file (after EOI) must still be where
  its index says, or nothing is written.
* **Chunk surgery for WebP.** A WebP file is a RIFF list of chunks; only the ``EXIF`` and
  ``XMP `` chunks are replaced or added (after the image data, EXIF then XMP, as the container
  spec orders them), and the ``VP8X`` header's EXIF and XMP flags set. A "simple" WebP (one
  ``VP8``/``VP8L`` chunk) gets the ``VP8X`` header the extended format requires, its canvas
  size read from the bitstream. Every other chunk is copied byte for byte.
* **TIFF: a new first IFD.** A TIFF file is one TIFF block, changed as an EXIF block is
  (below): its IFD0 entries plus ours (the XMP packet is tag 700) go into a new IFD0 appended at
  the end; pages, strips and other IFDs stay byte for byte, and every page must decode to the
  same pixels. A DNG is a TIFF and is written the same way (as Adobe's apps append its
  metadata); LibRaw must then read the same sensor data and preview from it.
* **PNG: chunk surgery.** Only the ``eXIf`` chunk (a TIFF block, changed as below) and the
  ``iTXt`` chunk of the XMP packet are replaced, or added before the image data; every other
  chunk and anything after ``IEND`` is copied byte for byte, and every frame of an animated PNG
  must decode to the same pixels.
* **No EXIF re-serialisation.** piexif's load/dump silently drops tags it does not know and
  moves maker notes, breaking their internal offsets. Instead the original TIFF block is kept
  byte for byte and a *new IFD0* (old entries plus ours) is appended at its end, with the header
  pointing to it. Every existing offset (Exif IFD, GPS, maker note, thumbnail) stays valid. On a
  re-caption, an IFD0 that photocap appended is replaced rather than stacked when nothing else
  points into it.
* **Verified before it replaces anything.** The new file is parsed again: our text is there,
  every other segment (chunk) and the image data are identical, exactly one EXIF block, piexif
  reads the same tags as before, Pillow opens and decodes it (WebP: to the same pixels). Only
  then does the atomic rename happen (see :mod:`photocap.safeio`); the photo's mtime and
  permissions are kept.

Provenance (what photocap wrote, what it replaced) lives in the photo's XMP sidecar, in the
photocap namespace, so a later run never overwrites a description a person wrote.

This module is the writer: the plan (which texts change, what is recorded) and its outcome.
How each format is rebuilt and verified lives in the format's module
(:mod:`~photocap.metadata.jpeg`, :mod:`~photocap.metadata.webp`,
:mod:`~photocap.metadata.png`, :mod:`~photocap.metadata.tiff`); the safe rewrite of the file
in :func:`photocap.metadata.infile.rewrite_photo`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from photocap.errors import WriteError, one_line
from photocap.metadata.authorship import (
    alt_text_for,
    human_caption_in_file_text,
    human_caption_in_sidecars,
    is_blank_alt_text,
    is_our_alt_text,
    written_by_person,
)
from photocap.metadata.edit import FileEdit, InFileText
from photocap.metadata.ifd import TAG_IMAGE_DESCRIPTION, TAG_XP_COMMENT, encode_ascii, encode_xp
from photocap.metadata.infile import IN_FILE_FORMATS, Rewrite, detect_file_format, rewrite_photo
from photocap.metadata.provenance import (
    Provenance,
    read_provenance,
    record_undo,
    restore_edit,
    stamp,
    write_provenance,
)
from photocap.metadata.sidecars import load_or_new, save_sidecar, sidecar_for_write
from photocap.metadata.xmp import NS_DC, NS_IPTC, xmp_description
from photocap.safeio import atomic_write, check_replaceable, check_writable
from photocap.writers import KEPT_HUMAN, CaptionRecord, OutcomeCode, WriteOptions, WriteOutcome


@dataclass
class InFilePlan:
    """The exif writer's plan for one photo: given what the file holds (``rewrite_photo`` calls
    it with the file's current texts), the edit to make, and in ``prov`` what it replaces. What
    it found is kept on it for the outcome."""

    prov: Provenance  # read from the photo's sidecar; the plan records what it replaces
    caption: str  # whitespace folded
    in_sidecar: str | None  # a caption a person wrote in a sidecar (digiKam's, say)
    overwrite_human: bool
    # the alt text for ``caption``
    alt: str = field(default="", init=False)
    # a caption a person wrote (in the file or a sidecar)
    human: str | None = field(default=None, init=False)
    # our caption or alt text differs from what the provenance records
    claim: bool = field(default=False, init=False)
    # the alt text in the embedded XMP is ours (now or before)
    wrote_alt: bool = field(default=False, init=False)
    # our caption left the file: a person's came after it
    retracted: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.alt = alt_text_for(self.caption)

    def before_us(self, found: str | None) -> str | None:
        """What a text in the file was before photocap wrote there. Our caption with no
        provenance for it (the photo was copied, or moved without its sidecar, after
        photocap wrote into it) is ours: nothing of anyone's to give back."""
        return None if found == self.caption else found

    def __call__(self, text: InFileText) -> FileEdit | None:
        """The edit for a file that holds ``text`` (None: leave it as it is)."""
        prov, caption, alt = self.prov, self.caption, self.alt
        desc, comment = text.description, text.comment
        written = prov.exif_description
        self.human = self.in_sidecar or human_caption_in_file_text(
            text, written, prov.description, caption
        )
        if self.human is not None and not self.overwrite_human:
            # A person's caption keeps ours out of the file. If ours is there already
            # (theirs came later), it would hide theirs from apps that read the file
            # first: ours goes, the alt text stays.
            retract = restore_edit(prov, text, alt_text=False)
            self.retracted = retract is not None
            return retract
        edit = FileEdit()
        if desc != caption:
            edit.tags[TAG_IMAGE_DESCRIPTION] = encode_ascii(caption)
        comment_ours = comment is not None and comment in (written, caption)
        if comment != caption and (
            not written_by_person(comment, (written, caption)) or self.overwrite_human
        ):
            edit.tags[TAG_XP_COMMENT] = encode_xp(caption)
        if not (desc is not None and desc == written):
            # first write over someone else's (or no) text: remember it
            prov.exif_previous_description = self.before_us(desc)
            prov.exif_previous_comment = None if comment_ours else comment
        self.claim = written != caption
        # The caption and alt text go into the embedded XMP too (MWG).
        packet = text.xmp()
        if packet is None:
            prov.exif_added_xmp = "True"
        xdesc = xmp_description(packet)
        if xdesc != caption:
            edit.xmp[(NS_DC, "description")] = caption
        if xdesc is None or xdesc != written:
            prov.exif_previous_xmp_description = self.before_us(xdesc)
        cur_alt = packet.get_default(NS_IPTC, "AltTextAccessibility") if packet else None
        alt_ours = is_our_alt_text(cur_alt, prov.exif_alt_text, alt)
        alt_empty = is_blank_alt_text(cur_alt)
        if alt_empty or alt_ours or self.overwrite_human:
            if cur_alt != alt:
                edit.xmp[(NS_IPTC, "AltTextAccessibility")] = alt
            if not alt_ours:
                prov.exif_previous_alt_text = cur_alt
            self.claim = self.claim or prov.exif_alt_text != alt
            self.wrote_alt = True
        return edit or None


class ExifWriter:
    """``--write exif``: ImageDescription + XPComment inside JPEG, WebP, TIFF, PNG and DNG files,
    and the embedded XMP description and alt text."""

    name = "exif"

    def __init__(self, options: WriteOptions) -> None:
        self.options = options

    def write(self, record: CaptionRecord) -> WriteOutcome:
        photo = record.path
        try:
            fmt = detect_file_format(photo)
            if fmt not in IN_FILE_FORMATS:
                why = f"exif not supported for {fmt}; caption in sidecar"
                return WriteOutcome(
                    self.name, photo, "skipped", why, code=OutcomeCode.FORMAT_NOT_WRITTEN
                )
            check_replaceable(Path(os.path.realpath(photo)))  # a dry run says so too
            # Provenance is checked (and a bad sidecar refused) before the photo is touched.
            sidecar = sidecar_for_write(photo, self.options.sidecar_name)
            doc, existed = load_or_new(sidecar)
            if not self.options.dry_run:
                # The record of what we write (and the way back) goes into the sidecar: one
                # that cannot be written (read-only) means the photo is not touched either.
                check_writable(sidecar, in_place=True)
            prov = read_provenance(doc)
            caption = " ".join(record.caption.split())
            # A person's caption in a sidecar (digiKam's, say) keeps ours out of the file too:
            # apps reading the file would show ours, apps reading the sidecar theirs.
            in_sidecar, _ = human_caption_in_sidecars(photo)
            plan = InFilePlan(prov, caption, in_sidecar, self.options.overwrite_human)
            # A caption of ours the file no longer points to (re-captioned over an IFD0 another
            # app appended after ours, or taken out for a person's) leaves no dead bytes.
            stale = [t for t in (prov.exif_description,) if t and t != caption]
            changed = rewrite_photo(
                photo, plan, touch=self.options.touch, dry_run=self.options.dry_run, scrub=stale
            )
            rewrote = changed is not None and not self.options.dry_run  # the bytes are new
            if changed is not None and rewrote:
                record_undo(prov, changed, caption)  # before the record says "ours" below
            if plan.human is not None and not self.options.overwrite_human:
                if plan.retracted and not self.options.dry_run:
                    prov.forget_exif(alt_text=False)
                    write_provenance(doc, prov)
                    try:
                        save_sidecar(sidecar, doc)
                    except WriteError as err:
                        return self._unrecorded(photo, changed, err)
                return WriteOutcome(
                    self.name, photo, "kept_human", KEPT_HUMAN, human_caption=plan.human,
                    changed_photo=rewrote, code=OutcomeCode.KEPT_HUMAN,
                )  # fmt: skip
            if changed is None and not plan.claim:
                return WriteOutcome(self.name, photo, "unchanged")
            prov.exif_description = caption
            if plan.wrote_alt:
                prov.exif_alt_text = plan.alt
            if not existed:
                prov.created_sidecar = True
            stamp(prov, record)
            write_provenance(doc, prov)
            if not self.options.dry_run:
                try:
                    save_sidecar(sidecar, doc)
                except WriteError as err:
                    return self._unrecorded(photo, changed, err)
        except (WriteError, OSError) as err:  # SidecarTaken: no sidecar of its own for the record
            return WriteOutcome.failure(self.name, photo, err)
        return WriteOutcome(
            self.name, photo, "written", human_caption=plan.human, changed_photo=rewrote
        )

    def _unrecorded(self, photo: Path, rewrite: Rewrite | None, err: WriteError) -> WriteOutcome:
        """The photo was written but its record could not be saved (a full disk): without it
        revert could not take the caption back, so the photo gets its bytes back first."""
        if rewrite is None or self.options.dry_run:
            return WriteOutcome.failure(self.name, photo, err)
        try:
            atomic_write(photo, rewrite.old, preserve_mtime=True)
        except WriteError as undo_err:
            return WriteOutcome(
                self.name, photo, "failed",
                f"caption written to EXIF but its record not saved ({one_line(err)}); putting "
                f"the photo back failed too: {one_line(undo_err)}",
                changed_photo=True,
            )  # fmt: skip
        return WriteOutcome(
            self.name, photo, "failed",
            f"not written in the file: its record could not be saved ({one_line(err)})",
        )  # fmt: skip

    def close(self) -> None:
        """Nothing buffered: each photo is rewritten (atomically) in :meth:`write`."""
