"""Decoder speed and caption identity on real dev features: for code changes that must not
change captions (e.g. beam-search bookkeeping), run it before and after and compare.

Encodes the first ``--limit`` dev photos once (cached in ``--features``), then times
``Captioner.caption_features`` at beams 1/3/5 (one torch thread, batch 16) and writes every
caption, score and alternative to ``--out``. ``--compare OLD.json`` counts identical captions.

    python benchmarks/beam_check.py --data ../shared/flickr8k --out /tmp/before.json
    # ... change the code ...
    python benchmarks/beam_check.py --data ../shared/flickr8k --out /tmp/after.json \
        --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Flickr8k folder")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--limit", type=int, default=300, help="dev photos (default 300)")
    parser.add_argument("--features", type=Path, default=Path("/tmp/photocap-dev-features.pt"))
    parser.add_argument("--out", type=Path, required=True, help="captions as JSON")
    parser.add_argument("--compare", type=Path, default=None, help="an earlier --out file")
    args = parser.parse_args(argv)

    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.features import extract_features, load_pixels

    torch.set_num_threads(1)
    captioner = load_captioner(args.model, "cpu")
    if args.features.exists():
        features = torch.load(args.features, weights_only=True)
    else:
        data = load_flickr8k(args.data)
        names = data.split("dev", args.limit)
        pixels = load_pixels([data.image_path(n) for n in names], captioner.preset, 0)
        features = extract_features(captioner, pixels, 32).float()  # (N, L, D)
        torch.save(features, args.features)
    out: dict[str, list] = {}
    for beam in (1, 3, 5):
        started = time.perf_counter()
        captions = []
        for i in range(0, len(features), 16):
            captions += captioner.caption_features(features[i : i + 16], beam)
        ms = (time.perf_counter() - started) / len(features) * 1e3
        out[str(beam)] = [[c.text, round(c.score, 5), list(c.alternatives)] for c in captions]
        print(f"beam {beam}: {ms:.1f} ms/photo ({len(features)} photos)")
    args.out.write_text(json.dumps(out))
    if args.compare:
        old = json.loads(args.compare.read_text())
        for key, rows in out.items():
            same = sum(a == b for a, b in zip(rows, old.get(key, []), strict=False))
            print(f"beam {key}: {same}/{len(rows)} identical to {args.compare}")


if __name__ == "__main__":
    main()
