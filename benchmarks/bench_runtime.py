"""The model on OpenVINO vs torch on a CPU: cost of the model stage, and the same captions?

Both ways in one run, on the same photos, with the shipped model:

1. **cost** (``--photos`` Flickr8k dev photos, batches of ``--batch-size``, after a warm-up
   batch): encoder ms/photo and beam search ms/photo at 1 and 2 torch threads, the model on
   torch (BatchNorm folded, channels-last: photocap's torch path) and on OpenVINO as
   ``photocap caption`` runs it on a CPU (the encoder in fp32, the decoders' step in int8);
2. **same captions** (``--split dev``, all 1,000 photos unless ``--limit``): each photo
   captioned both ways (features by each encoder, each way's beam search); the share of
   identical captions, the largest feature difference, and pycocoevalcap scores of both.

    python benchmarks/bench_runtime.py                   # cost + the 1,000 dev photos (~3-4 min)
    python benchmarks/bench_runtime.py --limit 100 --photos 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report


def _timed(fn: Any, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=FLICKR8K, help="Flickr8k folder")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None, help="photos for the caption check")
    parser.add_argument("--photos", type=int, default=48, help="photos for the cost")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", default="1,2", help="torch thread counts for the cost")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.evaluation import score_captions
    from photocap.training.features import load_pixels

    ours = load_captioner(None, "cpu", runtime=True)
    if not ours.runtime_name.startswith("openvino"):
        raise SystemExit(f"OpenVINO is not in use: {ours.runtime_name}")
    if not ours.decoder_runtime_name.startswith("openvino"):
        raise SystemExit(f"OpenVINO is not in use for the decoders: {ours.decoder_runtime_name}")
    plain = load_captioner(None, "cpu")  # torch
    dataset = load_flickr8k(args.data)
    names = dataset.split(args.split, args.limit)
    ways = {"torch": plain, "openvino": ours}

    # 1. cost
    photos = load_pixels([dataset.image_path(n) for n in names[: args.photos]], ours.preset, 0)
    batches = [photos[i : i + args.batch_size] for i in range(0, len(photos), args.batch_size)]
    rows: list[list[Any]] = []
    cost: dict[str, Any] = {}
    before = torch.get_num_threads()
    with torch.inference_mode():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            # OpenVINO runs with the threads the model was built with: built again for these.
            ways_now = {"torch": plain, "openvino": load_captioner(None, "cpu", runtime=True)}
            for way, model in ways_now.items():
                model.caption_batch(batches[0])  # warm-up (compiles OpenVINO for these threads)
                enc = _timed(lambda m=model: [m.encode(b) for b in batches], 2)
                feats = [model.encode(b) for b in batches]
                beam = _timed(lambda m=model, f=feats: [m.caption_features(x) for x in f], 1)
                enc_ms, beam_ms = enc * 1000 / len(photos), beam * 1000 / len(photos)
                cost[f"{way}/{threads}"] = {"encoder_ms": enc_ms, "beam_ms": beam_ms}
                rows.append([way, threads, enc_ms, beam_ms, enc_ms + beam_ms])
        torch.set_num_threads(before)

    # 2. the same captions
    captions: dict[str, list[str]] = {way: [] for way in ways}
    largest = 0.0
    with torch.inference_mode():
        for start in range(0, len(names), 64):
            chunk = names[start : start + 64]
            pixels = load_pixels([dataset.image_path(n) for n in chunk], ours.preset, 0)
            by_way = {way: model.encode(pixels) for way, model in ways.items()}
            largest = max(largest, float((by_way["torch"] - by_way["openvino"]).abs().max()))
            for way, model in ways.items():
                captions[way] += [c.text for c in model.caption_features(by_way[way])]
    same = sum(a == b for a, b in zip(captions["torch"], captions["openvino"], strict=True))
    references = [dataset.captions[n] for n in names]
    scores = {way: score_captions(captions[way], references)[0] for way in ways}

    table = markdown_table(rows, ["model on", "torch threads", "encoder ms/photo",
                                  "beam search ms/photo", "model stage ms/photo"])  # fmt: skip
    for threads in args.threads.split(","):
        t, o = cost[f"torch/{threads}"], cost[f"openvino/{threads}"]
        stage = (t["encoder_ms"] + t["beam_ms"]) / (o["encoder_ms"] + o["beam_ms"])
        table += (f"\n\n{threads} thread(s): encoder {t['encoder_ms'] / o['encoder_ms']:.2f}x "
                  f"cheaper, model stage {stage:.2f}x")  # fmt: skip
    score_rows = [[way, *(f"{scores[way][k]:.4f}" if scores[way][k] is not None else "n/a"
                          for k in ("BLEU-4", "METEOR", "CIDEr"))] for way in ways]  # fmt: skip
    table += (f"\n\n{args.split}: {same} of {len(names)} captions identical "
              f"({same / len(names):.1%}); largest feature difference {largest:.2e}")  # fmt: skip
    table += "\n\n"
    table += markdown_table(score_rows, ["model on", "BLEU-4", "METEOR", "CIDEr"])
    data = {"cost": cost, "identical": same, "photos": len(names), "largest_difference": largest,
            "scores": scores, "runtime": ours.runtime_name,
            "decoders": ours.decoder_runtime_name}  # fmt: skip
    report("The model on OpenVINO vs torch (CPU)", table, data, args.json)


if __name__ == "__main__":
    main()
