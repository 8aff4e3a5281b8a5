"""The caption stage: a batch of decoded photos -> caption records, one model call.

Copies side by side ("IMG_1.jpg", "IMG_1 (1).jpg") have the same pixels: the model captions
the first and the others take its caption (``--force``: every photo). :class:`CoreShare` gives
the model the CPU cores the decode workers leave.
"""

from __future__ import annotations

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
    """torch's thread count on a CPU run with decode workers, set before each model batch.

    torch's OpenMP threads spin-wait for each other at every operator; when a decode worker (or
    anything else) takes a core, one descheduled thread stalls all the others. On 2 cores with 2
    workers, 1 torch thread captions 12-MP photos ~3.7x faster than 2 (benchmarks/README.md).
    So while workers decode, the model gets at most half the cores; when none is decoding
    (the photos in flight are all decoded: decoding is ahead, or the run's last batches), it
    gets every thread torch had, as no worker decodes while the model works (the run sends
    photos to decode between batches only). The parts of the model on OpenVINO keep every
    thread throughout: their threads do not spin-wait (:class:`photocap.runtime._Compiled`).
    """

    def __init__(self, captioner: CaptionModel, workers: int) -> None:
        self.captioner = captioner
        self.workers = workers
        # Read at the first batch: a run whose photos all fail to decode, or keep their
        # caption, never imports torch.
        self.active = False
        self.before = self.shared = self.current = 0
        self._ready = False

    def _start(self) -> None:
        import torch

        self._ready = True
        self.before = torch.get_num_threads()
        self.active = self.workers > 0 and self.captioner.device.type == "cpu"
        self.shared = max(1, min(self.before, usable_cores() // 2))
        self.current = self.before  # set before each batch, not at the start: the model
        # build (on its thread) reads torch's own count to compile OpenVINO for

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
