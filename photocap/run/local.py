"""The local engine: the run's stages on this machine, a process pool and one writer thread.

Read :meth:`LocalRun.events` top to bottom:

1. **plan** (:func:`~photocap.run.plan.plan_library`): walk the library; skipped photos are
   yielded at once, carried ones written without decoding.
2. **decode** (:mod:`~photocap.run.decode`): a process pool works ahead of the model through a
   bounded queue of futures, so memory holds at most a few batches of 3x224x224 uint8 arrays. A
   worker that crashes or hangs is replaced and every photo it held is decoded again alone, so
   only the culprit fails. A decoded photo that keeps a caption
   (:func:`~photocap.run.plan.decide_decoded`) or is the RAW of a pair
   (:mod:`~photocap.run.pairs`) skips the model.
3. **caption** (:func:`~photocap.run.caption.caption_batch`): a batch at a time, the model
   given the cores the decode workers leave (:class:`~photocap.run.caption.CoreShare`).
4. **write** (:func:`~photocap.run.write.write_files`): the batch's file writes (XMP, EXIF:
   parsing, atomic writes, fsyncs) run on ONE background thread while this thread decodes and
   captions the next batch.
5. **record** (:class:`~photocap.run.record.Recorder`): when a batch's writes are done, this
   thread writes its index rows (the SQLite connection never leaves it), commits once per
   batch and yields the batch's results, in order, each with its write outcomes.

At most one batch is being written and one captioned at a time, so memory stays flat, and
stopping at any point leaves a consistent, resumable index. Stopping: set the ``stop`` event
(the CLI does on Ctrl-C and on SIGTERM) and the run ends after the current batch (a batch
captioned while the consumer was handed the stop is dropped, not written); a
KeyboardInterrupt drops the current batch. Either way writes already handed to the writer
thread complete and are committed, the pool is shut down and a final
:class:`~photocap.run.events.RunSummary` (``interrupted=True``) is yielded.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin on Python 3.10
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from photocap.errors import one_line
from photocap.image import DecodedPhoto, DecodeFailure
from photocap.index import PhotoFacts, PhotoIndex, mtime_iso
from photocap.metadata import get_writers
from photocap.run import decode
from photocap.run.caption import CoreShare, caption_batch, usable_cores
from photocap.run.events import CaptionEvent, CaptionModel, CaptionOptions, PhotoResult, Progress
from photocap.run.pairs import RawJpegPairs
from photocap.run.plan import Job, Ready, Work, decide_decoded, embedded_job, plan_library
from photocap.run.record import Recorder
from photocap.run.write import FilesDone, write_files
from photocap.writers import Writer


@dataclass
class _Pending:
    """A batch of jobs handed to the writer thread; finished (index, results) in order."""

    jobs: list[Job]
    future: Future[list[FilesDone]]
    commit: bool  # commit the index after its rows (a model batch); a single carry waits for one


_PROGRESS = object()  # in the output queue: a caption Progress event, counted when yielded
# Most write hand-offs queued at once: one model batch plus a few single-photo carries.
_MAX_QUEUED_WRITES = 3


class LocalRun:
    """One caption run on this machine; :meth:`events` runs it."""

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
        self.record = Recorder(index, options)
        file_writer_names = [n for n in options.writers if n != "index"]
        self.file_writers: list[Writer] = get_writers(file_writer_names, options.write_options)
        self.pairs = RawJpegPairs(index, self.model_id, set())
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

    # -------------------------------------------------------------- top level

    def events(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[CaptionEvent]:
        started = time.monotonic()
        interrupted = False
        paths = list(paths)  # walked, then the roots whose old "discover" failures are forgotten
        self.write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photocap-write")
        try:
            work = yield from self._plan(paths)
            in_work = {w.photo.path for w in work}
            leads = (w.photo.lead for w in work)
            self.pairs.paired = {lead for lead in leads if lead is not None and lead in in_work}
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
        used = self.model_used
        encoder = self.captioner.runtime_name if used else ""
        decoders = self.captioner.decoder_runtime_name if used else ""
        elapsed = time.monotonic() - started
        yield self.record.summary(elapsed, interrupted, self.model_id, encoder, decoders)

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
        for writer in [*self.file_writers, self.record.run_record]:
            try:
                writer.close()
            except KeyboardInterrupt:
                continue
            except Exception as err:  # closing one writer must not hide the others' work
                self.record.failures.append(
                    (writer.name, f"closing {writer.name} writer failed: {err}")
                )

    # -------------------------------------------------------------- 1. plan

    def _plan(
        self, paths: list[str | os.PathLike[str]]
    ) -> Generator[CaptionEvent, None, list[Work]]:
        """Walk the library: yield what needs nothing, write what needs no decoding; return
        the photos to decode (none when stopped during the walk)."""
        steps = plan_library(
            paths, self.index, self.model_id, self.options, self.stop, self.captioner.vector_size
        )
        plan = yield from self.record.walk(steps, paths)
        if plan is None:
            return []
        # Photos that only need their missing outputs written: no decode, no model.
        for jobs in plan.carry_batches(self.options.batch_size, self.stop):
            self._hand_off(jobs)
            yield from self._drain()
        return plan.work

    # -------------------------------------------------------------- 2-3. decode + caption

    def _process(self, work: list[Work]) -> Iterator[CaptionEvent]:
        if self.stop.is_set():
            return
        if not work:
            self.finished = True
            return
        batch_size = max(1, self.options.batch_size)
        workers = self.options.workers if self.options.workers is not None else usable_cores()
        # Enough in flight to keep every worker busy while the model works on the next batch,
        # few enough that memory stays flat (~150 KB per decoded photo).
        max_in_flight = 2 * batch_size + 2 * max(workers, 1)
        pool = decode.make_pool(workers) if workers > 0 else None
        cores = CoreShare(self.captioner, workers)
        try:
            pending: deque[tuple[Work, Future[DecodedPhoto | DecodeFailure]]] = deque()
            queue = iter(work)
            batch: list[Ready] = []
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
                        decode.close_pool(pool, kill=True)
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
                        pool = decode.make_pool(workers)
                        for lost in suspects:
                            alone = decode.decode_alone(
                                lost.photo.path, self.captioner.preset, self.options
                            )
                            pending.append((lost, decode.done_future(alone)))
                        continue
                    self._on_decoded(item, result, batch)
                    batch += self.pairs.take_released()
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
                    batch = self.pairs.take_released()
                if self.stop.is_set() and (pending or not exhausted):
                    break
            yield from self._drain()  # writes in flight complete, even when stopping
            self.record.flush()
            if (
                abandoned
                or self.dropped
                or (self.stop.is_set() and (pending or batch or not exhausted))
            ):
                return
            self.finished = True
            yield Progress("caption", self.done, self.total)
        finally:
            decode.close_pool(pool)
            # No model load left running when the run ends (a thread inside torch or OpenVINO
            # at interpreter exit aborts the process): a stop waits for it to finish.
            self.captioner.prepare(wait=True, started_only=True)
            cores.restore()

    def _submit(
        self, pool: ProcessPoolExecutor | None, path: Path
    ) -> Future[DecodedPhoto | DecodeFailure]:
        try:
            return decode.submit_decode(pool, path, self.captioner.preset, self.options)
        except BrokenProcessPool as err:
            # A worker died since the last result (killed with the process group by a SIGTERM,
            # say): the photo's future fails as those in flight do, and the loop handles it.
            broken: Future[DecodedPhoto | DecodeFailure] = Future()
            broken.set_exception(err)
            return broken

    def _on_decoded(
        self, item: Work, result: DecodedPhoto | DecodeFailure, batch: list[Ready]
    ) -> None:
        """Queue a failure or a carry for ``item``, or add it to the next model batch."""
        if item.embed is not None:  # its caption stands: decoded for its vector only
            assert item.row is not None
            if isinstance(result, DecodeFailure):  # the caption is kept, not failed
                kept_job = embedded_job(item.photo, item.row, item.embed, None, result.error)
                raws = self.pairs.resolve(item.photo.path, kept_job.record)
                self._hand_off([kept_job, *raws], commit=False)
            else:
                batch.append(Ready(item.photo, item.row, result, embed=item.embed))
            return
        if isinstance(result, DecodeFailure):
            if result.size is not None:
                self.record.run_record.note_photo(item.photo.path, PhotoFacts(
                    size=result.size, mtime_ns=result.mtime_ns,
                    mtime=mtime_iso(result.mtime_ns or 0),
                ))  # fmt: skip
            self.out.append(self.record.fail(item.photo.path, result.error, "decode"))
            self.pairs.resolve(item.photo.path, None)
            return
        self.record.note_decoded(item.photo.path, result)
        force = self.options.force
        carry = decide_decoded(item, result, self.index, self.model_id, force)
        if carry is not None:
            # Its writes, with its RAW's when it leads a pair (committed with the next batch).
            self._hand_off([carry, *self.pairs.resolve(carry.record.path, carry.record)], False)
            return
        ready = Ready(item.photo, item.row, result)
        if self.pairs.waits(ready):
            return  # a pair's RAW: the JPEG's caption comes later in this run
        job = self.pairs.job_for(ready)
        if job is not None:
            self._hand_off([job], commit=False)
        else:
            batch.append(ready)

    def _caption_batch(self, batch: list[Ready]) -> Iterator[CaptionEvent]:
        """Caption ``batch``; once the previous batch's writes are done, hand its writes off."""
        try:
            self.model_used = True
            jobs = caption_batch(
                batch, self.captioner, self.model_id, self.options.beam_size, self.options.force
            )
        except (RuntimeError, ValueError) as err:  # e.g. CUDA out of memory: fail the batch, go on
            message = f"captioning failed: {one_line(err, 200)}"
            kept = []  # photos decoded for their vector only: their captions stand
            for ready in batch:
                if ready.embed is not None:
                    assert ready.row is not None
                    kept_job = embedded_job(ready.photo, ready.row, ready.embed, None, message)
                    kept += [kept_job, *self.pairs.resolve(ready.photo.path, kept_job.record)]
                    continue
                self.out.append(self.record.fail(ready.photo.path, message, "model"))
                self.pairs.resolve(ready.photo.path, None)
            if kept:
                self._hand_off(kept, commit=False)
            self.out.append(_PROGRESS)
            yield from self._drain()
            self.record.flush()
            return
        # Each RAW waiting for one of these captions is written with it.
        jobs = [j for job in jobs for j in (job, *self.pairs.resolve(job.record.path, job.record))]
        # The previous batch was written while this one was on the model: record and yield it
        # (in order) before this one goes to the writer thread.
        yield from self._drain()
        if self.stop.is_set():  # the consumer asked to stop while handed those results
            self.dropped = True
            return
        self._hand_off(jobs)
        self.out.append(_PROGRESS)

    # -------------------------------------------------------------- 4-5. write + record

    def _hand_off(self, jobs: list[Job], commit: bool = True) -> None:
        """Queue ``jobs``' file writes on the writer thread, after those queued before."""
        assert self.write_thread is not None
        future = self.write_thread.submit(
            write_files, self.file_writers, self.options.write_options, jobs
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
        """This thread: index rows for a batch the writer thread wrote, one transaction."""
        files = pending.future.result()
        results = [
            self.record.finish(job, done) for job, done in zip(pending.jobs, files, strict=True)
        ]
        if pending.commit:
            self.record.flush()  # one transaction per batch
        return results
