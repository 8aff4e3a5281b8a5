"""The write stage: a caption into every file output (sidecar, in-file), and what was found.

:func:`write_files` runs the file writers (:func:`photocap.metadata.get_writers`) for each
:class:`~photocap.run.plan.Job`, in order, and returns what the record stage needs
(:class:`FilesDone`): the outcomes, the photo's new size and hash when a writer rewrote it, a
caption a person wrote, and the sidecars' stamp. It touches no SQLite, so an engine runs it
off the thread that owns the index (the local engine's writer thread, a Ray worker). Every
write is idempotent: written again, a caption that is there already is "unchanged".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from photocap.errors import WriteError, one_line
from photocap.image import hash_file
from photocap.index import PhotoFacts, mtime_iso
from photocap.metadata.authorship import find_human_caption
from photocap.metadata.sidecars import adopt_sidecar, read_keywords, sidecar_stamp
from photocap.run.plan import Job
from photocap.writers import CaptionRecord, WriteOptions, WriteOutcome, Writer

# The writers that look for a caption a person wrote (sidecar, EXIF, embedded XMP, IPTC).
HUMAN_CAPTION_WRITERS = frozenset({"xmp", "exif"})


@dataclass(frozen=True)
class FilesDone:
    """What the file writers did for one :class:`~photocap.run.plan.Job`."""

    outcomes: tuple[WriteOutcome, ...]
    facts: PhotoFacts | None  # new size/mtime/hash when a writer changed the photo's bytes
    human_caption: str | None = None  # a caption a person wrote for the photo, if any
    # photocap.metadata.sidecars.sidecar_stamp once the writers are done
    sidecar_stamp: str | None = None
    keywords: str | None = None  # the keywords of the photo's sidecars, ", "-joined, if any


def write_files(
    writers: Sequence[Writer], options: WriteOptions, jobs: list[Job]
) -> list[FilesDone]:
    """Every file writer for every job, in order. Touches no SQLite."""
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
        facts = file_facts(job.record.path) if changed_photo else None
        human = _human_caption(job.record, outcomes)
        keywords = ", ".join(_keywords(job.record.path)) or None
        stamp = sidecar_stamp(job.record.path)
        done.append(FilesDone(tuple(outcomes), facts, human, stamp, keywords))
    return done


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


def _keywords(path: Path) -> list[str]:
    """The keywords of the photo's sidecars, then those inside the file (embedded XMP, IPTC);
    none when the photo or its folder went away or the file cannot be read."""
    from photocap.metadata.infile import read_photo_text

    try:
        found = read_keywords(path)
    except OSError:
        found = []
    try:
        text = read_photo_text(path)
    except (WriteError, OSError):
        text = None
    if text is not None:
        found += text.keywords()
    return list(dict.fromkeys(found))


def file_facts(path: Path) -> PhotoFacts | None:
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
