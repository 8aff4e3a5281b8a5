"""Test-time variants of the shipped model on the dev split: none of them retrains anything.

Each variant changes only how a photo is shown to the model, or how the final caption is
chosen, so it can be measured on a CPU in minutes. Scores are pycocoevalcap's (as
``photocap evaluate``); every variant is scored in the same run as the plain baseline.

- ``size-S``: the photo squashed to S x S instead of the preset's size (a larger grid).
- ``mirror``: the encoder also sees the mirrored photo; the two grids are aligned (the mirrored
  one flipped back) and averaged before decoding. Twice the encoder's cost.
- ``dense``: output stride 16 instead of 32: the encoder's last stride-2 block keeps the
  resolution and the convolutions after it are dilated x2, so the same weights give a 14x14
  grid at 224 px (196 locations instead of 49). About twice the encoder's cost and a 4x
  larger attention.
- ``mbr``: minimum-Bayes-risk choice among the beam's K hypotheses (and optionally S sampled
  captions): the candidate with the highest CIDEr-D against the other candidates.

    python benchmarks/test_time.py --data ../shared/flickr8k \
        --variants plain,mirror,size-256,dense,mbr
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import dev_set_parser


def dense_grid(encoder: Any) -> None:
    """Output stride 32 -> 16 in place: the last stride-2 block gets stride 1, the depthwise
    convolutions after it dilation 2 (their 'SAME' padding follows the dilated kernel)."""
    import torch.nn.functional as F

    from photocap.encoder import SameConv2d

    class DilatedSameConv2d(SameConv2d):
        def forward(self, x: Any) -> Any:
            ih, iw = x.shape[-2:]
            kh = (self.weight.shape[-2] - 1) * self.dilation[0] + 1  # effective kernel
            kw = (self.weight.shape[-1] - 1) * self.dilation[1] + 1
            sh, sw = self.stride
            pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
            pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    blocks = list(encoder._blocks)
    last = max(i for i, b in enumerate(blocks) if b._depthwise_conv.stride == (2, 2))
    blocks[last]._depthwise_conv.stride = (1, 1)
    for block in blocks[last + 1 :]:
        block._depthwise_conv.__class__ = DilatedSameConv2d
        block._depthwise_conv.dilation = (2, 2)


def main() -> None:
    parser = dev_set_parser(__doc__)
    parser.add_argument("--beam-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--variants", default="plain,mirror,size-256,dense,mbr")
    parser.add_argument("--mbr-samples", type=int, default=0, help="sampled candidates for mbr")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.decoding import DEFAULT_BEAM_SIZE
    from photocap.training.cider import CiderD
    from photocap.training.evaluation import score_captions
    from photocap.training.features import extract_features, load_pixels
    from photocap.vocab import to_sentence, tokenize

    torch.manual_seed(0)
    data = load_flickr8k(args.data)
    names = data.split(args.split, args.limit)
    paths = [data.image_path(n) for n in names]
    refs = [data.captions[n] for n in names]
    beam = args.beam_size or DEFAULT_BEAM_SIZE
    variants = args.variants.split(",")

    def load(dense: bool = False) -> Any:
        captioner = load_captioner(args.model, "cpu")
        if dense:
            captioner._fold_bn = False  # the folded copy was built before the change
            dense_grid(captioner.encoder)
        return captioner.eval()

    captioner = load()
    base_preset = captioner.preset
    base_pixels = load_pixels(paths, captioner.preset, workers=0)  # (N, 3, S, S) uint8

    def decode(model: Any, features: Any) -> list[str]:
        texts: list[str] = []
        with torch.inference_mode():
            for i in range(0, len(features), 50):
                texts += [c.text for c in model.caption_features(features[i : i + 50], beam)]
        return texts

    rows = []
    for variant in variants:
        t0 = time.perf_counter()
        model, pixels = captioner, base_pixels
        if variant.startswith("size-"):
            model.preset = replace(captioner.preset, size=int(variant[5:]))
            pixels = load_pixels(paths, model.preset, workers=0)
        elif variant == "dense":
            model = load(dense=True)
        features = extract_features(model, pixels, batch_size=32).float()  # (N, L, D)
        if variant == "mirror":
            mirrored = extract_features(model, pixels.flip(-1), batch_size=32).float()
            n, cells, dim = mirrored.shape
            side = math.isqrt(cells)
            back = mirrored.view(n, side, side, dim).flip(2).reshape(n, cells, dim)  # aligned
            features = (features + back) / 2  # (N, L, D)
        if variant == "mbr":
            chosen = choose_mbr(model, features, beam, args.mbr_samples, data, CiderD, tokenize)
            texts = [to_sentence(words) for words in chosen]
        else:
            texts = decode(model, features)
        seconds = time.perf_counter() - t0
        captioner.preset = base_preset  # size-S changed it in memory only
        scores, _ = score_captions(texts, refs)
        rows.append(
            {
                "variant": variant,
                "grid": int(features.shape[1]),
                "photos": len(texts),
                "seconds": round(seconds, 1),
                **{k: round(v, 4) for k, v in scores.items() if v is not None},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def choose_mbr(
    model: Any, features: Any, beam: int, samples: int, data: Any, cider: Any, tokenize: Any
) -> list[list[str]]:
    """Per photo, the candidate (beam hypotheses + samples) with the highest CIDEr-D against
    the other candidates; document frequencies from the train split's references."""
    import torch

    from photocap.decoding import beam_search, sample

    scorer = cider([[tokenize(c) for c in data.captions[n]] for n in data.split("train", None)])
    vocab = model.vocab
    chosen: list[list[str]] = []
    with torch.inference_mode():
        for i in range(0, len(features), 50):
            batch = features[i : i + 50]  # (b, L, D)
            groups = [
                [vocab.decode(ids) for ids, _ in h]
                for h in beam_search(model.decoder, model.rules, batch, beam)
            ]
            if samples:
                # (b*S, T) tokens
                tokens, _, _ = sample(model.decoder, model.rules, batch, samples, temperature=0.7)
                for j, ids in enumerate(tokens.tolist()):
                    ids = ids[: ids.index(vocab.end_id)] if vocab.end_id in ids else ids
                    groups[j // samples].append(vocab.decode([t for t in ids if t != vocab.pad_id]))
            for group in groups:
                utility = [scorer.score_one(c, [o for o in group if o != c] or [c]) for c in group]
                chosen.append(group[max(range(len(group)), key=utility.__getitem__)])
    return chosen


if __name__ == "__main__":
    main()
