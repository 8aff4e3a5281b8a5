"""The fast model beside the default: dev scores, model-stage cost and photos/s, in one run.

For each model (``--models``, names or files; default ``default,fast``), on this machine's CPU:

1. **dev scores**: every photo of ``--split`` (all 1,000 dev photos unless ``--limit``)
   captioned as ``photocap caption`` does on a CPU (the runtime on: the decoders' int8 step on
   OpenVINO), scored by pycocoevalcap (BLEU-4, METEOR, CIDEr);
2. **model stage**: encoder + beam search ms/photo on ``--photos`` dev photos in batches of
   ``--batch-size``, torch's default threads, after a warm-up batch; the models interleaved,
   ``--rounds`` times, the median kept;
3. **end to end** (``--counts``, two library sizes of generated ``--size`` JPEGs): the real
   CLI, ``photocap caption LIB --model M --force``; the marginal rate (the difference of the two
   sizes: start-up and model load cancel), the models interleaved.

    python benchmarks/bench_fast.py                          # ~10 min on 2 cores
    python benchmarks/bench_fast.py --limit 100 --counts 8,24 --size 640x480   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, last_json_line, markdown_table, report, run_timed


def dev_scores(model: Any, names: list[str], dataset: Any) -> dict[str, Any]:
    """pycocoevalcap scores of ``model``'s beam captions of ``names``."""
    from photocap.training.evaluation import score_captions
    from photocap.training.features import load_pixels

    captions: list[str] = []
    for start in range(0, len(names), 64):
        chunk = names[start : start + 64]
        pixels = load_pixels([dataset.image_path(n) for n in chunk], model.preset, 0)
        captions += [c.text for c in model.caption_batch(pixels)]
    scores, _ = score_captions(captions, [dataset.captions[n] for n in names])
    return {"scores": scores, "captions": captions}


def stage_ms(model: Any, batches: list[Any]) -> float:
    """Encoder + beam search, ms a photo, over ``batches`` of uint8 (B, 3, S, S)."""
    started = time.perf_counter()
    for batch in batches:
        model.caption_batch(batch)
    return (time.perf_counter() - started) * 1000 / sum(len(b) for b in batches)


def caption_wall(lib: Path, db: Path, model: str) -> float:
    """Wall seconds of ``photocap caption LIB --model M`` (fresh index, --force)."""
    for sidecar in lib.glob("*.xmp"):
        sidecar.unlink()
    cmd = [sys.executable, "-m", "photocap", "caption", str(lib), "--db", str(db), "--force",
           "--model", model, "--json"]  # fmt: skip
    run = run_timed(cmd)
    if run["rc"] != 0 or last_json_line(run["stdout"]).get("failed"):
        raise SystemExit(f"run failed ({run['rc']}): {run['stderr'][-500:]}")
    return float(run["wall_s"])


def end_to_end(models: list[str], results: dict[str, dict[str, Any]], args: Any) -> None:
    """Marginal photos/s of the real CLI per model, on two generated libraries."""
    from make_library import nested_libraries

    small, large = (int(c) for c in args.counts.split(","))
    walls: dict[tuple[str, int], list[float]] = {(m, n): [] for m in models for n in (small, large)}
    with tempfile.TemporaryDirectory(prefix="photocap-fast-") as tmp:  # 3. end to end
        work = Path(tmp)
        libs = nested_libraries(work, (small, large), args.size)
        caption_wall(libs[small], work / "warm.db", models[0])  # the page cache, warm
        for r in range(args.rounds):
            for n in (small, large):
                for m in models if r % 2 == 0 else models[::-1]:
                    walls[(m, n)].append(caption_wall(libs[n], work / f"{r}-{n}.db", m))
    for m in models:
        t_small, t_large = (statistics.median(walls[(m, n)]) for n in (small, large))
        rate = (large - small) / (t_large - t_small) if t_large > t_small else float("nan")
        results[m]["end_to_end_photos_per_s"] = rate
        results[m]["walls"] = {str(n): walls[(m, n)] for n in (small, large)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="default,fast", help="names or files, comma-separated")
    parser.add_argument("--data", type=Path, default=FLICKR8K, help="Flickr8k folder")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None, help="photos to score")
    parser.add_argument("--photos", type=int, default=96, help="photos for the model stage")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--counts", default="16,64", help="two library sizes, end to end (0: skip it)"
    )
    parser.add_argument("--size", default="4032x3024", help="generated photo size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    models = args.models.split(",")

    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.features import load_pixels

    dataset = load_flickr8k(args.data)
    names = dataset.split(args.split, args.limit)
    loaded = {m: load_captioner(m, "cpu", runtime=True) for m in models}
    results: dict[str, dict[str, Any]] = {m: {"model_id": loaded[m].model_id} for m in models}

    with torch.inference_mode():
        for m, model in loaded.items():  # 1. dev scores
            found = dev_scores(model, names, dataset)
            results[m]["scores"] = found["scores"]
            results[m]["runtime"] = [model.runtime_name, model.decoder_runtime_name]
        photos = load_pixels([dataset.image_path(n) for n in names[: args.photos]],
                             loaded[models[0]].preset, 0)  # fmt: skip
        batches = [photos[i : i + args.batch_size] for i in range(0, len(photos), args.batch_size)]
        times: dict[str, list[float]] = {m: [] for m in models}
        for model in loaded.values():
            model.caption_batch(batches[0])  # warm-up
        for r in range(args.rounds):  # 2. model stage, interleaved
            for m in models if r % 2 == 0 else models[::-1]:
                times[m].append(stage_ms(loaded[m], batches))
    for m in models:
        results[m]["model_stage_ms"] = statistics.median(times[m])
    del loaded

    if args.counts != "0":
        end_to_end(models, results, args)
    for m in models:
        results[m].setdefault("end_to_end_photos_per_s", float("nan"))

    rows = []
    for m in models:
        s = results[m]["scores"]
        rows.append([m, results[m]["model_id"], *(f"{s[k]:.4f}" if s[k] is not None else "n/a"
                                                  for k in ("BLEU-4", "METEOR", "CIDEr")),
                     results[m]["model_stage_ms"], 1000 / results[m]["model_stage_ms"],
                     results[m]["end_to_end_photos_per_s"]])  # fmt: skip
    first, last = results[models[0]], results[models[-1]]
    table = markdown_table(rows, ["model", "id", "BLEU-4", "METEOR", "CIDEr",
                                  "model stage ms/photo", "model stage photos/s",
                                  f"end to end photos/s ({args.size})"])  # fmt: skip
    table += (f"\n\n{models[-1]} against {models[0]}: model stage "
              f"{first['model_stage_ms'] / last['model_stage_ms']:.2f}x cheaper, end to end "
              f"{last['end_to_end_photos_per_s'] / first['end_to_end_photos_per_s']:.2f}x; "
              f"{len(names)} {args.split} photos scored; medians of {args.rounds} "
              "interleaved rounds")  # fmt: skip
    report("The fast model beside the default (CPU)", table,
           {"models": results, "split": args.split, "photos": len(names)}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
