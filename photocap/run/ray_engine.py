"""The Ray engine: the run's stages on a Ray cluster (or a Ray started on this machine).

The same stages as the local engine (:mod:`photocap.run.local`), placed where they scale:

1. **plan** on the driver (:func:`~photocap.run.plan.plan_library`): the index is here. The
   photos to decode become a Ray Dataset of paths (photocap's own plan, not Ray's file
   listing: that is slow on millions of paths and would ship whole files).
2. **decode** as CPU tasks (:func:`decode_rows`): each opens its files on the worker (the
   library is mounted at the same path on every node) in a child process, so a decoder that
   crashes or hangs fails its file only, and passes on only the model's input pixels.
3. **caption** in an actor pool (:class:`CaptionActor`): the model is loaded once per actor
   (one GPU each where there are GPUs, CPU actors otherwise) from the driver's model file.
4. **decide** on the driver, as the local engine does after decoding: a photo whose bytes or
   pixels are as captioned, a moved photo, a copy and the RAW of a RAW+JPEG pair keep their
   caption (the actor's is dropped: with a cluster it is cheaper to caption them than to ask
   the index from every node).
5. **write** as worker tasks (:func:`write_jobs`): sidecars and in-file captions, idempotent
   (Ray may run a task twice).
6. **record** on the driver, from ``iter_batches``: one transaction per batch, so
   ``photocap search`` works during and after the run.

Every stage returns errors as data (an ``error`` column), never raises for one file: one
exception in a Ray task would fail the whole dataset. Streaming with backpressure keeps memory
flat for any library size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from photocap.errors import PhotocapError, one_line
from photocap.image import DecodedPhoto, DecodeFailure
from photocap.index import PhotoFacts, PhotoIndex, mtime_iso
from photocap.run.decode import decode_batch
from photocap.run.events import CaptionEvent, CaptionModel, CaptionOptions, PhotoResult, Progress
from photocap.run.pairs import RawJpegPairs
from photocap.run.plan import (
    Job,
    Ready,
    Work,
    decide_decoded,
    embedded_job,
    plan_library,
    same_picture,
)
from photocap.run.record import Recorder
from photocap.run.write import FilesDone, write_files
from photocap.writers import CaptionRecord, WriteOptions, WriteOutcome

if TYPE_CHECKING:  # pragma: no cover
    from photocap.preset import Preset

RAY_MISSING = "--engine ray needs Ray: pip install 'photocap[ray]'"
# Memory a decode task asks Ray for: a 24-MP JPEG decoded at full size is ~70 MB, twice that
# while it is resized, plus the worker's own.
DECODE_MEMORY = 256 * 1024**2
# Write tasks in flight at once: enough to keep the writers busy, few enough that a stop
# finishes quickly.
_MAX_WRITE_TASKS = 4
# Ray runs a write task again when its worker or node is lost, this many times; then its
# photos' writes fail (the caption is in the index, a re-run writes the files).
WRITE_RETRIES = 3
WRITE_LOST = "the write task was lost on the cluster ({}); a re-run writes it"
# For the tests (a Ray worker cannot be patched): a write task given a photo whose name holds
# this variable's value dies as a worker on a lost node does.
WRITE_CRASH_ENV = "PHOTOCAP_TEST_CRASH_WRITER"


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`PhotocapError` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise PhotocapError(RAY_MISSING) from None
    return ray


# -------------------------------------------------------------- the stages on workers


def decode_rows(
    rows: dict[str, np.ndarray], preset: Preset, options: CaptionOptions
) -> dict[str, np.ndarray]:
    """Decode stage (a Ray task): ``rows["path"]`` -> the model's input pixels and the photo's
    facts; a file that cannot be decoded gets its one-line ``error``, and zero pixels."""
    paths = [Path(p) for p in rows["path"]]
    results = decode_batch(paths, preset, options)
    size = preset.size
    out: dict[str, list[Any]] = {k: [] for k in (*_DECODED_COLUMNS, "embed")}
    pixels = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    for k, result in enumerate(results):
        out["item"].append(int(rows["item"][k]))
        out["embed"].append(bool(rows["embed"][k]))
        out["path"].append(os.fspath(paths[k]))
        if isinstance(result, DecodeFailure):
            facts: dict[str, Any] = {"error": result.error}
            facts["size"] = -1 if result.size is None else result.size
            facts["mtime_ns"] = -1 if result.mtime_ns is None else result.mtime_ns
        else:
            pixels[k] = result.pixels
            facts = {name: getattr(result, name) for name in _FACTS}
            facts["error"] = ""
        for name in _DECODED_COLUMNS[2:]:
            value = facts.get(name)
            out[name].append(_EMPTY[name] if value is None else value)
    columns = {name: np.array(values) for name, values in out.items()}
    columns["pixels"] = pixels  # (N, 3, S, S) uint8
    columns["node"] = np.array([_node_id()] * len(paths))  # where it was decoded
    return columns


_FACTS = ("content_hash", "pixels_hash", "size", "mtime_ns", "width", "height", "format",
          "date_taken", "camera")  # fmt: skip
_DECODED_COLUMNS = ("item", "path", "error", *_FACTS)
# Columns hold one type each: an empty string or -1 stands for "none".
_EMPTY: dict[str, Any] = {name: "" for name in _DECODED_COLUMNS} | {
    "size": -1, "mtime_ns": -1, "width": -1, "height": -1,
}  # fmt: skip


class CaptionActor:
    """Caption stage (a Ray actor): the model loaded once, from the driver's model file."""

    def __init__(
        self, model: Any, device: str, beam_size: int, embedding: Any = (), model_id: str = ""
    ) -> None:
        import ray

        from photocap.checkpoint import load_captioner
        from photocap.embedding import embedding_path, load_embedding

        # The model file's bytes (and its embedding's, if any), in lists: references the actor
        # fetches itself (an ObjectRef among its arguments would be fetched by Ray for every
        # restart). Written under the same names, so the embedding is found beside the model.
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.safetensors"
            path.write_bytes(ray.get(model[0]))
            # The model as a local run has it on a CPU (photocap.runtime: OpenVINO, the
            # decoders' step in int8): a photo's caption must not depend on the engine. The
            # cache of exported files is keyed by the model's hash, not this temporary path.
            self.captioner = load_captioner(path, device, runtime=True)
            if embedding:  # the driver's, for the driver's model id (checked there)
                embedding_path(path).write_bytes(ray.get(embedding[0]))
                vectors = load_embedding(embedding_path(path), model_id, self.captioner.device)
                self.captioner.use_embedding(vectors)
        self.beam_size = beam_size

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Caption the decoded rows: ``caption``, ``score``, ``alternatives`` (JSON); the model's
        failure in ``caption_error``. The pixels stay here."""
        import torch

        ok = [k for k, error in enumerate(rows["error"]) if not error]
        # Photos whose captions stand, decoded for their vectors only: the encoder, no beams.
        embed = [k for k in ok if rows["embed"][k]]
        ok = [k for k in ok if not rows["embed"][k]]
        n = len(rows["error"])
        captions, scores, alternatives = [""] * n, [0.0] * n, ["[]"] * n
        vectors = [b""] * n  # b"": none (a model without an embedding)
        failures = [""] * n  # the model's failure, for each photo it touched
        if ok:
            try:
                pixels = torch.from_numpy(np.ascontiguousarray(rows["pixels"][ok]))
                found = self.captioner.caption_batch(pixels, beam_size=self.beam_size)
                for k, caption in zip(ok, found, strict=True):
                    captions[k], scores[k] = caption.text, float(caption.score)
                    alternatives[k] = json.dumps(list(caption.alternatives), ensure_ascii=False)
                    vectors[k] = caption.vector or b""
            except (RuntimeError, ValueError) as err:  # out of memory, say: the batch fails
                for k in ok:
                    failures[k] = f"captioning failed: {one_line(err, 200)}"
        if embed:  # apart: a failure here leaves those photos' captions, and the others'
            try:
                pixels = torch.from_numpy(np.ascontiguousarray(rows["pixels"][embed]))
                made = self.captioner.embed_batch(pixels)  # []: no embedding
                for k, vector in zip(embed, made, strict=False):
                    vectors[k] = vector
            except (RuntimeError, ValueError) as err:
                for k in embed:
                    failures[k] = f"captioning failed: {one_line(err, 200)}"
        out = {name: rows[name] for name in (*_DECODED_COLUMNS, "embed")}
        out["caption"] = np.array(captions, dtype=object)
        out["score"] = np.array(scores)
        out["alternatives"] = np.array(alternatives, dtype=object)
        out["caption_error"] = np.array(failures, dtype=object)
        out["vector"] = np.array(vectors, dtype=object)
        out["node"] = rows["node"]
        out["caption_node"] = np.array([_node_id()] * n)
        return out


def write_jobs(names: list[str], options: WriteOptions, jobs: list[Job]) -> list[FilesDone]:
    """Write stage (a Ray task): the file writers for ``jobs``, as the local writer thread does."""
    from photocap.metadata import get_writers

    crash = os.environ.get(WRITE_CRASH_ENV)
    if crash and any(crash in job.record.path.name for job in jobs):
        os.kill(os.getpid(), signal.SIGKILL)
    writers = get_writers(names, options)
    try:
        return write_files(writers, options, jobs)
    finally:
        for writer in writers:
            writer.close()


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _sees(path: str) -> bool:
    return os.path.exists(path)


# -------------------------------------------------------------- the driver


class RayRun:
    """One caption run on Ray; :meth:`events` runs it."""

    def __init__(
        self,
        captioner: CaptionModel,
        index: PhotoIndex,
        options: CaptionOptions,
        stop: threading.Event,
        model_path: Path,
        address: str | None = None,
    ) -> None:
        self.ray = import_ray()
        self.captioner = captioner
        self.index = index
        self.options = options
        self.stop = stop
        self.model_path = model_path
        self.address = address
        self.model_id: str = captioner.model_id
        self.record = Recorder(index, options)
        self.file_writers = [n for n in options.writers if n != "index"]
        self.pairs = RawJpegPairs(index, self.model_id, set())
        self.own_captions: dict[Path, CaptionRecord] = {}  # parked RAWs' captions of their own
        self.first_of: dict[str, Path] = {}  # pixels hash -> the first photo of this run with it
        self._ready: list[PhotoResult] = []  # failures found on the driver, to yield next
        self.writes: deque[tuple[list[Job], Any, bool]] = deque()  # (jobs, ObjectRef, commit)
        self.own_failures: dict[Path, str] = {}  # ... or why the model gave it none
        self.done = 0
        self.total = 0
        self.counting = False  # photo results count toward ``done`` (after planning)
        self.checked = False  # every node was asked whether it sees the library
        self.model_used = False
        self.nodes: dict[str, set[str]] = {"decode": set(), "caption": set()}  # Ray node ids

    def events(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[CaptionEvent]:
        started = time.monotonic()
        paths = list(paths)
        interrupted = True
        try:
            work = yield from self._plan(paths)
            self.total = len(work)
            self.counting = True
            yield Progress("caption", 0, self.total)
            if work and not self.stop.is_set():
                self._start_ray(work[0].photo.path)
                finished = yield from self._caption(work)
                interrupted = not finished
            else:
                interrupted = self.stop.is_set()
            yield from self._drain_writes(0)
            self.record.flush()
            if not interrupted:
                yield Progress("caption", self.done, self.total)
        except KeyboardInterrupt:
            interrupted = True  # writes under way complete and are recorded
            with contextlib.suppress(KeyboardInterrupt):
                yield from self._drain_writes(0)
        finally:
            self._finish_in_flight()
            self.record.run_record.close()
        encoder = "ray" if self.model_used else ""
        elapsed = time.monotonic() - started
        summary = self.record.summary(elapsed, interrupted, self.model_id, encoder, encoder)
        yield replace(summary, nodes=len(self.nodes["decode"] | self.nodes["caption"]))

    # -------------------------------------------------------------- setup

    def _start_ray(self, path: Path) -> None:
        """Connect to the cluster, or start a Ray here, and check that every node sees the
        library (``path``: a photo of it): only once a photo needs a stage on Ray (an
        unchanged library's re-run starts none)."""
        ray = self.ray
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            # Ray says on every start that token authentication is on (its default since
            # 2.52, which photocap keeps): not news to print on each run.
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
            # Ray's C++ log lines on the terminal (warnings about its own internals, such as
            # Ray Data's actors keeping their arguments in the object store): off unless asked
            # for (RAY_BACKEND_LOG_LEVEL=info); real failures still reach photocap as errors.
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            # Quiet: no dashboard, no worker logs or progress bars on the driver's terminal.
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        context.verbose_stats_logs = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        if not self.checked:
            self._check_nodes(path)
            self.checked = True

    def _check_nodes(self, path: Path) -> None:
        """Every node must see the library at the same path: a path of the plan is looked up
        on each; the first node that does not see it is named."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        sees = ray.remote(num_cpus=0)(_sees)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        checks = [
            sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(os.fspath(path))
            for n in nodes
        ]
        for node, seen in zip(nodes, ray.get(checks), strict=True):
            if not seen:
                raise PhotocapError(
                    f"Ray node {node.get('NodeManagerAddress', node['NodeID'])} does not see "
                    f"{path}: mount the library at the same path on every node"
                )

    # -------------------------------------------------------------- 1. plan

    def _plan(
        self, paths: list[str | os.PathLike[str]]
    ) -> Generator[CaptionEvent, None, list[Work]]:
        steps = plan_library(
            paths, self.index, self.model_id, self.options, self.stop, self.captioner.vector_size
        )
        plan = yield from self.record.walk(steps, paths)
        if plan is None:
            return []
        # Photos that only need their missing outputs written: no decode, no model.
        for jobs in plan.carry_batches(self.options.batch_size, self.stop):
            self._hand_off(jobs, commit=True)
            yield from self._drain_writes(0)
        return plan.work

    # -------------------------------------------------------------- 2-4. decode, caption, decide

    def _caption(self, work: list[Work]) -> Generator[CaptionEvent, None, bool]:
        """Run the dataset; True when every photo went through (not stopped)."""
        ray = self.ray
        in_work = {w.photo.path for w in work}
        leads = (w.photo.lead for w in work)
        self.pairs.paired = {lead for lead in leads if lead is not None and lead in in_work}
        batch_size = max(1, self.options.batch_size)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        # The largest node decides what one actor may ask for: no node has the cluster's CPUs.
        node_cpus = max(float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])
        # One actor per GPU; without GPUs, half a node's CPUs go to the model (a few threads per
        # actor: torch's threads scale poorly past that) and the rest to decoding and writing,
        # on a one-CPU machine too (a share of a CPU each: never an actor holding them all).
        per_actor = 0.0 if gpus else min(4.0, max(0.5, node_cpus / 2))
        actors = gpus or max(1, int(cpus / 2 / per_actor))
        decode_cpus = 1.0 if node_cpus >= 2 else 0.5
        # "auto" on each actor: a node's own GPU, else its CPU (a GPU the cluster claims is not
        # necessarily one torch sees there).
        device = "auto" if gpus else "cpu"
        model = ray.put(self.model_path.read_bytes())
        from photocap.embedding import find_embedding

        found = find_embedding(self.model_path, self.model_id)
        embedding = [ray.put(found.read_bytes())] if found is not None else []
        items = [
            {"item": k, "path": os.fspath(w.photo.path), "embed": w.embed is not None}
            for k, w in enumerate(work)
        ]
        ds = ray.data.from_items(items)
        ds = ds.map_batches(
            decode_rows, batch_size=batch_size, batch_format="numpy",
            fn_kwargs={"preset": self.captioner.preset, "options": self.options},
            # A CPU and the memory a large photo's decode takes. Resources that differ from the
            # actors' also keep Ray Data from fusing decoding into the caption actors (it
            # fuses ops with equal resources): files are decoded by CPU tasks on every node
            # while the actors caption.
            num_cpus=decode_cpus, memory=DECODE_MEMORY,
        )  # fmt: skip
        ds = ds.map_batches(
            CaptionActor, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_gpus=1 if gpus else 0, num_cpus=per_actor,
            fn_constructor_kwargs={"model": [model], "device": device,
                                   "beam_size": self.options.beam_size, "embedding": embedding,
                                   "model_id": self.model_id},
        )  # fmt: skip
        self.model_used = True
        for rows in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            self.nodes["decode"].update(str(node) for node in rows["node"])
            self.nodes["caption"].update(str(node) for node in rows["caption_node"])
            jobs = self._decide(work, rows)
            # RAWs whose JPEG got no caption: their own, which the model made already.
            for raw in self.pairs.take_released():
                own = self.own_captions.pop(raw.photo.path, None)
                if own is not None:
                    jobs.append(Job(own, "captioned", reason=""))
                else:
                    why = self.own_failures.pop(raw.photo.path, "captioning failed")
                    self._fail_now(raw.photo.path, why, "model")
            if jobs:
                self._hand_off(jobs, commit=True)
            yield from self._drain_writes(_MAX_WRITE_TASKS)
            if self.stop.is_set():
                return False
        return True

    def _decide(self, work: list[Work], rows: dict[str, np.ndarray]) -> list[Job]:
        """The driver's part after the model: failures recorded, known captions kept, the
        rest's captions made jobs (in the order of ``rows``)."""
        jobs: list[Job] = []
        for k in range(len(rows["item"])):
            item = work[int(rows["item"][k])]
            path = item.photo.path
            error = str(rows["error"][k])
            if item.embed is not None:  # its caption stands, failed decode or not
                assert item.row is not None
                vector = None if error else bytes(rows["vector"][k]) or None
                failure = error or str(rows["caption_error"][k])
                kept_job = embedded_job(item.photo, item.row, item.embed, vector, failure)
                jobs += [kept_job, *self._resolve(path, kept_job.record)]
                continue
            if error:
                size, mtime_ns = int(rows["size"][k]), int(rows["mtime_ns"][k])
                if size >= 0:
                    self.record.run_record.note_photo(path, PhotoFacts(
                        size=size, mtime_ns=mtime_ns, mtime=mtime_iso(mtime_ns),
                    ))  # fmt: skip
                self._fail_now(path, error, "decode")
                jobs += self._resolve(path, None)
                continue
            decoded = _decoded(rows, k)
            self.record.note_decoded(path, decoded)
            carry = decide_decoded(item, decoded, self.index, self.model_id, self.options.force)
            if carry is not None:
                jobs += [carry, *self._resolve(path, carry.record)]
                continue
            failure = str(rows["caption_error"][k])
            record = None if failure else CaptionRecord(
                path=path, caption=str(rows["caption"][k]), score=float(rows["score"][k]),
                alternatives=tuple(json.loads(str(rows["alternatives"][k]))),
                model_id=self.model_id, captioned_at=_now(),
                vector=bytes(rows["vector"][k]) or None,
            )  # fmt: skip
            ready = Ready(item.photo, item.row, decoded)
            # The RAW of a pair takes its JPEG's caption, whatever the model made of the RAW:
            # its own is kept for the case that the JPEG gets none.
            if self.pairs.waits(ready):
                if record is None:
                    self.own_failures[path] = failure
                else:
                    self.own_captions[path] = record
                continue
            job = self.pairs.job_for(ready)
            if job is None and record is None:
                self._fail_now(path, failure, "model")
                jobs += self._resolve(path, None)
                continue
            if job is None:
                assert record is not None
                # Copies in this run ("IMG_1.jpg", "IMG_1 (1).jpg"): the first's caption.
                first = self.first_of.setdefault(decoded.pixels_hash, path)
                if first != path and not self.options.force:
                    job = Job(record, "carried", same_picture(first).text)
                else:
                    job = Job(record, "captioned", reason="")
            jobs += [job, *self._resolve(path, record)]
        return jobs

    def _resolve(self, lead: Path, record: CaptionRecord | None) -> list[Job]:
        """:meth:`RawJpegPairs.resolve`, and the RAW's own caption (or failure) forgotten
        once it has its JPEG's."""
        jobs = self.pairs.resolve(lead, record)
        for job in jobs:
            self.own_captions.pop(job.record.path, None)
            self.own_failures.pop(job.record.path, None)
        return jobs

    def _fail_now(self, path: Path, error: str, stage: Any) -> None:
        result = self.record.fail(path, error, stage)
        self._ready.append(result)

    # -------------------------------------------------------------- 5-6. write + record

    def _hand_off(self, jobs: list[Job], commit: bool) -> None:
        self._start_ray(jobs[0].record.path)
        # A quarter of a CPU: writes wait on disks, and must never wait for a CPU the decode
        # tasks hold (the driver stops taking decoded photos while writes are behind).
        write = self.ray.remote(num_cpus=0.25, max_retries=WRITE_RETRIES)(write_jobs)
        ref = write.remote(self.file_writers, self.options.write_options, jobs)
        self.writes.append((jobs, ref, commit))

    def _drain_writes(self, max_queued: int) -> Iterator[CaptionEvent]:
        """Record the write tasks done, in order, and yield their results; waits while more
        than ``max_queued`` are in flight."""
        for result in self._take_ready():
            yield result
        while self.writes:
            jobs, ref, _commit = self.writes[0]
            if len(self.writes) <= max_queued:
                ready, _ = self.ray.wait([ref], timeout=0)
                if not ready:
                    return
            files = self._written(jobs, ref)
            self.writes.popleft()
            results = [self.record.finish(job, done) for job, done in zip(jobs, files, strict=True)]
            self.record.flush()  # one transaction per batch
            for result in results:
                self.done += self.counting
                yield result
            if self.counting:
                yield Progress("caption", self.done, self.total)

    def _written(self, jobs: list[Job], ref: Any) -> list[FilesDone]:
        """What a write task did; when Ray gave it up (its worker or node lost after every
        retry), a failed write for each of its photos: the run goes on, each photo keeps its
        row and caption, and a re-run writes its files."""
        try:
            files: list[FilesDone] = self.ray.get(ref)
            return files
        except self.ray.exceptions.RayError as err:
            why = WRITE_LOST.format(type(err).__name__)
            return [_lost(job, self.file_writers, why) for job in jobs]

    def _finish_in_flight(self) -> None:
        """Record the writes still under way (an error or a second Ctrl-C ended the run):
        never a written photo left out of the index."""
        while self.writes:
            jobs, ref, _commit = self.writes.popleft()
            try:
                files: list[FilesDone] = self.ray.get(ref)
                for job, done in zip(jobs, files, strict=True):
                    self.record.finish(job, done)
            except BaseException:
                continue
        with contextlib.suppress(Exception):
            self.record.flush()

    def _take_ready(self) -> list[PhotoResult]:
        ready, self._ready = self._ready, []
        self.done += len(ready) if self.counting else 0
        return ready


def _lost(job: Job, writers: list[str], why: str) -> FilesDone:
    """A failed write, ``why``, for each of ``writers`` the job had to write."""
    names = [name for name in writers if name not in job.already]
    return FilesDone(tuple(WriteOutcome(n, job.record.path, "failed", why) for n in names), None)


def _decoded(rows: dict[str, np.ndarray], k: int) -> DecodedPhoto:
    """A decoded photo's facts from its row (its pixels stayed with the model)."""
    return DecodedPhoto(
        path=str(rows["path"][k]), pixels=np.empty((0,), dtype=np.uint8),
        content_hash=str(rows["content_hash"][k]), pixels_hash=str(rows["pixels_hash"][k]),
        size=int(rows["size"][k]), mtime_ns=int(rows["mtime_ns"][k]),
        width=int(rows["width"][k]), height=int(rows["height"][k]),
        format=str(rows["format"][k]), date_taken=str(rows["date_taken"][k]) or None,
        camera=str(rows["camera"][k]) or None,
    )  # fmt: skip


def _now() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
