"""``--engine ray`` on a Ray of one CPU: the caption actor must not hold the CPU the decode and
write tasks need (it did, and the run waited for ever)."""

from __future__ import annotations

import threading
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
def one_cpu() -> Any:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_a_one_cpu_ray_captions_every_photo(one_cpu: Any, model_file: Path, tmp_path: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 6)
    options = CaptionOptions(writers=["xmp", "index"], batch_size=2, engine="ray")
    summaries: list[RunSummary] = []

    def run() -> None:
        captioner = LazyCaptioner(model_file, device="cpu")
        with PhotoIndex(tmp_path / "i.db") as index:
            for event in caption_library([tmp_path / "lib"], captioner, index, options):
                if isinstance(event, RunSummary):
                    summaries.append(event)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)  # it waited for ever before
    assert not worker.is_alive(), "the run is stuck"
    assert [(s.captioned, s.failed) for s in summaries] == [(6, 0)]
