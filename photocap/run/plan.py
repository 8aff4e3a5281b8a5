"""The plan stage: which photos need the model, which keep a caption, which need nothing.

Pure decisions over the index, shared by every engine:

* :func:`plan_library` walks the library (stat calls, no reading) and sorts each photo: skipped
  (size and mtime match a row captioned by this model into every output asked for), carried
  (its caption is known; an output is still to write, or its sidecar changed: a
  :class:`Job`), or work to decode (:class:`Work`). Only paths are kept in memory.
* :func:`decide_decoded` looks at a decoded photo again: the same bytes or pixels as its row
  (touched, tagged in another app), a moved photo's row, a copy's row: it keeps that caption,
  no model call.
* :func:`plan_status` is ``photocap status``'s view of the same rules.

A :class:`Job` is one photo's writes with its caption: what the write and record stages take.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeGuard

from photocap.image import DecodedPhoto, describe_path
from photocap.index import PhotoIndex, PhotoRow, index_key
from photocap.library import DiscoveryFailure, PhotoFile, discover_photos
from photocap.metadata.sidecars import sidecar_stamp
from photocap.run.events import CaptionOptions, PhotoResult, PhotoStatus, Progress
from photocap.writers import KEEP_VECTOR, CaptionRecord


@dataclass
class Work:
    """A photo that needs decoding (and maybe captioning), with its row if it has one."""

    photo: PhotoFile
    row: PhotoRow | None
    # Its caption stands; decoded for its vector only (the encoder, no beam search), then
    # carried for this reason: a photo captioned before photocap stored vectors.
    embed: Why | None = None


@dataclass
class Ready:
    """A decoded photo waiting for the model."""

    photo: PhotoFile
    row: PhotoRow | None
    decoded: DecodedPhoto
    embed: Why | None = None  # its vector only (:attr:`Work.embed`)


@dataclass(frozen=True)
class Job:
    """One photo's writes: its caption, to the file writers, then its index row."""

    record: CaptionRecord
    status: PhotoStatus
    reason: str
    already: frozenset[str] = frozenset()  # outputs that hold the caption already: not written
    photo: PhotoFile | None = None  # carried photos: its stat facts go into the row
    moved_from: str | None = None  # carried from a moved row: renamed in the same transaction


@dataclass(frozen=True)
class Why:
    """Why a photo keeps a caption without the model: the text users read (a result's
    ``reason``), and what it means for the writes."""

    text: str
    # The xmp and exif writers look at the files again, even where the index says they hold
    # the caption: a person's caption may have come, or ours gone.
    look_again: bool = False
    # Nothing a user sees changes (the index may learn a person's caption): counted as
    # skipped, not listed.
    quiet: bool = False


# An unchanged photo, captioned by this model, with an output still to write (newly asked for).
OUTPUTS_ADDED = Why("unchanged, outputs added")
# An unchanged photo whose sidecar changed since photocap last wrote it (a caption a person
# typed in another app becomes searchable; a deleted sidecar is written again).
SIDECAR_CHANGED = Why("unchanged, sidecar changed", look_again=True)
# An unchanged photo whose sidecars the index, from an earlier version, never recorded.
SIDECARS_UNRECORDED = Why("unchanged, sidecars looked at", quiet=True)
# A touched photo: new mtime, the same bytes.
CONTENT_UNCHANGED = Why("content unchanged")
# A changed photo whose pixels are as captioned: only its metadata changed, and a person's
# caption may have come with it.
PIXELS_UNCHANGED = Why("pixels unchanged", look_again=True)
# An unchanged photo captioned before photocap stored vectors: the encoder gives it one (for
# search by meaning), its caption stays.
VECTOR_ADDED = Why("unchanged, vector added for search by meaning")


@dataclass
class Plan:
    """What a walk of the library found to do, once it walked all of it."""

    work: list[Work]  # photos to decode
    carries: list[Job]  # unchanged photos whose outputs are to write again: no decode
    unwalked: list[str]  # index keys of the paths that could not be walked

    def carry_batches(self, size: int, stop: threading.Event) -> Iterator[list[Job]]:
        """The carried photos' writes in batches of ``size``, until ``stop`` is set."""
        size = max(1, size)
        for start in range(0, len(self.carries), size):
            if stop.is_set():
                return
            yield self.carries[start : start + size]


PlanStep = DiscoveryFailure | Progress | PhotoResult | Plan


def plan_library(
    paths: Iterable[str | os.PathLike[str]],
    index: PhotoIndex,
    model_id: str,
    options: CaptionOptions,
    stop: threading.Event,
    vector_size: int = 0,
) -> Iterator[PlanStep]:
    """Walk ``paths``: yield each path that cannot be walked (a :class:`DiscoveryFailure`),
    scan :class:`Progress`, a skipped :class:`PhotoResult` for each photo that needs nothing,
    and last the :class:`Plan` (none when ``stop`` was set during the walk).

    ``vector_size``: the model gives each photo a vector of that many bytes; an unchanged photo
    whose row has none (or one of another size: another embedding's) is decoded for it
    (:attr:`Work.embed`), its caption kept; after the photos to caption, in what the limit
    leaves. ``options.limit`` counts photos to decode or carry; skipped ones do not count."""
    limit = options.limit
    wanted = frozenset(options.writers)
    scanned = 0
    work: list[Work] = []
    carries: list[Job] = []
    vectors_only: list[Work] = []  # captioned photos decoded for their vector only
    unwalked: list[str] = []
    for item in discover_photos(paths):
        if stop.is_set():
            return
        if isinstance(item, DiscoveryFailure):
            unwalked.append(index_key(item.path))
            yield item
            continue
        scanned += 1
        if scanned % 500 == 0:
            yield Progress("scan", scanned, None)
        row = index.get(item.path)
        if not options.force and captioned_by(row, model_id) and same_stat(row, item):
            why = why_redo(row, wanted, sidecar_stamp(item.path))
            if vector_size and not index.has_vector(item.path, vector_size):
                vectors_only.append(Work(item, row, embed=why or VECTOR_ADDED))
            elif why is None:
                yield PhotoResult(item.path, "skipped", row.caption, row.score,
                                  row.alternatives, reason="unchanged")  # fmt: skip
            elif limit is None or len(work) + len(carries) < limit:
                carries.append(carry_job(item, row, why))  # caption known; outputs to redo
            continue
        if limit is None or len(work) + len(carries) < limit:
            work.append(Work(item, row))
    # Vectors after the photos to caption, in what ``limit`` leaves: an unchanged photo left
    # out is skipped as before (its vector waits for a run with room).
    room = len(vectors_only) if limit is None else max(0, limit - len(work) - len(carries))
    work += vectors_only[:room]
    for left in vectors_only[room:]:
        row = left.row
        if left.embed is VECTOR_ADDED and row is not None:
            yield PhotoResult(left.photo.path, "skipped", row.caption, row.score,
                              row.alternatives, reason="unchanged")  # fmt: skip
    yield Plan(work, carries, unwalked)


def decide_decoded(
    work: Work, decoded: DecodedPhoto, index: PhotoIndex, model_id: str, force: bool
) -> Job | None:
    """A decoded photo that keeps a caption without the model (its writes), or None: the
    model's. The same bytes (touched) or pixels (its metadata edited elsewhere) as its row, a
    moved photo's row, or a copy's: the model would say the same."""
    if force:
        return None
    row = work.row
    if captioned_by(row, model_id):
        # Its outputs are written where missing.
        if row.content_hash == decoded.content_hash:
            return carry_job(work.photo, row, CONTENT_UNCHANGED)
        if row.pixels_hash == decoded.pixels_hash:
            return carry_job(work.photo, row, PIXELS_UNCHANGED)
    moved = index.find_moved(decoded.content_hash, work.photo.path, pixels_hash=decoded.pixels_hash)
    if moved is not None and moved.model_id == model_id:
        why = Why(f"moved from {describe_path(moved.path)}")
        return carry_job(work.photo, moved, why, moved_from=moved.path)
    copy = index.find_copy(decoded.pixels_hash, work.photo.path)
    if copy is not None and copy.model_id == model_id:
        # A copy of a captioned photo (or the same picture with other metadata): its own
        # outputs are all still to write.
        job = carry_job(work.photo, copy, same_picture(copy.path), own_row=False)
        vector = index.get_vector(copy.path)  # the same pixels: the same vector
        return replace(job, record=replace(job.record, vector=vector)) if vector else job
    return None


def captioned_by(row: PhotoRow | None, model_id: str) -> TypeGuard[PhotoRow]:
    """``row`` holds a caption of the model ``model_id``."""
    return row is not None and row.is_captioned and row.model_id == model_id


def carry_job(
    photo: PhotoFile,
    row: PhotoRow,
    why: Why,
    moved_from: str | None = None,
    own_row: bool = True,
) -> Job:
    """Keep an existing caption for ``photo`` (no model call), writing any missing outputs.

    ``row`` is the photo's own, or (``own_row=False``) another photo's with the same
    pixels; ``moved_from``: the photo's row from before it moved, renamed to it.
    """
    record = row_record(photo.path, row)
    if own_row:  # its own row (or the row it moved from) keeps its vector
        record = replace(record, vector=KEEP_VECTOR)
    skip = row.outputs if own_row and moved_from is None else frozenset()
    if why.look_again:
        skip -= {"xmp", "exif"}
    status: PhotoStatus = "skipped" if why.quiet else "carried"
    return Job(record, status, why.text, already=skip, photo=photo, moved_from=moved_from)


def embedded_job(
    photo: PhotoFile, row: PhotoRow, why: Why, vector: bytes | None, failure: str = ""
) -> Job:
    """A photo decoded for its vector only (:attr:`Work.embed`): its caption carried, with
    ``vector``. Without one (its decode or the model failed: ``failure``) the row keeps what it
    has and the next run tries again; the caption and its outputs stand either way."""
    job = carry_job(photo, row, why)
    if vector is not None:
        return replace(job, record=replace(job.record, vector=vector))
    status = "skipped" if why is VECTOR_ADDED else job.status  # nothing else was to do
    return replace(job, status=status, reason=f"{why.text}; no vector: {failure or 'none made'}")


def paired_job(raw: PhotoFile, lead: CaptionRecord) -> Job:
    """The RAW of a RAW+JPEG pair takes the caption of its JPEG, the camera's rendering of the
    same exposure: one caption per shot, one model call. Every output is written."""
    return Job(replace(lead, path=raw.path), "carried", f"same shot as {lead.path.name}")


def row_record(path: Path, row: PhotoRow) -> CaptionRecord:
    """The caption ``row`` holds, for the photo at ``path``."""
    return CaptionRecord(
        path=path, caption=row.caption or "", score=float(row.score or 0.0),
        alternatives=row.alternatives, model_id=row.model_id or "",
        captioned_at=_parse_time(row.captioned_at),
    )  # fmt: skip


def same_picture(original: str | os.PathLike[str]) -> Why:
    """A copy of ``original`` (the same pixels) takes its caption: the model would say the
    same."""
    return Why(f"same picture as {describe_path(original)}")


def why_redo(row: PhotoRow, wanted: frozenset[str], stamp: str) -> Why | None:
    """Why an unchanged photo, captioned by this model, needs its outputs written or looked at
    again; None when it needs nothing (skipped)."""
    if not wanted <= row.outputs:
        return OUTPUTS_ADDED
    if row.sidecar_stamp is None:  # recorded by an earlier version: look once, then record
        return SIDECARS_UNRECORDED
    if row.sidecar_stamp != stamp:  # edited in another app, or deleted, since photocap wrote
        return SIDECAR_CHANGED
    return None


def same_stat(row: PhotoRow, photo: PhotoFile) -> bool:
    return row.size == photo.size and row.mtime_ns == photo.mtime_ns


def _parse_time(text: str | None) -> datetime:
    if text:
        try:
            parsed = datetime.fromisoformat(text)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


def plan_status(
    paths: Iterable[str | os.PathLike[str]], index: PhotoIndex
) -> Iterator[tuple[Path, str]]:
    """For ``photocap status PATH``: yield (path, state) for photos not captioned as they are now.

    state is "new" (no row), "changed" (size/mtime differ), "caption removed" (``photocap
    revert`` took it out: the next run captions it again) or, for a path that cannot be walked
    and no run recorded yet, "error: <reason>". A failure recorded in the index is not yielded:
    ``photocap status`` lists those once, with their stage (:meth:`PhotoIndex.stats`).
    """
    for item in discover_photos(paths):
        row = index.get(index_key(item.path))
        if row is not None and row.error is not None:
            continue  # a recorded failure: listed with the others
        if isinstance(item, DiscoveryFailure):
            yield item.path, f"error: {item.error}"
        elif row is None:
            yield item.path, "new"
        elif not row.caption:  # a row without caption nor failure: reverted (bytes and all)
            yield item.path, "caption removed"
        elif not same_stat(row, item):
            yield item.path, "changed"
