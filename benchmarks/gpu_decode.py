"""JPEG decoding for the model: photocap's CPU decode workers against batched nvJPEG on a GPU.

Issue 23's GPU target (>= 500 photos/s end to end on 12-MP JPEGs) cannot be met by CPU decode
workers alone: photocap's draft decode costs ~40-75 ms of a core per 12-MP photo, so 16 cores
give ~250-400 photos/s however fast the model is. This measures the lever before it is built
into the run, on the same photos in one run:

* ``cpu``: photocap's own decode (:func:`photocap.image.decode_photo`: read, hash, Pillow's
  draft decode, orientation, resize to the model's input) in a pool of ``--workers``
  processes;
* ``nvjpeg``: the files' bytes read on the CPU, decoded in batches by
  ``torchvision.io.decode_jpeg(device="cuda")`` (nvJPEG), resized on the GPU to the model's
  input (antialiased bilinear, as a stand-in for photocap's resize; EXIF orientation not
  applied, a turn of the small result costing nothing next to the decode); ``--device cpu``
  runs the same code with torchvision's CPU decoder (a smoke run, not a measurement).

Make the photos with ``benchmarks/make_library.py`` (12-MP camera JPEGs). On the device
machine (16 cores, one GPU), one call:

    python benchmarks/make_library.py /tmp/lib --count 64 --jobs 16 && \
    python benchmarks/gpu_decode.py --library /tmp/lib --count 512 --workers 16 --batch 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report


def _decode_cpu(args: tuple[str, Any]) -> bool:
    from photocap.image import DecodedPhoto, decode_photo

    return isinstance(decode_photo(args[0], args[1]), DecodedPhoto)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--library", type=Path, required=True, help="folder of JPEGs")
    parser.add_argument("--count", type=int, default=256, help="photos to decode (cycled)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=64, help="photos per nvJPEG call")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import json

    import torch
    import torch.nn.functional as F
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    from photocap.checkpoint import default_model_path, read_metadata
    from photocap.preset import Preset

    preset = Preset.from_dict(json.loads(read_metadata(default_model_path())["preset"]))
    size = preset.size
    files = sorted(p for p in args.library.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs in {args.library}")
    paths = [files[k % len(files)] for k in range(args.count)]
    rows, result = [], {}

    # CPU: photocap's decode in a process pool (the pool started and warmed before timing).
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(_decode_cpu, [(os.fspath(p), preset) for p in paths[: args.workers]]))
        started = time.perf_counter()
        ok = sum(pool.map(_decode_cpu, [(os.fspath(p), preset) for p in paths], chunksize=4))
        cpu_s = time.perf_counter() - started
    rows.append([f"photocap decode, {args.workers} processes", round(args.count / cpu_s, 1), ok])
    result["cpu"] = {"photos_per_s": args.count / cpu_s, "ok": ok, "workers": args.workers}

    # nvJPEG: bytes read here, decoded and resized on the device in batches.
    device = torch.device(args.device)

    def run_batches(photos: list[Path]) -> int:
        done = 0
        for start in range(0, len(photos), args.batch):
            chunk = photos[start : start + args.batch]
            data = [torchvision.io.read_file(os.fspath(p)) for p in chunk]
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # list of (3, H, W)
            for image in images:
                x = image[None].float()  # (1, 3, H, W)
                F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            done += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return done

    run_batches(paths[: args.batch])  # warm-up: the CUDA context, nvJPEG's handles
    started = time.perf_counter()
    done = run_batches(paths)
    gpu_s = time.perf_counter() - started
    where = "nvJPEG" if device.type == "cuda" else "torchvision CPU decoder (smoke)"
    rows.append([f"{where}, batches of {args.batch}", round(done / gpu_s, 1), done])
    result["device"] = {"photos_per_s": done / gpu_s, "ok": done, "device": str(device),
                        "batch": args.batch}  # fmt: skip
    table = markdown_table(rows, ["decode", "photos/s", "decoded"])
    report(f"JPEG decode for the model, {args.count} photos", table, result, args.json)


if __name__ == "__main__":
    main()
