"""Would a denser attention grid help? A short training proxy, runnable on a CPU.

Trains a new decoder (stage 1, cross-entropy, a few epochs) on a model's frozen encoder,
either as it is (output stride 32: 7x7 at 224 px) or made dense (output stride 16: 14x14, the
same weights with the last stride-2 block kept at full resolution and later convolutions
dilated; see ``test_time.py``), and prints the dev CIDEr-D / BLEU-4 that ``photocap train``
reports after each epoch. Compare the two runs epoch by epoch: same seed, same sample order.
A proxy only: the full recipe (more epochs, encoder fine-tuning, self-critical training) is in
``models/README.md``.

    python benchmarks/grid_proxy.py --data ../shared/flickr8k --grid dense --epochs 2
    python benchmarks/grid_proxy.py --data ../shared/flickr8k --grid plain --epochs 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: F401  (puts the checkout on sys.path)
from test_time import dense_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Flickr8k folder")
    parser.add_argument("--init", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--grid", choices=("plain", "dense"), default="dense")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--limit", type=int, default=None, help="first N train photos only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache per grid")
    parser.add_argument("--resume", action="store_true", help="go on from --out's last epoch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import tempfile

    import torch

    from photocap import encoder as encoder_module
    from photocap.checkpoint import default_model_path
    from photocap.training.config import TrainConfig
    from photocap.training.run import iter_train

    if args.grid == "dense":
        # iter_train builds its encoder itself: make every encoder built here dense.
        build = encoder_module.Encoder.__init__

        def dense_init(self: Any, config: Any) -> None:
            build(self, config)
            dense_grid(self)

        encoder_module.Encoder.__init__ = dense_init  # type: ignore[method-assign]

    work = Path(tempfile.mkdtemp(prefix="grid-proxy-"))
    config = TrainConfig(
        data=args.data,
        out=args.out or work / f"{args.grid}.safetensors",
        init=args.init or default_model_path(),
        reset_decoder=True,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
        device=args.device,
        cache_dir=args.cache_dir or work / "cache",  # the cache key ignores the grid: keep apart
        resume=args.resume,
    )
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for event in iter_train(config):
        if event.kind == "epoch":
            rows.append(
                {
                    "grid": args.grid,
                    "epoch": event.epoch,
                    "loss": round(event.loss, 4),
                    **{k: round(v, 4) for k, v in event.dev.items()},
                    "images_per_s": round(event.images_per_s, 1),
                    "minutes": round((time.perf_counter() - t0) / 60, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    with torch.inference_mode():
        probe = encoder_module.Encoder(encoder_module.EncoderConfig(name="tiny")).eval()
        cells = probe(torch.zeros(1, 3, 224, 224)).shape[1]  # locations at 224 px
    summary = {"grid": args.grid, "locations_at_224px": int(cells), "epochs": rows}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
