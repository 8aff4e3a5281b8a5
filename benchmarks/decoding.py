"""Decoding settings vs quality and speed, on the dev split: beam size x length penalty.

The encoder runs once per photo (features are kept in memory); each setting then re-runs only
the decoder, so a sweep costs a few minutes on a CPU. Scores are pycocoevalcap's (as
``photocap evaluate``); this is how the shipped default beam size and length penalty were
chosen (on dev, never on test).

    python benchmarks/decoding.py --data ../shared/flickr8k --beams 1,3,5 --penalties 0.5,0.7,1.0
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dev_set_parser


def main() -> None:
    parser = dev_set_parser(__doc__)
    parser.add_argument("--beams", default="1,3,5")
    parser.add_argument("--penalties", default="0.7")
    parser.add_argument("--no-repeat-words", default="1", help="1, 0 or 1,0 (both)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.evaluation import score_captions
    from photocap.training.features import extract_features, load_pixels

    data = load_flickr8k(args.data)
    names = data.split(args.split, args.limit)
    captioner = load_captioner(args.model, args.device)
    t0 = time.perf_counter()
    pixels = load_pixels([data.image_path(n) for n in names], captioner.preset, workers=0)
    features = extract_features(captioner, pixels, batch_size=32).float()  # (N, L, D)
    encode_s = time.perf_counter() - t0
    refs = [data.captions[n] for n in names]
    rows = []
    base_config = captioner.config
    settings = [
        (beam, penalty, bool(int(rule)))
        for rule in args.no_repeat_words.split(",")
        for beam in (int(b) for b in args.beams.split(","))
        for penalty in (float(p) for p in args.penalties.split(","))
        if beam > 1 or penalty == float(args.penalties.split(",")[0])  # greedy: no penalty
    ]
    for beam, penalty, no_repeat in settings:
        captioner.config = replace(base_config, length_penalty=penalty, no_repeat_words=no_repeat)
        t0 = time.perf_counter()
        texts: list[str] = []
        with torch.inference_mode():
            for i in range(0, len(features), 50):
                texts += [c.text for c in captioner.caption_features(features[i : i + 50], beam)]
        decode_s = time.perf_counter() - t0
        scores, _ = score_captions(texts, refs)
        words = sum(len(t.split()) for t in texts) / max(len(texts), 1)
        rows.append(
            {
                "beam": beam,
                "length_penalty": penalty,
                "no_repeat_words": no_repeat,
                "photos": len(texts),
                "decode_photos_per_s": len(texts) / decode_s,
                "mean_words": words,
                **scores,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nencoder: {len(names)} photos in {encode_s:.1f}s\n")
    print(
        "| beam | length penalty | no repeats | BLEU-4 | METEOR | ROUGE-L | CIDEr | words "
        "| decode photos/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['beam']} | {r['length_penalty']} | {r['no_repeat_words']} "
            f"| {r['BLEU-4']:.3f} | {r['METEOR'] or 0:.3f} "
            f"| {r['ROUGE-L']:.3f} | {r['CIDEr']:.3f} | {r['mean_words']:.1f} "
            f"| {r['decode_photos_per_s']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
