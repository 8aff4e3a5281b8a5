"""The decoders' step as photocap runs it on a CPU (OpenVINO, int8 weights) against torch.

Issue 23's model-stage target (>= 2x cheaper per photo on the CPU, captions identical on
>= 97 % of the dev photos, dev scores within 0.003) needs the beam search cheaper: after the
encoder moved to OpenVINO it is the larger half. photocap runs the decoders' whole step (the
three decoders and their mean) on OpenVINO with every large matrix product's weights in int8
(:func:`photocap.runtime.build_decoder_runtime`). This measures that step, as photocap builds
it, against torch fp32 (and OpenVINO fp32: the same export without int8, for reference), on the
same dev features, beam 3, batches of 16, in one run (a warm-up batch each, then ``--rounds``
rounds with the ways alternating, medians).

    python benchmarks/int8_decoders.py --data ../shared/flickr8k --limit 1000 --threads 1 --scores
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--limit", type=int, default=300, help="dev photos")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scores", action="store_true", help="also BLEU-4 / METEOR / CIDEr")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds (median)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    import photocap.runtime as runtime
    from photocap.checkpoint import default_model_path, file_digest, load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.paths import CACHE_ENV
    from photocap.training.evaluation import score_captions
    from photocap.training.features import extract_features, load_pixels

    torch.set_num_threads(args.threads)
    captioner = load_captioner(args.model, "cpu")  # runtime=False: torch
    data = load_flickr8k(args.data)
    names = data.split("dev", args.limit)
    pixels = load_pixels([data.image_path(n) for n in names], captioner.preset, 0)
    with torch.inference_mode():
        features = extract_features(captioner, pixels, 32).float()  # (N, L, branches * D)
    decoder: Any = captioner.decoder
    digest = file_digest(args.model or default_model_path())

    def built(int8: bool) -> Any:
        """photocap's step on OpenVINO (int8 as photocap builds it; fp32: nothing quantised),
        from a cache of its own."""
        caches.append(tempfile.mkdtemp(prefix="photocap-int8-bench-"))
        os.environ[CACHE_ENV] = caches[-1]
        side = runtime.MIN_INT8_SIDE
        runtime.MIN_INT8_SIDE = side if int8 else 1 << 30
        try:
            with torch.no_grad():
                made = runtime.build_decoder_runtime(
                    decoder,
                    (int(features.shape[1]), int(features.shape[2])),
                    digest,
                    {args.threads},
                )
        finally:
            runtime.MIN_INT8_SIDE = side
        if made.decoder is None:
            sys.exit(f"no OpenVINO step: {made.name}")
        return made

    caches: list[str] = []  # removed at the end
    ways: dict[str, Any] = {"torch fp32 (shipped)": None}
    ways["openvino fp32, the whole step"] = built(False)
    ways["openvino int8 (photocap's)"] = built(True)
    refs = [data.captions[n] for n in names]

    def use(way: Any) -> None:
        if way is None:
            captioner._decoder_runtime = None
        else:
            captioner.use_decoder_runtime(way)

    def caption_all(way: Any) -> tuple[list[str], float]:
        use(way)
        started = time.perf_counter()
        texts = []
        for i in range(0, len(features), 16):
            texts += [c.text for c in captioner.caption_features(features[i : i + 16], 3)]
        return texts, (time.perf_counter() - started) / len(features) * 1e3

    for way in ways.values():  # warm-up: first calls, OpenVINO's first inferences
        use(way)
        captioner.caption_features(features[:16], 3)
    texts_of: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {way: [] for way in ways}
    for k in range(args.rounds):  # the ways alternate: each round in the other order
        for way in list(ways)[:: 1 if k % 2 == 0 else -1]:
            texts_of[way], ms = caption_all(ways[way])
            times[way].append(ms)
    rows, result, base = [], {}, None
    for way in ways:
        texts, ms = texts_of[way], statistics.median(times[way])
        base = base or (texts, ms)
        same = sum(a == b for a, b in zip(base[0], texts, strict=True))
        scores: dict[str, Any] = {}
        if args.scores:
            scores, _ = score_captions(texts, refs)
        rows.append([way, round(ms, 1), round(base[1] / ms, 2), f"{same}/{len(texts)}",
                     *(f"{scores[k]:.4f}" if scores.get(k) is not None else "-"
                       for k in ("BLEU-4", "METEOR", "CIDEr"))])  # fmt: skip
        result[way] = {"ms_per_photo": ms, "rounds_ms": times[way], "identical": same, **scores}
    use(None)
    for folder in caches:
        shutil.rmtree(folder, ignore_errors=True)
    table = markdown_table(rows, ["decoding step", "beam 3 ms/photo (median)", "x torch",
                                  "captions identical", "BLEU-4", "METEOR", "CIDEr"])  # fmt: skip
    report(f"Decoders' step, {len(names)} dev photos, {args.threads} thread(s)", table, result,
           args.json)  # fmt: skip


if __name__ == "__main__":
    main()
