"""The caption stage: a batch of decoded photos -> caption records, one model call.

Copies side by side ("IMG_1.jpg", "IMG_1 (1).jpg") have the same pixels: the model captions
the first and the others take its caption (``--force``: every photo). :class:`CoreShare` gives
the model the CPU cores the decode workers leave.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from photocap.errors import PhotocapError, one_line
from photocap.run.plan import Job, Ready, embedded_job, same_picture
from photocap.writers import CaptionRecord

if TYPE_CHECKING:  # pragma: no cover
    from photocap.run.events import CaptionModel


def caption_batch(
    batch: list[Ready], captioner: CaptionModel, model_id: str, beam_size: int, force: bool = False
) -> list[Job]:
    """Caption ``batch`` in one model call: one :class:`~photocap.run.plan.Job` per photo, in
    order ("captioned", or "carried" for a copy of a photo of the batch, or for a photo
    decoded for its vector only: :attr:`~photocap.run.plan.Ready.embed`). The model's
    errors (``RuntimeError``, ``ValueError``: out of memory, say) propagate."""
    import numpy as np
    import torch

    def stacked(photos: list[Ready]) -> torch.Tensor:
        return torch.from_numpy(np.stack([r.decoded.pixels for r in photos]))  # (N, 3, S, S)

    embed_only = [r for r in batch if r.embed is not None]
    vector_of: dict[int, bytes] = {}
    embed_failure = ""
    if embed_only:  # the encoder alone: their captions stand
        try:
            vectors = captioner.embed_batch(stacked(embed_only))
            vector_of = {id(r): v for r, v in zip(embed_only, vectors, strict=False)}  # []: none
        except (RuntimeError, ValueError, PhotocapError) as err:
            # An optional extra: the photos keep their captions, the next run tries again, and
            # the photos of the batch to caption are not failed with them (the model's
            # failure, if it is one, is theirs to report).
            embed_failure = f"captioning failed: {one_line(err, 200)}"
    by_pixels: dict[str, Ready] = {}
    twin_of = {  # id(photo) -> the photo of this batch whose caption it gets
        id(r): r if force else by_pixels.setdefault(r.decoded.pixels_hash, r)
        for r in batch
        if r.embed is None
    }
    unique = [r for r in batch if twin_of.get(id(r)) is r]
    captions = captioner.caption_batch(stacked(unique), beam_size=beam_size) if unique else []
    now = datetime.now(timezone.utc)
    caption_of = {id(r): c for r, c in zip(unique, captions, strict=True)}
    jobs = []
    for ready in batch:
        if ready.embed is not None:
            assert ready.row is not None
            vector = vector_of.get(id(ready))
            jobs.append(embedded_job(ready.photo, ready.row, ready.embed, vector, embed_failure))
            continue
        twin = twin_of[id(ready)]
        caption = caption_of[id(twin)]
        record = CaptionRecord(
            path=ready.photo.path, caption=caption.text, score=float(caption.score),
            alternatives=tuple(caption.alternatives), model_id=model_id, captioned_at=now,
            vector=caption.vector,
        )  # fmt: skip
        if twin is ready:
            jobs.append(Job(record, "captioned", reason=""))
        else:
            jobs.append(Job(record, "carried", same_picture(twin.photo.path).text))
    return jobs


class CoreShare:
    """The CPU's cores shared between the decode workers and the model on a CPU run: how many
    workers decode at once while the model works (:meth:`decode_limit`) and torch's thread
    count (:meth:`set_for_batch`).

    **Decode limit.** Each decoding worker and the model's threads want a core. When the model
    costs about what a decode does (12-MP JPEGs with the int8 step), every worker decoding
    beside the model oversubscribes the cores (2 workers on 2 cores were 0.8-0.9x of 1 at
    17:30 UTC on 2026-12-03, benchmarks/README.md); when a decode costs more (PNG, HEIC, TIFF
    have no draft decode) one worker starves the model. So the run measures, between one model
    batch and the next, the CPU time its decodes took in their workers (``D``) and the batch's
    CPU time in the run's process (``M``), and lets decode the fewest workers whose decoding
    keeps up with what the cores allow within a tenth: ``k / D >= 0.9 * C / (D + M)`` on ``C``
    cores, i.e. ``k = ceil(0.9 * C * D / (D + M))``, 1 to all the workers. Photos decoded that
    skip the model (a kept caption, a RAW whose JPEG speaks for it) count in ``D`` and not in
    ``M``, as they should. Until a batch after the first is measured (the first builds the
    model's memory arenas), and on a GPU, every worker decodes; the run also lets every worker
    decode while it waits for a decode (the model has nothing to do then).

    **Threads.** torch's OpenMP threads spin-wait for each other at every operator; when a
    decode worker (or anything else) takes a core, one descheduled thread stalls all the
    others. On 2 cores with 2 workers, 1 torch thread captions 12-MP photos ~3.7x faster than
    2 (benchmarks/README.md). So while workers decode, the model gets at most half the cores;
    when none is decoding (the photos in flight are all decoded: decoding is ahead, or the
    run's last batches), it gets every thread torch had, as no worker decodes while the model
    works (the run sends photos to decode between batches only). The parts of the model on
    OpenVINO keep every thread throughout: their threads do not spin-wait
    (:class:`photocap.runtime._Compiled`).
    """

    # The weight of the newest stretch in the running costs: a few batches' worth, so a
    # library's mix (JPEGs, then a folder of PNGs) is followed within a batch or two.
    _NEWEST = 0.3
    _KEEP_UP = 0.9  # a decode rate this close to what the cores allow is enough

    def __init__(self, captioner: CaptionModel, workers: int, cores: int | None = None) -> None:
        self.captioner = captioner
        self.workers = workers
        self.cores = cores or usable_cores()
        # Read at the first batch: a run whose photos all fail to decode, or keep their
        # caption, never imports torch.
        self.active = False
        self.before = self.shared = self.current = 0
        self._ready = False
        self.batches = 0  # model batches noted
        self._decoded_s = 0.0  # decode CPU-seconds noted since the last model batch
        self.decode_s: float | None = None  # running decode CPU-seconds between two batches
        self.model_s: float | None = None  # running CPU-seconds of a batch (this process)

    def _start(self) -> None:
        import torch

        self._ready = True
        self.before = torch.get_num_threads()
        self.active = self.workers > 0 and self.captioner.device.type == "cpu"
        self.shared = max(1, min(self.before, self.cores // 2))
        self.current = self.before  # set before each batch, not at the start: the model
        # build (on its thread) reads torch's own count to compile OpenVINO for

    def note_decode(self, cpu_s: float) -> None:
        """A photo's decode took ``cpu_s`` CPU-seconds in its worker (0: not measured)."""
        self._decoded_s += max(0.0, cpu_s)

    def note_model(self, cpu_s: float) -> None:
        """A model batch took ``cpu_s`` CPU-seconds of this process: the model's threads and
        the writer thread's (and, on many cores, OpenMP's spin-waiting, which overstates the
        model a little and so errs towards fewer decoding workers)."""
        self.batches += 1
        decoded, self._decoded_s = self._decoded_s, 0.0
        if self.batches == 1:
            return  # the first batch: memory arenas, caches, the first compile
        self.decode_s = _running(self.decode_s, decoded, self._NEWEST)
        self.model_s = _running(self.model_s, max(0.0, cpu_s), self._NEWEST)

    def decode_limit(self) -> int:
        """How many workers should decode at once while the model works, from the costs
        measured so far."""
        if not self.active or self.decode_s is None or self.model_s is None:
            return max(1, self.workers)
        total = self.decode_s + self.model_s
        if total <= 0:
            return max(1, self.workers)
        wanted = math.ceil(self._KEEP_UP * self.cores * self.decode_s / total)
        return max(1, min(self.workers, wanted))

    def set_for_batch(self, *, decoding: bool) -> None:
        if not self._ready:
            self._start()
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


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, a container's CPU set), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS or Windows
        return os.cpu_count() or 1


def _running(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new
