"""Search quality on the dev photos: sentence queries (R@1/5/10) and everyday concepts (P@10, R@50).

The index is that of ``photocap caption`` on the dev photos (``--db``: an index made with
``photocap caption DEV --write index --db FILE``; without it the script captions ``--limit``
dev photos itself). Two protocols, the maintainers' (the test split stays held out):

1. **Sentences** (Karpathy & Fei-Fei 2015): each photo's first reference caption is the query;
   the photo's rank among the results; R@K = share of queries whose photo is in the top K.
2. **Concepts**: everyday one-word queries; a photo is relevant when >= 2 of its 5 references
   use one of the concept's words (:data:`CONCEPTS`); precision of the top 10, recall of the
   top 50.

Both are measured for photocap's search and, in the same run, for the search before the
query language (every word required, operators ignored: ``--baseline``).

    python benchmarks/search_quality.py --data ../shared/flickr8k --db /tmp/dev.db
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report

# Concept query -> the words in a reference that make a photo relevant to it.
# fmt: off
CONCEPTS: dict[str, set[str]] = {
    "dog": {"dog", "dogs", "puppy", "puppies"}, "puppy": {"puppy", "puppies", "dog", "dogs"},
    "child": {"child", "children", "kid", "kids", "boy", "boys", "girl", "girls"},
    "kid": {"child", "children", "kid", "kids", "boy", "boys", "girl", "girls"},
    "children": {"child", "children", "kid", "kids"},
    "man": {"man", "men", "guy", "guys"}, "guy": {"man", "men", "guy", "guys"},
    "woman": {"woman", "women", "lady", "ladies"}, "lady": {"woman", "women", "lady", "ladies"},
    "people": {"people", "person", "persons", "crowd"},
    "bicycle": {"bicycle", "bicycles", "bike", "bikes", "biker", "bikers", "cyclist"},
    "bike": {"bicycle", "bicycles", "bike", "bikes", "biker", "bikers", "cyclist"},
    "water": {"water", "lake", "river", "ocean", "sea", "pool"}, "beach": {"beach", "shore"},
    "snow": {"snow", "snowy"}, "ball": {"ball", "balls"}, "grass": {"grass", "grassy", "lawn"},
    "city": {"city", "street", "streets", "urban"}, "street": {"street", "streets", "road"},
    "ocean": {"ocean", "sea", "waves", "surf"}, "mountain": {"mountain", "mountains", "hill"},
}
# fmt: on


def baseline_fts(query: str) -> str:
    """photocap's query before the query language: every word quoted and required."""
    words = []
    for word in query.split():
        word = word.replace('"', "").rstrip("*")
        if any(ch.isalnum() for ch in word) and word.upper() not in ("AND", "OR", "NOT", "NEAR"):
            words.append(f'"{word}"')
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/flickr8k"))
    parser.add_argument("--db", type=Path, help="an index of the dev photos (else captioned now)")
    parser.add_argument("--limit", type=int, default=1000, help="dev photos")
    parser.add_argument(
        "--near-sweep",
        action="store_true",
        help="also try other near-word settings (similarity x count)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from photocap.dataset import load_flickr8k
    from photocap.index import PhotoIndex

    data = load_flickr8k(args.data)
    names = data.split("dev", args.limit)
    with tempfile.TemporaryDirectory(prefix="photocap-search-") as tmp:
        db = args.db
        if db is None:
            lib = Path(tmp) / "dev"
            lib.mkdir()
            for name in names:
                (lib / name).symlink_to(data.image_path(name).resolve())
            db = Path(tmp) / "dev.db"
            subprocess.run([sys.executable, "-m", "photocap", "caption", str(lib), "--write",
                            "index", "--db", str(db)], check=True, capture_output=True)  # fmt: skip
        index = PhotoIndex(db, create=False)
        by_name = {Path(p).name: p for p in index.iter_paths()}
        names = [n for n in names if n in by_name]

        from photocap.checkpoint import default_model_path
        from photocap.lexicon import NEAR_SIMILARITY, NEAR_WORDS, NearWords

        lexicon = NearWords.from_model(default_model_path())
        from photocap.embedding import QueryEncoder

        encoder = QueryEncoder.from_model(default_model_path())
        has_vectors = index.db.table("photo_vectors").exists() and bool(
            index.db.execute("SELECT count(*) FROM photo_vectors").fetchone()[0]
        )

        def photocap_search(query: str, k: int) -> list[str]:
            return [Path(h.path).name for h in index.search(query, limit=k, rank_window=None)]

        def near_search(similarity: float, count: int, meaning: Any = None) -> Any:
            def near(word: str) -> list[str]:
                return lexicon.of(word, count, similarity)

            def search(query: str, k: int) -> list[str]:
                hits = index.search(
                    query, limit=k, rank_window=None, near=near, meaning=meaning,
                    meaning_model=encoder.model_id if encoder and meaning else None,
                )  # fmt: skip
                return [Path(h.path).name for h in hits]

            return search

        def baseline_search(query: str, k: int) -> list[str]:
            fts = baseline_fts(query)
            hits = index._ranked(fts, k, None, None) if fts else []
            return [Path(h.path).name for h in hits]

        ways = {}
        if encoder is not None and has_vectors:
            ways["photocap + near words + meaning (embedding)"] = near_search(
                NEAR_SIMILARITY, NEAR_WORDS, encoder.encode
            )
        ways |= {
            f"photocap + near words ({NEAR_SIMILARITY}, {NEAR_WORDS})": near_search(
                NEAR_SIMILARITY, NEAR_WORDS
            ),
            "photocap, words typed only (--exact)": photocap_search,
            "before (all words)": baseline_search,
        }
        if args.near_sweep:
            for similarity in (0.3, 0.35, 0.4, 0.5):
                for count in (2, 4):
                    ways[f"near words ({similarity}, {count})"] = near_search(similarity, count)
        rows: list[list[Any]] = []
        result: dict[str, Any] = {"photos": len(names)}
        for way, search in ways.items():
            ranks = []
            for name in names:
                found = search(data.captions[name][0], 10)
                ranks.append(found.index(name) + 1 if name in found else None)
            recall = {k: 100 * sum(r is not None and r <= k for r in ranks) / len(ranks)
                      for k in (1, 5, 10)}  # fmt: skip
            empty = 100 * sum(not search(data.captions[n][0], 1) for n in names[:200]) / 200
            precisions, recalls = [], []
            for concept, words in CONCEPTS.items():
                relevant = {
                    n for n in names
                    if sum(bool(words & set(re.findall(r"[a-z]+", c.lower())))
                           for c in data.captions[n]) >= 2
                }  # fmt: skip
                if not relevant:
                    continue
                top = search(concept, 50)
                precisions.append(100 * sum(n in relevant for n in top[:10]) / 10)
                recalls.append(100 * sum(n in relevant for n in top) / min(50, len(relevant)))
            p10, r50 = statistics.mean(precisions), statistics.mean(recalls)
            rows.append([way, recall[1], recall[5], recall[10], empty, p10, r50])
            result[way] = {"R@1": recall[1], "R@5": recall[5], "R@10": recall[10],
                           "no_result_pct": empty, "P@10": p10, "R@50": r50}  # fmt: skip
        index.close()
    table = markdown_table(rows, ["search", "sentence R@1", "R@5", "R@10",
                                  "sentences with no result %", f"concepts P@10 ({len(CONCEPTS)})",
                                  "concepts R@50"])  # fmt: skip
    report(f"Search quality on {len(names)} dev photos", table, result, args.json)


if __name__ == "__main__":
    main()
