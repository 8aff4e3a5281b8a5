"""`photocap search` latency on a large index (default 1,000,000 captions).

The index is built by :class:`photocap.index.PhotoIndex` itself, so the table, the FTS5 config
(porter unicode61) and the sync triggers are the real ones; rows are inserted in bulk
(``executemany`` in one transaction, triggers firing). Captions are real Flickr8k captions
(``../shared/flickr8k/captions.txt``) drawn at random, else sentences from a small grammar.
Each query runs through ``PhotoIndex.search`` (what ``photocap search`` calls, limit 20) after
one warm-up; median and p95 over ``--repeats`` rounds of all queries. The same queries run again
under each of ``FILTERS`` (``photocap search --in`` / ``--since``): rows sit 1,000 to a folder and
are dated over 25 years.

    python benchmarks/bench_search.py --rows 1000000
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report

QUERIES = ("dog", "dogs running", "beach", "red shirt", "girl", "man bike", "snow", "water",
           "two dogs playing", "a", "child grass ball", "mountain", "climbing rock", "surf*",
           "woman street", "black and white dog")  # fmt: skip


# (label, make_search_filter arguments): a folder of 1,000 photos, one year of 25, both.
FILTERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("no filter", {}),
    ("--in one folder", {"under": ["/photos/0050"]}),
    ("--since/--until one year", {"since": "2012", "until": "2012"}),
    ("--in + --since", {"under": ["/photos/0050"], "since": "2012-06"}),
)


def caption_source(rng: random.Random) -> list[str]:
    path = FLICKR8K / "captions.txt"
    if path.is_file():
        lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
        caps = [line.split(",", 1)[1].strip() for line in lines if "," in line]
        if caps:
            return caps
    who = ["A dog", "Two dogs", "A man", "A woman", "A child", "A girl", "A boy", "People"]
    what = ["runs", "plays", "jumps", "sits", "stands", "walks", "climbs", "swims"]
    where = ["on the beach", "in the snow", "through the grass", "on a rock", "in the water",
             "on the street", "near a mountain", "with a red ball"]  # fmt: skip
    return [f"{a} {b} {c}." for a in who for b in what for c in where]


def build(db_path: Path, rows: int, seed: int, dim: int = 0) -> float:
    from photocap.index import PhotoIndex

    rng = random.Random(seed)
    captions = caption_source(rng)
    started = time.perf_counter()
    with PhotoIndex(db_path) as index:
        conn = index.db.conn
        chunk = 50_000
        for start in range(0, rows, chunk):
            batch = [(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", rng.choice(captions), -0.5,
                      "[]", "bench@0", "2024-01-01T00:00:00+00:00", "index",
                      f"{2000 + i % 25}-{1 + i % 12:02d}-15T12:00:00")
                     for i in range(start, min(rows, start + chunk))]  # fmt: skip
            with index.transaction():
                conn.executemany(
                    "INSERT INTO photos (path, caption, score, alternatives, model_id, "
                    "captioned_at, outputs, date_taken) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
                if dim:  # a random unit vector per photo, as a model with an embedding stores
                    import numpy as np

                    gen = np.random.default_rng(seed + start)
                    vecs = gen.normal(size=(len(batch), dim)).astype(np.float32)
                    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                    index.set_vectors(
                        {b[0]: v.astype("<f2").tobytes() for v, b in zip(vecs, batch, strict=True)}
                    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000, help="captions (default 20,000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, default=None, help="keep/reuse the index here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vectors", type=int, default=0, metavar="DIM",
        help="also store a DIM-d vector per photo and time search by meaning (photocap: 512)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from photocap.index import PhotoIndex, make_search_filter

    workdir = Path(tempfile.mkdtemp(prefix="photocap-search-"))
    try:
        db_path = args.db or workdir / "index.db"
        build_s = 0.0
        if not db_path.exists():
            build_s = build(db_path, args.rows, args.seed, args.vectors)
        with PhotoIndex(db_path) as index:
            rows_in = index.count()
            timings: dict[str, list[float]] = {q: [] for q in QUERIES}
            hits: dict[str, int] = {}
            for q in QUERIES:
                hits[q] = len(index.search(q))  # warm-up (page cache)
            for _ in range(args.repeats):
                for q in QUERIES:
                    t0 = time.perf_counter()
                    index.search(q)
                    timings[q].append((time.perf_counter() - t0) * 1e3)
            filtered: dict[str, list[float]] = {}
            if args.vectors:
                import numpy as np

                query = np.random.default_rng(1).normal(size=args.vectors).astype(np.float32)
                query /= np.linalg.norm(query)

                def search(q: str) -> Any:
                    return index.search(q, meaning=lambda _: query, meaning_model="bench@0")

                for q in QUERIES:
                    search(q)  # warm-up
                filtered["by meaning (vectors of the top 500 per tier)"] = meant = []
                for _ in range(args.repeats):
                    for q in QUERIES:
                        t0 = time.perf_counter()
                        search(q)
                        meant.append((time.perf_counter() - t0) * 1e3)
            for label, kwargs in FILTERS:
                only = make_search_filter(**kwargs)
                for q in QUERIES:
                    index.search(q, only=only)  # warm-up
                filtered[label] = []
                for _ in range(args.repeats):
                    for q in QUERIES:
                        t0 = time.perf_counter()
                        index.search(q, only=only)
                        filtered[label].append((time.perf_counter() - t0) * 1e3)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    every = sorted(t for ts in timings.values() for t in ts)
    median = statistics.median(every)
    p95 = every[min(len(every) - 1, int(0.95 * len(every)))]
    table_rows = [[q, hits[q], statistics.median(ts), max(ts)] for q, ts in timings.items()]
    table_rows.append(["**all queries**", "", median, p95])
    table = markdown_table(table_rows, ["query", "hits (limit 20)", "median ms", "max ms / p95"])
    filter_rows = []
    for label, ts in filtered.items():
        ts.sort()
        filter_rows.append(
            [label, statistics.median(ts), ts[min(len(ts) - 1, int(0.95 * len(ts)))]]
        )
    table += "\n\n" + markdown_table(filter_rows, ["filter (all queries)", "median ms", "p95 ms"])
    data = {"rows": rows_in, "build_s": build_s, "median_ms": median, "p95_ms": p95,
            "per_query_ms": timings, "filtered_ms": filtered}  # fmt: skip
    report(f"search latency on {rows_in:,} captions (built in {build_s:.0f} s)", table, data,
           args.json)  # fmt: skip


if __name__ == "__main__":
    main()
