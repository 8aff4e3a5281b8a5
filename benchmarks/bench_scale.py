"""Large libraries: peak memory while captioning N photos, and the speed of an unchanged re-run.

Runs the real CLI (``python -m photocap caption LIB``) twice on a library of ``--count`` photos:

1. the first run captions every photo (``--force``: the library repeats 16 pictures, whose
   copies would otherwise take their caption without the model); the memory of the whole
   process tree (the CLI and its decode workers) is sampled from /proc every 0.1 s: peak sum of
   RSS (shared pages counted once per process: an upper bound) and peak sum of PSS (shared
   pages split: the real total);
2. the re-run finds nothing to caption (stat-only skip: size + mtime match the index) and
   reports photos/s, with and without start-up (model load).

Captioning 10,000 photos with the shipped model takes ~30 min on a 2-core CPU, so by default the
photos are small (640x480) and ``--model tiny`` uses a tiny random model: memory flatness is a
property of the pipeline (bounded queues, per-batch commits), not of the pixels. The re-run never
reads the files, so their size does not matter there. ``--model shipped`` uses the real model.

    python benchmarks/bench_scale.py --count 1000
    python benchmarks/bench_scale.py --count 10000 --model tiny
    python benchmarks/bench_scale.py --count 1000 --model shipped
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import last_json_line, markdown_table, report, run_timed


def make_small_library(folder: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` small JPEGs: a few distinct noisy frames written with a different EXIF each."""
    from make_library import generate

    distinct = min(count, 16)
    generate(folder, distinct, size, noise=3.0, jobs=1)
    frames = sorted(folder.glob("*.jpg"))
    datas = [f.read_bytes() for f in frames]
    for i in range(distinct, count):
        sub = folder / f"{i // 1000:03d}"  # 1,000 photos per folder, like a camera roll
        sub.mkdir(exist_ok=True)
        # Same pixels as a base frame; a unique trailer keeps every file's content hash distinct.
        (sub / f"IMG_{i:05d}.jpg").write_bytes(datas[i % distinct] + f"{i:08d}".encode())


def caption_run(
    library: Path, db: Path, args: argparse.Namespace, model: Path | None, force: bool = False
) -> dict:
    cmd = [sys.executable, "-m", "photocap", "caption", str(library), "--db", str(db),
           "--write", args.write, "--batch-size", str(args.batch_size),
           "--device", args.device]  # fmt: skip
    if force:
        cmd.append("--force")
    if model is not None:
        cmd += ["--model", str(model)]
    run = run_timed([*cmd, "--json"], sample_memory=True)
    if run["rc"] != 0:
        raise SystemExit(f"photocap caption failed ({run['rc']}):\n{run['stderr'][-3000:]}")
    summary = last_json_line(run["stdout"])
    return {"captioned": summary["captioned"], "skipped": summary["skipped"],
            "failed": summary["failed"], "wall_s": run["wall_s"], "run_s": summary["elapsed_s"],
            "peak_rss_mb": run["peak_rss_mb"], "peak_pss_mb": run["peak_pss_mb"],
            "processes": run["peak_processes"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200, help="photos (default 200)")
    parser.add_argument("--size", default="640x480", help="photo size (default 640x480)")
    parser.add_argument("--model", default="tiny", help="tiny (random), shipped, or a file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--write",
        default="index",
        help="outputs (default index; xmp,index: the re-run checks sidecars)",
    )
    parser.add_argument("--reruns", type=int, default=1, help="unchanged re-runs (default 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from make_library import parse_size

    workdir = Path(tempfile.mkdtemp(prefix="photocap-scale-"))
    try:
        library = workdir / "library"
        make_small_library(library, args.count, parse_size(args.size))
        model: Path | None = None
        if args.model == "tiny":
            from photocap.checkpoint import build_random_captioner, save_captioner

            model = save_captioner(build_random_captioner(), workdir / "tiny.safetensors")
        elif args.model != "shipped":
            model = Path(args.model)
        db = workdir / "index.db"
        # The library repeats 16 pictures: without --force, photocap would caption 16 and carry
        # every copy ("same picture as"); --force sends each photo through the model.
        first = caption_run(library, db, args, model, force=True)
        reruns = [caption_run(library, db, args, model) for _ in range(max(1, args.reruns))]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    n = args.count
    rows: list[list[Any]] = [
        [f"caption {n} new photos", first["captioned"], f"{first['wall_s']:.1f}",
         f"{first['captioned'] / max(first['run_s'], 1e-9):.1f}", first["peak_rss_mb"],
         first["peak_pss_mb"], first["processes"]],
    ]  # fmt: skip
    for rerun in reruns:
        rerun["photos_per_s"] = rerun["skipped"] / max(rerun["run_s"], 1e-9)
        rerun["photos_per_s_incl_startup"] = rerun["skipped"] / rerun["wall_s"]
        rows.append(
            [f"re-run, {n} unchanged", rerun["skipped"], f"{rerun['wall_s']:.1f}",
             f"{rerun['photos_per_s']:,.0f} ({rerun['photos_per_s_incl_startup']:,.0f} incl. "
             "start-up)", rerun["peak_rss_mb"], rerun["peak_pss_mb"], rerun["processes"]]
        )  # fmt: skip
    table = markdown_table(rows, ["run", "photos", "wall s", "photos/s", "peak RSS sum MB",
                                  "peak PSS sum MB", "processes"])  # fmt: skip
    data = {"count": n, "size": args.size, "model": args.model, "write": args.write,
            "first": first, "rerun": reruns[0], "reruns": reruns,
            "cores": os.cpu_count()}  # fmt: skip
    title = f"scale: {n} photos ({args.size}, model {args.model}, --write {args.write})"
    report(title, table, data, args.json)


if __name__ == "__main__":
    main()
