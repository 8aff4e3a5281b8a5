"""The caption run: discover -> plan -> decode (worker processes) -> caption (batches) -> write.

:func:`caption_library` is a generator of events (:class:`PhotoResult` per photo,
:class:`Progress`, one final :class:`RunSummary`); it never prints, the CLI renders. The run's
stages are plain functions and small classes in :mod:`photocap.run` (plan, decode, caption,
write, record), shared by the engines; the local engine (:mod:`photocap.run.local`) runs them
on this machine.

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

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from photocap.errors import PhotocapError
from photocap.index import PhotoIndex
from photocap.run.events import (
    CaptionEvent,
    CaptionModel,
    CaptionOptions,
    PhotoResult,
    PhotoStatus,
    Progress,
    RunSummary,
)
from photocap.run.local import LocalRun
from photocap.run.plan import plan_status
from photocap.run.record import failure_reason


def caption_library(
    paths: Iterable[str | os.PathLike[str]],
    captioner: CaptionModel,
    index: PhotoIndex,
    options: CaptionOptions | None = None,
    stop: threading.Event | None = None,
) -> Iterator[CaptionEvent]:
    """Caption every photo under ``paths`` that needs it; yield events, end with a RunSummary.

    ``options.engine``: ``"local"`` (this machine) or ``"ray"`` (a Ray cluster, or a Ray
    started here: :mod:`photocap.run.ray_engine`; needs ``photocap[ray]`` and the model file
    the captioner was opened from)."""
    options = options or CaptionOptions()
    stop = stop or threading.Event()
    if options.engine == "ray":
        from photocap.run.ray_engine import RayRun

        model_path = getattr(captioner, "path", None) or getattr(captioner, "source", None)
        if model_path is None:
            raise PhotocapError("--engine ray needs a model file (the captioner has none)")
        ray_run = RayRun(captioner, index, options, stop, Path(model_path), options.ray_address)
        yield from ray_run.events(paths)
        return
    yield from LocalRun(captioner, index, options, stop).events(paths)


__all__ = [
    "CaptionEvent",
    "CaptionModel",
    "CaptionOptions",
    "PhotoResult",
    "PhotoStatus",
    "Progress",
    "RunSummary",
    "caption_library",
    "failure_reason",
    "plan_status",
]
