"""The outputs of a caption run, and what every writer shares: ``--write xmp,exif,index``.

A caption goes to up to three outputs: an XMP sidecar (``xmp``), the photo file itself
(``exif``) and the SQLite index (``index``). The two file writers live in
:mod:`photocap.metadata` and are built by name with :func:`photocap.metadata.get_writers`; the
index is the run's record (:mod:`photocap.index`), not a writer. Each file writer receives one
:class:`CaptionRecord` per photo and returns a :class:`WriteOutcome`: it never prints and never
raises for one photo's failure, so one bad file never stops a run. An outcome carries a
:class:`OutcomeCode` for programs (the CLI counts codes) and a one-line message for people.

This module imports nothing heavy (the CLI checks ``--write`` against :data:`OUTPUTS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Literal, Protocol

from photocap.errors import FolderNotWritable, PhotocapError, SidecarTaken, one_line

# Every output ``--write`` takes, in the order they are written.
OUTPUTS = ("xmp", "exif", "index")

KEPT_HUMAN = "kept human caption"  # the message of OutcomeCode.KEPT_HUMAN

WriteStatus = Literal["written", "unchanged", "kept_human", "skipped", "failed"]


class OutcomeCode(str, Enum):
    """Why a write came out as it did: what programs test (never the message's wording)."""

    DONE = "done"  # written, or unchanged: nothing to say
    KEPT_HUMAN = "kept_human"  # a person's caption is there: ours was not written over it
    SIDECAR_TAKEN = "sidecar_taken"  # the stem-named sidecar is the RAW's of a RAW+JPEG pair
    STEM_SIDECAR_BESIDE = "stem_sidecar_beside"  # a new photo.jpg.xmp beside the photo.xmp
    FORMAT_NOT_WRITTEN = "format_not_written"  # no in-file caption for this format
    DRY_RUN = "dry_run"  # --dry-run: nothing written
    FOLDER_NOT_WRITABLE = "folder_not_writable"  # read-only media, a share, permissions
    FAILED = "failed"  # any other failure; the message says which


KEEP_VECTOR = b""  # CaptionRecord.vector: the row keeps the vector it has


@dataclass(frozen=True)
class CaptionRecord:
    """What every writer receives for one captioned photo."""

    path: Path  # absolute path of the photo
    caption: str  # the sentence shown to users, e.g. "A dog runs through the grass."
    score: float  # mean log-probability per word of the caption (higher is better)
    alternatives: tuple[str, ...]  # the other beam hypotheses, best first
    model_id: str  # identifies the model that produced the caption
    captioned_at: datetime  # timezone-aware UTC
    # The photo in the text-image embedding (Caption.vector); None: it has none (the index
    # clears an old one); KEEP_VECTOR: the row keeps its own (a caption carried, not made).
    vector: bytes | None = None


@dataclass(frozen=True)
class WriteOutcome:
    """What one writer did with one record."""

    writer: str
    path: Path
    status: WriteStatus
    message: str = ""  # one line for people: the reason for failed/skipped/kept_human, or a note
    # A caption a person wrote that this writer found for the photo (its sidecar, or inside
    # the file), kept or, with overwrite_human, replaced; the index makes it searchable.
    human_caption: str | None = None
    # The writer rewrote the photo file itself (an in-file caption written or taken out): its
    # size and hash are new. Sidecar and index writers never do.
    changed_photo: bool = False
    code: OutcomeCode | None = None  # None: FAILED for a failure, else DONE

    def __post_init__(self) -> None:
        if self.code is None:
            # A skipped or kept outcome says why with its own code; the others have one.
            if self.status in ("skipped", "kept_human"):
                raise ValueError(f"a {self.status} outcome needs its OutcomeCode")
            done = OutcomeCode.FAILED if self.status == "failed" else OutcomeCode.DONE
            object.__setattr__(self, "code", done)

    @classmethod
    def failure(cls, writer: str, path: Path, err: Exception) -> WriteOutcome:
        """The outcome of ``err`` raised while writing ``path``: skipped for a sidecar that is
        another photo's, failed otherwise, with the code of the error's type."""
        if isinstance(err, SidecarTaken):
            return cls(writer, path, "skipped", one_line(err), code=OutcomeCode.SIDECAR_TAKEN)
        if isinstance(err, OSError):
            from photocap.safeio import describe_os_error

            return cls(
                writer, path, "failed", describe_os_error(err, path), code=OutcomeCode.FAILED
            )
        code = OutcomeCode.FOLDER_NOT_WRITABLE if isinstance(err, FolderNotWritable) else None
        return cls(writer, path, "failed", one_line(err), code=code or OutcomeCode.FAILED)


@dataclass
class WriteOptions:
    """Options shared by the writers (from the CLI flags)."""

    sidecar_name: Literal["full", "stem"] = "full"  # photo.jpg.xmp (default) or photo.xmp
    overwrite_human: bool = False
    touch: bool = False  # update the photo's mtime on in-file writes (default: preserve it)
    dry_run: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class Writer(Protocol):
    """A file output for captions (:mod:`photocap.metadata.sidecar_writer`,
    :mod:`photocap.metadata.exif_writer`)."""

    name: str

    def write(self, record: CaptionRecord) -> WriteOutcome:
        """Write one caption. Must not raise for a per-photo failure: return status 'failed'."""
        ...

    def close(self) -> None:
        """Flush and release resources (commit, close files). Called once at the end of a run."""
        ...


WriterFactory = Callable[[WriteOptions], Writer]


def parse_writer_names(spec: str | Iterable[str]) -> list[str]:
    """``"xmp,index"`` -> ``["xmp", "index"]``; unknown names raise :class:`PhotocapError`."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise PhotocapError(
            f"unknown writer {', '.join(unknown)!s}; choose from {', '.join(sorted(OUTPUTS))}"
        )
    return list(dict.fromkeys(names))  # de-duplicated, order kept
