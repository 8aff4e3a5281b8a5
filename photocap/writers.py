"""One writer interface, many outputs: ``--write xmp,exif,index``.

Every output photocap writes a caption to (an XMP sidecar, EXIF inside the file, the SQLite
index) is a :class:`Writer`, chosen by name through :func:`get_writers`. The pipeline hands each
writer one :class:`CaptionRecord` per photo and gets back a :class:`WriteOutcome`; a writer
never prints and never raises for a single photo's failure (it returns ``status="failed"``),
so one bad file never stops a run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from photocap.errors import PhotocapError

WriteStatus = Literal["written", "unchanged", "kept_human", "skipped", "failed"]

# What cameras, phones and apps write into EXIF ImageDescription when nobody wrote a description
# (and what some photo tools then copy into XMP): not a caption, so photocap may replace it, and
# a photo holding one counts as uncaptioned. What it replaced is still recorded, so ``photocap
# revert`` puts it back. Every entry is a string seen in real files, not a guess (a too-eager
# list would treat a person's one-word caption as noise); besides the classic camera texts,
# most come from PhotoPrism's list of unwanted descriptions.
#
# The scene and shooting modes Huawei phones write there ("rhdr": rear HDR, "fbt": front
# beauty, ...).
# fmt: off
_HUAWEI_MODES = (
    "rhdr", "hdrpl", "oznorWO", "frontbhdp", "fbt", "rbt", "ptr", "fbthdr", "btr", "mon", "nor",
    "dav", "mde", "mde_soft", "edf", "btfmdn", "btf", "btfhdr", "frem", "oznor", "rpt", "burst",
    "sdr_HDRB", "cof", "qrf", "fshbty",
)
# fmt: on
CAMERA_DEFAULT_DESCRIPTIONS = frozenset(
    text.casefold()
    for text in (
        "OLYMPUS DIGITAL CAMERA",
        "SONY DSC",
        "KODAK Digital Still Camera",
        "MINOLTA DIGITAL CAMERA",
        "KONICA MINOLTA DIGITAL CAMERA",
        "SAMSUNG DIGITAL CAMERA",
        "DIGITAL CAMERA",
        "Exif_JPEG_PICTURE",  # many Android phones (Samsung, LG, ...)
        "SAMSUNG",
        "SAMSUNG CAMERA PICTURES",
        "<Digimax i5, Samsung #1>",
        "Scanner",  # KODAK Slide N Scan
        "default",
        "untitled",
        "DCIM",
        "binary comment",
        "charset=Ascii",
        "Created by Imlib",
        "DVC 10.1 HDMI",
        "iClarified",
        *_HUAWEI_MODES,
    )
)
# The pattern of most camera texts ("RICOH DIGITAL CAMERA", "NIKON DIGITAL CAMERA"), a folder
# path some cameras put there ("DCIM\100MEDIA"), and what exiftool-based tools write for a
# value they could not read.
_NON_CAPTION = re.compile(
    r"(?!(?:a|an|the|my|our|his|her|their) )(?:\S+ ){1,2}digital (?:still )?camera"
    r"|DCIM\\\S*|\(binary data.*|string with binary data.*",
    re.IGNORECASE,
)


def is_blank_description(text: str | None) -> bool:
    """True when no person wrote ``text``: none, only whitespace, or a device's default text."""
    if not text:
        return True
    text = " ".join(text.split())
    return text.casefold() in CAMERA_DEFAULT_DESCRIPTIONS or bool(_NON_CAPTION.fullmatch(text))


@dataclass(frozen=True)
class CaptionRecord:
    """What every writer receives for one captioned photo."""

    path: Path  # absolute path of the photo
    caption: str  # the sentence shown to users, e.g. "A dog runs through the grass."
    score: float  # mean log-probability per word of the caption (higher is better)
    alternatives: tuple[str, ...]  # the other beam hypotheses, best first
    model_id: str  # identifies the model that produced the caption
    captioned_at: datetime  # timezone-aware UTC


@dataclass(frozen=True)
class WriteOutcome:
    """What one writer did with one record."""

    writer: str
    path: Path
    status: WriteStatus
    message: str = ""  # one line: the reason for failed/skipped/kept_human, else empty
    # A caption a person wrote that this writer found for the photo (its sidecar, or inside
    # the file), kept or, with overwrite_human, replaced; the index makes it searchable.
    human_caption: str | None = None
    # The writer rewrote the photo file itself (an in-file caption written or taken out): its
    # size and hash are new. Sidecar and index writers never do.
    changed_photo: bool = False


@dataclass
class WriteOptions:
    """Options shared by the writers (from the CLI flags)."""

    sidecar_name: Literal["full", "stem"] = "full"  # photo.jpg.xmp (default) or photo.xmp
    overwrite_human: bool = False
    touch: bool = False  # update the photo's mtime on in-file writes (default: preserve it)
    dry_run: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class Writer(Protocol):
    """An output for captions. Implementations live in their domain modules (xmp, exif, index)."""

    name: str

    def write(self, record: CaptionRecord) -> WriteOutcome:
        """Write one caption. Must not raise for a per-photo failure: return status 'failed'."""
        ...

    def close(self) -> None:
        """Flush and release resources (commit, close files). Called once at the end of a run."""
        ...


WriterFactory = Callable[[WriteOptions], Writer]
_REGISTRY: dict[str, WriterFactory] = {}


def register_writer(name: str, factory: WriterFactory) -> None:
    """Make a writer available to ``--write NAME``."""
    _REGISTRY[name] = factory


def available_writers() -> list[str]:
    _load_builtin_writers()
    return sorted(_REGISTRY)


def parse_writer_names(spec: str | Iterable[str]) -> list[str]:
    """``"xmp,index"`` -> ``["xmp", "index"]``; unknown names raise :class:`PhotocapError`."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    known = available_writers()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PhotocapError(
            f"unknown writer {', '.join(unknown)!s}; choose from {', '.join(known)}"
        )
    return list(dict.fromkeys(names))  # de-duplicated, order kept


def get_writers(names: Sequence[str], options: WriteOptions) -> list[Writer]:
    """Build the named writers (file writers; the index writer is made by the pipeline)."""
    _load_builtin_writers()
    return [_REGISTRY[n](options) for n in names]


def _load_builtin_writers() -> None:
    # Imported lazily so that `photocap --help` stays instant and optional deps stay optional.
    import importlib

    for module in ("photocap.xmp", "photocap.exif"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # module not written yet / optional dep missing
            if err.name != module:
                raise
