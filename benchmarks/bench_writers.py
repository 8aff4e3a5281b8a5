"""What each file writer costs per photo, and how much of it is reading the photo's own caption.

Both writers look for a caption a person wrote inside the photo (EXIF, embedded XMP, IPTC)
before writing theirs (and a ``--write index`` run looks for the index), which means reading the
photo's bytes again after the decoder did. This
script times, on camera-sized JPEGs (``make_library.py``), in one run:

* ``read``: reading the photo's bytes alone (the floor of any in-file check);
* ``check``: the look for a person's caption (``find_human_caption``: its sidecars, then the
  file read and its EXIF / XMP / IPTC parsed), which the sidecar writer and ``--write index``
  runs do for every photo;
* ``xmp``: the whole ``--write xmp`` writer (check + sidecar merge + atomic write);
* ``exif``: the whole ``--write exif`` writer (read, rebuild, verify, decode check at 1/8
  scale, atomic write, provenance sidecar).

Each photo is written once per writer on a fresh copy of the library (first writes, the
common case). Run twice: the first run warms the page cache, as a caption run's decoder does.

    python benchmarks/make_library.py /tmp/lib --count 48
    python benchmarks/bench_writers.py /tmp/lib
    python benchmarks/make_library.py /tmp/scans --count 0 --tiff 6    # film scans, TIFF
    python benchmarks/bench_writers.py /tmp/scans --pattern '*.tif'
    python benchmarks/make_library.py /tmp/shots --count 0 --png 6     # screenshots, PNG
    python benchmarks/bench_writers.py /tmp/shots --pattern '*.png'
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report

from photocap.metadata.authorship import find_human_caption
from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.sidecar_writer import XmpWriter
from photocap.writers import CaptionRecord, WriteOptions


def _time(photos: list[Path], fn: Callable[[Path], object]) -> list[float]:
    out = []
    for photo in photos:
        start = time.perf_counter()
        fn(photo)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library", type=Path, help="a folder of JPEGs (make_library.py)")
    parser.add_argument("--pattern", default="*.jpg", help="which photos (default *.jpg)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sources = sorted(p for p in args.library.rglob(args.pattern))
    if not sources:
        sys.exit(f"no {args.pattern} in {args.library}")
    caption = "A dog runs through the grass."

    def record(photo: Path) -> CaptionRecord:
        now = datetime.now(timezone.utc)
        return CaptionRecord(photo, caption, -0.5, (), "bench", now)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("read", "check", "xmp", "exif"):
            work = Path(tmp) / name
            shutil.copytree(args.library, work)
            photos = sorted(work.rglob(args.pattern))
            for p in photos:  # warm the page cache, as the decoder does before any writer
                p.read_bytes()
            if name == "read":
                ms = _time(photos, lambda p: p.read_bytes())
            elif name == "check":
                ms = _time(photos, lambda p: find_human_caption(p, caption))
            else:
                writer = (XmpWriter if name == "xmp" else ExifWriter)(WriteOptions())
                ms = _time(photos, lambda p, w=writer: w.write(record(p)))  # type: ignore[misc]
            size = sum(p.stat().st_size for p in photos) / len(photos) / 1e6
            rows.append([name, len(photos), statistics.median(ms), statistics.fmean(ms), size])
            shutil.rmtree(work)
    header = ["step", "photos", "median ms", "mean ms", "MB/photo"]
    data = {"rows": [dict(zip(header, row, strict=True)) for row in rows]}
    report("File writers, per photo", markdown_table(rows, header), data, args.json)


if __name__ == "__main__":
    main()
