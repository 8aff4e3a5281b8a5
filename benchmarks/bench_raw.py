"""Camera RAW decode cost against the same photo as a JPEG, in one run.

A 24-MP camera's DNG is built (``tests/raw_helpers.make_dng``: 6016x4016 16-bit sensor data,
uncompressed, ~51 MB, and a 6000x4000 q92 preview JPEG of a Flickr8k photo, or of a synthetic
gradient without ``../shared``); the baseline is that preview saved as a plain JPEG. Each is
decoded by ``photocap.image.decode_photo`` (what a decode worker runs: read, hash, decode,
resize) on one thread; the table shows the best of ``--repeats`` and the parts of the RAW's cost.

    python benchmarks/bench_raw.py
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, REPO, markdown_table, report

sys.path.insert(0, str(REPO / "tests"))  # make_dng: a DNG writer exists only there


def best_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="6000x4000", help="preview size (default 6000x4000)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    from PIL import Image
    from raw_helpers import make_dng

    from photocap.image import _open_raw, decode_photo, hash_bytes, read_bytes
    from photocap.preset import Preset

    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    photos = sorted((FLICKR8K / "Images").glob("*.jpg"))[:1]
    if photos:
        picture = Image.open(photos[0]).convert("RGB").resize((width, height))
    else:
        picture = Image.linear_gradient("L").convert("RGB").resize((width, height))
    preset = Preset()
    with tempfile.TemporaryDirectory() as tmp:
        jpeg = Path(tmp) / "photo.jpg"
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=92)
        jpeg.write_bytes(buf.getvalue())
        dng = make_dng(Path(tmp) / "photo.dng", picture=picture, sensor=(width + 16, height + 16),
                       taken="2024:01:02 03:04:05")  # fmt: skip
        data = read_bytes(dng)[0]
        for path in (jpeg, dng):  # warm the page cache and the imports
            decode_photo(str(path), preset)
        jpeg_ms = best_ms(lambda: decode_photo(str(jpeg), preset), args.repeats)
        raw_ms = best_ms(lambda: decode_photo(str(dng), preset), args.repeats)
        parts = {
            "read the file": best_ms(lambda: read_bytes(dng), args.repeats),
            "content hash": best_ms(lambda: hash_bytes(data), args.repeats),
            "LibRaw + preview decode (_open_raw)": best_ms(
                lambda: _open_raw(data, preset.size, None), args.repeats
            ),
        }
        sizes = {"jpeg_mb": jpeg.stat().st_size / 1e6, "dng_mb": dng.stat().st_size / 1e6}
    rows: list[list[Any]] = [
        [f"JPEG {width}x{height} ({sizes['jpeg_mb']:.1f} MB), baseline", jpeg_ms, 1.0],
        [f"DNG, same preview ({sizes['dng_mb']:.0f} MB)", raw_ms, raw_ms / jpeg_ms],
        *([f"  of which: {k}", v, ""] for k, v in parts.items()),
    ]
    table = markdown_table(rows, ["decode_photo, 1 thread", "best ms", "x JPEG"])
    data_out = {"jpeg_ms": jpeg_ms, "raw_ms": raw_ms, "parts_ms": parts, **sizes}
    report("RAW decode vs JPEG", table, data_out, args.json)


if __name__ == "__main__":
    main()
