"""The Ray engine against the local engine: the same library, both engines, in one run.

``photocap caption LIB --engine local`` and ``--engine ray`` (a Ray started on this machine:
the overhead of Ray on one machine) alternate ``--rounds`` times on a fresh index each, the
whole CLI process timed: wall seconds, photos/s, and the peak memory of the process tree
(Ray's own processes included). Both must give the same captions.

With ``--nodes N`` the Ray runs go to a simulated cluster on this machine
(``ray.cluster_utils.Cluster``: a head with no CPUs for work and N worker nodes sharing the
cores), started once by this script; ``--gpus`` gives each worker node that many GPUs (a GPU
machine: ``--nodes 1 --gpus 1``).

    python benchmarks/bench_engines.py --count 96 --size 4000x3000
    python benchmarks/bench_engines.py --count 96 --size 4000x3000 --nodes 2
    python benchmarks/bench_engines.py --count 24 --model tiny      # smoke
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import last_json_line, markdown_table, report, run_timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=96, help="photos in the library")
    parser.add_argument("--size", default="4000x3000", help="photo size WxH")
    parser.add_argument("--model", choices=("shipped", "tiny"), default="shipped")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each engine, alternating")
    parser.add_argument("--nodes", type=int, default=0, help="simulated Ray worker nodes (0: a "
                        "Ray started by each run, on this machine)")  # fmt: skip
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per simulated node")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit("needs Ray: pip install -e '.[ray]'") from None
    from make_library import generate

    with tempfile.TemporaryDirectory(prefix="photocap-engines-") as tmp:
        work = Path(tmp)
        if args.model == "tiny":
            model = str(work / "tiny.safetensors")
            code = ("from photocap.checkpoint import build_random_captioner, save_captioner; "
                    f"save_captioner(build_random_captioner(), {model!r})")  # fmt: skip
            subprocess.run([sys.executable, "-c", code], check=True)
        else:
            from photocap.checkpoint import default_model_path

            model = str(default_model_path())
        width, height = (int(v) for v in args.size.lower().split("x"))
        lib = work / "lib"
        generate(lib, args.count, size=(width, height))
        cluster, address = None, []
        if args.nodes:
            from ray.cluster_utils import Cluster

            cpus = max(1, (os.cpu_count() or 1) // args.nodes)
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for _ in range(args.nodes):
                cluster.add_node(num_cpus=cpus, num_gpus=args.gpus)
            cluster.wait_for_nodes()
            address = ["--ray-address", cluster.address]
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
        captions: dict[str, dict[str, str]] = {}
        for round_ in range(args.rounds):
            for engine in ("local", "ray"):
                db = work / f"{engine}-{round_}.db"
                cmd = [sys.executable, "-m", "photocap", "caption", str(lib), "--db", str(db),
                       "--write", "index", "--model", model, "--json",
                       "--engine", engine, *(address if engine == "ray" else [])]  # fmt: skip
                result = run_timed(cmd, sample_memory=True)
                if result["rc"] != 0:
                    raise SystemExit(f"{engine} run failed: {result['stderr'][-800:]}")
                summary = last_json_line(result["stdout"])
                runs[engine].append({"wall_s": result["wall_s"],
                                     "peak_pss_mb": result["peak_pss_mb"],
                                     "captioned": summary["captioned"]})  # fmt: skip
                with sqlite3.connect(db) as conn:
                    captions[engine] = dict(conn.execute("SELECT path, caption FROM photos"))
        if cluster is not None:
            cluster.shutdown()

    def med(engine: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[engine])

    same = sum(captions["local"][p] == captions["ray"].get(p) for p in captions["local"])
    rows = [
        [engine, med(engine, "wall_s"), args.count / med(engine, "wall_s"),
         max(r["peak_pss_mb"] for r in runs[engine])]
        for engine in ("local", "ray")
    ]  # fmt: skip
    ratio = med("local", "wall_s") / med("ray", "wall_s")
    table = markdown_table(rows, ["engine", f"run of {args.count} photos, wall s", "photos/s",
                                  "peak PSS MB (process tree)"])  # fmt: skip
    table += (
        f"\n\nray / local photos/s: {ratio:.2f}x; captions the same: {same} of "
        f"{len(captions['local'])} ({args.rounds} runs each, alternating; medians)"
    )
    if args.nodes:
        table += f"; Ray on a simulated cluster of {args.nodes} worker nodes"
    data = {"count": args.count, "size": args.size, "model": args.model, "runs": runs,
            "nodes": args.nodes, "gpus": args.gpus,
            "ray_vs_local": ratio, "same_captions": same}  # fmt: skip
    report("Engines: Ray on one machine against local", table, data, args.json)


if __name__ == "__main__":
    main()
