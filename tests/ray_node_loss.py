"""A worker node lost mid-run, on a simulated Ray cluster: run by ``test_ray_cluster.py`` in a
process of its own (``python tests/ray_node_loss.py MODEL LIBRARY INDEX``), which prints one
JSON line: the run's summary, the index's rows, and which node was removed.

In a process of its own because that is how ``photocap caption --engine ray`` runs, and so
that nothing Ray does to the process it drives (Ray's core worker ends its process when the
raylet it is attached to dies) can end the test session: the test reads what happened.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from photocap.checkpoint import LazyCaptioner
from photocap.index import PhotoIndex
from photocap.pipeline import CaptionOptions, PhotoResult, RunSummary, caption_library


def main(model: Path, library: Path, db: Path) -> dict[str, object]:
    # A head with no CPUs for work and two worker nodes with a (fake) GPU each: two caption
    # actors, decoding on both nodes.
    simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [simulated.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=simulated.address, log_to_driver=False, configure_logging=False)
    simulated.wait_for_nodes()
    # The node to lose: a worker, never the one the driver is attached to (the driver's own
    # machine lost ends the run on any engine).
    driver_node = ray.get_runtime_context().get_node_id()
    victim = next(w for w in workers if w.node_id != driver_node)
    options = CaptionOptions(writers=["xmp", "index"], batch_size=2, workers=1, engine="ray")
    report: dict[str, object] = {"removed": None, "added": None}
    summary = None
    try:
        with PhotoIndex(db) as index:
            events = caption_library([library], LazyCaptioner(model, device="cpu"), index, options)
            for event in events:
                if isinstance(event, PhotoResult) and report["removed"] is None:
                    simulated.remove_node(victim)  # a node lost after the first results
                    report["removed"] = victim.node_id
                    # ... and another one joining
                    report["added"] = simulated.add_node(num_cpus=1, num_gpus=1).node_id
                elif isinstance(event, RunSummary):
                    summary = event
    finally:
        ray.shutdown()
        simulated.shutdown()
    assert summary is not None
    with sqlite3.connect(db) as conn:
        rows = [r[0] for r in conn.execute("SELECT path FROM photos WHERE caption IS NOT NULL")]
    report |= {
        "captioned": summary.captioned, "failed": summary.failed,
        "interrupted": summary.interrupted, "rows": rows,
    }  # fmt: skip
    return report


if __name__ == "__main__":
    print(json.dumps(main(*(Path(arg) for arg in sys.argv[1:4]))))
