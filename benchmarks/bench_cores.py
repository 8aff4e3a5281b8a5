"""The model stage on a CPU, end to end: where issue 23's changes stand, each against before.

Three ways to run the real CLI on the same camera-sized JPEGs (``--format tiff``: film scans),
interleaved in one run (``--ways``: some of them):

* ``before``: the model at half the cores throughout (while decode workers run) and the
  encoder on torch, as photocap did before issue 23;
* ``threads``: torch's threads following the decode queue (every core for a batch when no
  worker is decoding: ``photocap.run.caption.CoreShare``), encoder on torch
  (``PHOTOCAP_RUNTIME=torch``);
* ``openvino``: photocap now: threads following the queue and the model on OpenVINO (the
  encoder where the run is large enough, the decoders' int8 step always).

It reports the marginal rate (two library sizes, the difference: start-up and model load
cancel) and the whole run of the larger size. Beside them, in the same run, each stage alone
on one core (torch encoder): decode (one process: read, draft, resize, hash) and model (encoder
+ beam search, one torch thread, batches of --batch-size). "ideal" is what those costs allow
with every core busy all the time: cores / (decode + model) photos/s; the target is >= 85 %.

    python benchmarks/bench_cores.py --counts 16,48
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, last_json_line, markdown_table, report

# The CLI; PHOTOCAP_CORES=half keeps the model at half the cores throughout (as before).
WAYS = {
    "before": {"PHOTOCAP_CORES": "half", "PHOTOCAP_RUNTIME": "torch"},
    "threads": {"PHOTOCAP_CORES": "follow", "PHOTOCAP_RUNTIME": "torch"},
    "openvino": {"PHOTOCAP_CORES": "follow", "PHOTOCAP_RUNTIME": "openvino"},
}
_DRIVER = """
import os, sys
if os.environ.get("PHOTOCAP_CORES") == "half":
    import photocap.run.caption as rc
    follow = rc.CoreShare.set_for_batch
    rc.CoreShare.set_for_batch = lambda self, decoding: follow(self, decoding=True)
from photocap.cli import app
app(sys.argv[1:], prog_name="photocap")
"""


def run_cli(lib: Path, db: Path, schedule: str, args: argparse.Namespace) -> float:
    """Wall seconds of one captioning run of ``lib`` (fresh index, --force)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, **WAYS[schedule]}
    cmd = [sys.executable, "-c", _DRIVER, "caption", str(lib), "--db", str(db), "--force",
           "--write", "xmp,index", "--json", "--batch-size", str(args.batch_size)]  # fmt: skip
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = last_json_line(proc.stdout)
    if proc.returncode != 0 or summary.get("failed"):
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-500:]}")
    return wall


def stage_costs(files: list[Path], args: argparse.Namespace) -> dict[str, float]:
    """ms/photo of decode (one process) and of the model (one torch thread), each alone: the
    model with the encoder on torch ("model_ms") and on OpenVINO ("model_openvino_ms")."""
    import numpy as np
    import torch

    from photocap.checkpoint import load_captioner
    from photocap.image import decode_photo

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # before the build: OpenVINO runs with the threads it was built with
    models = {"model_ms": load_captioner(None, "cpu"),
              "model_openvino_ms": load_captioner(None, "cpu", runtime=True)}  # fmt: skip
    preset = models["model_ms"].preset
    started = time.perf_counter()
    decoded = [decode_photo(str(f), preset) for f in files]
    costs = {"decode_ms": (time.perf_counter() - started) * 1000 / len(files)}
    pixels = torch.from_numpy(np.stack([d.pixels for d in decoded]))  # type: ignore[union-attr]
    try:
        for key, captioner in models.items():
            captioner.caption_batch(pixels[: args.batch_size])  # warm-up
            started = time.perf_counter()
            for i in range(0, len(files), args.batch_size):
                captioner.caption_batch(pixels[i : i + args.batch_size])
            costs[key] = (time.perf_counter() - started) * 1000 / len(files)
    finally:
        torch.set_num_threads(before)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="16,48", help="two library sizes, comma-separated")
    parser.add_argument("--size", default="4032x3024", help="generated photo size")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each schedule and size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ways", default=",".join(WAYS), help="the ways to run, in order")
    parser.add_argument(
        "--format",
        choices=("jpeg", "tiff"),
        default="jpeg",
        help="camera JPEGs, or film scans (TIFF, LZW: a heavy decode)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    small, large = (int(c) for c in args.counts.split(","))

    from make_library import nested_libraries

    schedules = tuple(dict.fromkeys(w for w in args.ways.split(",") if w))  # in order, once
    if unknown := set(schedules) - set(WAYS):
        parser.error(f"unknown ways: {', '.join(sorted(unknown))} (known: {', '.join(WAYS)})")
    walls: dict[tuple[str, int], list[float]] = {
        (s, n): [] for s in schedules for n in (small, large)
    }
    with tempfile.TemporaryDirectory(prefix="photocap-cores-") as tmp:
        work = Path(tmp)
        libs = nested_libraries(work, (small, large), args.size, args.format)
        run_cli(libs[small], work / "warm.db", schedules[-1], args)  # warm the page cache
        for r in range(args.rounds):
            for n in (small, large):
                for s in schedules if r % 2 == 0 else schedules[::-1]:
                    for sidecar in libs[n].glob("*.xmp"):
                        sidecar.unlink()
                    walls[(s, n)].append(run_cli(libs[n], work / f"{s}-{n}-{r}.db", s, args))
        photos = [f for f in libs[large].iterdir() if f.suffix in (".jpg", ".tif")]
        costs = stage_costs(sorted(photos), args)

    from photocap.run.caption import usable_cores

    cores = usable_cores()
    on_torch = ("before", "threads")
    ideal = {way: cores * 1000 / (costs["decode_ms"] + costs[
        "model_ms" if way in on_torch else "model_openvino_ms"]) for way in WAYS}  # fmt: skip
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"counts": [small, large], "size": args.size, "format": args.format,
                            "stages": costs,
                            "ideal_photos_per_s": ideal}  # fmt: skip
    for s in schedules:
        t_small = statistics.median(walls[(s, small)])
        t_large = statistics.median(walls[(s, large)])
        # Too few photos to tell (a smoke run) gives no rate, not a division by zero.
        rate = (large - small) / (t_large - t_small) if t_large > t_small else float("nan")
        data[s] = {"walls": {str(n): walls[(s, n)] for n in (small, large)}, "photos_per_s": rate}
        whole = large / t_large
        rows.append([s, t_small, t_large, rate, 1000 / rate, f"{rate / ideal[s]:.0%}", whole])
    speedup = data[schedules[-1]]["photos_per_s"] / data[schedules[0]]["photos_per_s"]
    data["speedup"] = speedup
    table = markdown_table(rows, ["way", f"{small} photos, s", f"{large} photos, s",
                                  "marginal photos/s", "ms/photo", "of ideal",
                                  f"{large} photos/s incl. start-up"])  # fmt: skip
    table += (f"\n\nstages alone, one core each: decode {costs['decode_ms']:.1f} ms/photo, model "
              f"{costs['model_ms']:.1f} ms/photo (encoder on OpenVINO: "
              f"{costs['model_openvino_ms']:.1f}): ideal on {cores} cores "
              f"{ideal['before']:.2f} photos/s ({ideal['openvino']:.2f}); {schedules[-1]} is "
              f"{speedup:.2f}x {schedules[0]} (marginal; medians of {args.rounds} runs, "
              "interleaved)")  # fmt: skip
    report("The model stage on a CPU, end to end", table, data, args.json)


if __name__ == "__main__":
    main()
