"""``photocap caption --engine ray``: the run's stages on Ray (real Ray, no mocks).

A Ray started for this module on this machine (2 CPUs); the local engine's results are the
reference: the same library through both engines gives the same index rows and sidecars.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import make_bad_photos, make_tiny_jpegs

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'photocap[ray]'")

from photocap.checkpoint import LazyCaptioner  # noqa: E402
from photocap.index import PhotoIndex  # noqa: E402
from photocap.pipeline import CaptionOptions, PhotoResult, RunSummary, caption_library  # noqa: E402
from photocap.run.decode import CRASH_ENV  # noqa: E402
from photocap.run.ray_engine import WRITE_CRASH_ENV  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One Ray for the module: starting one costs seconds. Its workers crash on files named
    *decoder-crash-test* (the decode stage's test hook), and write tasks die on photos named
    *writer-crash-test* (as on a lost node)."""
    hooks = {CRASH_ENV: "decoder-crash-test", WRITE_CRASH_ENV: "writer-crash-test"}
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
        runtime_env={"env_vars": hooks},
    )  # fmt: skip
    yield ray
    ray.shutdown()


def _library(root: Path) -> Path:
    """Good photos (one a copy of another), a RAW+JPEG pair, and files that do not decode."""
    lib = root / "lib"
    paths = make_tiny_jpegs(lib, 6)
    (lib / "copy of img_0001.jpg").write_bytes(paths[1].read_bytes())
    make_bad_photos(lib / "bad")
    from raw_helpers import make_dng

    make_dng(lib / "IMG_9000.DNG")
    make_tiny_jpegs(lib / "pair", 1)[0].rename(lib / "IMG_9000.JPG")
    return lib


def _run(lib: Path, model: Path, db: Path, **options: Any) -> tuple[list[PhotoResult], RunSummary]:
    captioner = LazyCaptioner(model, device="cpu")
    opts = CaptionOptions(**{"writers": ["xmp", "index"], "batch_size": 4, "workers": 1, **options})
    results: list[PhotoResult] = []
    summary = None
    with PhotoIndex(db) as index:
        for event in caption_library([lib], captioner, index, opts):
            if isinstance(event, PhotoResult):
                results.append(event)
            elif isinstance(event, RunSummary):
                summary = event
    assert summary is not None
    return results, summary


def _rows(db: Path, root: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path, caption, error, stage, model_id FROM photos")
        return {os.path.relpath(r[0], root): tuple(r[1:]) for r in rows}


def _sidecars(root: Path) -> dict[str, bytes]:
    """Each sidecar's bytes, the caption date taken out (the runs differ in time)."""
    import re

    out = {}
    for path in sorted(root.rglob("*.xmp")):
        text = re.sub(rb"<photocap:captionDate>[^<]*<", b"<", path.read_bytes())
        out[os.path.relpath(path, root)] = text
    return out


@pytest.mark.parametrize("model", ["model_file", "wide_model_file"])
def test_both_engines_give_the_same_rows_and_sidecars(
    local_ray: Any, model: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The wide model: the decoders' int8 step (photocap.runtime) on both engines' CPUs.
    model_file = request.getfixturevalue(model)
    local_lib = _library(tmp_path / "local")
    ray_lib = _library(tmp_path / "ray")
    _, local_summary = _run(local_lib, model_file, tmp_path / "local.db")
    remote, summary = _run(ray_lib, model_file, tmp_path / "ray.db", engine="ray")
    assert _rows(tmp_path / "ray.db", ray_lib) == _rows(tmp_path / "local.db", local_lib)
    assert _sidecars(ray_lib) == _sidecars(local_lib)
    # A copy is captioned, or carried from its original: that depends on which batch each
    # is in (the local engine), or on the order they come back in (Ray). Either way the
    # same caption.
    counts = lambda s: (s.captioned + s.carried, s.skipped, s.failed)  # noqa: E731
    assert counts(summary) == counts(local_summary) == (9, 0, 4)
    # Bad files are one line each, and the run went on.
    failed = {r.path.name: r.error for r in remote if r.status == "failed"}
    assert set(failed) == {"truncated.jpg", "empty.jpg", "text.jpg", "bomb.png"}
    assert all(error and "\n" not in error for error in failed.values())
    # A re-run finds nothing to do.
    _, rerun = _run(ray_lib, model_file, tmp_path / "ray.db", engine="ray")
    assert (rerun.captioned, rerun.skipped) == (0, 9)


def test_a_decoder_crash_fails_its_file_only(
    local_ray: Any, model_file: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    paths = make_tiny_jpegs(lib, 5)
    paths[2].rename(lib / "img_decoder-crash-test.jpg")
    results, summary = _run(lib, model_file, tmp_path / "i.db", engine="ray")
    failed = {r.path.name: r.error for r in results if r.status == "failed"}
    assert failed == {
        "img_decoder-crash-test.jpg": "the decoder crashed on this file (corrupt, or out of memory)"
    }
    assert (summary.captioned, summary.failed) == (4, 1)


def test_a_write_task_lost_after_its_retries_fails_its_photos_writes_only(
    local_ray: Any, model_file: Path, tmp_path: Path
) -> None:
    # Its worker dies each time Ray runs it (as on a node lost, again and again): the run goes
    # on, and the photos of that task keep their row and caption, their write failed.
    lib = tmp_path / "lib"
    paths = make_tiny_jpegs(lib, 6)
    crashing = paths[3].rename(lib / "img_writer-crash-test.jpg")
    results, summary = _run(lib, model_file, tmp_path / "i.db", engine="ray", batch_size=1)
    failed = {r.path.name: r.error for r in results if r.status == "failed"}
    assert list(failed) == [crashing.name]
    assert "write task was lost" in (failed[crashing.name] or "")
    assert not summary.interrupted
    with sqlite3.connect(tmp_path / "i.db") as conn:
        rows = dict(conn.execute("SELECT path, error FROM photos WHERE caption IS NOT NULL"))
    assert sorted(rows) == sorted(str(p) for p in lib.glob("*.jpg"))  # each photo, once
    assert "write task was lost" in rows[str(crashing)]
    assert not crashing.with_name(crashing.name + ".xmp").exists()
    assert all(p.with_name(p.name + ".xmp").is_file() for p in lib.glob("img_000*.jpg"))


def test_the_ray_engine_stores_the_photos_vectors_as_the_local_one_does(
    local_ray: Any, model_with_embedding: Path, tmp_path: Path
) -> None:
    # The actors get the embedding file with the model file: the same vectors on both engines.
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 4)
    vectors = {}
    for engine in ("local", "ray"):
        db = tmp_path / f"{engine}.db"
        _run(lib, model_with_embedding, db, engine=engine, force=True)
        with sqlite3.connect(db) as conn:
            vectors[engine] = dict(conn.execute(
                "SELECT path, vector FROM photos LEFT JOIN photo_vectors ON id = photos.rowid"
            ))  # fmt: skip
    assert len(vectors["ray"]) == 4 and all(v and len(v) == 32 for v in vectors["ray"].values())
    assert vectors["ray"] == vectors["local"]
    # An index whose photos have no vector (captioned before vectors were stored): the actors
    # give them one from the encoder alone, every caption kept.
    db = tmp_path / "ray.db"
    with sqlite3.connect(db) as conn:
        captions = dict(conn.execute("SELECT path, caption FROM photos"))
        conn.execute("DELETE FROM photo_vectors")
    results, summary = _run(lib, model_with_embedding, db, engine="ray")
    assert (summary.captioned, summary.carried) == (0, 4)
    assert {r.reason for r in results} == {"unchanged, vector added for search by meaning"}
    with sqlite3.connect(db) as conn:
        assert dict(conn.execute("SELECT path, caption FROM photos")) == captions
        assert dict(conn.execute(
            "SELECT path, vector FROM photos LEFT JOIN photo_vectors ON id = photos.rowid"
        )) == vectors["local"]  # fmt: skip


def test_a_stopped_run_commits_what_it_has_and_the_next_resumes(
    local_ray: Any, model_file: Path, tmp_path: Path
) -> None:
    import threading

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 12)
    stop = threading.Event()
    captioner = LazyCaptioner(model_file, device="cpu")
    opts = CaptionOptions(writers=["xmp", "index"], batch_size=2, workers=1, engine="ray")
    done = []
    with PhotoIndex(tmp_path / "i.db") as index:
        for event in caption_library([lib], captioner, index, opts, stop=stop):
            if isinstance(event, PhotoResult):
                done.append(event.path)
                stop.set()  # as Ctrl-C does: the run ends after what is under way
            elif isinstance(event, RunSummary):
                summary = event
    assert summary.interrupted and 0 < summary.captioned < 12
    assert len(_rows(tmp_path / "i.db", lib)) == summary.captioned  # committed, each once
    assert all(p.with_name(p.name + ".xmp").is_file() for p in done)
    _, rest = _run(lib, model_file, tmp_path / "i.db", engine="ray")
    assert (rest.captioned, rest.skipped, rest.failed) == (
        12 - summary.captioned,
        summary.captioned,
        0,
    )


def test_the_caption_actor_builds_the_model_as_a_local_run_does(
    local_ray: Any, wide_model_file: Path
) -> None:
    """On a CPU the actor's decoders run the int8 step (photocap.runtime), as a local run's
    do: a photo's caption must not depend on the engine (about 2 % of captions would)."""
    import ray

    from photocap.run.ray_engine import CaptionActor

    actor = CaptionActor([ray.put(wide_model_file.read_bytes())], "cpu", 3)
    assert actor.captioner.decoder_runtime_name.endswith(" int8")
    assert actor.captioner.decoder_runtime_name == (
        LazyCaptioner(wide_model_file, device="cpu").captioner().decoder_runtime_name
    )
