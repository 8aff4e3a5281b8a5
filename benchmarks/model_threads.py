"""The model stage alone on the CPU: one thread, every thread, and batches side by side.

Why small photos stay short of "every core busy" (issue 23): when decoding is cheap the model
is the whole cost, and the ideal of ``bench_cores.py`` counts it at its one-thread cost on
every core. This measures, on the same decoded photos in one run, ``caption_batch`` (the
shipped model, OpenVINO where it runs, batches of ``--batch-size``):

* ``threads 1``: one thread (torch and OpenVINO);
* ``threads N``: every core;
* ``lanes N``: N batches side by side on N Python threads of one thread each.

It prints wall and CPU ms a photo, and whether the lanes' captions equal the serial ones.

    python benchmarks/model_threads.py --count 96 --size 640x480
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, last_json_line, markdown_table, report

# One way per process: OpenVINO compiles for the thread count torch has when the model is built.
_ONE_WAY = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np, torch
from photocap.checkpoint import load_captioner
from photocap.image import decode_photo
threads, lanes, batch, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
cap = load_captioner(None, "cpu", runtime=True)
files = sorted(Path(folder).glob("*.jpg"))
pixels = torch.from_numpy(np.stack([decode_photo(str(f), cap.preset).pixels for f in files]))
batches = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]
with ThreadPoolExecutor(lanes) as pool:
    list(pool.map(cap.caption_batch, batches[:lanes]))  # warm-up: compile, arenas
    wall, cpu = time.perf_counter(), time.process_time()
    out = list(pool.map(cap.caption_batch, batches))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
same = [c.text for c in out[0]] == [c.text for c in cap.caption_batch(batches[0])]
print(json.dumps({"wall_ms": wall * 1000 / len(files), "cpu_ms": cpu * 1000 / len(files),
                  "same_captions": same}))
"""


def one_way(threads: int, lanes: int, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-c", _ONE_WAY, str(threads), str(lanes), str(args.batch_size),
           str(folder)]  # fmt: skip
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {proc.stderr[-800:]}")
    return last_json_line(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--size", default="640x480", help="generated photo size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from photocap.run.caption import usable_cores

    cores = usable_cores()

    from make_library import generate, parse_size

    with tempfile.TemporaryDirectory(prefix="photocap-threads-") as tmp:
        folder = Path(tmp) / "lib"
        generate(folder, args.count, size=parse_size(args.size), jobs=cores)
        ways = {"threads 1": (1, 1), f"threads {cores}": (cores, 1), f"lanes {cores}": (1, cores)}
        if cores == 1:  # one core: nothing side by side to measure
            ways = {"threads 1": (1, 1)}
        data: dict[str, Any] = {n: one_way(t, k, folder, args) for n, (t, k) in ways.items()}
    rows = [[name, d["wall_ms"], d["cpu_ms"], d["same_captions"]] for name, d in data.items()]
    table = markdown_table(rows, ["way", "wall ms/photo", "CPU ms/photo", "same captions"])
    one = data["threads 1"]["wall_ms"]
    table += "\n\n" + ", ".join(f"{name}: {one / d['wall_ms']:.2f}x one thread"
                                for name, d in data.items() if name != "threads 1")  # fmt: skip
    report("The model stage alone: threads and lanes", table, data, args.json)


if __name__ == "__main__":
    main()
