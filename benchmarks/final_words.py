"""Words a caption should not end on, from the data: derive the list and measure the rule.

Decoding never puts <end> after a word in ``photocap.decoding.RARELY_FINAL_WORDS``: the model's
vocabulary words that occur ``--min-count`` (30) or more times in the train split's captions and
end fewer than ``--max-share`` (0.5 %) of them. This script derives that list again from the
captions (and says whether it matches the one in the code), then, with ``--compare``, decodes
the split twice with the model (beam 3), without and with the rule, and scores both with
pycocoevalcap: the captions that changed, the endings the rule removed, and the scores.

    python benchmarks/final_words.py --data ../shared/flickr8k              # the list only
    python benchmarks/final_words.py --data ../shared/flickr8k --compare    # + dev, ~3 min CPU
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dev_set_parser


def main() -> None:
    parser = dev_set_parser(__doc__)
    parser.add_argument("--min-count", type=int, default=30)
    parser.add_argument("--max-share", type=float, default=0.005)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="decode the split both ways")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from photocap import decoding
    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.evaluation import score_captions
    from photocap.training.features import extract_features, load_pixels
    from photocap.vocab import tokenize

    data = load_flickr8k(args.data)
    seen: collections.Counter[str] = collections.Counter()
    final: collections.Counter[str] = collections.Counter()
    for name in data.split("train", None):
        for caption in data.captions[name]:
            words = tokenize(caption)
            if words:
                seen.update(words)
                final[words[-1]] += 1
    captioner = load_captioner(args.model, "cpu")
    derived = sorted(
        w
        for w in captioner.vocab.words
        if seen[w] >= args.min_count
        and final[w] / seen[w] < args.max_share
        and w not in decoding.DANGLING_WORDS
    )
    in_code = sorted(decoding.RARELY_FINAL_WORDS)
    result: dict[str, object] = {
        "derived": derived,
        "matches_code": derived == in_code,
        "only_derived": sorted(set(derived) - set(in_code)),
        "only_in_code": sorted(set(in_code) - set(derived)),
    }
    print(f"{len(derived)} words; the same as RARELY_FINAL_WORDS: {derived == in_code}")
    print(", ".join(derived))
    if args.compare:
        names = data.split(args.split, args.limit)
        refs = [data.captions[n] for n in names]
        pixels = load_pixels([data.image_path(n) for n in names], captioner.preset, workers=0)
        features = extract_features(captioner, pixels, batch_size=32).float()  # (N, L, D)
        runs: dict[str, list[str]] = {}
        rules: list[tuple[str, tuple[str, ...]]] = [("without", ()), ("with", tuple(derived))]
        for label, rule in rules:
            decoding.RARELY_FINAL_WORDS = rule  # read when the ids are first needed
            captioner.rules.clear_cache()
            texts: list[str] = []
            with torch.inference_mode():
                for i in range(0, len(features), 50):
                    batch = features[i : i + 50]
                    texts += [c.text for c in captioner.caption_features(batch, args.beam_size)]
            scores, _ = score_captions(texts, refs)
            ends = collections.Counter(tokenize(t)[-1] for t in texts if tokenize(t))
            bad = {w: ends[w] for w in derived if ends[w]}
            runs[label] = texts
            result[label] = {"scores": scores, "rarely_final_endings": bad}
            print(f"{label} the rule: {json.dumps(scores)}; endings on the list: {bad}")
        changed = [(a, b) for a, b in zip(runs["without"], runs["with"], strict=True) if a != b]
        result["changed"] = changed
        print(f"\n{len(changed)} of {len(names)} captions changed:")
        for a, b in changed:
            print(f"  {a!r} -> {b!r}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
