"""``--engine ray`` on a simulated cluster (``ray.cluster_utils.Cluster``): a head node with no
CPUs for work and two worker nodes with a (fake) GPU each, all on this machine."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_jpegs

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'photocap[ray]'")

from photocap.checkpoint import LazyCaptioner  # noqa: E402
from photocap.index import PhotoIndex  # noqa: E402
from photocap.pipeline import CaptionOptions, RunSummary, caption_library  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Any:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [simulated.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=simulated.address, log_to_driver=False, configure_logging=False)
    simulated.wait_for_nodes()
    yield simulated, workers
    ray.shutdown()
    simulated.shutdown()


def _paths(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT path FROM photos WHERE caption IS NOT NULL")]


def test_a_simulated_cluster_captions_every_photo_once(
    cluster: Any, model_file: Path, tmp_path: Path
) -> None:
    # Two worker nodes with a (fake) GPU each: two caption actors, decoding on both nodes.
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 16)
    captioner = LazyCaptioner(model_file, device="cpu")
    options = CaptionOptions(writers=["xmp", "index"], batch_size=2, workers=1, engine="ray")
    summary = None
    with PhotoIndex(tmp_path / "i.db") as index:
        for event in caption_library([lib], captioner, index, options):
            if isinstance(event, RunSummary):
                summary = event
    assert summary is not None and not summary.interrupted
    assert (summary.captioned, summary.failed) == (16, 0)
    assert summary.nodes == 2  # work ran on both worker nodes
    paths = _paths(tmp_path / "i.db")
    assert sorted(paths) == sorted(str(p) for p in lib.glob("*.jpg"))  # each exactly once
    assert all((lib / f"{Path(p).name}.xmp").is_file() for p in paths)
