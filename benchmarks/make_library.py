"""Generate a realistic photo library: camera-sized JPEGs that cost what real photos cost.

Real libraries are 12-50 MP JPEGs straight from phones and cameras. Decoding them is dominated by
entropy (Huffman) decoding, whose cost grows with the number of bytes, so an upscaled small photo
(smooth, ~1 MB) would flatter any benchmark. Each generated photo is therefore:

* a real photo (``--sources``: Flickr8k originals, else ``examples/``) cropped to the camera's
  aspect ratio and upscaled to 4032x3024 (landscape) or 3024x4032 (portrait, every 4th photo);
* plus sensor-like noise (Gaussian, sigma ``--noise`` = 7; one precomputed noise field rolled by
  a random offset per photo, so no two photos have the same bytes), saved at quality 92 with 4:2:0
  chroma subsampling, like a phone: 3-5 MB per photo;
* with camera EXIF (Make, Model, DateTimeOriginal; piexif when installed, else Pillow);
* every third photo stored rotated (pixels turned 90 degrees) with EXIF Orientation 6, as phones
  do, so the reader must rotate it back.

``--png`` / ``--heic`` / ``--tiff`` add a few screenshots (PNG, 1920x1080), iPhone-style HEIC
photos (pillow-heif; 1008x756, since x265 needs ~20 s for 12 MP) and film scans as archivists
keep them (TIFF, LZW, 8-bit RGB at ``--size``: ~30 MB each). ``--size 640x480`` makes small, cheap
files for runs where decode cost does not matter (re-runs, memory with 10,000 photos).
``--raw N`` shoots the first N photos as RAW+JPEG, as a camera set to both does: a DNG of the
same stem beside each JPEG, the JPEG's picture as its preview, 16-bit sensor data at ``--size``
(``tests/raw_helpers.make_dng``; ~25 MB at 12 MP).

    python benchmarks/make_library.py /tmp/lib --count 100            # 100 camera JPEGs
    python benchmarks/make_library.py /tmp/small --count 10000 --size 640x480 --noise 3
    python benchmarks/make_library.py /tmp/pairs --count 16 --raw 16  # RAW+JPEG pairs
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, REPO

CAMERAS = (
    ("Apple", "iPhone 13"), ("Canon", "Canon EOS R6"), ("SONY", "ILCE-7M3"),
    ("samsung", "SM-G991B"), ("Google", "Pixel 7"), ("FUJIFILM", "X-T4"),
)  # fmt: skip


def default_sources() -> Path:
    dev = FLICKR8K / "originals-dev-sample"
    return dev if dev.is_dir() else REPO / "examples"


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def exif_bytes(index: int, orientation: int) -> bytes:
    """Camera EXIF for photo ``index``: Make, Model, DateTimeOriginal, Orientation."""
    make, model = CAMERAS[index % len(CAMERAS)]
    stamp = time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(1_650_000_000 + 97 * index))
    try:
        import piexif

        return piexif.dump({
            "0th": {piexif.ImageIFD.Make: make, piexif.ImageIFD.Model: model,
                    piexif.ImageIFD.Orientation: orientation,
                    piexif.ImageIFD.Software: "photocap-benchmark"},
            "Exif": {piexif.ExifIFD.DateTimeOriginal: stamp,
                     piexif.ExifIFD.DateTimeDigitized: stamp},
        })  # fmt: skip
    except ImportError:  # Pillow writes the same tags
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112], exif[0x0131] = (
            make,
            model,
            orientation,
            "photocap-benchmark",
        )
        exif.get_ifd(0x8769)[0x9003] = stamp
        return exif.tobytes()


def base_frames(sources: Path, size: tuple[int, int], count: int) -> list[np.ndarray]:
    """``count`` source photos, cropped to the aspect of ``size`` and resized to it (uint8 HWC)."""
    files = sorted(p for p in sources.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no source photos in {sources}")
    frames = []
    for path in files[:count]:
        with Image.open(path) as img:
            upright = ImageOps.exif_transpose(img).convert("RGB")
            fitted = ImageOps.fit(upright, size, Image.Resampling.BICUBIC)
        frames.append(np.asarray(fitted))
    return frames


def nested_libraries(
    work: Path, counts: tuple[int, ...], size: str, kind: str = "jpeg"
) -> dict[int, Path]:
    """Generated ``size`` ("WxH") JPEGs (``kind="tiff"``: film scans) in ``work``, linked into
    one library per count (``work/libN``: the first N photos), for marginal rates between
    library sizes."""
    import os

    if kind not in ("jpeg", "tiff"):
        raise ValueError(f"kind must be jpeg or tiff, not {kind!r}")
    width, height = (int(v) for v in size.lower().split("x"))
    if kind == "tiff":
        generate(work / "all", 0, size=(width, height), tiff=max(counts))
    else:
        generate(work / "all", max(counts), size=(width, height), jobs=os.cpu_count() or 1)
    files = sorted(f for f in (work / "all").rglob("*") if f.suffix in (".jpg", ".tif"))
    libs = {}
    for n in counts:
        libs[n] = work / f"lib{n}"
        libs[n].mkdir()
        for f in files[:n]:
            os.link(f, libs[n] / f.name)
    return libs


def generate(
    out: Path, count: int, size: tuple[int, int] = (4032, 3024), quality: int = 92,
    noise: float = 7.0, png: int = 0, heic: int = 0, seed: int = 0, sources: Path | None = None,
    frames: int = 6, jobs: int = 1, tiff: int = 0, raw: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Write the library into ``out``; returns a summary (counts, bytes, seconds).

    ``jobs`` > 1 splits the photos over that many processes (each loads its own base frames).
    """
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    src = sources or default_sources()
    jobs = max(1, min(jobs, count))
    step = -(-count // jobs) if count else 1
    tasks = [(out, start, min(count, start + step), size, quality, noise, seed, src, frames)
             for start in range(0, count, step)]  # fmt: skip
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            parts = list(pool.map(_write_range, tasks))
    else:
        parts = [_write_range(t) for t in tasks]
    total_bytes = sum(p[0] for p in parts)
    rotated = sum(p[1] for p in parts)
    first = base_frames(src, size, 1)[0] if png or heic or tiff else None
    extras = {"png": 0, "heic": 0, "tiff": 0}
    if first is not None:
        extras = _extras(out, first, png, heic, quality, tiff, noise)
    raws = _raw_pairs(out, min(raw, count), size)
    w, h = size
    return {
        "folder": str(out), "jpegs": count, "size": f"{w}x{h}", "quality": quality,
        "noise_sigma": noise, "rotated_exif6": rotated, "mean_jpeg_mb": round(
            total_bytes / max(count, 1) / 1e6, 2), "png": extras["png"], "heic": extras["heic"],
        "tiff": extras["tiff"], "raw": raws, "seconds": round(time.perf_counter() - started, 1),
        "sources": str(src),
    }  # fmt: skip


def _write_range(task: tuple[Any, ...]) -> tuple[int, int]:
    """Write photos ``start .. stop-1``; returns (bytes written, photos stored rotated)."""
    out, start, stop, (w, h), quality, noise, seed, src, frames = task
    rng = np.random.default_rng([seed, start])
    landscape = base_frames(src, (w, h), frames)
    portrait = base_frames(src, (h, w), max(1, frames // 2)) if w != h else landscape
    # One noise field, big enough for either orientation; each photo rolls it differently.
    side = max(w, h)
    field = rng.normal(0.0, noise, (side, side, 3)).clip(-127, 127).astype(np.int8)
    total_bytes = rotated = 0
    for i in range(start, stop):
        pool = portrait if i % 4 == 3 else landscape
        frame = pool[i % len(pool)]
        fh, fw = frame.shape[:2]
        dy, dx = (int(x) for x in rng.integers(0, side, 2))
        grain = np.roll(field, (dy, dx), axis=(0, 1))[:fh, :fw]
        pixels = (frame.astype(np.int16) + grain).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        orientation = 1
        if i % 3 == 2:  # stored sideways, displayed upright through EXIF Orientation 6
            img = img.transpose(Image.Transpose.ROTATE_90)
            orientation = 6
            rotated += 1
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, subsampling=2, exif=exif_bytes(i, orientation))
        (out / f"IMG_{i:05d}.jpg").write_bytes(buf.getvalue())
        total_bytes += buf.tell()
    return total_bytes, rotated


def _raw_pairs(out: Path, count: int, size: tuple[int, int]) -> int:
    """A DNG beside each of the first ``count`` JPEGs: the RAW of a RAW+JPEG shot."""
    if not count:
        return 0
    sys.path.insert(0, str(REPO / "tests"))  # make_dng: a DNG writer exists only there
    from raw_helpers import make_dng

    for i in range(count):
        jpeg = out / f"IMG_{i:05d}.jpg"
        with Image.open(jpeg) as img:
            picture = img.convert("RGB")  # as stored: the DNG says the same orientation
            orientation = img.getexif().get(0x0112, 1)
        make_dng(jpeg.with_suffix(".DNG"), picture=picture, orientation=orientation, sensor=size)
    return count


def _extras(
    out: Path, frame: np.ndarray, png: int, heic: int, quality: int, tiff: int = 0,
    noise: float = 0.0,
) -> dict[str, int]:  # fmt: skip
    """A few PNG screenshots, HEIC photos (1008x756: x265 encoding 12 MP takes ~20 s) and
    film scans (TIFF, LZW, grain like the JPEGs' noise, a scanner's Make/Model)."""
    made = {"png": 0, "heic": 0, "tiff": 0}
    base = Image.fromarray(frame)
    rng = np.random.default_rng(1)
    for i in range(tiff):
        grain = rng.normal(0.0, noise, frame.shape)
        scan = Image.fromarray(np.clip(frame + grain, 0, 255).astype(np.uint8))
        info = {271: "ScanCo", 272: "FilmScan 9", 305: "ScanSoft 2.0"}
        scan.save(out / f"Scan_{i:03d}.tif", "TIFF", compression="tiff_lzw", tiffinfo=info)
        made["tiff"] += 1
    for i in range(png):
        shot = base.resize((1920, 1080), Image.Resampling.BILINEAR)
        shot.save(out / f"Screenshot_{i:03d}.png", optimize=False)
        made["png"] += 1
    if heic:
        try:
            import pillow_heif
        except ImportError:
            return made
        pillow_heif.register_heif_opener()
        for i in range(heic):
            exif = exif_bytes(i, 1)
            half = base.resize((base.width // 4, base.height // 4), Image.Resampling.BILINEAR)
            half.save(out / f"IMG_H{i:04d}.heic", format="HEIF", quality=quality - 10, exif=exif)
            made["heic"] += 1
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder to fill (created)")
    parser.add_argument("--count", type=int, default=24, help="JPEGs to write (default 24)")
    parser.add_argument("--size", default="4032x3024", help="landscape WxH (portrait: swapped)")
    parser.add_argument("--quality", type=int, default=92)
    parser.add_argument("--noise", type=float, default=7.0, help="sensor noise sigma (0-255)")
    parser.add_argument("--png", type=int, default=0, help="PNG screenshots to add")
    parser.add_argument("--heic", type=int, default=0, help="HEIC photos to add (pillow-heif)")
    parser.add_argument("--tiff", type=int, default=0, help="TIFF film scans to add")
    parser.add_argument("--raw", type=int, default=0, help="photos shot as RAW+JPEG (a DNG each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--frames", type=int, default=6, help="distinct source photos to reuse")
    parser.add_argument("--sources", type=Path, default=None, help="folder of source photos")
    args = parser.parse_args(argv)
    summary = generate(
        args.out, args.count, parse_size(args.size), args.quality, args.noise, args.png,
        args.heic, args.seed, args.sources, args.frames, args.jobs, args.tiff, args.raw,
    )  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
