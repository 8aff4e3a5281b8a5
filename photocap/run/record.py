"""The record stage: index rows and the events of a run, on the one thread that owns the index.

:class:`Recorder` turns each photo's outcome into its index row (through
:class:`photocap.index.RunRecord`: buffered, one transaction per batch) and its
:class:`~photocap.run.events.PhotoResult`, and counts them for the
:class:`~photocap.run.events.RunSummary`. Every photo the summary counts as failed is in the
index with its one-line reason and its stage (:data:`photocap.index.FailureStage`); one whose
output could not be written keeps its caption there.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import cast

from photocap.image import DecodedPhoto
from photocap.index import FailureStage, PhotoFacts, PhotoIndex, RunRecord, mtime_iso
from photocap.library import DiscoveryFailure
from photocap.run.events import CaptionEvent, CaptionOptions, PhotoResult, RunSummary
from photocap.run.plan import Job, Plan, PlanStep
from photocap.run.write import FilesDone
from photocap.writers import WriteOutcome

# Write outcomes after which an output needs nothing more for this caption: it holds it, or it
# does not apply to the photo ("skipped": EXIF for a PNG or a RAW, the JPEG of a RAW+JPEG pair
# under stem naming). A re-run retries neither; it retries "failed".
SETTLED = frozenset({"written", "unchanged", "kept_human", "skipped"})


class Recorder:
    """A run's record: index rows (committed by :meth:`flush`), results and counts."""

    def __init__(self, index: PhotoIndex, options: CaptionOptions) -> None:
        self.run_record = RunRecord(index, options.write_options)
        self.wanted = frozenset(options.writers)
        self.dry_run = options.write_options.dry_run
        self.counts = {"captioned": 0, "carried": 0, "skipped": 0, "failed": 0}
        self.failures: list[tuple[str, str]] = []

    def flush(self) -> None:
        """Commit the rows recorded so far (one transaction)."""
        self.run_record.flush()

    def skipped(self, result: PhotoResult) -> PhotoResult:
        """A photo that needed nothing: counted."""
        self.counts["skipped"] += 1
        return result

    def walk(
        self, steps: Iterable[PlanStep], paths: Sequence[str | os.PathLike[str]]
    ) -> Generator[CaptionEvent, None, Plan | None]:
        """The plan stage's steps (:func:`~photocap.run.plan.plan_library` over ``paths``) as
        events: a path that cannot be walked recorded as failed, a photo that needs nothing
        counted; returns the :class:`~photocap.run.plan.Plan` (None: stopped during the walk).
        A walk to its end forgets the discover failures it did not meet again under
        ``paths``: a folder fixed, or gone (with the run's first commit)."""
        plan: Plan | None = None
        for step in steps:
            if isinstance(step, Plan):
                plan = step
            elif isinstance(step, DiscoveryFailure):
                yield self.fail(step.path, step.error, "discover")
            elif isinstance(step, PhotoResult):
                yield self.skipped(step)
            else:
                yield step
        if plan is not None:
            self.run_record.clear_failures("discover", paths, keep=plan.unwalked)
        return plan

    def finish(self, job: Job, files: FilesDone) -> PhotoResult:
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
        settled = {o.writer for o in outcomes if o.status in SETTLED}
        settled |= job.already & self.wanted
        if "index" in self.wanted:
            settled.add("index")
        if files.facts is not None:  # EXIF written into the photo: new size/hash
            self.run_record.note_photo(record.path, files.facts)
        # What was found now replaces what an earlier run found (or clears it).
        self.run_record.note_photo(record.path, PhotoFacts(
            human_caption=files.human_caption, sidecar_stamp=files.sidecar_stamp,
            keywords=files.keywords,
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
        if "index" in self.wanted or self.dry_run:
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

    def note_decoded(self, path: Path, d: DecodedPhoto) -> None:
        """The facts of a decoded photo, for its row."""
        self.run_record.note_photo(path, PhotoFacts(
            size=d.size, mtime_ns=d.mtime_ns, mtime=mtime_iso(d.mtime_ns),
            content_hash=d.content_hash, pixels_hash=d.pixels_hash, width=d.width,
            height=d.height, format=d.format, date_taken=d.date_taken, camera=d.camera,
        ))  # fmt: skip

    def fail(self, path: Path, error: str, stage: FailureStage) -> PhotoResult:
        """A photo failed before it had a caption: counted, and recorded in the index."""
        self.counts["failed"] += 1
        self.failures.append((os.fspath(path), error))
        self.run_record.write_failure(path, error, stage)
        return PhotoResult(path, "failed", error=error, stage=stage)

    def summary(
        self, elapsed_s: float, interrupted: bool, model_id: str, encoder: str, decoders: str
    ) -> RunSummary:
        """The run's :class:`~photocap.run.events.RunSummary`."""
        c = self.counts
        return RunSummary(
            captioned=c["captioned"], carried=c["carried"], skipped=c["skipped"],
            failed=c["failed"], elapsed_s=elapsed_s, interrupted=interrupted,
            model_id=model_id, dry_run=self.dry_run, failures=tuple(self.failures),
            encoder=encoder, decoders=decoders,
        )  # fmt: skip


def failure_reason(failed: Sequence[WriteOutcome]) -> str:
    """One line for a photo's failed writers, each reason once: "xmp, exif: file name too
    long ...", not the same reason after each writer's name."""
    writers: dict[str, list[str]] = {}
    for outcome in failed:
        writers.setdefault(outcome.message, []).append(outcome.writer)
    return "; ".join(f"{', '.join(names)}: {message}" for message, names in writers.items())
