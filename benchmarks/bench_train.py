"""Training throughput on CPU (or GPU): a short ``photocap train`` run, samples/s per stage.

Runs :func:`photocap.training.run.iter_train` (what ``photocap train`` runs) on ``--data`` with
``--limit`` photos, one epoch of each stage - xe (decoder on cached encoder features; caption
pairs/s), finetune (encoder + decoder; photos/s) and scst (self-critical; photos/s) - and reports
the samples/s of each epoch as the trainer measured it. Skips (exit 0) when the data is missing.

    python benchmarks/bench_train.py --limit 64
    python benchmarks/bench_train.py --device cuda --limit 2000 --batch-size 256
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=FLICKR8K)
    parser.add_argument("--limit", type=int, default=64, help="train photos (default 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--encoder", default="efficientnet_lite2", help="or tiny (random)")
    parser.add_argument("--stages", default="xe,finetune,scst")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.data / "captions.txt").is_file() and not (args.data / "Images").is_dir():
        print(f"skipped: no Flickr8k at {args.data}")
        return

    from photocap.training.config import TrainConfig
    from photocap.training.run import iter_train
    from photocap.training.stages import STAGE_UNITS

    stages = set(args.stages.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="photocap-train-"))
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        config = TrainConfig(
            data=args.data, out=workdir / "m.safetensors", encoder=args.encoder,
            epochs=int("xe" in stages), fine_tune_epochs=int("finetune" in stages),
            scst_epochs=int("scst" in stages), batch_size=args.batch_size, device=args.device,
            limit=args.limit, cache_dir=workdir / "cache", workers=-1,
        )  # fmt: skip
        for event in iter_train(config):
            if event.kind == "epoch":
                epochs.append({"stage": event.stage, "samples_per_s": event.images_per_s,
                               "loss": event.loss, "cider": event.dev.get("cider")})  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [[e["stage"], f"{STAGE_UNITS[e['stage']]}/s", e["samples_per_s"]] for e in epochs]
    table = markdown_table(rows, ["stage", "unit", "samples/s"])
    data = {"limit": args.limit, "device": args.device, "epochs": epochs,
            "wall_s": time.perf_counter() - started}  # fmt: skip
    report(f"train throughput ({args.device}, --limit {args.limit})", table, data, args.json)


if __name__ == "__main__":
    main()
