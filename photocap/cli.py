"""photocap's command line: a thin Typer layer over the library.

Each command parses its flags, makes one library call, and renders the result with rich.
Library errors (:class:`photocap.errors.PhotocapError`) become one clear line on stderr and
exit code 2 (usage/setup) here, at the edge, never deeper. torch is imported lazily inside the
commands so that ``photocap --help`` stays instant.

Exit codes: 0 every photo succeeded; 1 at least one photo failed; 2 usage or setup error;
130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from photocap.decoding import DEFAULT_BEAM_SIZE
from photocap.errors import PhotocapError

if TYPE_CHECKING:
    from photocap.metadata.revert import RevertOutcome

app = typer.Typer(
    name="photocap",
    help="Caption a photo library with a CNN+LSTM model; write captions to XMP, EXIF and a "
    "searchable SQLite index.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

F = TypeVar("F", bound=Callable[..., Any])

_LOG_EVERY_S = 60.0  # train without a terminal: seconds between progress lines
MODEL_HELP = (
    "Model file, or a shipped model by name: default (best captions) or fast (one distilled "
    "decoder: 1.39x faster end to end on 12-MP photos on a CPU, 1.6-1.9x on small ones) "
    "[default: $PHOTOCAP_MODEL, else the default model]."
)
DB_HELP = "Caption index (SQLite). Default: $PHOTOCAP_DB, else the per-user data folder."
EXIT_CODES = (
    "Exit status: 0 every photo succeeded, 1 at least one photo failed, "
    "2 usage or setup error, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM."
)
BEAM_HELP = "Beam width of the caption search (1 = greedy)."
DEVICE_HELP = "auto, cpu or cuda."
DEFAULT_SERVE_PORT = 8750  # photocap.gallery.DEFAULT_PORT (not imported: --help stays instant)


def cli_errors(func: F) -> F:
    """Turn library errors into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PhotocapError as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# -- train / evaluate ----------------------------------------------------------------------------


@app.command()
@cli_errors
def train(
    data: Path = typer.Option(..., "--data", help="Flickr8k folder (Kaggle or original layout)."),
    out: Path = typer.Option(
        Path("models/photocap-flickr8k.safetensors"), "--out", help="Model file to write."
    ),
    epochs: int = typer.Option(20, "--epochs", help="Stage 1: decoder on cached features."),
    fine_tune_encoder: bool = typer.Option(
        False, "--fine-tune-encoder", help="Stage 2: also train the CNN (--fine-tune-epochs)."
    ),
    fine_tune_epochs: int = typer.Option(5, "--fine-tune-epochs", help="Epochs of stage 2."),
    scst_epochs: int = typer.Option(
        0, "--scst-epochs", help="Stage 3: self-critical training with a CIDEr-D reward."
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Caption pairs per step."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of --out."),
    seed: int = typer.Option(42, "--seed", help="Seed of every random choice (runs repeat)."),
    encoder: str = typer.Option(
        "efficientnet_lite2", "--encoder", help="efficientnet_lite0/1/2, or tiny (tests)."
    ),
    min_count: int = typer.Option(5, "--min-count", help="Vocabulary: minimum word count."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N train photos."),
    workers: int = typer.Option(-1, "--workers", help="Decoding processes (-1: all cores)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Encoder feature cache."),
    hidden_dim: int = typer.Option(512, "--hidden-dim", help="LSTM/embedding/attention size."),
    scst_lr: float = typer.Option(5e-5, "--scst-lr", help="Learning rate of stage 3."),
    scst_batch: int = typer.Option(50, "--scst-batch", min=1, help="Photos per stage-3 step."),
    scst_samples: int = typer.Option(
        5, "--scst-samples", min=2, help="Sampled captions per photo in stage 3."
    ),
    scst_encoder_blocks: int = typer.Option(
        0,
        "--scst-encoder-blocks",
        min=0,
        help="Stage 3 also trains the encoder's last N blocks and head (0: encoder frozen).",
    ),
    bleu_weight: float = typer.Option(
        0.0,
        "--bleu-weight",
        min=0.0,
        help="Weight W of BLEU-4: stage 3 rewards CIDEr-D + W x BLEU-4, and the best epoch is "
        "picked by dev CIDEr-D + W x BLEU-4.",
    ),
    encoder_lr: float = typer.Option(
        5e-5,
        "--encoder-lr",
        help="Encoder learning rate (stage 2; stage 3 with --scst-encoder-blocks).",
    ),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Start from this model file (e.g. --epochs 0 --scst-epochs 10; an ensemble's file "
        "trains all its decoders as one policy).",
    ),
    reset_decoder: bool = typer.Option(
        False,
        "--reset-decoder",
        help="With --init: keep its encoder, train a new decoder (an ensemble's file works too).",
    ),
    scale_jitter: float = typer.Option(
        0.0, "--scale-jitter", help="Stage 2 augmentation: random crops keeping 1-J..1 per side."
    ),
    lr: float = typer.Option(4e-4, "--lr", min=0.0, help="Learning rate of stage 1."),
    teacher: Path | None = typer.Option(
        None,
        "--teacher",
        help="Distil this model (a file, or default): its beam captions of the train photos "
        "are stage-1/2 targets beside the human ones (cached).",
    ),
    teacher_beam: int = typer.Option(
        3, "--teacher-beam", min=1, max=20, help="Beam size of the --teacher's captions."
    ),
    teacher_only: bool = typer.Option(
        False, "--teacher-only", help="The --teacher's captions are the only stage-1/2 targets."
    ),
) -> None:
    """Train the captioner on Flickr8k; the best epoch on dev is written to --out."""
    from rich.console import Console

    from photocap.training.config import TrainConfig
    from photocap.training.run import iter_train
    from photocap.training.stages import STAGE_UNITS

    config = TrainConfig(
        data=data,
        out=out,
        encoder=encoder,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs if fine_tune_encoder else 0,
        scst_epochs=scst_epochs,
        batch_size=batch_size,
        device=device,
        resume=resume,
        seed=seed,
        min_count=min_count,
        limit=limit,
        workers=workers,
        cache_dir=cache_dir,
        embed_dim=hidden_dim,
        hidden_dim=hidden_dim,
        attention_dim=hidden_dim,
        init=init,
        scst_lr=scst_lr,
        scst_batch=scst_batch,
        scst_samples=scst_samples,
        scst_encoder_blocks=scst_encoder_blocks,
        encoder_lr=encoder_lr,
        bleu_weight=bleu_weight,
        reset_decoder=reset_decoder,
        scale_jitter=scale_jitter,
        lr=lr,
        teacher=teacher,
        teacher_beam=teacher_beam,
        teacher_only=teacher_only,
    )
    console = Console(stderr=True)
    last_line = time.monotonic()
    with console.status("starting") as status:
        for event in iter_train(config):
            if event.kind == "step":
                line = (
                    f"{event.stage} epoch {event.epoch}/{event.epochs} "
                    f"step {event.step}/{event.steps} loss {event.loss:.3f} "
                    f"{event.images_per_s:.0f} {STAGE_UNITS[event.stage]}/s, "
                    f"epoch ETA {event.eta_s:.0f}s"
                )
                status.update(line)
                # A log file (no terminal) never sees the status line: a line a minute instead.
                if not console.is_terminal and time.monotonic() - last_line >= _LOG_EVERY_S:
                    console.print(line)
                    last_line = time.monotonic()
            elif event.kind == "epoch":
                dev = event.dev
                console.print(
                    f"{event.stage} epoch {event.epoch}/{event.epochs}: loss {event.loss:.3f}, "
                    f"{event.images_per_s:.0f} {STAGE_UNITS[event.stage]}/s, "
                    f"dev CIDEr-D {dev['cider']:.3f} BLEU-4 {dev['bleu4']:.3f}"
                    + ("  (best)" if event.best else "")
                )
            elif event.kind == "done":
                console.print(f"[bold]{event.message}[/]")
            else:
                console.print(event.message)


@app.command()
@cli_errors
def evaluate(
    data: Path = typer.Option(..., "--data", help="Flickr8k folder (Kaggle or original layout)."),
    split: str = typer.Option("dev", "--split", help="dev or test."),
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP, show_default=False),
    beam_size: int = typer.Option(DEFAULT_BEAM_SIZE, "--beam-size", min=1, max=20, help=BEAM_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Photos per model batch."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N photos."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Score a model with BLEU-1..4, METEOR, ROUGE-L and CIDEr (pycocoevalcap)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from photocap.training.evaluation import METRICS, evaluate_model

    console = Console(stderr=True)
    with console.status("captioning") as status:
        report = evaluate_model(
            data,
            split,
            model,
            beam_size,
            device,
            batch_size,
            limit,
            progress=lambda done, total: status.update(f"captioning {done}/{total}"),
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    photos = _count(report.photos, "photo")
    title = f"{report.split}: {photos}, beam {report.beam_size}"
    if report.runtime:  # the decoders in int8 on a CPU: say so beside the scores
        title += f" (encoder: {report.runtime['encoder']}, decoders: {report.runtime['decoders']})"
    table = Table(title=_esc(title))
    for name in METRICS:
        table.add_column(name, justify="right")
    scores = report.scores
    table.add_row(*("-" if scores[m] is None else f"{scores[m]:.3f}" for m in METRICS))
    out = Console()
    out.print(table)
    for example in report.examples:
        out.print(f"[bold]{example['image']}[/]: {example['caption']}")
        for ref in example["references"]:
            out.print(f"    [dim]{ref}[/]")
    for note in report.notes:
        out.print(f"[yellow]note:[/] {note}")


@app.command()
@cli_errors
def ensemble(
    models: list[Path] = typer.Argument(
        ...,
        metavar="MODEL",
        help="Model files sharing an encoder's trunk (2 or more; or one "
        "with one --decoders position).",
    ),
    out: Path = typer.Option(..., "--out", help="Model file to write."),
    name: str | None = typer.Option(None, "--name", help="Model name stored in the file."),
    decoders: str | None = typer.Option(
        None,
        "--decoders",
        help="Keep only these decoders: positions (from 0) in the list of every MODEL's "
        "decoders in turn, e.g. 0,1,2. Default: all. One MODEL and one position: that "
        "decoder as a model of its own.",
    ),
) -> None:
    """Join the decoders of several models into one model that averages their word
    probabilities. Models trained on one encoder (train --init BASE --reset-decoder) share it;
    encoders that differ in their last blocks (--scst-encoder-blocks) become branches of one
    encoder, the shared trunk computed once. One model and one --decoders position: that
    decoder alone, with its own branch's encoder (the start of a fast model)."""
    from photocap.checkpoint import read_metadata
    from photocap.training.ensembles import extract_decoder, merge_decoders

    try:
        keep = [int(k) for k in decoders.split(",")] if decoders else None
    except ValueError:
        raise typer.BadParameter(
            f"not a list of positions: {decoders}", param_hint="--decoders"
        ) from None
    info = {"name": name} if name else None
    if keep is not None and len(keep) == 1 and len(models) == 1:
        # One decoder of one model: a model of its own (its branch's encoder, no ensemble).
        path = extract_decoder(models[0], keep[0], out, info)
    else:
        path = merge_decoders(models, out, info, keep)
    config = json.loads(read_metadata(path)["config"])  # the header only, not the weights
    branches = config["encoder"].get("branches", 1)
    decoders = _count(config.get("decoders", 1), "decoder")  # absent: one (format 1)
    typer.echo(
        f"wrote {path} ({decoders}, {_count(branches, 'encoder branch', 'encoder branches')}, "
        f"{path.stat().st_size / 1e6:.1f} MB)"
    )


# ----------------------------------------------------------------------------- caption & search
# Only the standard library, typer and photocap's light modules are imported at the top of this
# file; torch, Pillow, sqlite-utils and rich are imported inside the commands that need them.


class SidecarName(str, Enum):
    full = "full"
    stem = "stem"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # soft_wrap: never break long paths across lines when piped; highlight off: no random colours.
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def _emit_json(obj: dict[str, Any]) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a path with bytes that are not UTF-8: escape as \udcXX
        text = json.dumps(obj)
    typer.echo(text)


@app.command(epilog=EXIT_CODES)
@cli_errors
def caption(
    paths: list[Path] = typer.Argument(..., help="Photos and/or folders (searched recursively)."),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    write: str = typer.Option(
        "xmp,index", "--write", help="Outputs, comma-separated: xmp, exif, index."
    ),
    force: bool = typer.Option(False, "--force", help="Re-caption photos already captioned."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Caption and show, but write nothing."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Caption at most N photos (skipped ones don't count)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Photos per model batch."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Decode processes [default: the usable cores; 0 = none]."
    ),
    beam_size: int = typer.Option(
        DEFAULT_BEAM_SIZE,
        "--beam-size",
        min=1,
        max=20,
        help=BEAM_HELP,
    ),
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP, show_default=False),
    json_out: bool = typer.Option(
        False, "--json", help="One JSON object per photo, then a summary object."
    ),
    sidecar_name: SidecarName = typer.Option(
        SidecarName.full, "--sidecar-name", help="XMP sidecar: photo.jpg.xmp (full) or photo.xmp."
    ),
    overwrite_human: bool = typer.Option(
        False, "--overwrite-human", help="Replace captions written by a person."
    ),
    touch: bool = typer.Option(
        False, "--touch", help="Update the photo's mtime on in-file (EXIF) writes."
    ),
    fast_heic: bool = typer.Option(
        False,
        "--fast-heic",
        help="HEIC: caption the embedded thumbnail (~36x faster decode; some captions differ).",
    ),
    engine: Engine = typer.Option(
        Engine.local, "--engine", help="Run here (local) or on a Ray cluster (ray: photocap[ray])."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        envvar="RAY_ADDRESS",
        show_default=False,
        help="Ray cluster to use with --engine ray [default: start one on this machine].",
    ),
) -> None:
    """Caption photos and write the captions to XMP sidecars, EXIF and the search index.

    Re-runs are incremental: unchanged photos already captioned by the same model are skipped,
    moved or renamed photos keep their caption. Ctrl-C or SIGTERM stops after the current
    batch; the next run resumes.
    """
    import signal
    import threading

    from photocap.checkpoint import LazyCaptioner
    from photocap.index import PhotoIndex
    from photocap.paths import resolve_db_path
    from photocap.pipeline import CaptionOptions, caption_library
    from photocap.writers import WriteOptions, parse_writer_names

    writers = parse_writer_names(write)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise typer.BadParameter(f"{device!r}: use auto, cpu or cuda", param_hint="--device")
    options = CaptionOptions(
        writers=writers,
        write_options=WriteOptions(
            sidecar_name=sidecar_name.value, overwrite_human=overwrite_human, touch=touch,
            dry_run=dry_run,
        ),
        force=force, limit=limit, batch_size=batch_size, workers=workers, beam_size=beam_size,
        heif_thumbnails=fast_heic, engine=engine.value, ray_address=ray_address,
    )  # fmt: skip
    missing = [p for p in paths if _is_missing(p)]
    if len(missing) == len(paths):
        # Nothing to walk: a typo, most likely, and no index row for it. (One missing path
        # among others, an unmounted drive say, is that path's failure and the run goes on.)
        names = ", ".join(os.fspath(p) for p in missing)
        raise typer.BadParameter(f"no such file or folder: {names}", param_hint="PATHS")
    db_path = resolve_db_path(db)

    # Ctrl-C (SIGINT) and SIGTERM (what systemd, Docker and NAS schedulers send) stop the run
    # the same way: after the current batch, committed, with the summary; the second one stops
    # at once (the current batch dropped, the index still consistent). The exit status says
    # which signal stopped the run: 128 + its number (130, 143), as a shell reports it.
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stopped_by.append(signum)
        stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        typer.echo(f"Stopping after the current batch ({again} again to stop now)...", err=True)

    def interrupted_status() -> int:
        return 128 + (stopped_by[0] if stopped_by else int(signal.SIGINT))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Header and hash only: the model is built once a photo needs it (none on an unchanged
        # library), so --device and the weights are checked then.
        captioner = LazyCaptioner(model, device=device)
        # A dry run never creates an index: it reads the existing one, if any.
        index = PhotoIndex(":memory:" if dry_run and not db_path.exists() else db_path)
        with index:
            events = caption_library(paths, captioner, index, options, stop=stop)
            summary = _render_caption_events(events, json_out, dry_run)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(interrupted_status()) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if summary.interrupted:
        raise typer.Exit(interrupted_status())
    raise typer.Exit(0 if summary.ok else 1)


def _is_missing(path: Path) -> bool:
    """Nothing at ``path`` (a broken link is something; a folder we may not enter is not
    nothing: the run says why it cannot be walked)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _render_caption_events(events: Any, json_out: bool, dry_run: bool = False) -> Any:
    """Print a caption run's events: JSON lines, or lines + a progress bar on a terminal."""
    from photocap.image import describe_path
    from photocap.pipeline import PhotoResult, Progress, RunSummary
    from photocap.writers import OutcomeCode

    out, err = _console(), _console(stderr=True)
    show_bar = not json_out and err.is_terminal
    bar = task = None
    if show_bar:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )  # fmt: skip
        from rich.progress import (
            Progress as Bar,
        )

        bar = Bar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} photos/s"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=err, transient=True,
        )  # fmt: skip
        bar.start()
        task = bar.add_task("Scanning", total=None, rate=0.0)
    started = time.monotonic()
    summary = None
    notes: Counter[tuple[str, Any, str]] = Counter()  # (writer, code, message): photos
    unwritable = unwritable_indexed = 0  # photos whose folder could not take a sidecar/EXIF
    try:
        for event in events:
            if isinstance(event, PhotoResult):
                if any(o.code is OutcomeCode.FOLDER_NOT_WRITABLE for o in event.outputs):
                    unwritable += 1
                    unwritable_indexed += any(
                        o.writer == "index" and o.status in ("written", "unchanged")
                        for o in event.outputs
                    )
                if json_out:
                    photo = event.to_dict()
                    if dry_run:  # what each writer would do: nothing was written
                        photo["outputs"] = {
                            writer: "would write" if status == "written" else status
                            for writer, status in photo["outputs"].items()
                        }
                    _emit_json(photo)
                elif event.status == "failed":
                    where = _esc(describe_path(event.path))
                    err.print(f"[red]failed[/red]  {where}: {_esc(event.error or '')}")
                elif event.status in ("captioned", "carried"):
                    note = f" [dim]({_esc(event.reason)})[/dim]" if event.reason else ""
                    where = _esc(describe_path(event.path))
                    out.print(f"{where}: {_esc(event.caption or '')}{note}")
                # A writer that kept a person's caption, could not write in-file or has a
                # word about where it wrote says so: in the summary, counted, and for a kept
                # caption also here, per photo (the others are the same for thousands of
                # photos: the count says it).
                for outcome in event.outputs:
                    if outcome.message and outcome.status != "failed":
                        notes[(outcome.writer, outcome.code, outcome.message)] += 1
                        if not json_out and outcome.status == "kept_human":
                            where = _esc(describe_path(event.path))
                            err.print(
                                f"[dim]{outcome.writer}[/dim] {where}: {_esc(outcome.message)}"
                            )
            elif isinstance(event, Progress) and bar is not None and task is not None:
                if event.phase == "scan":
                    bar.update(task, description=f"Scanning ({event.done} found)")
                else:
                    rate = event.done / max(time.monotonic() - started, 1e-6)
                    bar.update(task, description="Captioning", total=event.total,
                               completed=event.done, rate=rate)  # fmt: skip
            elif isinstance(event, RunSummary):
                summary = event
    finally:
        if bar is not None:
            bar.stop()
    assert summary is not None  # caption_library always ends with a RunSummary
    if json_out:
        _emit_json(summary.to_dict())
    else:
        what = "Would caption" if summary.dry_run else "Captioned"
        # The rate is the model's: photos captioned a second (a run that only carried or
        # skipped photos has none to show; "0.0 photos/s" read as a stall).
        speed = f" ({summary.photos_per_s:.1f} photos/s)" if summary.captioned else ""
        line = (
            f"{what} {summary.captioned}, kept {summary.carried} (caption known), "
            f"skipped {summary.skipped} unchanged, failed {summary.failed} "
            f"in {summary.elapsed_s:.1f} s{speed}."
        )
        if summary.nodes:
            line += f" Ray: {_count(summary.nodes, 'node')}."
        if summary.interrupted:
            line += " Interrupted: run again to continue."
        err.print(line)
        # Slower than it could be: say why (once when both parts fell back for one reason).
        fallbacks: dict[str, list[str]] = {}
        for part, name in (("encoder", summary.encoder), ("decoders", summary.decoders)):
            if name.startswith("torch (openvino:"):
                fallbacks.setdefault(name[7:-1], []).append(part)
        for reason, parts in fallbacks.items():
            err.print(f"  The {' and '.join(parts)} ran on torch: {_esc(reason)}.")
        for (writer, _code, message), count in sorted(notes.items(), key=lambda n: n[0][::2]):
            err.print(f"  {count} × {_esc(f'{writer}: {message}')}")
        if unwritable:
            one = unwritable == 1
            where = (("its caption is" if one else "their captions are") + " in the index. "
                     if unwritable == unwritable_indexed else "")  # fmt: skip
            err.print(
                f"  {_count(unwritable, 'photo')} {'is in a folder' if one else 'are in folders'}"
                " photocap cannot write (read-only media, a share, permissions); "
                f"{where}To caption into the index only: --write index"
            )
    return summary


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """ "1 photo", "2 photos": a count and its noun, singular for one."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command()
@cli_errors
def search(
    words: list[str] = typer.Argument(
        ...,
        metavar="WORDS",
        help='Words to find in captions (stemmed): a sentence, "a phrase", a OR b, -word.',
    ),
    under: list[Path] | None = typer.Option(
        None, "--in", help="Only photos in this folder (repeat for several).", show_default=False
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only photos taken on or after: YYYY, YYYY-MM or YYYY-MM-DD."
    ),
    until: str | None = typer.Option(
        None, "--until", help="Only photos taken on or before: YYYY, YYYY-MM or YYYY-MM-DD."
    ),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    limit: int = typer.Option(20, "--limit", min=1, help="Show at most N photos."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per photo."),
    exact: bool = typer.Option(
        False, "--exact", help="Only the words typed, not their near words (kid: boy, child)."
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="The model whose near words to use: a file, default or fast [default: the default "
        "model].",
        show_default=False,
    ),
) -> None:
    """Search captions: best matches first, matching words highlighted.

    A caption a person wrote (in a sidecar or in the photo, found while captioning) is
    searched too and shown under photocap's, after ✎.
    Quotes are optional: `photocap search a dog on a beach`. Photos with every word come
    first, then those with some of them (marked ~). `"red car"` is a phrase, `dog OR cat`
    either, `'children -water'` (or `NOT water`; quoted, or after `--`, since a shell word
    starting with - reads as an option) leaves photos out. After the words typed come
    photos found through near words the model knows (kid: boy, child; lady: woman), marked ~.
    The dates are the EXIF date taken; photos without one are left out when `--since` or
    `--until` is given.
    """
    from photocap.index import PhotoIndex, make_search_filter
    from photocap.paths import resolve_db_path
    from photocap.query import parse_query

    query = " ".join(words)
    if parse_query(query).is_empty:  # "", '"', "*", "-dog": it would match nothing, say why
        typer.echo(
            f"Error: nothing to search for in {query!r} (WORDS are words of a caption; "
            "-word and NOT word only leave photos out)",
            err=True,
        )
        raise typer.Exit(2)
    only = make_search_filter(under or [], since=since, until=until)
    near = None if exact else _near_words(model)
    suggestions: dict[str, str] = {}
    with PhotoIndex(resolve_db_path(db), create=False) as index:
        encoder = _meaning(model)
        hits = index.search(
            query, limit=limit, only=only, near=near,
            meaning=encoder.encode if encoder else None,
            meaning_model=encoder.model_id if encoder else None,
        )  # fmt: skip
        if not hits:
            suggestions = index.suggest(query)
    if json_out:
        for hit in hits:
            _emit_json({
                "path": hit.path, "caption": hit.caption, "rank": round(hit.rank, 4),
                "matched": hit.matched, "matched_in": hit.matched_in,
                "date_taken": hit.date_taken, "camera": hit.camera,
                "human_caption": hit.human_caption, "complete": hit.complete,
            })  # fmt: skip
        return
    from rich.text import Text

    from photocap.image import describe_path

    out = _console()
    for hit in hits:
        line = Text(describe_path(hit.path), style="cyan")
        line.append("  " if hit.complete else " ~ ", style="dim")
        for text, matched in hit.segments:
            line.append(text, style="bold yellow" if matched else "")
        if hit.human_caption:  # the person's own caption, on the next line
            line.append("\n  ✎ ", style="dim")
            for text, matched in hit.human_segments:
                line.append(text, style="bold yellow" if matched else "italic")
        out.print(line)
    if not hits:
        if suggestions:
            wrong = ", ".join(suggestions)
            meant = ", ".join(suggestions.values())
            typer.echo(f"No photos match {wrong}; did you mean {meant}?", err=True)
        else:
            typer.echo("No photos match.", err=True)


@app.command()
@cli_errors
def serve(
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    port: int = typer.Option(
        DEFAULT_SERVE_PORT, "--port", min=0, max=65535, help="Port to serve on (0: a free one)."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on. Any other than this machine's own needs --token.",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="PHOTOCAP_SERVE_TOKEN",
        help="Access token visitors give once (http://HOST:PORT/?token=...); needed with --host.",
        show_default=False,
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="The model whose near words search uses: a file, default or fast [default: the "
        "default model].",
        show_default=False,
    ),
) -> None:
    """A local web page over the index: search, review, and correct captions.

    Search works as `photocap search` does; Review lists failures, then captions from the
    model's least confident up. A caption corrected in the page is saved as a person's caption
    (in the sidecar, and in the photo when photocap wrote its caption there), which photocap
    never overwrites. Serves this machine only unless --host and --token are given. Ctrl-C
    stops it.
    """
    from photocap.gallery import GalleryConfig, gallery_url, make_server
    from photocap.paths import resolve_db_path

    config = GalleryConfig(
        db=resolve_db_path(db), host=host, port=port, access_token=token,
        near=_near_words(model), meaning=_meaning(model),
    )  # fmt: skip
    server = make_server(config)
    # One line a request is noise on a terminal; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    hint = "  (visitors add ?token=YOUR_TOKEN once)" if token else ""
    typer.echo(f"photocap gallery: {gallery_url(config)}{hint}  (Ctrl-C to stop)", err=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.serve_forever()  # returns on Ctrl-C or SIGTERM (Werkzeug ends it quietly)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    typer.echo("Stopped.", err=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _meaning(model: Path | None) -> Any:
    """The query encoder of the model's text-image embedding (:mod:`photocap.embedding`); None
    (the order of the words alone) when the model has no embedding beside it."""
    from photocap.checkpoint import resolve_model_path
    from photocap.embedding import QueryEncoder
    from photocap.errors import ModelError

    try:
        encoder = QueryEncoder.from_model(resolve_model_path(model))
        if encoder is None and model is not None:
            # A model without an embedding (the fast one): the default model's still ranks
            # the photos that have its vectors (the index keeps each vector's model).
            encoder = QueryEncoder.from_model(resolve_model_path(None))
    except (ModelError, OSError):
        return None
    return encoder


def _near_words(model: Path | None) -> Callable[[str], list[str]] | None:
    """A word's near words from the model file's own vectors (:mod:`photocap.lexicon`); None
    (the words typed only) when the model file cannot be read: search works without it."""
    from photocap.checkpoint import resolve_model_path
    from photocap.errors import ModelError
    from photocap.lexicon import NearWords

    try:
        return NearWords.from_model(resolve_model_path(model)).of
    except (ModelError, OSError, KeyError, ValueError):
        if model is not None:
            raise ModelError(f"cannot read near words from {model}") from None
        return None


@app.command()
@cli_errors
def status(
    paths: list[Path] | None = typer.Argument(
        None, help="Also list photos here that are new or changed since captioned."
    ),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    limit: int = typer.Option(50, "--limit", min=1, help="List at most N failed/pending photos."),
    json_out: bool = typer.Option(
        False, "--json", help="JSON lines: failed/pending photos, then counts."
    ),
) -> None:
    """Show what is captioned, what failed (with the reason) and what is still to do."""
    from photocap.image import describe_path
    from photocap.index import PhotoIndex
    from photocap.paths import resolve_db_path
    from photocap.pipeline import plan_status

    with PhotoIndex(resolve_db_path(db), create=False) as index:
        stats = index.stats(failures_limit=limit)
        pending = [(os.fspath(p), state) for p, state in plan_status(paths or [], index)]
    counts = {
        "index": stats.path, "photos": stats.photos, "captioned": stats.captioned,
        "captioned_not_written": stats.captioned_not_written,
        "failed": stats.failed, "pending": len(pending), "models": stats.models,
    }  # fmt: skip
    if json_out:
        for failure in stats.failures:
            _emit_json({"path": failure.path, "state": "failed", "stage": failure.stage,
                        "error": failure.error})  # fmt: skip
        for path, state in pending[:limit]:
            _emit_json({"path": path, "state": state})
        _emit_json({"event": "summary", **counts})
        return
    out = _console()
    out.print(f"Index: {_esc(stats.path)}")
    kept = stats.captioned_not_written  # a run counts these as failed, not captioned
    out.print(f"Photos: {stats.photos}  captioned: {stats.captioned}"
              + (f" ({kept} of them not written: failed)" if kept else "")
              + f"  failed: {stats.failed}"
              + (f"  not captioned yet: {len(pending)}" if paths else ""))  # fmt: skip
    for model_id, count in stats.models.items():
        out.print(f"  {count} by {_esc(model_id)}")
    if stats.failures:
        out.print("Failed:")
        for failure in stats.failures:
            where = _esc(describe_path(failure.path))
            out.print(f"  {where}{_failure_stage(failure.stage)}: {_esc(failure.error)}")
        if stats.failed > len(stats.failures):
            out.print(f"  ... and {stats.failed - len(stats.failures)} more (--limit)")
    if pending:
        out.print("Not captioned yet:")
        for path, state in pending[:limit]:
            out.print(f"  {_esc(describe_path(path))} ({_esc(state)})")
        if len(pending) > limit:
            out.print(f"  ... and {len(pending) - limit} more (--limit)")


@app.command()
@cli_errors
def info(
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP, show_default=False),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    json_out: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Show the model (name, training data, scores, size) and index statistics."""
    from photocap.checkpoint import model_info
    from photocap.errors import ModelError
    from photocap.index import PhotoIndex
    from photocap.paths import resolve_db_path

    result: dict[str, Any] = {}
    try:
        result["model"] = model_info(model)  # the file's header: no model built, no torch
    except ModelError as err:
        result["model"] = {"error": str(err)}
    db_path = resolve_db_path(db)
    if db_path.exists():
        with PhotoIndex(db_path, create=False) as index:
            stats = index.stats(failures_limit=0)
            result["index"] = {
                "path": stats.path, "photos": stats.photos, "captioned": stats.captioned,
                "failed": stats.failed, "models": stats.models,
                "last_captioned_at": stats.last_captioned_at, "file_size": stats.file_size,
                "migrations": index.applied_migrations(),
            }  # fmt: skip
    else:
        result["index"] = {"path": os.fspath(db_path), "error": "no index yet"}
    if json_out:
        _emit_json(result)
        return
    from rich.table import Table

    out = _console()
    for section, values in result.items():
        table = Table(title=section.capitalize(), title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in values.items():
            if key == "ensemble_of" and isinstance(value, list):  # --json has every detail
                value = "\n".join(_member_summary(m) for m in value)
            elif key == "migrations" and isinstance(value, list) and value:
                value = f"{len(value)} (last: {value[-1]})"
            elif key == "file_size" and isinstance(value, int):  # --json: bytes
                value = f"{value / 1e6:.1f} MB ({value:,} bytes)"
            table.add_row(key.replace("_", " "), _esc(_info_cell(value)))
        out.print(table)


def _info_cell(value: Any) -> str:
    """A value of `photocap info` for its table: a dict one "key: value" line per key (a
    nested one on that line), numbers grouped or rounded."""
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_info_inline(v)}" for k, v in value.items())
    return _info_inline(value)


def _info_inline(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_info_inline(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_info_inline(v) for v in value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _failure_stage(stage: str | None) -> str:
    """How `photocap status` names where a photo failed: " (decode)", " (model)", " (not
    walked)"; an output's failure names the output in its reason ("xmp: ...") and kept the
    caption. Nothing for a failure recorded before stages were."""
    from photocap.index import NO_CAPTION_STAGES

    if stage is None:
        return ""
    if stage not in NO_CAPTION_STAGES:
        return " (caption kept)"
    return " (not walked)" if stage == "discover" else f" ({stage})"


def _member_summary(member: Any) -> str:
    """One ensemble member for `photocap info`: its file, id and greedy dev CIDEr-D."""
    if not isinstance(member, dict):
        return str(member)
    dev = member.get("dev_greedy") or {}
    score = f", dev greedy CIDEr-D {dev['cider']:.3f}" if "cider" in dev else ""
    return f"{member.get('file', '?')} ({member.get('model_id', '?')}{score})"


@app.command()
@cli_errors
def prune(
    paths: list[Path] | None = typer.Argument(None, help="Only prune below these folders."),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per removed row."),
    missing_folders: bool = typer.Option(
        False,
        "--missing-folders",
        help="Also remove rows whose whole folder is gone (kept by default: an unmounted drive).",
    ),
) -> None:
    """Remove index rows of photos that no longer exist on disk."""
    from photocap.image import describe_path
    from photocap.index import PhotoIndex
    from photocap.paths import resolve_db_path

    with PhotoIndex(resolve_db_path(db), create=False) as index:
        pruned = index.prune(paths or None, dry_run=dry_run, missing_folders=missing_folders)
    gone = pruned.removed
    for path in gone:
        if json_out:
            _emit_json({"path": path, "removed": not dry_run})
        else:
            typer.echo(describe_path(path))
    if not json_out:
        verb = "Would remove" if dry_run else "Removed"
        missing = "a missing photo" if len(gone) == 1 else "missing photos"
        typer.echo(f"{verb} {_count(len(gone), 'row')} of {missing}.", err=True)
        if pruned.folder_missing:
            folders = len({os.path.dirname(p) for p in pruned.folder_missing})
            typer.echo(
                f"Kept {_count(len(pruned.folder_missing), 'row')} whose folder is missing too "
                f"({_count(folders, 'folder')}: a drive not mounted?); --missing-folders "
                "removes them.",
                err=True,
            )


@app.command()
@cli_errors
def revert(
    paths: list[Path] = typer.Argument(..., help="Photos, sidecars or folders (recursed)."),
    write: str = typer.Option(
        "xmp,exif", "--write", help="What to revert: xmp (sidecar captions), exif (in-file)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would change."),
    touch: bool = typer.Option(False, "--touch", help="Update photo mtimes on EXIF reverts."),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
) -> None:
    """Remove what photocap wrote and restore the earlier values it recorded.

    Only files with photocap provenance are touched, and only values still photocap's own. A
    photo photocap wrote into and nobody changed since gets its exact bytes back. The index's
    rows of the reverted photos lose their caption, so search no longer finds it.
    Exit code 0 when everything reverted, 1 when any file failed.
    """
    from photocap.index import PhotoIndex
    from photocap.metadata.revert import revert_paths
    from photocap.paths import resolve_db_path

    if all(_is_missing(p) for p in paths):  # a typo: as `caption` says it
        missing = ", ".join(os.fspath(p) for p in paths)
        raise typer.BadParameter(f"no such file or folder: {missing}", param_hint="PATHS")
    names = [n.strip() for n in write.split(",") if n.strip()]
    unknown = sorted(set(names) - {"xmp", "exif"})
    if unknown or not names:
        raise PhotocapError(f"--write: unknown {', '.join(unknown) or 'empty'}; use xmp,exif")
    counts = {"reverted": 0, "deleted": 0, "unchanged": 0, "failed": 0}
    db_path = resolve_db_path(db)
    # No index yet (never captioned with one) is nothing to clear; a named one must open.
    index = PhotoIndex(db_path, create=False) if db is not None or db_path.exists() else None
    with contextlib.nullcontext() if index is None else index:
        _revert_report(revert_paths(paths, names, touch=touch, dry_run=dry_run, index=index),
                       counts, dry_run)  # fmt: skip
    prefix = "Dry run: would have " if dry_run else ""
    typer.echo(
        f"{prefix}reverted {_count(counts['reverted'], 'sidecar')}, deleted {counts['deleted']}, "
        f"{counts['unchanged']} unchanged, {counts['failed']} failed.",
        err=True,
    )
    if counts["failed"]:
        raise typer.Exit(1)


def _revert_report(
    outcomes: Iterable[RevertOutcome], counts: dict[str, int], dry_run: bool = False
) -> None:
    """One line for each failed (or partly left) sidecar, counted into ``counts``; a dry run
    also lists on stdout each file it would revert or delete."""
    for outcome in outcomes:
        counts[outcome.status] += 1
        if dry_run and outcome.status in ("reverted", "deleted"):
            verb = "delete" if outcome.status == "deleted" else "revert"
            typer.echo(f"would {verb}: {outcome.path}")
            if outcome.photo is not None:
                typer.echo(f"would restore: {outcome.photo}")
        if outcome.status == "failed":
            typer.echo(f"failed: {outcome.path}: {outcome.message}", err=True)
        elif outcome.message:
            typer.echo(f"{outcome.status}: {outcome.path}: {outcome.message}", err=True)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
