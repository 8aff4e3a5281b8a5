"""What a caption run takes and yields: its options, the model it needs, and its events.

:func:`photocap.pipeline.caption_library` (either engine) yields :class:`PhotoResult` per
photo, :class:`Progress`, and one final :class:`RunSummary`; the CLI renders them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from photocap.decoding import DEFAULT_BEAM_SIZE
from photocap.index import FailureStage
from photocap.writers import WriteOptions, WriteOutcome

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from photocap.decoding import Caption
    from photocap.preset import Preset

PhotoStatus = Literal["captioned", "carried", "skipped", "failed"]


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
    def decoder_runtime_name(self) -> str:
        """What runs the decoders' step ("openvino 2026.4.1 int8", "torch (openvino: ...)");
        "" until built."""
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

    @property
    def vector_size(self) -> int:
        """Bytes of the vector it gives each photo in a text-image embedding (search by
        meaning), as the index stores it; 0: none."""
        ...

    def caption_batch(self, pixels: torch.Tensor, beam_size: int = ...) -> list[Caption]: ...

    def embed_batch(self, pixels: torch.Tensor) -> list[bytes]:
        """The photos' vectors only (the encoder, no captions); [] without an embedding."""
        ...


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
    engine: Literal["local", "ray"] = "local"  # --engine: this machine, or a Ray cluster
    ray_address: str | None = None  # --ray-address (else $RAY_ADDRESS, else a local Ray)


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
    # What ran the decoders' step: "openvino 2026.4.1 int8", "torch", ...; empty likewise;
    # "ray" for both on the Ray engine (its actors build the model as a local run does).
    decoders: str = ""
    # Ray nodes that decoded or captioned photos (--engine ray); 0 on the local engine.
    nodes: int = 0

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
            "decoders": self.decoders,
            "nodes": self.nodes,
            "dry_run": self.dry_run,
        }


CaptionEvent = PhotoResult | Progress | RunSummary
