"""What exact undo costs: the undo record's size per photo, its share of a write, and whether
``photocap revert`` gives back every photo byte for byte.

For each photo (a fresh copy of the library): ``--write exif`` writes the caption (timed whole),
the undo record's own work is timed alone on the same bytes (the patch from the written file
back to the original, and the two SHA-256 hashes:
:func:`photocap.metadata.provenance.record_undo`), the record's size in the sidecar is read
back, then ``photocap revert``'s library call runs and the photo's SHA-256 is compared with the
original's.

    python benchmarks/make_library.py /tmp/lib --count 12 --png 4 --tiff 2 --raw 2
    python benchmarks/bench_undo.py /tmp/lib
    python benchmarks/bench_undo.py ../shared/flickr8k/originals-dev-sample
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report

from photocap.metadata.exif_writer import ExifWriter
from photocap.metadata.infile import IN_FILE_FORMATS, Rewrite, detect_file_format
from photocap.metadata.provenance import Provenance, read_provenance, record_undo
from photocap.metadata.revert import revert_paths
from photocap.metadata.sidecars import sidecar_path
from photocap.metadata.xmp import XmpDocument
from photocap.writers import CaptionRecord, WriteOptions

CAPTION = "A brown dog runs through the grass near a wooden fence."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library", type=Path, help="a folder of photos (make_library.py)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    groups: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "lib"
        shutil.copytree(args.library, work)
        photos = sorted(p for p in work.rglob("*") if p.is_file() and not p.name.endswith(".xmp"))
        writer = ExifWriter(WriteOptions())
        for photo in photos:
            fmt = detect_file_format(photo)
            if fmt not in IN_FILE_FORMATS:
                continue
            original = photo.read_bytes()
            now = datetime.now(timezone.utc)
            start = time.perf_counter()
            outcome = writer.write(CaptionRecord(photo, CAPTION, -0.5, (), "bench", now))
            write_ms = (time.perf_counter() - start) * 1000
            if outcome.status != "written":
                print(f"{photo.name}: {outcome.status} {outcome.message}", file=sys.stderr)
                continue
            written = photo.read_bytes()
            start = time.perf_counter()
            record_undo(Provenance(), Rewrite(original, written), CAPTION)
            undo_ms = (time.perf_counter() - start) * 1000
            prov = read_provenance(XmpDocument.load(sidecar_path(photo)))
            start = time.perf_counter()
            list(revert_paths([photo]))
            revert_ms = (time.perf_counter() - start) * 1000
            exact = hashlib.sha256(photo.read_bytes()).digest() == hashlib.sha256(original).digest()
            groups.setdefault(fmt, []).append({
                "mb": len(original) / 1e6,
                "undo_bytes": len(prov.exif_undo or ""),
                "write_ms": write_ms,
                "undo_ms": undo_ms,
                "revert_ms": revert_ms,
                "exact": float(exact),
            })  # fmt: skip
    rows = []
    for fmt, found in sorted(groups.items()):
        med = {k: statistics.median(r[k] for r in found) for k in found[0]}
        rows.append([
            fmt, len(found), med["mb"], med["undo_bytes"], max(r["undo_bytes"] for r in found),
            med["write_ms"], med["undo_ms"], med["undo_ms"] / med["write_ms"], med["revert_ms"],
            f"{sum(r['exact'] for r in found):.0f}/{len(found)}",
        ])  # fmt: skip
    header = ["format", "photos", "MB (median)", "undo record bytes (median)", "max",
              "write ms", "undo ms", "undo / write", "revert ms",
              "sha256 equal after revert"]  # fmt: skip
    data = {"rows": [dict(zip(header, row, strict=True)) for row in rows]}
    report("Exact undo: cost and result per photo", markdown_table(rows, header), data, args.json)


if __name__ == "__main__":
    main()
