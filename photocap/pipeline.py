"""The caption run: discover -> plan -> decode (worker processes) -> caption (batches) -> write.

:func:`caption_library` is a generator of events (:class:`PhotoResult` per photo,
:class:`Progress`, one final :class:`RunSummary`); it never prints, the CLI renders.

How it stays fast and flat on a 50,000-photo library:

* Planning stats every photo (no reading) and skips those whose size and mtime match a row
  captioned by the same model into the same outputs. Only paths are kept in memory.
* Decoding runs in a process pool that works ahead of the model through a bounded queue of
  futures, so memory holds at most a few batches of 3x224x224 uint8 arrays. Each worker reads a
  file once, hashing and decoding it.
* A photo whose content hash (or pixels) match its old row (touched, copied back, tagged in
  another app), a row whose file is gone (moved, renamed) or another photo's row (a copy)
  keeps that caption: no model call.
* The RAW of a RAW+JPEG pair (:attr:`PhotoFile.lead <photocap.library.PhotoFile>`) is decoded
  (its hashes and facts go into its row) but not captioned: it waits, out of the batch, for its
  JPEG's caption and is written with it; if the JPEG gets none, the RAW goes to the model.
* Each batch goes through ``captioner.caption_batch``; its file writes (XMP, EXIF: parsing,
  atomic writes, fsyncs) then run on ONE background writer thread while the main thread decodes
  and captions the next batch. When they are done, the main thread writes the batch's index rows
  (the SQLite connection never leaves the main thread), commits once per batch and yields the
  batch's results, in order, each with its write outcomes. At most one batch is being written
  and one captioned at a time, so memory stays flat; stopping at any point leaves a consistent,
  resumable index.

Stopping: set the ``stop`` event (the CLI does on Ctrl-C and on SIGTERM) and the run ends after
the current batch (a batch captioned while the consumer was handed the stop is dropped, not
written); a KeyboardInterrupt drops the current batch. Either way writes already handed to the
writer thread complete and are committed, the pool is shut down and a final
:class:`RunSummary` (``interrupted=True``) is yielded. Decode workers never outlive the run:
each ends itself when its parent is gone, even one killed with SIGKILL
(:func:`_exit_with_parent`).

Failures: every photo the summary counts as failed is recorded in the index with its one-line
reason and its stage (:data:`photocap.index.FailureStage`); one whose output could not be
written keeps its caption there.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin on Python 3.10
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard, cast

from photocap.decoding import DEFAULT_BEAM_SIZE
from photocap.errors import one_line
from photocap.image import DecodedPhoto, DecodeFailure, decode_photo, describe_path, hash_file
from photocap.index import (
    FailureStage,
    PhotoFacts,
    PhotoIndex,
    PhotoRow,
    RunRecord,
    index_key,
    mtime_iso,
)
from photocap.library import DiscoveryFailure, PhotoFile, discover_photos
from photocap.metadata import get_writers
from photocap.metadata.authorship import find_human_caption
from photocap.metadata.sidecars import adopt_sidecar, sidecar_stamp
from photocap.writers import CaptionRecord, WriteOptions, WriteOutcome, Writer

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from photocap.decoding import Caption
    from photocap.preset import Preset

PhotoStatus = Literal["captioned", "carried", "skipped", "failed"]
# The writers that look for a caption a person wrote (sidecar, EXIF, embedded XMP, IPTC).
HUMAN_CAPTION_WRITERS = frozenset({"xmp", "exif"})
# Write outcomes after which an output needs nothing more for this caption: it holds it, or it
# does not apply to the photo ("skipped": EXIF for a PNG or a RAW, the JPEG of a RAW+JPEG pair
# under stem naming). A re-run retries neither; it retries "failed".
_SETTLED = frozenset({"written", "unchanged", "kept_human", "skipped"})


class CaptionModel(Protocol):
    """What a run needs of a model: :class:`photocap.model.Captioner`, or the
    :class:`photocap.checkpoint.LazyCaptioner` the CLI opens (built only when a photo needs it,
    so that a re-run of an unchanged library loads no model)."""

    model_id: str  # recorded with each caption; a re-run skips photos captioned by this id
    preset: Preset  # how the decode workers size a photo for the model

    @property
    def runtime_name(self) -> str:
        """What runs the encoder ("openvino 2026.4.1", "torch (openvino: ...)"); "" until
        built."""
        ...

    @property
    def device(self) -> torch.device: ...

    def prepare(
        self, wait: bool = False, started_only: bool = False, photos: int | None = None
    ) -> None:
        """Start getting ready to caption (building the model) once a photo needs the model;
        ``wait``: until ready (before forking new decode workers); ``started_only``: only
        wait for a start already made (at the end of a run); ``photos``: how many the run
        decodes (what is worth preparing depends on it)."""
        ...

    def caption_batch(self, pixels: torch.Tensor, beam_size: int = ...) -> list[Caption]: ...


@dataclass
class CaptionOptions:
    """Options of one run (the ``photocap caption`` flags)."""

    writers: Sequence[str] = ("xmp", "index")
    write_options: WriteOptions = field(default_factory=WriteOptions)
    force: bool = False  # re-caption everything
    limit: int | None = None  # at most this many photos decoded/captioned (skips don't count)
    batch_size: int = 16
    workers: int | None = None  # decode processes; None = number of cores; 0 = in this process
    beam_size: int = DEFAULT_BEAM_SIZE
    max_pixels: int | None = None  # decompression-bomb limit; None = Pillow's default
    # A decode worker that has not answered for this long is stuck (a decoder in an endless
    # loop on a hostile file): it is killed and the photo fails. A 100-MP photo takes ~1 s.
    decode_timeout_s: float = 120.0
    heif_thumbnails: bool = False  # --fast-heic: a HEIC's embedded thumbnail stands in for it


@dataclass(frozen=True)
class PhotoResult:
    """What happened to one photo."""

    path: Path
    status: PhotoStatus  # captioned | carried (caption kept, no model) | skipped | failed
    caption: str | None = None
    score: float | None = None
    alternatives: tuple[str, ...] = ()
    error: str | None = None  # one line, for failed
    reason: str = ""  # why skipped/carried: "unchanged", "moved from ...", "content unchanged"
    outputs: tuple[WriteOutcome, ...] = ()
    # For failed: where (photocap.index.FailureStage: discover, decode, model, xmp, exif). A
    # photo failed at "xmp" or "exif" has its caption (kept in the index).
    stage: FailureStage | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "photo",
            "path": os.fspath(self.path),
            "status": self.status,
            "caption": self.caption,
            "score": self.score,
            "alternatives": list(self.alternatives),
            "error": self.error,
            "stage": self.stage,
            "reason": self.reason or None,
            "outputs": {o.writer: o.status for o in self.outputs},
        }


@dataclass(frozen=True)
class Progress:
    """Emitted after each batch (and while scanning, with ``phase="scan"``)."""

    phase: Literal["scan", "caption"]
    done: int  # photos finished in this phase
    total: int | None  # photos to process (None while scanning)


@dataclass(frozen=True)
class RunSummary:
    """The final event of a run."""

    captioned: int
    carried: int
    skipped: int
    failed: int
    elapsed_s: float
    interrupted: bool
    model_id: str
    dry_run: bool
    failures: tuple[tuple[str, str], ...]  # (path, error)
    # What ran the encoder: "openvino 2026.4.1", "torch", "torch (openvino: why not)"; empty
    # when no photo needed the model (see photocap.runtime).
    encoder: str = ""

    @property
    def photos_per_s(self) -> float:
        return self.captioned / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "captioned": self.captioned,
            "carried": self.carried,
            "skipped": self.skipped,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "photos_per_s": round(self.photos_per_s, 2),
            "interrupted": self.interrupted,
            "model_id": self.model_id,
            "encoder": self.encoder,
            "dry_run": self.dry_run,
        }


CaptionEvent = PhotoResult | Progress | RunSummary


@dataclass
class _Work:
    """A photo that needs decoding (and maybe captioning)."""

    photo: PhotoFile
    row: PhotoRow | None


@dataclass
class _Ready:
    """A decoded photo waiting for the model."""

    photo: PhotoFile
    row: PhotoRow | None
    decoded: DecodedPhoto


@dataclass(frozen=True)
class _Job:
    """One photo's writes: file writers on the writer thread, then its index row (main thread)."""

    record: CaptionRecord
    status: PhotoStatus
    reason: str
    already: frozenset[str] = frozenset()  # outputs that hold the caption already: not written
    photo: PhotoFile | None = None  # carried photos: its stat facts go into the row
    moved_from: str | None = None  # carried from a moved row: renamed in the same transaction


@dataclass(frozen=True)
class _FilesDone:
    """What the writer thread did for one :class:`_Job`."""

    outcomes: tuple[WriteOutcome, ...]
    facts: PhotoFacts | None  # new size/mtime/hash when a writer changed the photo's bytes
    human_caption: str | None = None  # a caption a person wrote for the photo, if any
    # photocap.metadata.sidecars.sidecar_stamp once the writers are done
    sidecar_stamp: str | None = None


@dataclass
class _Pending:
    """A batch of jobs handed to the writer thread; finished (index, results) in order."""

    jobs: list[_Job]
    future: Future[list[_FilesDone]]
    commit: bool  # commit the index after its rows (a model batch); a single carry waits for one


_PROGRESS = object()  # in the output queue: a caption Progress event, counted when yielded
# Most write hand-offs queued at once: one model batch plus a few single-photo carries.
_MAX_QUEUED_WRITES = 3
DECODER_CRASHED = "the decoder crashed on this file (corrupt, or out of memory)"


@dataclass(frozen=True)
class _Why:
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
OUTPUTS_ADDED = _Why("unchanged, outputs added")
# An unchanged photo whose sidecar changed since photocap last wrote it (a caption a person
# typed in another app becomes searchable; a deleted sidecar is written again).
SIDECAR_CHANGED = _Why("unchanged, sidecar changed", look_again=True)
# An unchanged photo whose sidecars the index, from an earlier version, never recorded.
SIDECARS_UNRECORDED = _Why("unchanged, sidecars looked at", quiet=True)
# A touched photo: new mtime, the same bytes.
CONTENT_UNCHANGED = _Why("content unchanged")
# A changed photo whose pixels are as captioned: only its metadata changed, and a person's
# caption may have come with it.
PIXELS_UNCHANGED = _Why("pixels unchanged", look_again=True)


def caption_library(
    paths: Iterable[str | os.PathLike[str]],
    captioner: CaptionModel,
    index: PhotoIndex,
    options: CaptionOptions | None = None,
    stop: threading.Event | None = None,
) -> Iterator[CaptionEvent]:
    """Caption every photo under ``paths`` that needs it; yield events, end with a RunSummary."""
    run = _Run(captioner, index, options or CaptionOptions(), stop or threading.Event())
    yield from run.events(paths)


class _Run:
    def __init__(
        self,
        captioner: CaptionModel,
        index: PhotoIndex,
        options: CaptionOptions,
        stop: threading.Event,
    ) -> None:
        self.captioner = captioner
        self.index = index
        self.options = options
        self.stop = stop
        self.model_id: str = captioner.model_id
        self.preset: Preset = captioner.preset
        self.wanted = frozenset(options.writers)
        self.run_record = RunRecord(index, options.write_options)
        file_writer_names = [n for n in options.writers if n != "index"]
        self.file_writers: list[Writer] = get_writers(file_writer_names, options.write_options)
        self.counts = {"captioned": 0, "carried": 0, "skipped": 0, "failed": 0}
        self.failures: list[tuple[str, str]] = []
        self.done = 0
        self.total = 0
        self.finished = False  # every planned photo was processed (not stopped early)
        self.counting_done = False  # photo results count toward ``done`` (caption phase)
        # Events in the order they are yielded: ready PhotoResults, _PROGRESS marks and batches
        # whose file writes run on the writer thread (bounded: see _drain, _hand_off).
        self.out: deque[PhotoResult | _Pending | object] = deque()
        self.write_thread: ThreadPoolExecutor | None = None
        self.dropped = False  # a captioned batch was dropped because of the stop flag
        self.model_used = False  # a batch went to the model (the summary names its encoder)
        # RAW+JPEG pairs (PhotoFile.lead): the RAW takes its JPEG's caption, no model call.
        self.paired: set[Path] = set()  # leads (JPEGs) whose RAW is decoded in this run too
        self.parked: dict[Path, _Ready] = {}  # lead -> its decoded RAW, waiting for the caption
        self.lead_captions: dict[Path, CaptionRecord | None] = {}  # lead done, RAW not seen yet
        self.released: list[_Ready] = []  # RAWs whose lead got no caption: the model's after all

    # -------------------------------------------------------------- top level

    def events(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[CaptionEvent]:
        started = time.monotonic()
        interrupted = False
        paths = list(paths)  # walked, then the roots whose old "discover" failures are forgotten
        self.write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photocap-write")
        try:
            work: list[_Work] = []
            yield from self._plan(paths, work)
            in_work = {w.photo.path for w in work}
            self.paired = {w.photo.lead for w in work if w.photo.lead in in_work}
            self.total = len(work)
            self.counting_done = True
            yield Progress("caption", 0, self.total)
            yield from self._process(work)
            interrupted = not self.finished
        except KeyboardInterrupt:
            interrupted = True  # current batch dropped; batches already being written complete
            with contextlib.suppress(KeyboardInterrupt):
                yield from self._drain()
        finally:
            try:
                error = self._finish_in_flight()
            finally:
                self._close_writers()
            if error is not None:
                raise error  # the writer thread failed unexpectedly: end the run with it
        yield RunSummary(
            captioned=self.counts["captioned"], carried=self.counts["carried"],
            skipped=self.counts["skipped"], failed=self.counts["failed"],
            elapsed_s=time.monotonic() - started, interrupted=interrupted,
            model_id=self.model_id, dry_run=self.options.write_options.dry_run,
            failures=tuple(self.failures),
            encoder=self.captioner.runtime_name if self.model_used else "",
        )  # fmt: skip

    def _finish_in_flight(self) -> BaseException | None:
        """Wait for the writer thread, record what it wrote (no events: closing down) and stop
        it. Returns the writer thread's unexpected error, if any."""
        error: BaseException | None = None
        while self.out:
            entry = self.out.popleft()
            if not isinstance(entry, _Pending):
                continue
            try:
                if entry.future.exception() is None:  # waits for the writer thread
                    self._finish_batch(entry)  # never leave a written batch out of the index
                else:
                    error = error or entry.future.exception()
            except KeyboardInterrupt:
                continue  # that batch's files are written, its rows not: re-captioned next run
            except Exception as err:
                error = error or err
        while self.write_thread is not None:
            try:
                self.write_thread.shutdown(wait=True, cancel_futures=True)
                self.write_thread = None
            except KeyboardInterrupt:
                continue  # in-flight writes always complete
        return error

    def _close_writers(self) -> None:
        for writer in [*self.file_writers, self.run_record]:
            try:
                writer.close()
            except KeyboardInterrupt:
                continue
            except Exception as err:  # closing one writer must not hide the others' work
                self.failures.append((writer.name, f"closing {writer.name} writer failed: {err}"))

    # -------------------------------------------------------------- planning

    def _plan(
        self, paths: Iterable[str | os.PathLike[str]], work: list[_Work]
    ) -> Iterator[CaptionEvent]:
        """Walk the library; skip or complete what needs no decoding; collect the rest."""
        limit = self.options.limit
        scanned = 0
        completions: list[tuple[PhotoFile, PhotoRow, _Why]] = []
        unwalked: list[str] = []  # index keys of the paths that could not be walked
        for item in discover_photos(paths):
            if self.stop.is_set():
                return
            if isinstance(item, DiscoveryFailure):
                unwalked.append(index_key(item.path))
                yield self._fail_event(item.path, item.error, "discover")
                continue
            scanned += 1
            if scanned % 500 == 0:
                yield Progress("scan", scanned, None)
            row = self.index.get(item.path)
            if not self.options.force and self._captioned_here(row) and _same_stat(row, item):
                why = _why_redo(row, self.wanted, sidecar_stamp(item.path))
                if why is None:
                    self.counts["skipped"] += 1
                    yield PhotoResult(item.path, "skipped", row.caption, row.score,
                                      row.alternatives, reason="unchanged")  # fmt: skip
                elif limit is None or len(work) + len(completions) < limit:
                    completions.append((item, row, why))  # caption known; outputs to redo
                continue
            if limit is None or len(work) + len(completions) < limit:
                work.append(_Work(item, row))
        # Walked whole: a folder (or a name) that failed an earlier walk and not this one was
        # fixed, or is gone. Its failure goes with this run's first commit.
        self.run_record.clear_failures("discover", paths, keep=unwalked)
        # Photos that only need their missing outputs written: no decode, no model.
        for start in range(0, len(completions), max(1, self.options.batch_size)):
            if self.stop.is_set():
                return
            chunk = completions[start : start + self.options.batch_size]
            self._hand_off([self._carry(photo, row, why) for photo, row, why in chunk])
            yield from self._drain()

    # -------------------------------------------------------------- decode + caption

    def _process(self, work: list[_Work]) -> Iterator[CaptionEvent]:
        if self.stop.is_set():
            return
        if not work:
            self.finished = True
            return
        batch_size = max(1, self.options.batch_size)
        workers = (
            self.options.workers if self.options.workers is not None else (os.cpu_count() or 1)
        )
        # Enough in flight to keep every worker busy while the model works on the next batch,
        # few enough that memory stays flat (~150 KB per decoded photo).
        max_in_flight = 2 * batch_size + 2 * max(workers, 1)
        pool = _make_pool(workers) if workers > 0 else None
        cores = _CoreShare(self.captioner, workers)
        try:
            pending: deque[tuple[_Work, Future[DecodedPhoto | DecodeFailure]]] = deque()
            queue = iter(work)
            batch: list[_Ready] = []
            exhausted = False
            abandoned = False  # stopped with photos in flight whose decode was lost
            while True:
                while not exhausted and len(pending) < max_in_flight:
                    item = next(queue, None)
                    if item is None:
                        exhausted = True
                        break
                    pending.append((item, self._submit(pool, item.photo.path)))
                if not pending and not batch:
                    break
                if pending and len(batch) < batch_size:
                    item, future = pending.popleft()
                    try:
                        result = future.result(timeout=self.options.decode_timeout_s)
                    except (BrokenProcessPool, FutureTimeout):
                        # A worker died (a C decoder crashed on a hostile file, or the OOM
                        # killer) or is stuck: every photo in flight loses its result. Decode
                        # each again alone, so only the culprit fails, then carry on with a
                        # new pool.
                        suspects = [item, *(lost for lost, _ in pending)]
                        pending.clear()
                        _close_pool(pool, kill=True)
                        pool = None
                        if self.stop.is_set():
                            # Stopping: a SIGTERM to the whole process group (systemd stopping
                            # the unit) ends the workers too. The photos in flight, and the
                            # batch still waiting for the model, are left for the next run.
                            abandoned = True
                            break
                        # No fork while the model loads on its thread: a child forked
                        # mid-import could inherit a lock held by that thread.
                        self.captioner.prepare(wait=True)
                        pool = _make_pool(workers)
                        for lost in suspects:
                            pending.append((lost, _done(self._decode_alone(lost.photo.path))))
                        continue
                    self._on_decoded(item, result, batch)
                    batch += self._take_released()
                    if batch:
                        # A photo needs the model: it loads (on a thread) while the workers,
                        # forked by the first submit, decode the next ones. A run whose photos
                        # are all skipped, carried or undecodable loads none.
                        self.captioner.prepare(photos=self.total)
                    yield from self._drain(max_queued=_MAX_QUEUED_WRITES)
                    if len(batch) < batch_size and pending:
                        continue
                if batch:
                    if self.stop.is_set():
                        break
                    # Every torch thread when no worker is decoding (decoding is ahead, or
                    # done: the last batches), else the cores the workers leave.
                    cores.set_for_batch(decoding=any(not f.done() for _, f in pending))
                    yield from self._caption_batch(batch)
                    if self.dropped:
                        break
                    batch = self._take_released()
                if self.stop.is_set() and (pending or not exhausted):
                    break
            yield from self._drain()  # writes in flight complete, even when stopping
            self.run_record.flush()
            if (
                abandoned
                or self.dropped
                or (self.stop.is_set() and (pending or batch or not exhausted))
            ):
                return
            self.finished = True
            yield Progress("caption", self.done, self.total)
        finally:
            _close_pool(pool)
            # No model load left running when the run ends (a thread inside torch or OpenVINO
            # at interpreter exit aborts the process): a stop waits for it to finish.
            self.captioner.prepare(wait=True, started_only=True)
            cores.restore()

    def _submit(
        self, pool: ProcessPoolExecutor | None, path: Path
    ) -> Future[DecodedPhoto | DecodeFailure]:
        args = (os.fspath(path), self.preset, self.options.max_pixels, self.options.heif_thumbnails)
        if pool is not None:
            return pool.submit(decode_photo, *args)
        return _done(decode_photo(*args))

    def _decode_alone(self, path: Path) -> DecodedPhoto | DecodeFailure:
        """Decode one photo in a process of its own: a crash or a hang there fails this photo
        only."""
        alone = _make_pool(1)
        timeout = self.options.decode_timeout_s
        try:
            return self._submit(alone, path).result(timeout=timeout)
        except BrokenProcessPool:
            return DecodeFailure(os.fspath(path), DECODER_CRASHED)
        except FutureTimeout:
            return DecodeFailure(
                os.fspath(path), f"decoding took over {timeout:g} s (a stuck decoder?)"
            )
        finally:
            _close_pool(alone, kill=True)

    def _on_decoded(
        self, item: _Work, result: DecodedPhoto | DecodeFailure, batch: list[_Ready]
    ) -> None:
        """Queue a failure or a carry for ``item``, or add it to the next model batch."""
        if isinstance(result, DecodeFailure):
            if result.size is not None:
                self.run_record.note_photo(item.photo.path, PhotoFacts(
                    size=result.size, mtime_ns=result.mtime_ns,
                    mtime=mtime_iso(result.mtime_ns or 0),
                ))  # fmt: skip
            self.out.append(self._fail_event(item.photo.path, result.error, "decode"))
            self._resolve_lead(item.photo.path, None)
            return
        self._note_facts(item.photo.path, result)
        if not self.options.force:
            row = item.row
            if self._captioned_here(row):
                # The same bytes (touched), or the same pixels (its metadata edited elsewhere):
                # the model would say the same. Its outputs are written where missing.
                why = None
                if row.content_hash == result.content_hash:
                    why = CONTENT_UNCHANGED
                elif row.pixels_hash == result.pixels_hash:
                    why = PIXELS_UNCHANGED
                if why is not None:
                    self._hand_off_carry(self._carry(item.photo, row, why))
                    return  # committed with the next batch
            moved = self.index.find_moved(
                result.content_hash, item.photo.path, pixels_hash=result.pixels_hash
            )
            if moved is not None and moved.model_id == self.model_id:
                why = _Why(f"moved from {describe_path(moved.path)}")
                self._hand_off_carry(self._carry(item.photo, moved, why, moved_from=moved.path))
                return
            copy = self.index.find_copy(result.pixels_hash, item.photo.path)
            if copy is not None and copy.model_id == self.model_id:
                # A copy of a captioned photo (or the same picture with other metadata): the
                # model would say the same. Its own outputs are all still to write.
                why = _same_picture(copy.path)
                self._hand_off_carry(self._carry(item.photo, copy, why, own_row=False))
                return
        ready = _Ready(item.photo, item.row, result)
        if not self._follow_lead(ready):
            batch.append(ready)

    def _follow_lead(self, raw: _Ready) -> bool:
        """The RAW of a RAW+JPEG pair takes its JPEG's caption: from this run (the RAW waits
        for it if need be) or from the index. False: not a pair's RAW, or its JPEG has no
        caption; the model captions it."""
        lead = raw.photo.lead
        if lead is None:
            return False
        if lead in self.paired and lead not in self.lead_captions:
            self.parked[lead] = raw  # the JPEG is still on its way: _resolve_lead
            return True
        if lead in self.paired:
            record = self.lead_captions.pop(lead)
        else:  # not in this run: captioned by an earlier one, or not at all
            row = self.index.get(lead)
            record = _row_record(lead, row) if self._captioned_here(row) else None
        if record is None:
            return False
        self._hand_off([_paired_job(raw.photo, record)], commit=False)
        return True

    def _captioned_here(self, row: PhotoRow | None) -> TypeGuard[PhotoRow]:
        """``row`` holds a caption of this run's model."""
        return row is not None and row.is_captioned and row.model_id == self.model_id

    def _hand_off_carry(self, job: _Job) -> None:
        """Queue a carried photo's writes, with its RAW's when it leads a pair (committed with
        the next batch)."""
        self._hand_off([job, *self._resolve_lead(job.record.path, job.record)], commit=False)

    def _resolve_lead(self, lead: Path, record: CaptionRecord | None) -> list[_Job]:
        """``lead`` (a photo of this run) has ``record`` as its caption, or none: the jobs of
        its RAW if that is waiting (without a caption it goes to the model instead), or the
        caption kept for the RAW still to come."""
        if lead not in self.paired:
            return []
        raw = self.parked.pop(lead, None)
        if raw is None:
            self.lead_captions[lead] = record
        elif record is None:
            self.released.append(raw)
        else:
            return [_paired_job(raw.photo, record)]
        return []

    def _take_released(self) -> list[_Ready]:
        released, self.released = self.released, []
        return released

    def _caption_batch(self, batch: list[_Ready]) -> Iterator[CaptionEvent]:
        """Caption ``batch``; once the previous batch's writes are done, hand its writes off."""
        import numpy as np
        import torch

        # Copies side by side ("IMG_1.jpg", "IMG_1 (1).jpg") have the same pixels: the model
        # captions the first; the others take its caption (unless --force: every photo).
        by_pixels: dict[str, _Ready] = {}
        twin_of = {  # id(photo) -> the photo of this batch whose caption it gets
            id(r): r if self.options.force else by_pixels.setdefault(r.decoded.pixels_hash, r)
            for r in batch
        }
        unique = [r for r in batch if twin_of[id(r)] is r]
        pixels = torch.from_numpy(np.stack([r.decoded.pixels for r in unique]))  # (U, 3, S, S)
        try:
            self.model_used = True
            captions = self.captioner.caption_batch(pixels, beam_size=self.options.beam_size)
        except (RuntimeError, ValueError) as err:  # e.g. CUDA out of memory: fail the batch, go on
            message = f"captioning failed: {one_line(err, 200)}"
            for ready in batch:
                self.out.append(self._fail_event(ready.photo.path, message, "model"))
                self._resolve_lead(ready.photo.path, None)
            self.out.append(_PROGRESS)
            yield from self._drain()
            self.run_record.flush()
            return
        now = datetime.now(timezone.utc)
        caption_of = {id(r): c for r, c in zip(unique, captions, strict=True)}
        jobs = []
        for ready in batch:
            twin = twin_of[id(ready)]
            caption = caption_of[id(twin)]
            record = CaptionRecord(
                path=ready.photo.path, caption=caption.text, score=float(caption.score),
                alternatives=tuple(caption.alternatives), model_id=self.model_id, captioned_at=now,
            )  # fmt: skip
            if twin is ready:
                jobs.append(_Job(record, "captioned", reason=""))
            else:
                jobs.append(_Job(record, "carried", _same_picture(twin.photo.path).text))
            jobs += self._resolve_lead(record.path, record)  # its RAW, written with it
        # The previous batch was written while this one was on the model: record and yield it
        # (in order) before this one goes to the writer thread.
        yield from self._drain()
        if self.stop.is_set():  # the consumer asked to stop while handed those results
            self.dropped = True
            return
        self._hand_off(jobs)
        self.out.append(_PROGRESS)

    # -------------------------------------------------------------- writing

    def _carry(
        self,
        photo: PhotoFile,
        row: PhotoRow,
        why: _Why,
        moved_from: str | None = None,
        own_row: bool = True,
    ) -> _Job:
        """Keep an existing caption for ``photo`` (no model call), writing any missing outputs.

        ``row`` is the photo's own, or (``own_row=False``) another photo's with the same
        pixels; ``moved_from``: the photo's row from before it moved, renamed to it.
        """
        record = _row_record(photo.path, row)
        skip = row.outputs if own_row and moved_from is None else frozenset()
        if why.look_again:
            skip -= {"xmp", "exif"}
        status: PhotoStatus = "skipped" if why.quiet else "carried"
        return _Job(record, status, why.text, already=skip, photo=photo, moved_from=moved_from)

    def _hand_off(self, jobs: list[_Job], commit: bool = True) -> None:
        """Queue ``jobs``' file writes on the writer thread, after those queued before."""
        assert self.write_thread is not None
        future = self.write_thread.submit(
            _write_files, self.file_writers, self.options.write_options, jobs
        )
        self.out.append(_Pending(jobs, future, commit))

    def _drain(self, max_queued: int = 0) -> Iterator[CaptionEvent]:
        """Yield queued events in order: a batch once its file writes are done and its index
        rows committed. Waits for the writer thread while more than ``max_queued`` batches are
        queued (0: until the queue is empty); otherwise stops at the first unfinished batch."""
        while self.out:
            entry = self.out[0]
            results: list[object]
            if isinstance(entry, _Pending):
                queued = sum(isinstance(e, _Pending) for e in self.out)
                if queued <= max_queued and not entry.future.done():
                    return
                entry.future.result()  # waits; a writer-thread error propagates from here
                self.out.popleft()
                results = list(self._finish_batch(entry))
            else:
                self.out.popleft()
                results = [entry]
            for event in results:
                if event is _PROGRESS:
                    yield Progress("caption", self.done, self.total)
                    continue
                assert isinstance(event, PhotoResult)
                if self.counting_done:
                    self.done += 1
                yield event

    def _finish_batch(self, pending: _Pending) -> list[PhotoResult]:
        """Main thread: index rows for a batch the writer thread wrote, one transaction."""
        files = pending.future.result()
        results = [self._finish(job, done) for job, done in zip(pending.jobs, files, strict=True)]
        if pending.commit:
            self.run_record.flush()  # one transaction per batch
        return results

    def _finish(self, job: _Job, files: _FilesDone) -> PhotoResult:
        """Write ``job``'s index row after its file writes; count and return the result."""
        record = job.record
        outcomes = list(files.outcomes)
        if job.photo is not None:
            self.run_record.note_photo(job.photo.path, PhotoFacts(
                size=job.photo.size, mtime_ns=job.photo.mtime_ns,
                mtime=mtime_iso(job.photo.mtime_ns),
            ))  # fmt: skip
        if job.moved_from is not None:  # same transaction as the row: never a half-moved row
            self.run_record.note_move(job.moved_from, os.fspath(record.path))
        settled = {o.writer for o in outcomes if o.status in _SETTLED}
        settled |= job.already & self.wanted
        if "index" in self.wanted:
            settled.add("index")
        if files.facts is not None:  # EXIF written into the photo: new size/hash
            self.run_record.note_photo(record.path, files.facts)
        # What was found now replaces what an earlier run found (or clears it).
        self.run_record.note_photo(record.path, PhotoFacts(
            human_caption=files.human_caption, sidecar_stamp=files.sidecar_stamp,
            outputs=",".join(sorted(settled)),
        ))  # fmt: skip
        # An output that could not be written (a malformed or hostile sidecar, corrupt EXIF, an
        # immutable file) fails the photo, and the index records it with the caption, which
        # stands: the next run writes that output again, and clears the failure once it can.
        failed = [o for o in outcomes if o.status == "failed"]
        error = failure_reason(failed) if failed else None
        # The first output that failed (a file writer's name: xmp or exif).
        stage = cast(FailureStage, failed[0].writer) if failed else None
        written = self.run_record.write(record, error=error, stage=stage)
        if "index" in self.wanted or self.options.write_options.dry_run:
            outcomes.append(written)
        # else: not asked to write the index, but it still remembers what was captioned
        # (without claiming the "index" output) so the next run can skip these photos.
        if error is not None:
            self.counts["failed"] += 1
            self.failures.append((os.fspath(record.path), error))
            return PhotoResult(record.path, "failed", record.caption, record.score,
                               record.alternatives, error=error, reason=job.reason,
                               outputs=tuple(outcomes), stage=stage)  # fmt: skip
        self.counts[job.status] += 1
        return PhotoResult(record.path, job.status, record.caption, record.score,
                           record.alternatives, reason=job.reason,
                           outputs=tuple(outcomes))  # fmt: skip

    def _note_facts(self, path: Path, d: DecodedPhoto) -> None:
        self.run_record.note_photo(path, PhotoFacts(
            size=d.size, mtime_ns=d.mtime_ns, mtime=mtime_iso(d.mtime_ns),
            content_hash=d.content_hash, pixels_hash=d.pixels_hash, width=d.width,
            height=d.height, format=d.format, date_taken=d.date_taken, camera=d.camera,
        ))  # fmt: skip

    def _fail_event(self, path: Path, error: str, stage: FailureStage) -> PhotoResult:
        """A photo failed before it had a caption: counted, and recorded in the index."""
        self.counts["failed"] += 1
        self.failures.append((os.fspath(path), error))
        self.run_record.write_failure(path, error, stage)
        return PhotoResult(path, "failed", error=error, stage=stage)


def failure_reason(failed: Sequence[WriteOutcome]) -> str:
    """One line for a photo's failed writers, each reason once: "xmp, exif: file name too
    long ...", not the same reason after each writer's name."""
    writers: dict[str, list[str]] = {}
    for outcome in failed:
        writers.setdefault(outcome.message, []).append(outcome.writer)
    return "; ".join(f"{', '.join(names)}: {message}" for message, names in writers.items())


def _write_files(
    writers: Sequence[Writer], options: WriteOptions, jobs: list[_Job]
) -> list[_FilesDone]:
    """The writer thread: every file writer for every job, in order. Touches no SQLite."""
    done = []
    for job in jobs:
        if job.moved_from is not None and writers and not options.dry_run:
            # Moved without its sidecar: photocap's own follows it, before the writers look.
            adopt_sidecar(Path(job.moved_from), job.record.path, options.sidecar_name)
        outcomes = []
        for writer in writers:
            if writer.name in job.already:
                continue
            outcomes.append(_safe_write(writer, job.record))
        changed_photo = any(o.changed_photo for o in outcomes)  # EXIF written into the photo
        facts = _file_facts(job.record.path) if changed_photo else None
        human = _human_caption(job.record, outcomes)
        done.append(_FilesDone(tuple(outcomes), facts, human, sidecar_stamp(job.record.path)))
    return done


def _row_record(path: Path, row: PhotoRow) -> CaptionRecord:
    """The caption ``row`` holds, for the photo at ``path``."""
    return CaptionRecord(
        path=path, caption=row.caption or "", score=float(row.score or 0.0),
        alternatives=row.alternatives, model_id=row.model_id or "",
        captioned_at=_parse_time(row.captioned_at),
    )  # fmt: skip


def _paired_job(raw: PhotoFile, lead: CaptionRecord) -> _Job:
    """The RAW of a RAW+JPEG pair takes the caption of its JPEG, the camera's rendering of the
    same exposure: one caption per shot, one model call. Every output is written."""
    return _Job(replace(lead, path=raw.path), "carried", f"same shot as {lead.path.name}")


def _same_picture(original: str | os.PathLike[str]) -> _Why:
    """A copy of ``original`` (the same pixels) takes its caption: the model would say the
    same."""
    return _Why(f"same picture as {describe_path(original)}")


def _why_redo(row: PhotoRow, wanted: frozenset[str], stamp: str) -> _Why | None:
    """Why an unchanged photo, captioned by this model, needs its outputs written or looked at
    again; None when it needs nothing (skipped)."""
    if not wanted <= row.outputs:
        return OUTPUTS_ADDED
    if row.sidecar_stamp is None:  # recorded by an earlier version: look once, then record
        return SIDECARS_UNRECORDED
    if row.sidecar_stamp != stamp:  # edited in another app, or deleted, since photocap wrote
        return SIDECAR_CHANGED
    return None


def _human_caption(record: CaptionRecord, outcomes: list[WriteOutcome]) -> str | None:
    """A caption a person wrote for the photo: what the xmp / exif writers found, or (when
    neither looked: ``--write index``) a look at its sidecars and its file."""
    looked = [
        o
        for o in outcomes
        if o.writer in HUMAN_CAPTION_WRITERS and o.status not in ("failed", "skipped")
    ]
    if looked:
        return next((o.human_caption for o in looked if o.human_caption), None)
    try:
        return find_human_caption(record.path, record.caption)
    except OSError:  # the photo or its folder went away: nothing to find
        return None


def _file_facts(path: Path) -> PhotoFacts | None:
    """Size, mtime and hash of a photo a writer just changed (None if it cannot be read)."""
    try:
        st = os.stat(path)
        return PhotoFacts(size=st.st_size, mtime_ns=st.st_mtime_ns, content_hash=hash_file(path),
                          mtime=mtime_iso(st.st_mtime_ns))  # fmt: skip
    except OSError:
        return None


def _safe_write(writer: Writer, record: CaptionRecord) -> WriteOutcome:
    """A writer must not raise for one photo; if one does anyway, it is that photo's failure."""
    try:
        return writer.write(record)
    except Exception as err:
        return WriteOutcome(writer.name, record.path, "failed", one_line(err, 200))


def _same_stat(row: PhotoRow, photo: PhotoFile) -> bool:
    return row.size == photo.size and row.mtime_ns == photo.mtime_ns


def _parse_time(text: str | None) -> datetime:
    if text:
        try:
            parsed = datetime.fromisoformat(text)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


class _CoreShare:
    """torch's thread count on a CPU run with decode workers, set before each model batch.

    torch's OpenMP threads spin-wait for each other at every operator; when a decode worker (or
    anything else) takes a core, one descheduled thread stalls all the others. On 2 cores with 2
    workers, 1 torch thread captions 12-MP photos ~3.7x faster than 2 (benchmarks/README.md).
    So while workers decode, the model gets at most half the cores; when none is decoding
    (the photos in flight are all decoded: decoding is ahead, or the run's last batches), it
    gets every thread torch had, as no worker decodes while the model works (the run sends
    photos to decode between batches only).
    """

    def __init__(self, captioner: CaptionModel, workers: int) -> None:
        import torch

        self.before = torch.get_num_threads()
        self.active = workers > 0 and captioner.device.type == "cpu"
        self.shared = max(1, min(self.before, (os.cpu_count() or 1) // 2))
        self.current = self.before  # set before each batch, not now: the model build (on
        # its thread) compiles OpenVINO for torch's own count and for ``shared``

    def set_for_batch(self, *, decoding: bool) -> None:
        if not self.active:
            return
        wanted = self.shared if decoding else self.before
        if wanted != self.current:
            import torch

            torch.set_num_threads(wanted)
            self.current = wanted

    def restore(self) -> None:
        if self.active and self.current != self.before:
            import torch

            torch.set_num_threads(self.before)
            self.current = self.before


def _close_pool(pool: ProcessPoolExecutor | None, *, kill: bool = False) -> None:
    """Shut a decode pool down; ``kill``: its workers first, one of which may be stuck (a
    stuck worker would make the shutdown wait for ever)."""
    if pool is None:
        return
    if kill:
        # No public API before Python 3.14 (terminate_workers); _processes is stable since 3.2.
        processes = dict(getattr(pool, "_processes", None) or {})  # pid -> Process
        for process in processes.values():
            with contextlib.suppress(Exception):
                process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _done(result: DecodedPhoto | DecodeFailure) -> Future[DecodedPhoto | DecodeFailure]:
    future: Future[DecodedPhoto | DecodeFailure] = Future()
    future.set_result(result)
    return future


def _make_pool(workers: int) -> ProcessPoolExecutor:
    # fork where available: workers start instantly and do not re-import the CLI's __main__.
    # They never touch torch, so forking after torch was imported is safe.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )


# How often a decode worker checks that its parent is still alive (where the kernel cannot
# tell it: not Linux).
_PARENT_CHECK_S = 1.0


def _init_worker(parent: int) -> None:
    # Ctrl-C goes to the whole process group; the parent decides how to stop, workers just
    # finish their current photo instead of dying with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the CLI's SIGTERM handler (which only sets the parent's stop
    # flag): a SIGTERM meant for the worker (multiprocessing's terminate(), systemd stopping
    # the whole unit) must end it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _exit_with_parent(parent)
    # C decoders print their own complaints about a corrupt file ("Corrupt JPEG data: ...",
    # LibRaw's "Unexpected end of file") straight to file descriptor 2, beside photocap's
    # one-line error for that file. A worker reports through its return value only.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    with contextlib.suppress(OSError):
        os.nice(5)  # decoding in the background should not make the desktop sluggish


def _exit_with_parent(parent: int) -> None:
    """End this decode worker when ``parent`` (the caption run) dies, however it dies.

    A pool's workers wait for work on a pipe whose other end they hold themselves, so a
    parent killed with SIGKILL (the OOM killer, ``kill -9``, a crash) would leave them behind
    for ever, ~500 MB each. On Linux the kernel sends the worker SIGKILL when its parent
    exits (``PR_SET_PDEATHSIG``; strictly, when the parent's thread that forked it does: the
    pool is made and fed by the thread running the caption run). Everywhere, a thread also
    checks the parent every second, in case the kernel cannot be asked.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc, a sandbox refusing prctl: the thread
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        os._exit(1)  # reparented: the caption run is gone, nobody will read a result

    threading.Thread(target=watch, name="photocap-parent-watch", daemon=True).start()


def plan_status(
    paths: Iterable[str | os.PathLike[str]], index: PhotoIndex
) -> Iterator[tuple[Path, str]]:
    """For ``photocap status PATH``: yield (path, state) for photos not captioned as they are now.

    state is "new" (no row), "changed" (size/mtime differ) or, for a path that cannot be walked
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
        elif not _same_stat(row, item):
            yield item.path, "changed"
