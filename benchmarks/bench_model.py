"""The model stage alone: encoder and beam search images/s on random pixels, CPU or GPU.

Imports only torch and photocap.checkpoint / model / preset (plus the standard library), so it
runs on a bare GPU machine without Pillow extras, SQLite tools or the benchmark library.

For each batch size it times ``Captioner.encode`` (uint8 pixels -> features, the same call the
pipeline makes), ``Captioner.caption_features`` (batched beam search) and the two together,
after a warm-up batch (cuDNN autotuning, allocator). ``--variants`` compares encoder code paths:
``shipped`` (``Captioner.encode`` as loaded: on CPU BatchNorm folded + channels-last, see
``Captioner.optimize_for_inference``), ``eager`` (the plain module, the code path before that),
``channels_last`` (plain module, NHWC), ``folded`` (BN folded, NCHW) and ``frozen``
(TorchScript trace + freeze).

    python benchmarks/bench_model.py                                   # CPU, batch 16
    python benchmarks/bench_model.py --device cuda --batch-sizes 64,256,512 --batches 10
    python benchmarks/bench_model.py --variants shipped,eager,channels_last,folded --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _encoder_variant(captioner: Any, variant: str, batch: int) -> Any:
    """A callable uint8 pixels -> features for the variant (eager = the shipped code path)."""
    import torch

    if variant == "shipped":
        return captioner.encode
    preset, device = captioner.preset, captioner.device
    encoder = captioner.encoder.eval()
    if variant == "eager":  # the plain module, as before optimize_for_inference

        def run_eager(pixels: Any) -> Any:
            return encoder(preset.normalize(pixels.to(device))).float()

        return run_eager
    if variant == "folded":  # BN folded, NCHW (optimize_for_inference without channels-last)
        from photocap.encoder import fold_batchnorm

        with torch.inference_mode(False), torch.no_grad():
            fused: Any = fold_batchnorm(encoder)  # _ChannelsLast around the folded copy
            folded = fused.module.to(memory_format=torch.contiguous_format)

        def run_folded(pixels: Any) -> Any:
            return folded(preset.normalize(pixels.to(device))).float()

        return run_folded
    if variant == "channels_last":
        encoder = encoder.to(memory_format=torch.channels_last)

        def run(pixels: Any) -> Any:
            x = preset.normalize(pixels.to(device)).contiguous(memory_format=torch.channels_last)
            return encoder(x).float()

        return run
    if variant == "frozen":
        example = torch.zeros(batch, 3, preset.size, preset.size, device=device)
        with torch.inference_mode(False), torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(encoder, example).eval())

        def run_frozen(pixels: Any) -> Any:
            with torch.no_grad():
                return frozen(preset.normalize(pixels.to(device))).float()

        return run_frozen
    raise SystemExit(f"unknown variant {variant!r}")


def bench(captioner: Any, batch: int, batches: int, beam: int, variant: str) -> dict[str, Any]:
    import torch

    size = captioner.preset.size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    if captioner.device.type == "cuda":
        pixels = pixels.pin_memory()
    encode = _encoder_variant(captioner, variant, batch)
    with torch.inference_mode():
        feats = encode(pixels)  # warm-up
        captioner.caption_features(feats, beam_size=beam)
        _sync(captioner.device)
        t_enc = t_beam = 0.0
        for _ in range(batches):
            t0 = time.perf_counter()
            feats = encode(pixels)
            _sync(captioner.device)
            t1 = time.perf_counter()
            captioner.caption_features(feats, beam_size=beam)  # ends in .tolist(): synced
            t2 = time.perf_counter()
            t_enc += t1 - t0
            t_beam += t2 - t1
    n = batch * batches
    return {
        "batch": batch, "variant": variant, "threads": torch.get_num_threads(),
        "images": n, "encoder_images_per_s": n / t_enc, "beam_images_per_s": n / t_beam,
        "model_images_per_s": n / (t_enc + t_beam),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--random-model", action="store_true",
                        help="tiny random model instead (smoke tests)")  # fmt: skip
    parser.add_argument("--batch-sizes", default="16", help="comma list (default 16)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per size")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--variants", default="shipped",
                        help="shipped,eager,channels_last,folded,frozen")  # fmt: skip
    parser.add_argument("--threads", default="", help="CPU: comma list of torch thread counts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from photocap.checkpoint import build_random_captioner, load_captioner

    if args.random_model:
        captioner = build_random_captioner(device=args.device)
    else:
        captioner = load_captioner(args.model, device=args.device)
    threads = [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]
    rows, results = [], []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for variant in args.variants.split(","):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                r = bench(captioner, batch, args.batches, args.beam_size, variant)
                results.append(r)
                rows.append([variant, r["threads"], batch, r["encoder_images_per_s"],
                             r["beam_images_per_s"], r["model_images_per_s"]])  # fmt: skip
    table = markdown_table(rows, ["encoder", "torch threads", "batch", "encoder img/s",
                                  "beam search img/s", "model img/s"])  # fmt: skip
    data: dict[str, Any] = {"device": args.device, "model_id": captioner.model_id,
                            "beam_size": args.beam_size, "results": results,
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    report(f"model stage ({args.device}, beam {args.beam_size})", table, data, args.json)
    if args.json is None:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
