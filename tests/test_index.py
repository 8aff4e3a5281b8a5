"""The SQLite index: schema, migrations, search, failures, prune, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from photocap.errors import IndexDbError, QueryError
from photocap.index import (
    MIGRATIONS,
    PhotoFacts,
    PhotoIndex,
    RunRecord,
    SearchFilter,
    build_fts_query,
    index_error,
    make_search_filter,
)
from photocap.writers import CaptionRecord, WriteOptions

CAPTIONS = {
    "/p/dog.jpg": "A brown dog runs through the grass.",
    "/p/dogs.jpg": "Two dogs are running on the beach.",
    "/p/girl.jpg": "A girl in a pink dress climbs the stairs.",
    "/p/bike.jpg": "A man rides a bike down a dirt road.",
}


def _record(path: str, caption: str) -> CaptionRecord:
    return CaptionRecord(
        path=Path(path), caption=caption, score=-0.5, alternatives=("Alt one.", "Alt two."),
        model_id="m@1", captioned_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )  # fmt: skip


@pytest.fixture
def index(tmp_path: Path) -> PhotoIndex:
    idx = PhotoIndex(tmp_path / "sub" / "index.db")
    writer = RunRecord(idx)
    for path, caption in CAPTIONS.items():
        facts = PhotoFacts(size=10, mtime_ns=1, content_hash="h" + path, width=4, height=3)
        writer.note_photo(path, facts)
        writer.write(_record(path, caption))
    writer.write_failure("/p/broken.jpg", "truncated JPEG")
    writer.close()
    yield idx
    idx.close()


def test_schema_wal_fts_and_migrations(index: PhotoIndex) -> None:
    db = index.db
    assert db.journal_mode == "wal"
    columns = set(db["photos"].columns_dict)
    for col in ("path", "caption", "size", "mtime_ns", "content_hash", "width", "height",
                "date_taken", "camera", "score", "alternatives", "model_id", "captioned_at",
                "error"):  # fmt: skip
        assert col in columns
    assert db["photos"].pks == ["path"]
    assert db["photos"].detect_fts() == "photos_fts"  # what datasette uses for search
    assert "porter" in db["photos_fts"].schema
    assert list(db["photos_fts"].columns_dict) == [
        "caption", "human_caption", "alternatives", "place", "keywords"
    ]  # fmt: skip
    assert index.applied_migrations() == [name for name, _ in MIGRATIONS]


def test_photo_facts_are_typed_and_a_fact_left_out_keeps_the_column(index: PhotoIndex) -> None:
    with pytest.raises(TypeError):
        PhotoFacts(widht=5)  # type: ignore[call-arg]  # a misspelt column is an error
    writer = RunRecord(index)
    writer.note_photo("/p/dog.jpg", PhotoFacts(width=8))
    writer.note_photo("/p/dog.jpg", PhotoFacts(camera=None, height=None))
    writer.write(_record("/p/dog.jpg", CAPTIONS["/p/dog.jpg"]))
    writer.close()
    row = index.get_dict("/p/dog.jpg")
    assert row is not None
    assert (row["width"], row["height"], row["size"], row["camera"]) == (8, None, 10, None)


def test_row_contents(index: PhotoIndex) -> None:
    row = index.get_dict("/p/dog.jpg")
    assert row is not None
    assert row["caption"] == CAPTIONS["/p/dog.jpg"]
    assert json.loads(row["alternatives"]) == ["Alt one.", "Alt two."]
    assert row["captioned_at"] == "2024-01-02T03:04:05+00:00"
    assert (row["width"], row["height"], row["error"]) == (4, 3, None)
    broken = index.get("/p/broken.jpg")
    assert broken is not None and broken.error == "truncated JPEG" and not broken.is_captioned


def test_reopen_runs_no_migration_twice(tmp_path: Path, index: PhotoIndex) -> None:
    again = PhotoIndex(index.path)
    assert again.applied_migrations() == index.applied_migrations()
    assert again.count() == 5
    again.close()


def test_an_index_from_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    # An index as version 0.x left it (migrations 001-003): opening it adds what is new, once.
    path = tmp_path / "old.db"
    PhotoIndex(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX idx_photos_date_taken")
        conn.execute("DELETE FROM _migrations WHERE name = '004_index_date_taken'")
    conn.close()
    with PhotoIndex(path) as idx:
        assert idx.applied_migrations()[-1] == "004_index_date_taken"
        plan = idx.db.execute(
            "EXPLAIN QUERY PLAN SELECT rowid FROM photos WHERE date_taken >= '2023'"
        ).fetchall()
        assert "idx_photos_date_taken" in str(plan)


def deny_writes(monkeypatch: pytest.MonkeyPatch, index: Path) -> None:
    """``index`` and its folder as on read-only media, for ``os.access`` (the tests run as
    root, which permission bits do not stop)."""
    real_access = os.access
    read_only = {index, index.parent}
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) not in read_only and real_access(p, m))


def test_an_index_before_human_captions_is_searched_then_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index as 004 left it: no human_caption column, full-text index on the caption only.
    path = tmp_path / "share" / "photocap.db"
    with PhotoIndex(path) as idx:
        idx.upsert_photos([{"path": "/p/dog.jpg", "caption": "A dog runs.", "model_id": "m"}])
        idx.db.table("photos").enable_fts(
            ["caption"], tokenize="porter unicode61", create_triggers=True, replace=True
        )
        idx.db.execute("DROP INDEX photos_review")  # 011's index names the column
        idx.db.execute("ALTER TABLE photos DROP COLUMN human_caption")
        idx.db.execute("DELETE FROM _migrations WHERE name = '005_search_human_captions'")
        idx.db.execute("DELETE FROM _migrations WHERE name = '011_index_review_order'")
        idx.db.conn.commit()
    # Read-only (a card, a share): searched as it is, without the new column.
    with monkeypatch.context() as m:
        deny_writes(m, path)
        with PhotoIndex(path, create=False) as idx:
            [hit] = idx.search("dog")
            assert (hit.path, hit.human_caption, hit.human_segments) == ("/p/dog.jpg", None, ())
    # Writable: migrated once; old captions stay searchable, a person's caption is searched too.
    with PhotoIndex(path) as idx:
        assert idx.applied_migrations()[-2:] == [
            "005_search_human_captions",
            "011_index_review_order",
        ]
        assert [h.path for h in idx.search("dog")] == ["/p/dog.jpg"]
        idx.upsert_photos([{"path": "/p/dog.jpg", "human_caption": "Rex and Grandma, 1998"}])
        [hit] = idx.search("grandma dog")  # one word in each caption
        assert hit.human_caption == "Rex and Grandma, 1998"
        assert hit.matched == ["dog", "Grandma"]
        assert [h.path for h in idx.search("rex")] == ["/p/dog.jpg"]


def test_a_read_only_index_with_a_wal_left_behind_is_read_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer was killed (or the card pulled out) before it closed the index: its last
    # commits are in the -wal file alone. Read as immutable, the index looked empty.
    path = tmp_path / "card" / "photocap.db"
    with PhotoIndex(path) as idx:
        idx.upsert_photos([{"path": "/p/dog.jpg", "caption": "A dog runs.", "model_id": "m"}])
    code = (
        "import os, sys; from photocap.index import PhotoIndex; idx = PhotoIndex(sys.argv[1]); "
        "idx.upsert_photos([{'path': '/p/cat.jpg', 'caption': 'A cat sleeps.', 'model_id': 'm'}]); "
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    wal = path.with_name("photocap.db-wal")
    assert wal.stat().st_size > 0
    deny_writes(monkeypatch, path)
    with PhotoIndex(path, create=False) as idx:
        assert idx.read_only
        assert [h.path for h in idx.search("cat")] == ["/p/cat.jpg"]
        assert idx.count() == 2
    # Where SQLite cannot read it (no -shm beside it on read-only media: SQLITE_CANTOPEN, as
    # seen on a read-only bind mount), it says so.
    monkeypatch.setattr(sqlite3, "connect", _refusing_connect)
    with pytest.raises(IndexDbError, match=r"its last changes are in photocap\.db-wal"):
        PhotoIndex(path, create=False)


def _refusing_connect(*args: object, **kwargs: object) -> object:
    err = sqlite3.OperationalError("unable to open database file")
    err.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN
    raise err


def test_an_index_on_read_only_media_is_searched_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A WAL index needs its folder writable (the -shm file) and a migration writes; on a card,
    # a disc or a read-only share the index could not even be opened. It is read as it is.
    folder = tmp_path / "share"
    path = folder / "photocap.db"
    with PhotoIndex(path) as idx:
        idx.upsert_photos([{"path": "/p/dog.jpg", "caption": "A dog runs.", "model_id": "m"},
                           {"path": "/p/bad.jpg", "error": "empty file (0 bytes)"}])  # fmt: skip
    with sqlite3.connect(path) as conn:  # as an earlier version left it: 004-009 to apply
        conn.execute("DROP INDEX idx_photos_date_taken")
        conn.execute("DROP INDEX idx_photos_pixels_hash")
        conn.execute("ALTER TABLE photos DROP COLUMN sidecar_stamp")
        conn.execute("ALTER TABLE photos DROP COLUMN pixels_hash")
        conn.execute("ALTER TABLE photos DROP COLUMN stage")
        conn.execute("DELETE FROM _migrations WHERE name >= '004'")
    conn.close()
    before = sorted(p.name for p in folder.iterdir())
    deny_writes(monkeypatch, path)
    with PhotoIndex(path, create=False) as idx:
        assert [h.path for h in idx.search("dog")] == ["/p/dog.jpg"]
        assert "004_index_date_taken" not in idx.applied_migrations()
        row = idx.get("/p/dog.jpg")  # `photocap status`: columns added since read as NULL
        assert row is not None and row.caption == "A dog runs."
        assert (row.sidecar_stamp, row.pixels_hash, row.stage) == (None, None, None)
        assert idx.stats().failures == [("/p/bad.jpg", "empty file (0 bytes)", None)]
        with pytest.raises(IndexDbError, match=r"readonly|read-only"):
            idx.upsert_photos([{"path": "/p/cat.jpg", "caption": "A cat.", "model_id": "m"}])
    assert sorted(p.name for p in folder.iterdir()) == before  # no -wal/-shm left behind
    # What SQLite says when a command must write there gets the reason and the way out.
    err = sqlite3.OperationalError("attempt to write a readonly database")
    err.sqlite_errorcode = sqlite3.SQLITE_READONLY
    assert str(index_error(path, err, "write to")).endswith(
        "(it is read-only here: read-only media or permissions; --db FILE for another)"
    )
    err.sqlite_errorcode = sqlite3.SQLITE_CORRUPT_INDEX  # an extended code of SQLITE_CORRUPT
    assert "the file is damaged" in str(index_error(path, err))
    monkeypatch.undo()  # writable again: migrated, and the new column is there
    with PhotoIndex(path) as idx:
        assert idx.applied_migrations()[-7:] == [
            "006_sidecar_stamp", "007_pixels_hash", "008_index_pixels_hash", "009_failure_stage",
            "010_search_other_captions_names_keywords", "011_index_review_order",
            "012_photo_vectors",
        ]  # fmt: skip
        idx.upsert_photos([{"path": "/p/dog.jpg", "sidecar_stamp": "dog.jpg.xmp:10:1"}])
        assert idx.get("/p/dog.jpg").sidecar_stamp == "dog.jpg.xmp:10:1"  # type: ignore[union-attr]


def test_find_moved_and_find_copy(tmp_path: Path) -> None:
    # A moved photo is found by its bytes; one tagged on the way by its pixels; a row whose
    # file is still there was copied, not moved; a row without pixels_hash (an older version
    # wrote it) matches no photo by pixels.
    gone, there = tmp_path / "gone", tmp_path / "there.jpg"
    there.write_bytes(b"x")
    with PhotoIndex(tmp_path / "i.db") as idx:
        common = {"caption": "A dog runs.", "model_id": "m"}
        idx.upsert_photos([
            {"path": f"{gone}/a.jpg", "content_hash": "h1", "pixels_hash": "p1", **common},
            {"path": f"{gone}/b.jpg", "content_hash": "h2", "pixels_hash": "p1", **common},
            {"path": str(there), "content_hash": "h3", "pixels_hash": "p3", **common},
            {"path": f"{gone}/c.jpg", "content_hash": "h4", "pixels_hash": None, **common},
        ])  # fmt: skip
        found = idx.find_moved("h2", "/new.jpg", pixels_hash="p1")
        assert found is not None and found.path == f"{gone}/b.jpg"  # the same bytes first
        found = idx.find_moved("h9", "/new.jpg", pixels_hash="p1")
        assert found is not None and found.path in (f"{gone}/a.jpg", f"{gone}/b.jpg")
        assert idx.find_moved("h3", "/new.jpg", pixels_hash="p3") is None
        assert idx.find_moved("h9", "/new.jpg", pixels_hash=None) is None
        assert idx.find_moved("h9", "/new.jpg") is None
        # Each lookup goes through an index, never a walk of the table: it runs for every new
        # photo of a run, and a library has 50,000 rows (an OR of both hashes walked them all).
        # A copy: any captioned row with these pixels, its file there or not.
        found = idx.find_copy("p3", "/new.jpg")
        assert found is not None and found.path == str(there)
        assert idx.find_copy("p3", there) is None and idx.find_copy("p9", "/new.jpg") is None
        statements: list[str] = []
        idx.db.conn.set_trace_callback(statements.append)
        idx.find_moved("h9", "/new.jpg", pixels_hash="p9")
        idx.find_copy("p9", "/new.jpg")
        idx.db.conn.set_trace_callback(None)
        plans = [idx.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall() for sql in statements]
        assert [plan[0][3].split(" (")[0] for plan in plans] == [
            "SEARCH photos USING INDEX idx_photos_content_hash",
            "SEARCH photos USING INDEX idx_photos_pixels_hash",
            "SEARCH photos USING INDEX idx_photos_pixels_hash",
        ]


def test_search_stems_ranks_and_highlights(index: PhotoIndex) -> None:
    hits = index.search("dog running")
    assert {h.path for h in hits} == {"/p/dog.jpg", "/p/dogs.jpg"}
    hit = next(h for h in hits if h.path == "/p/dog.jpg")
    assert hit.matched == ["dog", "runs"]
    assert "".join(text for text, _ in hit.segments) == CAPTIONS["/p/dog.jpg"]
    assert index.search("girl")[0].path == "/p/girl.jpg"
    assert index.search("nothing-like-this") == []


def _bulk_index(tmp_path: Path, captions: list[str]) -> PhotoIndex:
    idx = PhotoIndex(tmp_path / "bulk.db")
    idx.upsert_photos(
        [{"path": f"/b/{i:04d}.jpg", "caption": c, "model_id": "m"} for i, c in enumerate(captions)]
    )
    return idx


def _reference_search(idx: PhotoIndex, query: str, limit: int) -> list[tuple[str, float]]:
    """What search returned before the FTS-first rewrite: bm25 over every match, ties by path."""
    rows = idx.db.execute(
        "SELECT photos.path, bm25(photos_fts) FROM photos_fts JOIN photos "
        "ON photos.rowid = photos_fts.rowid WHERE photos_fts MATCH ? AND photos.error IS NULL "
        "ORDER BY bm25(photos_fts), photos.path LIMIT ?",
        [build_fts_query(query), limit],
    ).fetchall()
    return [(path, round(rank, 9)) for path, rank in rows]


def test_search_matches_full_ranking_on_distinct_scores(tmp_path: Path) -> None:
    words = ["dog", "cat", "ball", "grass", "beach", "water", "red", "runs", "jumps", "sits"]
    captions = [
        " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(2 + i % 6)) + f" x{i}"
        for i in range(300)
    ]
    with _bulk_index(tmp_path, captions) as idx:
        idx.upsert_photos([{"path": "/b/0001.jpg", "error": "broken"}])  # excluded from search
        for query in ["dog", "dog ball", "r*", "water red", "x1*"]:
            got = [(h.path, round(h.rank, 9)) for h in idx.search(query, limit=15)]
            ref = _reference_search(idx, query, 15)
            assert got and got == ref, query  # same rows, same scores, ties by path
            assert "/b/0001.jpg" not in dict(got)


def test_search_ties_by_path_and_highlights_only_top_rows(tmp_path: Path) -> None:
    with _bulk_index(tmp_path, ["A dog runs."] * 50) as idx:
        hits = idx.search("dog", limit=5)
    assert [h.path for h in hits] == [f"/b/{i:04d}.jpg" for i in range(5)]
    assert all(h.matched == ["dog"] and h.caption == "A dog runs." for h in hits)


def test_search_rank_window_ranks_newest_matches_only(tmp_path: Path) -> None:
    captions = ["A dog dog dog."] + ["A dog runs on the grass near the water."] * 30
    with _bulk_index(tmp_path, captions) as idx:
        assert idx.search("dog", limit=1, rank_window=None)[0].path == "/b/0000.jpg"
        assert idx.search("dog", limit=1)[0].path == "/b/0000.jpg"  # 31 matches < window
        windowed = idx.search("dog", limit=3, rank_window=20)  # the newest 20 of 31 matches
        assert len(windowed) == 3 and all(h.path >= "/b/0011.jpg" for h in windowed)
        assert idx.search("dog", limit=0) == []
        assert len(idx.search("dog", limit=25, rank_window=10)) == 25  # window >= 4 x limit


def test_search_filter_by_folder_and_date_taken(tmp_path: Path) -> None:
    rows = [
        ("/pics/2023/a.jpg", "2023-05-31T23:59:59"),
        ("/pics/2023/trip/b.jpg", "2023-06-01T00:00:00"),
        ("/pics/2023-extra/c.jpg", "2023-12-31T10:00:00"),  # beside /pics/2023, not in it
        ("/pics/2024/d.jpg", "2024-01-01T00:00:00"),
        ("/pics/e.jpg", None),  # no date taken
    ]
    with PhotoIndex(tmp_path / "i.db") as idx:
        idx.upsert_photos([{"path": p, "caption": "A dog runs.", "model_id": "m", "date_taken": d}
                           for p, d in rows])  # fmt: skip

        def found(**kw: object) -> list[str]:
            only = make_search_filter(**kw)  # type: ignore[arg-type]
            return sorted(h.path for h in idx.search("dog", limit=10, only=only, rank_window=2))

        everything = sorted(p for p, _ in rows)
        assert found() == everything
        assert found(under=["/pics/2023"]) == ["/pics/2023/a.jpg", "/pics/2023/trip/b.jpg"]
        assert found(under=["/pics/2023/"]) == found(under=["/pics/2023"])
        assert found(under=["/pics/2023/trip", "/pics/e.jpg"]) == [
            "/pics/2023/trip/b.jpg", "/pics/e.jpg",
        ]  # fmt: skip
        assert found(under=["/"]) == everything
        assert found(since="2023-06") == ["/pics/2023-extra/c.jpg", "/pics/2023/trip/b.jpg",
                                          "/pics/2024/d.jpg"]  # fmt: skip
        assert found(until="2023-05") == ["/pics/2023/a.jpg"]
        assert found(until="2023-05-31") == ["/pics/2023/a.jpg"]
        assert found(since="2023", until="2023") == found(under=["/pics/2023", "/pics/2023-extra"])
        assert found(since="2023-12", until="2023-12") == ["/pics/2023-extra/c.jpg"]
        assert found(under=["/pics/2023"], since="2023-06-01") == ["/pics/2023/trip/b.jpg"]
        assert found(under=["/elsewhere"]) == []
        # The filter comes before the ranking window: the oldest photo is not crowded out.
        only = make_search_filter(under=["/pics/2023/a.jpg"])
        assert [h.path for h in idx.search("dog", limit=1, only=only, rank_window=1)] == [
            "/pics/2023/a.jpg"
        ]


@pytest.mark.parametrize("bad", ["2023-13", "23", "2023-02-30", "May 2023", "2023/05"])
def test_search_filter_rejects_what_is_not_a_date(bad: str) -> None:
    with pytest.raises(QueryError, match=r"--until .*YYYY, YYYY-MM or YYYY-MM-DD"):
        make_search_filter(until=bad)
    assert make_search_filter(since=" 2023-02-28 ") == SearchFilter(taken_from="2023-02-28")
    assert make_search_filter(until="2023-12").taken_before == "2024-01-01"
    assert make_search_filter(until="2024-02-29").taken_before == "2024-03-01"


def test_search_with_a_limit_beyond_sqlite_variable_limits(tmp_path: Path) -> None:
    with _bulk_index(tmp_path, ["A dog runs.", "A dog sits.", "A cat."] * 700) as idx:
        hits = idx.search("dog", limit=100_000)
    assert len(hits) == 1400 and all(h.matched == ["dog"] for h in hits)
    assert [h.path for h in hits] == sorted(h.path for h in hits)  # equal scores: by path


def test_search_skips_error_rows_beyond_the_first_fetch(tmp_path: Path) -> None:
    with _bulk_index(tmp_path, ["A dog."] * 30) as idx:
        idx.upsert_photos([{"path": f"/b/{i:04d}.jpg", "error": "x"} for i in range(25)])
        hits = idx.search("dog", limit=3)
    assert [h.path for h in hits] == ["/b/0025.jpg", "/b/0026.jpg", "/b/0027.jpg"]


@pytest.mark.parametrize(
    "query",
    ['"', "dog's", "dirt-road", "AND", "dog AND", "NOT girl", "a:b", "(", "*", "-", "NEAR("],
)
def test_odd_queries_never_crash(index: PhotoIndex, query: str) -> None:
    index.search(query)


def test_fts_query_quoting() -> None:
    # Operators do what they say; every word reaches FTS5 as a quoted string.
    assert build_fts_query('dog "big" -x "AND') == '("dog" AND "big") NOT ("x")'
    assert build_fts_query("bik*") == '"bik"*'
    assert build_fts_query(" AND - ") == ""
    assert build_fts_query("-water") == ""  # only leaving out: nothing to find
    assert build_fts_query('"red car" NOT water') == '("red car") NOT ("water")'
    # Injected syntax: words ("=" separates them, as a space does).
    assert build_fts_query('dog" OR 1=1 --') == '("dog" OR "1") AND "1"'
    assert build_fts_query("children playing") == '("child" OR "children") AND "playing"'
    assert build_fts_query("A dog on the beach") == '"dog" AND "beach"'  # function words out


def test_a_sentence_query_ranks_whole_matches_first_then_partial_ones(index: PhotoIndex) -> None:
    hits = index.search("A brown dog is running on the grass", limit=10)
    assert [(h.path, h.complete) for h in hits][:2] == [
        ("/p/dog.jpg", True),  # every word
        ("/p/dogs.jpg", False),  # dogs, running: some of the words
    ]
    assert "/p/girl.jpg" not in [h.path for h in hits]  # none of the words
    assert [h.path for h in index.search("dog grass", limit=1)] == ["/p/dog.jpg"]


def test_operators_do_what_they_say(index: PhotoIndex) -> None:
    paths = lambda q: sorted(h.path for h in index.search(q))  # noqa: E731
    assert paths("dogs") == ["/p/dog.jpg", "/p/dogs.jpg"]
    assert paths("dogs -beach") == paths("dogs NOT beach") == ["/p/dog.jpg"]
    assert paths("girl OR bike") == ["/p/bike.jpg", "/p/girl.jpg"]
    assert paths('"dirt road"') == ["/p/bike.jpg"]
    assert paths('"road dirt"') == []  # a phrase: in this order
    assert paths('dogs -"the beach"') == ["/p/dog.jpg"]  # a phrase left out
    assert paths("dogs \u2013beach") == paths("dogs \u2212beach") == ["/p/dog.jpg"]  # dashes
    # Punctuation typed between words separates them, as a space does.
    assert paths("dirt,road") == paths("dirt, road") == paths("road;dirt") == ["/p/bike.jpg"]
    assert paths("girl|bike") == paths("girl bike")


def test_other_captions_and_folder_names_are_found_below_the_caption(tmp_path: Path) -> None:
    with PhotoIndex(tmp_path / "i.db") as idx:
        idx.upsert_photos([
            {"path": "/p/Paris 2023/IMG_0412.jpg", "caption": "A woman stands on a bridge.",
             "alternatives": json.dumps(["A woman stands near a river."]), "model_id": "m"},
            {"path": "/p/home/IMG_0413.jpg", "caption": "A river flows under a bridge.",
             "alternatives": json.dumps([]), "model_id": "m"},
        ])  # fmt: skip
        assert [h.path for h in idx.search("paris")] == ["/p/Paris 2023/IMG_0412.jpg"]
        assert idx.search("p") == []  # a folder above the photo's own is every photo's
        # The caption that says it first, the photo whose other caption does after it.
        river = idx.search("river")
        assert [h.path for h in river] == ["/p/home/IMG_0413.jpg", "/p/Paris 2023/IMG_0412.jpg"]
        # Each hit says what it matched, and where, the caption or not.
        assert [(h.matched, h.matched_in) for h in river] == [
            (["river"], ["caption"]), (["river"], ["alternatives"]),
        ]  # fmt: skip
        # Below, whatever their bm25: a runner-up that is only "A boy." scores higher than a
        # long caption with the word, yet the caption's photo comes first.
        idx.upsert_photos([
            {"path": "/p/a.jpg", "caption": "A man stands.", "model_id": "m",
             "alternatives": json.dumps(["A boy, a boy.", "A boy and a boy."])},
            {"path": "/p/b.jpg", "model_id": "m", "alternatives": json.dumps([]),
             "caption": "A little boy in a red shirt is standing on the green grass near a "
                        "tall tree in a park on a sunny day with his family and his dog."},
        ])  # fmt: skip
        assert [h.path for h in idx.search("boy")] == ["/p/b.jpg", "/p/a.jpg"]
        assert [h.complete for h in idx.search("boy")] == [True, True]  # both hold every word
        paris = idx.search("paris woman")[0]
        assert (paris.matched, paris.matched_in) == (
            ["woman", "Paris"],
            ["caption", "alternatives", "place"],
        )
        idx.move_photo("/p/Paris 2023/IMG_0412.jpg", "/p/Rome 2024/IMG_0412.jpg")
        assert [h.path for h in idx.search("rome")] == ["/p/Rome 2024/IMG_0412.jpg"]


def test_irregular_plurals_find_each_other(tmp_path: Path) -> None:
    with _bulk_index(tmp_path, ["Two children play in the sand.", "A man rides a horse."]) as idx:
        assert [h.caption for h in idx.search("child")] == ["Two children play in the sand."]
        assert [h.caption for h in idx.search("men")] == ["A man rides a horse."]


def test_a_typo_gets_a_suggestion_from_the_index_words(index: PhotoIndex) -> None:
    assert index.search("dgo") == []
    assert index.suggest("dgo") == {"dgo": "dog"}
    assert index.suggest("brown dgo") == {"dgo": "dog"}  # known words are not "corrected"
    assert index.suggest("dog") == {}
    assert index.suggest("qqqqzz") == {}  # nothing close: no guess
    # Words as captions write them, not the index's stems ("running" is stored as "run").
    assert index.suggest("runnin") == {"runnin": "running"}


def test_stats_and_prune(tmp_path: Path) -> None:
    idx = PhotoIndex(tmp_path / "i.db")
    real = tmp_path / "real.jpg"
    real.write_bytes(b"x")
    writer = RunRecord(idx)
    writer.write(_record(str(real), "A cat sleeps."))
    writer.write(_record(str(tmp_path / "gone.jpg"), "A cat runs."))
    writer.write_failure(str(tmp_path / "gone2.jpg"), "boom")
    writer.close()
    stats = idx.stats()
    assert (stats.photos, stats.captioned, stats.failed) == (3, 2, 1)
    assert stats.models == {"m@1": 2}
    assert stats.failures == [(str(tmp_path / "gone2.jpg"), "boom", "decode")]
    assert idx.prune(dry_run=True).removed == sorted(
        [str(tmp_path / "gone.jpg"), str(tmp_path / "gone2.jpg")]
    )
    assert idx.count() == 3
    idx.prune()
    assert list(idx.iter_paths()) == [str(real)]
    assert [h.path for h in idx.search("cat")] == [str(real)]  # FTS kept in sync by triggers
    assert idx.integrity_ok()
    idx.close()


def test_dry_run_writer_writes_nothing(tmp_path: Path) -> None:
    idx = PhotoIndex(tmp_path / "i.db")
    writer = RunRecord(idx, WriteOptions(dry_run=True))
    assert writer.write(_record("/x.jpg", "A cat.")).status == "skipped"
    writer.close()
    assert idx.count() == 0


def test_move_photo_keeps_caption_and_search(index: PhotoIndex) -> None:
    index.move_photo("/p/girl.jpg", "/q/girl-renamed.jpg")
    assert index.get("/p/girl.jpg") is None
    assert index.search("stairs")[0].path == "/q/girl-renamed.jpg"


def test_not_an_index_is_a_clear_error(tmp_path: Path) -> None:
    from photocap.errors import IndexDbError

    bogus = tmp_path / "bogus.db"
    bogus.write_text("hello, I am not SQLite" * 100)
    with pytest.raises(IndexDbError, match="cannot open index"):
        PhotoIndex(bogus)
    with pytest.raises(IndexDbError, match="no index"):
        PhotoIndex(tmp_path / "missing.db", create=False)


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, pages: int) -> None:
    """SQLite's own "database or disk is full" (SQLITE_FULL) once the index would grow past
    ``pages`` pages: a full disk, deterministic (no tiny file system needed)."""
    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_an_index_that_cannot_be_created_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    _disk_full_after(monkeypatch, pages=3)  # after SQLite made the -wal and -shm files
    with pytest.raises(IndexDbError, match=r"^cannot open index .*: database or disk is full$"):
        PhotoIndex(data / "photocap" / "photocap.db")
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]  # no folder, no -wal/-shm


def test_a_failed_open_of_an_existing_index_keeps_it_and_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data"
    path = folder / "photocap.db"
    with PhotoIndex(path) as idx:
        idx.db.execute("DELETE FROM _migrations WHERE name = '008_index_pixels_hash'")
        idx.db.execute("DROP INDEX idx_photos_pixels_hash")
        idx.db.conn.commit()
        idx.db.execute("VACUUM")  # no free page left for the index to come back in
        pages = idx.db.execute("PRAGMA page_count").fetchone()[0]
    (folder / "photocap.db.lock").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["photocap.db"]
    _disk_full_after(monkeypatch, pages=pages)  # the pending migration needs a page more
    with pytest.raises(IndexDbError, match="database or disk is full"):
        PhotoIndex(path)
    # The index as it was, and no -wal or -shm left (SQLite's close takes its own). Nothing of
    # an existing index is removed by photocap: another process may have it open right now, and
    # its -wal holds that process's commits. Only the (empty) migration lock file may stay.
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == {**before, **({"photocap.db.lock": b""} if "photocap.db.lock" in after else {})}


def test_damaged_pages_are_a_clear_error(tmp_path: Path) -> None:
    # Bit rot after the index was opened fine: the reads that reach the damage say so in one
    # line (with what to do), instead of ending the command with sqlite3's traceback.
    from typer.testing import CliRunner

    from photocap.cli import app
    from photocap.errors import IndexDbError

    path = tmp_path / "index.db"
    with PhotoIndex(path) as index:
        index.upsert_photos([{"path": f"/p/{i:05d}/IMG_{i:07d}.jpg", "caption": "A dog runs."}
                             for i in range(2000)])  # fmt: skip
        index.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4096 * 4096  # pages of the photos table, not the schema's
    data[middle : middle + 3 * 4096] = b"\xff" * (3 * 4096)
    path.write_bytes(data)
    with PhotoIndex(path) as index, pytest.raises(IndexDbError, match=r"damaged.*recover"):
        index.stats()
    result = CliRunner().invoke(app, ["info", "--db", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"Error: index {path}: database")


def test_undecodable_sqlite_message_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A damaged schema makes SQLite quote raw bytes in its error message, which Python cannot
    # decode: seen with an index with random bytes flipped.
    import sqlite_utils

    from photocap.errors import IndexDbError

    def damaged(self: object) -> None:
        raise UnicodeDecodeError("utf-8", b"\xfa", 0, 1, "invalid start byte")

    monkeypatch.setattr(sqlite_utils.Database, "enable_wal", damaged)
    with pytest.raises(IndexDbError, match=r"cannot open index .*malformed"):
        PhotoIndex(tmp_path / "index.db")


def test_second_connection_waits_for_the_writer(index: PhotoIndex) -> None:
    other = PhotoIndex(index.path)
    with other.transaction():
        other.db.execute("UPDATE photos SET score = 1 WHERE path = '/p/dog.jpg'")
        # Readers are not blocked by a writer in WAL mode.
        assert index.get("/p/dog.jpg") is not None
    other.close()
    assert sqlite3.connect(index.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_failed_open_never_removes_the_files_of_an_index_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `photocap status` is stopped mid-open (Ctrl-C) just as a cron run opens the same index
    # and commits: the -wal and -shm that appeared meanwhile are the other run's.
    path = tmp_path / "photocap.db"
    with PhotoIndex(path):
        pass
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists()  # closed cleanly
    other = sqlite3.connect(path)

    def interrupted(*args: object, **kwargs: object) -> None:
        other.execute("PRAGMA journal_mode=WAL")
        other.execute("INSERT INTO photos (path, caption) VALUES ('/p/a.jpg', 'A dog runs.')")
        other.commit()
        raise KeyboardInterrupt

    monkeypatch.setattr(PhotoIndex, "_open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        PhotoIndex(path)
    assert wal.exists() and path.with_name(path.name + "-shm").exists()
    assert other.execute("SELECT caption FROM photos").fetchall() == [("A dog runs.",)]
    other.close()


def test_near_words_come_after_the_words_typed(tmp_path: Path) -> None:
    near = {"kid": ["boy", "child"]}.get
    with _bulk_index(tmp_path, ["A boy plays.", "A kid runs.", "A dog sleeps."]) as idx:
        hits = idx.search("kid", near=lambda w: near(w) or [])
        assert [(h.caption, h.complete) for h in hits] == [
            ("A kid runs.", True), ("A boy plays.", False),
        ]  # fmt: skip
        assert [h.caption for h in idx.search("kid")] == ["A kid runs."]  # none given: exact


def test_near_words_are_read_from_the_model_output_vectors(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from photocap.checkpoint import FORMAT, FORMAT_VERSION
    from photocap.lexicon import NearWords

    words = ["<pad>", "<start>", "<end>", "<unk>", "kid", "boy", "child", "car", "dog"]
    vectors = np.zeros((len(words), 4), dtype=np.float32)
    vectors[4:] = [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0.8, 0.3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    path = tmp_path / "m.safetensors"
    save_file(
        {"decoder.members.0.out.weight": vectors, "decoder.members.1.out.weight": vectors},
        str(path),
        metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                  "vocab": json.dumps(words)},
    )  # fmt: skip
    lexicon = NearWords.from_model(path)
    assert lexicon.of("kid") == ["boy", "child"]  # nearest first, at most two
    assert lexicon.of("car") == [] and lexicon.of("zebra") == []  # nothing near; unknown
