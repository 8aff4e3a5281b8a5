"""The text-image embedding (photocap/embedding.py): its file, the numpy query encoder, photo
vectors written by a run, and search ordered by meaning (reciprocal-rank fusion)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_tiny_jpegs

torch = pytest.importorskip("torch")

from photocap.embedding import (  # noqa: E402
    QueryEncoder,
    embedding_path,
    find_embedding,
    load_embedding,
    vector_bytes,
)
from photocap.errors import ModelError  # noqa: E402
from photocap.index import PhotoIndex, fuse_ranks  # noqa: E402


def vectors_of(db: Path) -> dict[str, bytes | None]:
    """Each photo's vector in the index (None: none)."""
    with sqlite3.connect(db) as conn:
        return dict(conn.execute(
            "SELECT path, vector FROM photos LEFT JOIN photo_vectors ON id = photos.rowid"
        ))  # fmt: skip


def _run_lib(lib: Path, db: Path, captioner: Any, **options: Any) -> list[Any]:
    from photocap.pipeline import CaptionOptions, PhotoResult, caption_library

    opts = CaptionOptions(**{"writers": ["index"], "batch_size": 4, "workers": 1, **options})
    with PhotoIndex(db) as index:
        events = list(caption_library([lib], captioner, index, opts))
    return [e for e in events if isinstance(e, PhotoResult)]


def test_the_numpy_query_encoder_computes_the_torch_text_side(model_with_embedding: Path) -> None:
    from photocap.checkpoint import LazyCaptioner

    model_id = LazyCaptioner(model_with_embedding, device="cpu").model_id
    module = load_embedding(embedding_path(model_with_embedding), model_id)
    encoder = QueryEncoder.from_model(model_with_embedding)
    assert encoder is not None
    for text in ("a dog runs on the beach", "zebra", "two children play in the water"):
        ids = encoder.tokens(text)
        tokens = torch.zeros((1, 22), dtype=torch.long)  # padded as a training batch is
        tokens[0, : len(ids)] = torch.tensor(ids)
        with torch.no_grad():
            expected = module.text_vectors(tokens)[0].numpy()
        got = encoder.encode(text)
        assert np.allclose(got, expected, atol=1e-4), text
        assert abs(float(np.linalg.norm(got)) - 1) < 1e-5


def test_an_embedding_made_for_another_model_is_not_used(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    path = embedding_path(model_with_embedding)
    with pytest.raises(ModelError, match="another model"):
        load_embedding(path, "another-model@0123456789ab")
    assert find_embedding(model_with_embedding, "another-model@0123456789ab") is None
    (tmp_path / "x.embedding.safetensors").write_bytes(b"not a safetensors file")
    assert find_embedding(tmp_path / "x.safetensors", "m") is None


def test_a_run_stores_each_photos_vector_when_the_model_has_an_embedding(
    model_with_embedding: Path, model_file: Path, tmp_path: Path
) -> None:
    from photocap.checkpoint import LazyCaptioner
    from photocap.pipeline import CaptionOptions, caption_library

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 5)
    for model, db in ((model_with_embedding, tmp_path / "a.db"), (model_file, tmp_path / "b.db")):
        options = CaptionOptions(writers=["index"], batch_size=2, workers=1)
        with PhotoIndex(db) as index:
            list(caption_library([lib], LazyCaptioner(model, device="cpu"), index, options))
    vectors = list(vectors_of(tmp_path / "a.db").values())
    assert len(vectors) == 5 and all(len(v) == 16 * 2 for v in vectors)  # 16 float16 each
    units = [np.frombuffer(v, dtype="<f2").astype(np.float32) for v in vectors]
    assert all(abs(float(np.linalg.norm(u)) - 1) < 1e-2 for u in units)
    assert set(vectors_of(tmp_path / "b.db").values()) == {None}  # no embedding: no vectors


def test_fusion_moves_the_closest_photo_up_and_keeps_photos_without_a_vector_in_place() -> None:
    query = np.array([1.0, 0.0], dtype=np.float32)
    bm25 = {1: -3.0, 2: -2.0, 3: -1.0, 4: -0.5}  # text order: 1, 2, 3, 4
    vectors = {
        1: vector_bytes([0.0, 1.0]),
        3: vector_bytes([1.0, 0.0]),
        4: vector_bytes([0.6, 0.8]),
    }
    fused = fuse_ranks(bm25, vectors, query)
    order = sorted(fused, key=lambda row: fused[row])
    assert order.index(3) < order.index(1)  # closest in meaning, up
    assert order.index(2) == 1  # no vector: keeps its place
    assert fuse_ranks(bm25, {}, query) == fuse_ranks(bm25, {}, query * 0)  # no vectors: bm25


def test_search_by_meaning_reorders_within_a_tier_never_across(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    rows = [
        ("/p/a.jpg", "A dog runs.", [0.0, 1.0]),
        ("/p/b.jpg", "A dog sits.", [1.0, 0.0]),  # the meaning of the query
        ("/p/c.jpg", "A dog and a ball on the beach.", [0.0, 1.0]),  # every word: first
    ]
    with PhotoIndex(db) as index:
        index.upsert_photos([{"path": p, "caption": c, "model_id": "m"} for p, c, _ in rows])
        index.set_vectors({p: vector_bytes(v) for p, _, v in rows})
        plain = [h.path for h in index.search("dog beach")]
        meant = [h.path for h in index.search("dog beach", meaning=lambda q: [1.0, 0.0])]
    assert plain[0] == meant[0] == "/p/c.jpg"  # the complete match stays first
    assert meant.index("/p/b.jpg") < meant.index("/p/a.jpg")


def test_a_vector_follows_its_caption_kept_when_carried_cleared_when_recaptioned_without(
    model_with_embedding: Path, model_file: Path, tmp_path: Path
) -> None:
    import os

    from photocap.checkpoint import LazyCaptioner
    from photocap.pipeline import CaptionOptions, caption_library

    lib = tmp_path / "lib"
    photos = make_tiny_jpegs(lib, 3)
    db = tmp_path / "i.db"

    def run(model: Path, force: bool = False) -> dict[str, Any]:
        options = CaptionOptions(writers=["index"], batch_size=2, workers=1, force=force)
        with PhotoIndex(db) as index:
            list(caption_library([lib], LazyCaptioner(model, device="cpu"), index, options))
        return vectors_of(db)

    first = run(model_with_embedding)
    assert all(first.values())
    os.utime(photos[0], ns=(1, 1))  # touched: carried ("content unchanged"), vector kept
    assert run(model_with_embedding) == first
    # Captioned again by a model without an embedding: no stale vector of the other model.
    assert set(run(model_file, force=True).values()) == {None}


def test_search_by_meaning_leaves_out_excluded_words_and_foreign_vectors(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    with PhotoIndex(db) as index:
        index.upsert_photos([
            {"path": "/p/a.jpg", "caption": "A dog runs.", "model_id": "m"},
            {"path": "/p/b.jpg", "caption": "A dog sits.", "model_id": "other"},
        ])  # fmt: skip
        index.set_vectors({
            "/p/a.jpg": vector_bytes([1.0, 0.0]),
            "/p/b.jpg": vector_bytes([1.0, 0.0, 0.0]),  # another model's space, another size
        })  # fmt: skip
        asked: list[str] = []

        def meaning(text: str) -> Any:
            asked.append(text)
            return np.array([0.0, 1.0], dtype=np.float32)

        hits = index.search("dog -cat NOT bird", meaning=meaning, meaning_model="m")
    assert asked == ["dog"]
    assert sorted(h.path for h in hits) == ["/p/a.jpg", "/p/b.jpg"]  # no error, both found


def test_the_order_by_meaning_does_not_depend_on_how_many_results_are_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    db = tmp_path / "i.db"
    with PhotoIndex(db) as index:
        paths = [f"/p/{i:04d}.jpg" for i in range(700)]
        index.upsert_photos([
            {"path": p, "caption": f"A dog runs {'fast' if i % 3 else ''}.", "model_id": "m"}
            for i, p in enumerate(paths)
        ])  # fmt: skip
        index.set_vectors({p: vector_bytes(rng.normal(size=8) / 3) for p in paths})
        query = rng.normal(size=8).astype(np.float32)

        def order(limit: int) -> list[str]:
            hits = index.search("dog runs", limit=limit, meaning=lambda t: query, meaning_model="m")
            return [h.path for h in hits]

        assert order(10) == order(300)[:10] == order(600)[:10]


def test_a_photos_vector_goes_with_its_row(tmp_path: Path) -> None:
    # Pruned or replaced rows: no vector left behind for a new row that reuses the rowid.
    db = tmp_path / "i.db"
    with PhotoIndex(db) as index:
        index.upsert_photos([{"path": "/p/a.jpg", "caption": "A dog.", "model_id": "m"}])
        index.set_vectors({"/p/a.jpg": vector_bytes([1.0, 0.0])})
        index.move_photo("/p/a.jpg", "/p/b.jpg")  # moved: the vector follows
        assert vectors_of(db) == {"/p/b.jpg": vector_bytes([1.0, 0.0])}
        index.db.execute("DELETE FROM photos WHERE path = '/p/b.jpg'")
        index.upsert_photos([{"path": "/p/c.jpg", "caption": "A cat.", "model_id": "m"}])
    assert vectors_of(db) == {"/p/c.jpg": None}


def test_photos_captioned_before_vectors_get_one_without_being_captioned_again(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    # An index from before photocap stored vectors (or a model file whose embedding came
    # later): the next run gives each photo its vector through the encoder only, keeps every
    # caption, and the run after needs nothing, not even the model.
    from photocap.checkpoint import LazyCaptioner

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 5)
    db = tmp_path / "i.db"

    class Watched(LazyCaptioner):
        captioned = 0
        embedded = 0

        def caption_batch(self, pixels: Any, beam_size: int = 3) -> Any:
            Watched.captioned += len(pixels)
            return super().caption_batch(pixels, beam_size)

        def embed_batch(self, pixels: Any) -> list[bytes]:
            Watched.embedded += len(pixels)
            return super().embed_batch(pixels)

    def run() -> tuple[list[Any], Watched]:
        captioner = Watched(model_with_embedding, device="cpu")
        return _run_lib(lib, db, captioner, writers=["xmp", "index"], batch_size=2), captioner

    run()
    first = vectors_of(db)
    with sqlite3.connect(db) as conn:
        captions = dict(conn.execute("SELECT path, caption FROM photos"))
        conn.execute("DELETE FROM photo_vectors")
    Watched.captioned = Watched.embedded = 0
    results, _ = run()
    assert (Watched.captioned, Watched.embedded) == (0, 5)
    assert {r.status for r in results} == {"carried"}
    assert {r.reason for r in results} == {"unchanged, vector added for search by meaning"}
    assert vectors_of(db) == first  # the encoder's vectors, as the captioning run made them
    with sqlite3.connect(db) as conn:
        assert dict(conn.execute("SELECT path, caption FROM photos")) == captions
    results, captioner = run()
    assert {r.status for r in results} == {"skipped"} and not captioner.is_built


def test_a_failed_vector_keeps_the_caption_and_is_tried_again(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    from photocap.checkpoint import LazyCaptioner

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 3)
    db = tmp_path / "i.db"

    class OutOfMemory(LazyCaptioner):
        def embed_batch(self, pixels: Any) -> list[bytes]:
            raise RuntimeError("out of memory")

    def run(kind: type[LazyCaptioner]) -> list[Any]:
        return _run_lib(lib, db, kind(model_with_embedding, device="cpu"), batch_size=2)

    run(LazyCaptioner)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM photo_vectors")
        before = list(conn.execute("SELECT path, caption, error FROM photos ORDER BY path"))
    results = run(OutOfMemory)
    assert {r.status for r in results} == {"skipped"}
    assert all("no vector: captioning failed: out of memory" in r.reason for r in results)
    with sqlite3.connect(db) as conn:
        assert list(conn.execute("SELECT path, caption, error FROM photos ORDER BY path")) == before
    assert set(vectors_of(db).values()) == {None}
    results = run(LazyCaptioner)  # tried again
    assert {r.status for r in results} == {"carried"} and all(vectors_of(db).values())


def test_a_copy_of_a_photo_takes_its_vector_with_its_caption(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    # The same pixels: the same vector, no encoder run for the copy (now or on the next run).
    from photocap.checkpoint import LazyCaptioner

    lib = tmp_path / "lib"
    photos = make_tiny_jpegs(lib, 2)
    db = tmp_path / "i.db"

    def run() -> tuple[list[Any], LazyCaptioner]:
        captioner = LazyCaptioner(model_with_embedding, device="cpu")
        return _run_lib(lib, db, captioner, batch_size=2), captioner

    run()
    copy = lib / "copy" / photos[0].name
    copy.parent.mkdir()
    copy.write_bytes(photos[0].read_bytes())
    results, _ = run()
    assert [r.status for r in results if r.path == copy] == ["carried"]
    vectors = vectors_of(db)
    assert vectors[str(copy)] is not None and vectors[str(copy)] == vectors[str(photos[0])]
    results, captioner = run()
    assert {r.status for r in results} == {"skipped"} and not captioner.is_built


def test_a_raw_paired_later_takes_its_jpegs_vector(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    # The RAW of a RAW+JPEG pair takes its JPEG's caption from the index: its vector too, so
    # the next unchanged run has nothing to do.
    from PIL import Image
    from raw_helpers import make_dng

    from photocap.checkpoint import LazyCaptioner

    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("RGB", (64, 48), (20, 40, 150)).save(lib / "IMG_1.JPG")
    db = tmp_path / "i.db"
    _run_lib(lib, db, LazyCaptioner(model_with_embedding, device="cpu"))
    make_dng(lib / "IMG_1.CR2", colour=(30, 120, 40))
    _run_lib(lib, db, LazyCaptioner(model_with_embedding, device="cpu"))
    vectors = vectors_of(db)
    assert vectors[str(lib / "IMG_1.CR2")] == vectors[str(lib / "IMG_1.JPG")] is not None
    captioner = LazyCaptioner(model_with_embedding, device="cpu")
    assert {r.status for r in _run_lib(lib, db, captioner)} == {"skipped"}
    assert not captioner.is_built


def test_vectors_come_after_the_photos_to_caption_and_never_fail_them(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from photocap.checkpoint import LazyCaptioner

    class OutOfMemory(LazyCaptioner):
        def embed_batch(self, pixels: Any) -> list[bytes]:
            raise RuntimeError("out of memory")

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 3)
    db = tmp_path / "i.db"
    _run_lib(lib, db, LazyCaptioner(model_with_embedding, device="cpu"))
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM photo_vectors")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(lib / "zz_new.jpg")
    # --limit 2: the new photo is captioned first, one old photo gets its vector, the others
    # are skipped as unchanged.
    results = _run_lib(lib, db, LazyCaptioner(model_with_embedding, device="cpu"), limit=2)
    by_status = sorted((r.status, r.path.name) for r in results)
    assert by_status[0] == ("captioned", "zz_new.jpg")
    assert [s for s, _ in by_status] == ["captioned", "carried", "skipped", "skipped"]
    # A failure of the vectors' batch (out of memory) fails no photo captioned beside them.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM photo_vectors")
    (lib / "zz_new.jpg").unlink()
    Image.new("RGB", (64, 48), (30, 200, 30)).save(lib / "zz_newer.jpg")
    results = _run_lib(lib, db, OutOfMemory(model_with_embedding, device="cpu"))
    assert {r.path.name: r.status for r in results}["zz_newer.jpg"] == "captioned"
    assert {r.status for r in results if r.path.name != "zz_newer.jpg"} == {"skipped"}


def test_a_model_that_cannot_be_built_leaves_a_vectors_only_run_without_failures(
    model_with_embedding: Path, tmp_path: Path
) -> None:
    import shutil

    from photocap.checkpoint import LazyCaptioner

    model = tmp_path / "m.safetensors"
    shutil.copy(model_with_embedding, model)
    shutil.copy(embedding_path(model_with_embedding), embedding_path(model))
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    db = tmp_path / "i.db"
    _run_lib(lib, db, LazyCaptioner(model, device="cpu"))
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM photo_vectors")
        before = list(conn.execute("SELECT path, caption, error FROM photos ORDER BY path"))
    captioner = LazyCaptioner(model, device="cpu")
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # the file changed after it was opened: it must not be built
    model.write_bytes(bytes(data))
    results = _run_lib(lib, db, captioner)
    assert {r.status for r in results} == {"skipped"}
    assert all("no vector: captioning failed" in r.reason for r in results)
    with sqlite3.connect(db) as conn:
        assert list(conn.execute("SELECT path, caption, error FROM photos ORDER BY path")) == before


def test_a_vector_of_another_size_is_made_again(model_with_embedding: Path, tmp_path: Path) -> None:
    from photocap.checkpoint import LazyCaptioner

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    db = tmp_path / "i.db"
    _run_lib(lib, db, LazyCaptioner(model_with_embedding, device="cpu"))
    first = vectors_of(db)
    with sqlite3.connect(db) as conn:  # as an embedding of another size would have left them
        conn.execute("UPDATE photo_vectors SET vector = zeroblob(8)")
    results = _run_lib(lib, db, LazyCaptioner(model_with_embedding, device="cpu"))
    assert {r.status for r in results} == {"carried"} and vectors_of(db) == first
