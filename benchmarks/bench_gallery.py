"""`photocap serve` page times on a large index (default 100,000 photos), and thumbnails.

The index is built as ``bench_search.py`` builds it (the real table, FTS5 and triggers; real
Flickr8k captions drawn at random; scores spread so the review order means something). Each
page is requested through the gallery's WSGI app (Flask's test client: the app's own time,
no network), after one warm-up; median and p95 over ``--repeats``. Pages: the first page of
photos, a page deep in the library (offset ~90 %), the review page (sorted by confidence) first
and deep, a search, a deep search page, a photo's page. Then thumbnails of the 48 full-size dev
photos (``../shared/flickr8k/originals-dev-sample``, skipped without it): made (cold cache) and
served from the cache.

    python benchmarks/bench_gallery.py --rows 100000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report
from bench_search import caption_source

BASE = "http://127.0.0.1:8750"


def build(db_path: Path, rows: int, seed: int) -> None:
    from photocap.index import PhotoIndex

    rng = random.Random(seed)
    captions = caption_source(rng)
    with PhotoIndex(db_path) as index:
        conn = index.db.conn
        for start in range(0, rows, 50_000):
            batch = [(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", rng.choice(captions),
                      -rng.random() * 3, "[]", "bench@0", "2024-01-01T00:00:00+00:00", "index")
                     for i in range(start, min(rows, start + 50_000))]  # fmt: skip
            with index.transaction():
                conn.executemany(
                    "INSERT INTO photos (path, caption, score, alternatives, model_id, "
                    "captioned_at, outputs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )


def timed(client: Any, url: str, repeats: int) -> tuple[float, float, int]:
    """(median ms, p95 ms, bytes) of GET ``url``."""
    response = client.get(url, base_url=BASE)  # warm-up
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url, base_url=BASE)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], len(response.data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from photocap.gallery import PAGE_SIZE, GalleryConfig, create_app
    from photocap.thumbnails import ThumbnailCache

    work = Path(tempfile.mkdtemp(prefix="photocap-gallery-"))
    db = work / "index.db"
    started = time.perf_counter()
    build(db, args.rows, 0)
    build_s = time.perf_counter() - started
    client = create_app(GalleryConfig(db=db, thumbnails=work / "thumbs")).test_client()
    deep = int(args.rows * 0.9) // PAGE_SIZE
    pages = [
        ("photos, first page", "/"),
        (f"photos, page {deep + 1} (offset {deep * PAGE_SIZE:,})", f"/?page={deep}"),
        ("review, first page", "/review"),
        (f"review, page {deep + 1}", f"/review?page={deep}"),
        ("search 'dog'", "/?q=dog"),
        ("search 'dog', page 10", "/?q=dog&page=9"),
        ("search 'a black dog runs along the beach'", "/?q=a+black+dog+runs+along+the+beach"),
        ("a photo's page", f"/photo/{args.rows // 2}"),
    ]
    rows = []
    for label, url in pages:
        median, p95, size = timed(client, url, args.repeats)
        rows.append((label, round(median, 1), round(p95, 1), f"{size / 1024:.0f} KiB"))
    table = markdown_table(rows, ["page", "median ms", "p95 ms", "size"])

    thumbs: dict[str, Any] = {}
    originals = FLICKR8K / "originals-dev-sample"
    photos = sorted(originals.glob("*.jpg"))
    if photos:
        cache = ThumbnailCache(work / "thumbs-dev")
        cold, warm = [], []
        for k, photo in enumerate(photos):
            t0 = time.perf_counter()
            cache.get(photo, f"h{k}")
            t1 = time.perf_counter()
            cache.get(photo, f"h{k}")
            cold.append((t1 - t0) * 1000)
            warm.append((time.perf_counter() - t1) * 1000)
        thumbs = {"photos": len(photos), "made_ms_median": round(statistics.median(cold), 1),
                  "cached_ms_median": round(statistics.median(warm), 2)}  # fmt: skip
        made = [("made (cold cache)", thumbs["made_ms_median"]),
                ("from the cache", thumbs["cached_ms_median"])]  # fmt: skip
        header = [f"thumbnail of a dev photo ({len(photos)} photos)", "median ms"]
        table += "\n\n" + markdown_table(made, header)
    data = {"rows": args.rows, "build_s": round(build_s, 1), "pages": rows, "thumbnails": thumbs}
    report(f"photocap serve on {args.rows:,} photos", table, data, args.json)


if __name__ == "__main__":
    main()
