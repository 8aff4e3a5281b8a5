"""Start-up: what a run costs before (and without) the model, lazy load vs a load at start.

``photocap caption`` opens the model file lazily (header + hash; issue 23): the model is built
on a thread once the first photo is sent to be decoded, and not at all when nothing needs it.
This script measures that against the same code with the model built at start (what photocap
did before: ``LazyCaptioner`` patched to build in its constructor), alternating the two in one
run so that the ratios share the machine's state:

1. **unchanged re-run**: a library of ``--count`` photos captioned once, then re-run
   ``--reruns`` times each way: wall time of the whole CLI process, peak RSS of the process;
2. **start-up to first caption**: a fresh index each time, ``--json``; the time from starting
   the process to the first ``captioned`` line on stdout.

    python benchmarks/bench_startup.py --count 96
    python benchmarks/bench_startup.py --count 96 --model tiny   # the pipeline only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, markdown_table, report

# The CLI in a child process; EAGER=1 builds the model in LazyCaptioner's constructor, as
# photocap did before the lazy load (same code otherwise).
_DRIVER = """
import os, sys
if os.environ.get("EAGER") == "1":
    import photocap.checkpoint as ck
    class Eager(ck.LazyCaptioner):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.prepare(wait=True)
    ck.LazyCaptioner = Eager
from photocap.cli import app
app(sys.argv[1:], prog_name="photocap")
"""


def _env(eager: bool) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # The encoder on torch both ways: the load at start is photocap's before OpenVINO (and
    # a 96-photo run keeps torch anyway: photocap.runtime.MIN_PHOTOS).
    return {**os.environ, "PYTHONPATH": path, "EAGER": "1" if eager else "0",
            "PHOTOCAP_RUNTIME": "torch"}  # fmt: skip


def _caption_cmd(lib: Path, db: Path, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-c", _DRIVER, "caption", str(lib), "--db", str(db),
            "--write", "index", "--model", model, *extra]  # fmt: skip


def time_rerun(lib: Path, db: Path, model: str, eager: bool) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the CLI process) of one unchanged re-run."""
    started = time.perf_counter()
    proc = subprocess.Popen(_caption_cmd(lib, db, model, ["--json"]), env=_env(eager),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KB)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"re-run failed ({proc.returncode}): {err[-500:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    if summary.get("captioned"):
        raise SystemExit(f"the re-run captioned photos: {summary}")
    return wall, usage.ru_maxrss / 1024


def time_first_caption(lib: Path, db: Path, model: str, eager: bool) -> tuple[float, float]:
    """(seconds to the first captioned photo, seconds for the whole run) on a fresh index."""
    started = time.perf_counter()
    cmd = _caption_cmd(lib, db, model, ["--json", "--force"])
    proc = subprocess.Popen(cmd, env=_env(eager), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    first = float("nan")
    assert proc.stdout is not None
    for line in proc.stdout:
        if first != first and '"status": "captioned"' in line.replace('":"', '": "'):
            first = time.perf_counter() - started
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"caption run failed ({proc.returncode})")
    return first, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=96, help="photos in the library")
    parser.add_argument("--size", default="1024x768", help="photo size WxH")
    parser.add_argument("--model", choices=("shipped", "tiny"), default="shipped")
    parser.add_argument("--reruns", type=int, default=3, help="re-runs each way, alternating")
    parser.add_argument("--starts", type=int, default=2, help="fresh runs each way")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from make_library import generate

    with tempfile.TemporaryDirectory(prefix="photocap-startup-") as tmp:
        work = Path(tmp)
        if args.model == "tiny":
            # In a child process: torch imported here would count in every run's peak RSS (a
            # forked child starts with its parent's pages).
            model = str(work / "tiny.safetensors")
            code = ("from photocap.checkpoint import build_random_captioner, save_captioner; "
                    f"save_captioner(build_random_captioner(), {model!r})")  # fmt: skip
            subprocess.run([sys.executable, "-c", code], env=_env(False), check=True)
        else:
            from photocap.checkpoint import default_model_path

            model = str(default_model_path())
        width, height = (int(v) for v in args.size.lower().split("x"))
        lib = work / "lib"
        generate(lib, args.count, size=(width, height))
        db = work / "index.db"
        first = subprocess.run(_caption_cmd(lib, db, model, ["--json"]), env=_env(False),
                               capture_output=True, text=True)  # fmt: skip
        if first.returncode != 0:
            raise SystemExit(f"first run failed: {first.stderr[-500:]}")

        reruns: dict[str, list[tuple[float, float]]] = {"lazy": [], "eager": []}
        starts: dict[str, list[tuple[float, float]]] = {"lazy": [], "eager": []}
        for _ in range(args.reruns):
            for way in ("eager", "lazy"):
                reruns[way].append(time_rerun(lib, db, model, way == "eager"))
        for i in range(args.starts):
            for way in ("eager", "lazy"):
                fresh = work / f"fresh-{way}-{i}.db"
                starts[way].append(time_first_caption(lib, fresh, model, way == "eager"))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows: list[list[Any]] = []
    data: dict[str, Any] = {"count": args.count, "model": args.model, "size": args.size}
    for way in ("eager", "lazy"):
        walls = [w for w, _ in reruns[way]]
        rss = [r for _, r in reruns[way]]
        firsts = [f for f, _ in starts[way]]
        totals = [t for _, t in starts[way]]
        data[way] = {"rerun_wall_s": walls, "rerun_peak_rss_mb": rss,
                     "first_caption_s": firsts, "run_s": totals}  # fmt: skip
        rows.append([way, med(walls), f"{args.count / med(walls):,.0f}",
                     max(rss), med(firsts), med(totals)])  # fmt: skip
    ratio = med([w for w, _ in reruns["eager"]]) / med([w for w, _ in reruns["lazy"]])
    first_ratio = med([f for f, _ in starts["eager"]]) / med([f for f, _ in starts["lazy"]])
    data["rerun_speedup"], data["first_caption_speedup"] = ratio, first_ratio
    table = markdown_table(rows, ["model load", f"re-run of {args.count} unchanged, wall s",
                                  "photos/s", "re-run peak RSS MB", "start to first caption s",
                                  f"first run of {args.count}, s"])  # fmt: skip
    table += (f"\n\nre-run: lazy is {ratio:.2f}x faster; start to first caption: "
              f"{first_ratio:.2f}x ({args.reruns} re-runs, {args.starts} fresh runs each way, "
              "alternating; medians)")  # fmt: skip
    report("Start-up: lazy model load vs load at start", table, data, args.json)


if __name__ == "__main__":
    main()
