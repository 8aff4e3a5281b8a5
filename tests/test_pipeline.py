"""The caption run end to end with the tiny random model and real SQLite files."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_jpegs
from PIL import Image

from photocap.index import PhotoIndex
from photocap.pipeline import CaptionOptions, PhotoResult, Progress, RunSummary, caption_library


def run(
    paths: list[Path], captioner: Any, db: Path, **kw: Any
) -> tuple[list[PhotoResult], RunSummary]:
    stop = kw.pop("stop", None)
    options = CaptionOptions(
        writers=kw.pop("writers", ["index"]), batch_size=4, workers=kw.pop("workers", 1), **kw
    )
    with PhotoIndex(db) as index:
        events = list(caption_library(paths, captioner, index, options, stop=stop))
    results = [e for e in events if isinstance(e, PhotoResult)]
    summary = events[-1]
    assert isinstance(summary, RunSummary)
    assert all(isinstance(e, (PhotoResult, Progress)) for e in events[:-1])
    return results, summary


def rows(db: Path) -> list[dict[str, Any]]:
    with PhotoIndex(db) as index:
        return list(index.db.query("SELECT * FROM photos ORDER BY path"))


def test_every_format_and_bad_input(sample_photos, captioner, tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    results, summary = run([sample_photos.root], captioner, db, workers=2)
    by_path = {r.path: r for r in results}
    for name, path in sample_photos.good.items():
        assert by_path[path].status == "captioned", (name, by_path[path].error)
        assert by_path[path].caption and by_path[path].caption.endswith(".")
        assert len(by_path[path].alternatives) >= 1
    for path in sample_photos.bad.values():
        assert by_path[path].status == "failed" and by_path[path].error
    assert summary.captioned == len(sample_photos.good)
    assert summary.failed == len(sample_photos.bad)
    table = {r["path"]: r for r in rows(db)}
    assert table[str(sample_photos.bad["bomb.png"])]["error"].startswith("image too large")
    assert table[str(sample_photos.good["jpeg_exif_rotated.jpg"])]["camera"] == "Canon EOS 5D"
    assert table[str(sample_photos.good["panorama.png"])]["width"] == 20000


def test_rerun_skips_and_leaves_rows_identical(tmp_path: Path, captioner) -> None:
    make_tiny_jpegs(tmp_path / "lib", 6)
    db = tmp_path / "i.db"
    _, first = run([tmp_path / "lib"], captioner, db)
    before = rows(db)
    results, second = run([tmp_path / "lib"], captioner, db)
    assert (first.captioned, second.captioned, second.skipped) == (6, 0, 6)
    assert {r.status for r in results} == {"skipped"}
    assert rows(db) == before
    _, forced = run([tmp_path / "lib"], captioner, db, force=True)
    assert forced.captioned == 6


def test_touched_photo_is_not_recaptioned(tmp_path: Path, captioner) -> None:
    (path,) = make_tiny_jpegs(tmp_path / "lib", 1)
    db = tmp_path / "i.db"
    run([path], captioner, db)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    results, summary = run([path], captioner, db)
    assert (summary.captioned, summary.carried) == (0, 1)
    assert results[0].reason == "content unchanged"
    assert rows(db)[0]["mtime_ns"] == 1_000_000_000


def test_changed_content_and_new_model_recaption(tmp_path: Path, captioner) -> None:
    from photocap.checkpoint import build_random_captioner

    paths = make_tiny_jpegs(tmp_path / "lib", 2)
    db = tmp_path / "i.db"
    run(paths, captioner, db)
    Image.new("RGB", (24, 16), (250, 250, 5)).save(paths[0])  # new content at paths[0]
    _, summary = run(paths, captioner, db)
    assert (summary.captioned, summary.skipped) == (1, 1)
    other = build_random_captioner(seed=1)
    _, summary = run(paths, other, db)
    assert summary.captioned == 2
    assert {r["model_id"] for r in rows(db)} == {other.model_id}


@pytest.mark.parametrize("tagged", [False, True])
def test_a_moved_photo_keeps_its_caption_and_row(tmp_path: Path, captioner, tagged: bool) -> None:
    # Renamed, or moved into a folder with keywords written into it on the way, as Lightroom
    # and digiKam do (new bytes, the same pixels): its row moves with it, no model call, rather
    # than a new caption beside a row left for a file that is gone.
    from metadata_helpers import app_segment, insert_after_app

    paths = make_tiny_jpegs(tmp_path / "lib", 3)
    db = tmp_path / "i.db"
    run([tmp_path / "lib"], captioner, db)
    old = {r["path"]: r for r in rows(db)}[str(paths[0])]
    new_path = tmp_path / "lib" / "2024" / "renamed.jpg"
    new_path.parent.mkdir()
    data = paths[0].read_bytes()
    new_path.write_bytes(insert_after_app(data, app_segment(0xEB, b"rating=5")) if tagged else data)
    paths[0].unlink()
    counting = _CountingCaptioner(captioner)
    results, summary = run([tmp_path / "lib"], counting, db)
    assert counting.batches == 0 and (summary.captioned, summary.carried, summary.skipped) == (
        0,
        1,
        2,
    )
    moved = next(r for r in results if r.path == new_path)
    assert moved.reason.startswith("moved from") and moved.caption == old["caption"]
    table = {r["path"]: r for r in rows(db)}
    assert sorted(table) == sorted([str(paths[1]), str(paths[2]), str(new_path)])
    assert table[str(new_path)]["captioned_at"] == old["captioned_at"]
    assert (table[str(new_path)]["content_hash"] != old["content_hash"]) == tagged  # its bytes


def test_a_moved_photos_own_sidecar_follows_it(tmp_path: Path, captioner) -> None:
    # A file manager moves the photos and leaves their sidecars behind. photocap's own sidecar
    # follows its photo, so nothing is left behind and `photocap revert` at the new place can
    # still put back the person's caption that --overwrite-human replaced in the file.
    import piexif
    from metadata_helpers import camera_exif

    from photocap.metadata.infile import read_exif_caption
    from photocap.metadata.provenance import read_provenance
    from photocap.metadata.revert import revert_paths
    from photocap.metadata.xmp import NS_DC, XmpDocument
    from photocap.writers import WriteOptions

    old, new = tmp_path / "lib" / "inbox", tmp_path / "lib" / "2024"
    paths = make_tiny_jpegs(old, 3)
    piexif.insert(camera_exif("Oma's garden"), str(paths[0]))  # a person's caption in the file
    db = tmp_path / "i.db"
    writers = ["xmp", "exif", "index"]
    run([old], captioner, db, writers=writers, write_options=WriteOptions(overwrite_human=True))
    caption = XmpDocument.load(old / "img_0000.jpg.xmp").get_default(NS_DC, "description")
    assert caption and read_exif_caption(paths[0])[0] == caption
    # Another app wrote in the second photo's sidecar, and the third's new place has one.
    other = XmpDocument.load(old / "img_0001.jpg.xmp")
    other.set_text("http://ns.adobe.com/xap/1.0/", "Rating", "4")
    (old / "img_0001.jpg.xmp").write_bytes(other.serialize())
    new.mkdir()
    (new / "img_0002.jpg.xmp").write_bytes(XmpDocument.new().serialize())
    for path in paths:
        path.rename(new / path.name)
    results, summary = run([tmp_path / "lib"], captioner, db, writers=writers)
    assert summary.carried == 3 and all(r.reason.startswith("moved from") for r in results)
    # The first photo's sidecar moved with it, its record too. The second's holds another
    # app's rating, the third's new place had one: both stay where they are.
    assert sorted(p.name for p in old.iterdir()) == ["img_0001.jpg.xmp", "img_0002.jpg.xmp"]
    moved = XmpDocument.load(new / "img_0000.jpg.xmp")
    assert moved.get_default(NS_DC, "description") == caption
    assert read_provenance(moved).exif_previous_description == "Oma's garden"
    assert XmpDocument.load(new / "img_0001.jpg.xmp").get_default(NS_DC, "description")
    assert XmpDocument.load(new / "img_0002.jpg.xmp").get_default(NS_DC, "description")
    outcomes = {o.path.name: o.status for o in revert_paths([new])}
    assert outcomes["img_0000.jpg.xmp"] == "deleted"
    assert read_exif_caption(new / "img_0000.jpg")[0] == "Oma's garden"


def test_a_copy_of_a_captioned_photo_keeps_its_caption(tmp_path: Path, captioner) -> None:
    # A duplicate in a backup folder, or an export of the same picture with other metadata:
    # the model would say the same, so it is not asked. Each copy gets its own row and sidecar.
    from metadata_helpers import app_segment, insert_after_app

    paths = make_tiny_jpegs(tmp_path / "lib", 2)
    db = tmp_path / "i.db"
    first, _ = run([tmp_path / "lib"], captioner, db, writers=["xmp", "index"])
    captions = {r.path: r.caption for r in first}
    backup = tmp_path / "lib" / "backup"
    backup.mkdir()
    shutil.copy2(paths[0], backup / paths[0].name)
    tagged = backup / "tagged.jpg"
    tagged.write_bytes(insert_after_app(paths[1].read_bytes(), app_segment(0xEB, b"rating=5")))
    counting = _CountingCaptioner(captioner)
    results, summary = run([tmp_path / "lib"], counting, db, writers=["xmp", "index"])
    by_path = {r.path: r for r in results}
    assert counting.photos == 0 and (summary.carried, summary.skipped) == (2, 2)
    for copy, source in ((backup / paths[0].name, paths[0]), (tagged, paths[1])):
        assert by_path[copy].status == "carried" and by_path[copy].caption == captions[source]
        assert by_path[copy].reason.startswith("same picture as ")
        assert {o.writer: o.status for o in by_path[copy].outputs} == {
            "xmp": "written", "index": "written"
        }  # fmt: skip
    assert len(rows(db)) == 4 and (backup / "tagged.jpg.xmp").is_file()
    # With --force, every photo goes to the model again.
    forced = _CountingCaptioner(captioner)
    run([tmp_path / "lib"], forced, db, writers=["xmp", "index"], force=True)
    assert forced.photos == 4


def test_copies_side_by_side_are_captioned_once(tmp_path: Path, captioner) -> None:
    # "IMG_0001 (1).jpg" beside "IMG_0001.jpg" (a download twice, an import twice): both in one
    # batch, the model captions the picture once and the copy takes its caption.
    paths = make_tiny_jpegs(tmp_path / "lib", 3)
    twin = paths[0].with_name(f"{paths[0].stem} (1).jpg")
    shutil.copy2(paths[0], twin)
    counting = _CountingCaptioner(captioner)
    results, summary = run([tmp_path / "lib"], counting, tmp_path / "i.db")
    by_path = {r.path: r for r in results}
    assert counting.photos == 3 and (summary.captioned, summary.carried) == (3, 1)
    first, second = sorted([paths[0], twin])  # the walk's order: the first is the model's
    assert (by_path[first].status, by_path[second].status) == ("captioned", "carried")
    assert by_path[second].reason == f"same picture as {first}"
    assert by_path[second].caption == by_path[first].caption
    assert len(rows(tmp_path / "i.db")) == 4


def test_limit_dry_run_and_stop(tmp_path: Path, captioner) -> None:
    make_tiny_jpegs(tmp_path / "lib", 10)
    db = tmp_path / "i.db"
    _, summary = run([tmp_path / "lib"], captioner, db, limit=3)
    assert summary.captioned == 3 and len(rows(db)) == 3
    from photocap.writers import WriteOptions

    _, summary = run([tmp_path / "lib"], captioner, db, write_options=WriteOptions(dry_run=True))
    assert summary.captioned == 7 and summary.dry_run and len(rows(db)) == 3
    stop = threading.Event()
    stop.set()
    _, summary = run([tmp_path / "lib"], captioner, db, stop=stop)
    assert summary.interrupted and summary.captioned == 0


def test_stop_mid_run_commits_finished_batches(tmp_path: Path, captioner) -> None:
    make_tiny_jpegs(tmp_path / "lib", 12)
    db = tmp_path / "i.db"
    stop = threading.Event()
    options = CaptionOptions(writers=["index"], batch_size=4, workers=1)
    with PhotoIndex(db) as index:
        events = caption_library([tmp_path / "lib"], captioner, index, options, stop=stop)
        for event in events:
            if isinstance(event, PhotoResult):
                stop.set()  # as the CLI's Ctrl-C handler does
            if isinstance(event, RunSummary):
                summary = event
    assert summary.interrupted and summary.captioned == 4
    assert len(rows(db)) == 4
    _, rest = run([tmp_path / "lib"], captioner, db)
    assert (rest.captioned, rest.skipped) == (8, 4)


def test_deleted_during_run_is_a_failure(tmp_path: Path, captioner) -> None:
    paths = make_tiny_jpegs(tmp_path / "lib", 6)
    db = tmp_path / "i.db"
    options = CaptionOptions(writers=["index"], batch_size=2, workers=0)
    with PhotoIndex(db) as index:
        events = caption_library([tmp_path / "lib"], captioner, index, options)
        for event in events:
            if isinstance(event, Progress) and event.phase == "caption" and event.done == 0:
                paths[5].unlink()  # planned, not yet decoded
            if isinstance(event, RunSummary):
                summary = event
    assert (summary.captioned, summary.failed) == (5, 1)
    assert "file not found" in summary.failures[0][1]


def _faulty_decode(path: str, *args: Any) -> Any:
    """decode_photo, except that it segfaults on a file named *crash* and never returns for one
    named *hang* (module level: the pool pickles it by name)."""
    import signal
    import time

    from photocap.image import decode_photo

    if "crash" in Path(path).name:
        import faulthandler

        faulthandler.disable()  # pytest's handler would print the crash's stack
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in Path(path).name:
        time.sleep(3600)
    return decode_photo(path, *args)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fault is injected into forked workers")
@pytest.mark.parametrize(
    ("fault", "error"),
    [("crash", "the decoder crashed on this file (corrupt, or out of memory)"),
     ("hang", "decoding took over 1 s (a stuck decoder?)")],
)  # fmt: skip
def test_a_decoder_that_crashes_or_hangs_fails_only_its_photo(
    tmp_path: Path, captioner, monkeypatch: pytest.MonkeyPatch, fault: str, error: str
) -> None:
    # A C decoder (LibRaw, libjpeg, libheif...) that segfaults on a hostile file kills its worker
    # process, and the pool is then broken for every photo in flight; one in an endless loop
    # never answers. Either way only the culprit may fail, and the run must end.
    import time

    import photocap.run.decode as decode

    monkeypatch.setattr(decode, "decode_photo", _faulty_decode)  # forked workers see it
    paths = make_tiny_jpegs(tmp_path / "lib", 8)
    paths[3].rename(paths[3].with_name(f"img_0003_{fault}.jpg"))
    started = time.monotonic()
    results, summary = run([tmp_path / "lib"], captioner, tmp_path / "i.db", workers=2,
                           decode_timeout_s=1.0)  # fmt: skip
    assert time.monotonic() - started < 60
    failed = {r.path.name: r.error for r in results if r.status == "failed"}
    assert failed == {f"img_0003_{fault}.jpg": error}
    assert (summary.captioned, summary.failed) == (7, 1)


def test_decoder_complaints_stay_off_the_terminal(tmp_path: Path, captioner, capfd) -> None:
    # LibRaw (and libjpeg) print their own lines about a corrupt file to stderr, beside
    # photocap's one-line error for it: "unknown file: Unexpected end of file".
    pytest.importorskip("rawpy")
    from raw_helpers import make_dng, point_strips_past_the_end

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    point_strips_past_the_end(make_dng(lib / "cut.dng", preview=None, sensor=(256, 192)))
    results, summary = run([lib], captioner, tmp_path / "i.db", workers=1)
    failed = {r.path.name: r.error for r in results if r.status == "failed"}
    assert failed == {"cut.dng": "truncated or corrupt RAW file"}
    assert (summary.captioned, summary.failed) == (2, 1)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_give_same_captions(tmp_path: Path, captioner, workers: int) -> None:
    make_tiny_jpegs(tmp_path / "lib", 5)
    results, _ = run([tmp_path / "lib"], captioner, tmp_path / f"{workers}.db", workers=workers)
    reference, _ = run([tmp_path / "lib"], captioner, tmp_path / "ref.db", workers=1)
    assert [(r.path, r.caption) for r in results] == [(r.path, r.caption) for r in reference]


class _SpyWriter:
    """A file writer that records which thread wrote what, and fails for one photo."""

    name = "spy"

    def __init__(self, fail_name: str, hold: threading.Event) -> None:
        self.fail_name = fail_name
        self.hold = hold  # the first write waits for this (set when batch 2 is on the model)
        self.calls: list[tuple[Path, threading.Thread]] = []
        self.held_until_batch_2: bool | None = None

    def write(self, record: Any) -> Any:
        from photocap.writers import WriteOutcome

        if self.held_until_batch_2 is None:
            self.held_until_batch_2 = self.hold.wait(timeout=20)
        self.calls.append((record.path, threading.current_thread()))
        if record.path.name == self.fail_name:
            raise OSError("disk full")  # a buggy writer raising for one photo
        return WriteOutcome(self.name, record.path, "written")

    def close(self) -> None:
        pass


class _CountingCaptioner:
    """The tiny captioner; ``second_batch`` is set when the model gets its second batch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches = 0
        self.photos = 0  # photos the model captioned
        self.second_batch = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def caption_batch(self, pixels: Any, beam_size: int) -> Any:
        self.batches += 1
        self.photos += len(pixels)
        if self.batches == 2:
            self.second_batch.set()
        return self.inner.caption_batch(pixels, beam_size=beam_size)


def test_writes_overlap_the_model_off_the_main_thread(
    tmp_path: Path, captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photocap.run import local

    paths = make_tiny_jpegs(tmp_path / "lib", 10)
    model = _CountingCaptioner(captioner)
    spy = _SpyWriter(fail_name=paths[5].name, hold=model.second_batch)
    monkeypatch.setattr(local, "get_writers", lambda names, options: [spy] * len(names))
    options = CaptionOptions(writers=["spy", "index"], batch_size=4, workers=1)
    results: list[PhotoResult] = []
    with PhotoIndex(tmp_path / "i.db") as index:
        for event in caption_library([tmp_path / "lib"], model, index, options):
            if isinstance(event, PhotoResult):
                # yielded only once its writes are done, with their outcomes
                assert event.path in [p for p, _ in spy.calls]
                assert [o.writer for o in event.outputs] == ["spy", "index"]
                results.append(event)
            elif isinstance(event, RunSummary):
                summary = event
    # Batch 1 was being written while batch 2 was on the model (a serial run would have waited
    # the full timeout here and recorded False).
    assert spy.held_until_batch_2 is True
    assert {thread for _, thread in spy.calls} != {threading.current_thread()}
    assert all(thread is not threading.main_thread() for _, thread in spy.calls)
    # In order, every photo written once, each result with its own outcomes.
    assert [r.path for r in results] == paths == [p for p, _ in spy.calls]
    failed = results[5]
    assert failed.status == "failed" and failed.error == "spy: disk full"
    assert [o.status for o in failed.outputs] == ["failed", "written"]
    assert all(r.status == "captioned" for i, r in enumerate(results) if i != 5)
    assert (summary.captioned, summary.failed, summary.interrupted) == (9, 1, False)
    table = {r["path"]: r for r in rows(tmp_path / "i.db")}
    assert len(table) == 10 and table[str(paths[5])]["outputs"] == "index"
    assert table[str(paths[0])]["outputs"] == "index,spy"


def test_writer_thread_error_ends_the_run_with_a_consistent_index(
    tmp_path: Path, captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photocap.run import local

    make_tiny_jpegs(tmp_path / "lib", 12)
    real = local.write_files
    calls = []

    def flaky(writers: Any, options: Any, jobs: Any) -> Any:
        calls.append(len(jobs))
        if len(calls) == 2:
            raise RuntimeError("writer thread bug")
        return real(writers, options, jobs)

    monkeypatch.setattr(local, "write_files", flaky)
    with pytest.raises(RuntimeError, match="writer thread bug"):
        run([tmp_path / "lib"], captioner, tmp_path / "i.db")
    assert len(rows(tmp_path / "i.db")) == 4  # batch 1 committed, nothing of batch 2
    monkeypatch.setattr(local, "write_files", real)
    _, rest = run([tmp_path / "lib"], captioner, tmp_path / "i.db")
    assert (rest.captioned, rest.skipped) == (8, 4)


def test_a_persons_caption_is_kept_and_searchable(tmp_path: Path, captioner) -> None:
    # A photo whose file holds a person's caption (embedded XMP): the sidecar does not hide it,
    # and `photocap search` finds the photo by the person's words as well as by photocap's.
    from metadata_helpers import insert_after_app, xmp_packet, xmp_segment

    [photo, plain] = make_tiny_jpegs(tmp_path / "lib", 2)
    photo.write_bytes(
        insert_after_app(photo.read_bytes(), xmp_segment(xmp_packet("Oma's garden in Kassel")))
    )
    db = tmp_path / "i.db"
    results, _ = run([tmp_path / "lib"], captioner, db, writers=["xmp", "index"])
    by_path = {r.path: r for r in results}
    [xmp] = [o for o in by_path[photo].outputs if o.writer == "xmp"]
    assert (xmp.status, xmp.human_caption) == ("kept_human", "Oma's garden in Kassel")
    with PhotoIndex(db) as index:
        [hit] = index.search("garden kassel")
        assert (hit.path, hit.caption) == (str(photo), by_path[photo].caption)
        assert index.get_dict(plain)["human_caption"] is None  # type: ignore[index]
    # The person removes their caption: the next run (forced) finds none and forgets it.
    photo.write_bytes(photo.read_bytes().replace(b"Oma's garden in Kassel", b"DCIM"))
    run([tmp_path / "lib"], captioner, db, writers=["xmp", "index"], force=True)
    with PhotoIndex(db) as index:
        assert index.search("kassel") == []


def test_index_only_run_finds_a_persons_caption_too(tmp_path: Path, captioner) -> None:
    # `--write index` (read-only media, say): no writer looks, so the run looks itself, in the
    # sidecar digiKam wrote and inside the file.
    from metadata_helpers import insert_after_app, iptc_segment

    from photocap.metadata.xmp import NS_DC, XmpDocument

    [labelled, inside, plain] = make_tiny_jpegs(tmp_path / "lib", 3)
    doc = XmpDocument.new()
    doc.set_default(NS_DC, "description", "Rex at the allotment")
    (tmp_path / "lib" / f"{labelled.name}.xmp").write_bytes(doc.serialize())
    inside.write_bytes(insert_after_app(inside.read_bytes(), iptc_segment(b"Oma in Kassel")))
    db = tmp_path / "i.db"
    run([tmp_path / "lib"], captioner, db, writers=["index"])
    with PhotoIndex(db) as index:
        assert [h.path for h in index.search("allotment")] == [str(labelled)]
        assert [h.path for h in index.search("kassel")] == [str(inside)]
        assert index.get_dict(plain)["human_caption"] is None  # type: ignore[index]


def test_a_sidecar_edited_in_another_app_is_looked_at_again(tmp_path: Path, captioner) -> None:
    # After photocap captioned, a person types their own caption in digiKam (into the sidecar)
    # and deletes another photo's sidecar. The photos are unchanged, so a re-run skips them,
    # but the index would then never learn the person's words, and the sidecar stay gone.
    from photocap.metadata.infile import read_exif_caption
    from photocap.metadata.sidecars import read_caption
    from photocap.metadata.xmp import NS_DC, XmpDocument
    from photocap.run.plan import SIDECAR_CHANGED

    [edited, deleted, untouched] = make_tiny_jpegs(tmp_path / "lib", 3)
    db = tmp_path / "i.db"
    writers = ["xmp", "exif", "index"]
    first, _ = run([tmp_path / "lib"], captioner, db, writers=writers)
    ours = {r.path: r.caption for r in first}
    sidecar = tmp_path / "lib" / f"{edited.name}.xmp"
    doc = XmpDocument.load(sidecar)
    doc.set_default(NS_DC, "description", "Rex at the allotment")
    sidecar.write_bytes(doc.serialize())
    (tmp_path / "lib" / f"{deleted.name}.xmp").unlink()
    counting = _CountingCaptioner(captioner)
    results, summary = run([tmp_path / "lib"], counting, db, writers=writers)
    assert counting.batches == 0  # nothing decoded or captioned again
    assert (summary.carried, summary.skipped, summary.failed) == (2, 1, 0)
    by_path = {r.path: r for r in results}
    assert by_path[edited].reason == by_path[deleted].reason == SIDECAR_CHANGED.text
    assert by_path[untouched].status == "skipped"
    outputs = {o.writer: o.status for o in by_path[edited].outputs}
    assert outputs == {"xmp": "kept_human", "exif": "kept_human", "index": "written"}
    assert read_caption(edited) == "Rex at the allotment"  # the person's, kept
    assert read_exif_caption(edited) == (None, None)  # ours left the file: it would hide theirs
    assert read_caption(deleted) == ours[deleted]  # written again
    assert read_exif_caption(deleted)[0] == ours[deleted]
    with PhotoIndex(db) as index:
        [hit] = index.search("allotment")
        assert (hit.path, hit.caption) == (str(edited), ours[edited])
    _, again = run([tmp_path / "lib"], counting, db, writers=writers)
    assert (again.carried, again.skipped) == (0, 3)


def test_rows_from_before_sidecar_stamps_are_looked_at_once(tmp_path: Path, captioner) -> None:
    # An index an earlier version wrote has no sidecar stamps: the next run looks at each
    # photo's sidecars once (a person's caption becomes searchable), leaving the files alone,
    # and reports the photos as skipped (nothing a user sees changed; the CLI lists none).
    from photocap.metadata.xmp import NS_DC, XmpDocument
    from photocap.run.plan import SIDECARS_UNRECORDED

    labelled, _ = make_tiny_jpegs(tmp_path / "lib", 2)
    db = tmp_path / "i.db"
    run([tmp_path / "lib"], captioner, db, writers=["index"])
    doc = XmpDocument.new()
    doc.set_default(NS_DC, "description", "Rex at the allotment")
    sidecar = tmp_path / "lib" / f"{labelled.name}.xmp"
    sidecar.write_bytes(doc.serialize())
    with PhotoIndex(db) as index:
        index.db.execute("UPDATE photos SET sidecar_stamp = NULL")
        index.db.conn.commit()
    before = sidecar.stat()
    results, summary = run([tmp_path / "lib"], captioner, db, writers=["index"])
    assert (summary.carried, summary.skipped) == (0, 2)
    assert {(r.status, r.reason) for r in results} == {("skipped", SIDECARS_UNRECORDED.text)}
    assert (sidecar.stat().st_mtime_ns, sidecar.stat().st_size) == (
        before.st_mtime_ns, before.st_size,
    )  # fmt: skip
    with PhotoIndex(db) as index:
        assert [h.path for h in index.search("allotment")] == [str(labelled)]
    _, again = run([tmp_path / "lib"], captioner, db, writers=["index"])
    assert (again.carried, again.skipped) == (0, 2)


def test_an_output_that_does_not_apply_is_not_retried(tmp_path: Path, captioner) -> None:
    # `--write exif` cannot write into a GIF (nor a RAW): that photo is done once its sidecar
    # and row are, not carried again by every re-run to be told "exif not supported" again.

    [jpeg] = make_tiny_jpegs(tmp_path / "lib", 1)
    gif = tmp_path / "lib" / "scan.gif"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(gif)
    db = tmp_path / "i.db"
    writers = ["xmp", "exif", "index"]
    first, _ = run([tmp_path / "lib"], captioner, db, writers=writers)
    outputs = {r.path: {o.writer: o.status for o in r.outputs} for r in first}
    assert outputs[gif] == {"xmp": "written", "exif": "skipped", "index": "written"}
    assert outputs[jpeg]["exif"] == "written"
    results, summary = run([tmp_path / "lib"], captioner, db, writers=writers)
    assert (summary.skipped, summary.carried) == (2, 0), [(r.path, r.reason) for r in results]


def test_a_metadata_edit_keeps_the_caption_without_the_model(tmp_path: Path, captioner) -> None:
    # Lightroom, digiKam and others write ratings and keywords into the file: new bytes, the
    # same pixels. The model would say the same, so it is not asked; the caption is kept.
    import piexif
    from metadata_helpers import app_segment, insert_after_app

    photo = tmp_path / "lib" / "gradient.jpg"
    photo.parent.mkdir()
    Image.linear_gradient("L").resize((48, 32)).convert("RGB").save(photo, quality=90)
    db = tmp_path / "i.db"
    [first], _ = run([photo], captioner, db)
    before = rows(db)[0]
    photo.write_bytes(insert_after_app(photo.read_bytes(), app_segment(0xEB, b"rating=5")))
    counting = _CountingCaptioner(captioner)
    [again], summary = run([photo], counting, db)
    assert counting.batches == 0 and (summary.carried, summary.captioned) == (1, 0)
    assert (again.reason, again.caption) == ("pixels unchanged", first.caption)
    after = rows(db)[0]
    assert after["content_hash"] != before["content_hash"]  # the new bytes are recorded
    assert after["pixels_hash"] == before["pixels_hash"] and after["caption"] == first.caption
    # An edit that turns the photo (EXIF orientation) changes what the model sees: captioned.
    exif = piexif.dump({"0th": {piexif.ImageIFD.Orientation: 6}})
    piexif.insert(exif, str(photo))
    _, turned = run([photo], counting, db)
    assert (turned.captioned, counting.batches) == (1, 1)
    assert rows(db)[0]["pixels_hash"] != before["pixels_hash"]


def test_a_persons_caption_written_into_the_file_later_is_kept_and_found(
    tmp_path: Path, captioner
) -> None:
    # A person captions a photo in Lightroom, which writes into the file: same pixels, so the
    # caption is carried, and the sidecar writer looks again: ours leaves the sidecar (it would
    # hide theirs in digiKam), and the index finds the photo by their words.
    from metadata_helpers import insert_after_app, xmp_packet, xmp_segment

    from photocap.metadata.sidecars import read_caption

    [photo] = make_tiny_jpegs(tmp_path / "lib", 1)
    db = tmp_path / "i.db"
    run([photo], captioner, db, writers=["xmp", "index"])
    photo.write_bytes(
        insert_after_app(photo.read_bytes(), xmp_segment(xmp_packet("Oma's garden in Kassel")))
    )
    [again], _ = run([photo], captioner, db, writers=["xmp", "index"])
    assert (again.status, again.reason) == ("carried", "pixels unchanged")
    assert {o.writer: o.status for o in again.outputs}["xmp"] == "kept_human"
    assert read_caption(photo) is None  # no caption of ours left in the sidecar
    with PhotoIndex(db) as index:
        assert [h.path for h in index.search("kassel")] == [str(photo)]


def _raw_jpeg_pairs(folder: Path, stems: list[str], raw_ext: str = ".CR2") -> list[Path]:
    """For each stem a RAW (a DNG inside, its preview a shade of green) and the camera's JPEG
    of the same shot (a shade of blue: another picture, so a caption of its own would be a
    guess of the model's, not the JPEG's caption)."""
    from raw_helpers import make_dng

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, stem in enumerate(stems):
        out.append(make_dng(folder / f"{stem}{raw_ext}", colour=(30, 120 + 20 * i, 40)))
        Image.new("RGB", (64, 48), (20, 40, 150 + 20 * i)).save(folder / f"{stem}.JPG")
        out.append(folder / f"{stem}.JPG")
    return out


@pytest.mark.parametrize("raw_ext", [".CR2", ".RW2"])  # the RAW sorts before / after its JPEG
def test_the_raw_of_a_raw_jpeg_pair_shares_its_jpegs_caption(
    tmp_path: Path, captioner, raw_ext: str
) -> None:
    # One shot, two files: one caption for both, and the model asked once. Three pairs and a
    # lone JPEG, four photos a batch: pairs across batch boundaries.
    lib = tmp_path / "lib"
    paired = _raw_jpeg_pairs(lib, ["IMG_0001", "IMG_0002", "IMG_0003"], raw_ext)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(lib / "lone.jpg")
    db = tmp_path / "i.db"
    counting = _CountingCaptioner(captioner)
    results, summary = run([lib], counting, db, writers=["xmp", "index"])
    by_path = {r.path: r for r in results}
    assert counting.photos == 4 and (summary.captioned, summary.carried) == (4, 3)
    for raw, jpeg in zip(paired[::2], paired[1::2], strict=True):
        assert (by_path[raw].status, by_path[raw].reason) == (
            "carried",
            f"same shot as {jpeg.name}",
        )
        assert by_path[raw].caption == by_path[jpeg].caption and by_path[jpeg].status == "captioned"
        assert {o.writer: o.status for o in by_path[raw].outputs} == {
            "xmp": "written", "index": "written"
        }  # fmt: skip
    table = {Path(r["path"]): r for r in rows(db)}
    raw, jpeg = paired[0], paired[1]
    assert table[raw]["caption"] == table[jpeg]["caption"]
    assert (
        table[raw]["format"] == "RAW" and table[raw]["content_hash"] != table[jpeg]["content_hash"]
    )
    again = _CountingCaptioner(captioner)
    _, summary = run([lib], again, db, writers=["xmp", "index"])
    assert again.photos == 0 and summary.skipped == 7


def test_a_raw_whose_jpeg_cannot_be_captioned_is_captioned_itself(
    tmp_path: Path, captioner
) -> None:
    lib = tmp_path / "lib"
    raw, jpeg = _raw_jpeg_pairs(lib, ["IMG_0001"])
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated: the JPEG fails
    counting = _CountingCaptioner(captioner)
    results, summary = run([lib], counting, tmp_path / "i.db")
    by_path = {r.path: r for r in results}
    assert by_path[jpeg].status == "failed" and by_path[raw].status == "captioned"
    assert counting.photos == 1 and (summary.captioned, summary.failed) == (1, 1)


def test_a_raw_added_later_takes_the_caption_its_jpeg_has(tmp_path: Path, captioner) -> None:
    # Photos imported as JPEGs first and their RAWs copied in later (or the other way round
    # on the next import): the RAW takes the JPEG's caption from the index, no model call.
    lib = tmp_path / "lib"
    raw, _ = _raw_jpeg_pairs(lib, ["IMG_0001"])
    raw.rename(tmp_path / raw.name)
    db = tmp_path / "i.db"
    [first], _ = run([lib], captioner, db)
    (tmp_path / raw.name).rename(raw)
    counting = _CountingCaptioner(captioner)
    results, _ = run([lib], counting, db)
    result = next(r for r in results if r.path == raw)
    assert counting.photos == 0 and result.status == "carried"
    assert (result.caption, result.reason) == (first.caption, "same shot as IMG_0001.JPG")
    # A new model: both captioned again, the RAW still from its JPEG.
    from photocap.checkpoint import build_random_captioner

    other = _CountingCaptioner(build_random_captioner(seed=1))
    results, _ = run([lib], other, db)
    assert other.photos == 1 and {r.caption for r in results} == {results[0].caption}


def test_pairs_stay_one_caption_a_shot_across_an_interrupted_run(tmp_path: Path, captioner) -> None:
    # Stopped while the model's second batch is on it (the last two JPEGs, their RAWs waiting
    # for them): what was written is whole, pairs agree, and the next run captions only the
    # two JPEGs left, once each.
    lib = tmp_path / "lib"
    files = _raw_jpeg_pairs(lib, [f"IMG_{i:04d}" for i in range(6)])
    db = tmp_path / "i.db"
    stop = threading.Event()

    class StopInSecondBatch(_CountingCaptioner):
        def caption_batch(self, pixels: Any, beam_size: int) -> Any:
            if self.batches == 1:
                stop.set()  # as Ctrl-C does
            return super().caption_batch(pixels, beam_size)

    first = StopInSecondBatch(captioner)
    _, summary = run([lib], first, db, stop=stop)
    assert summary.interrupted and (first.photos, summary.captioned, summary.carried) == (6, 4, 4)

    def pairs_agree() -> dict[Path, str]:
        table = {Path(r["path"]): r["caption"] for r in rows(db) if r["caption"]}
        for raw, jpeg in zip(files[::2], files[1::2], strict=True):
            assert (raw in table) == (jpeg in table) and table.get(raw) == table.get(jpeg)
        return table

    assert len(pairs_agree()) == 8
    again = _CountingCaptioner(captioner)
    _, summary = run([lib], again, db)
    assert not summary.interrupted and (summary.captioned, summary.carried) == (2, 2)
    assert len(pairs_agree()) == 12 and again.photos == 2


def test_every_failure_is_in_the_index_once_with_its_stage(tmp_path: Path, captioner) -> None:
    # "failed 4" in the summary is 4 failures in the index, each with its reason and where it
    # happened: before a caption (decode, a name that cannot be walked) or writing one (xmp,
    # exif), which keeps the caption. A later run that can write it clears the failure.
    from conftest import _jpeg_bytes, _scene, _with_corrupt_exif

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    sidecar = lib / "img_0001.jpg.xmp"
    sidecar.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF")  # malformed
    (lib / "corrupt_exif.jpg").write_bytes(_with_corrupt_exif(_jpeg_bytes(_scene((40, 30), 11))))
    (lib / "empty.jpg").write_bytes(b"")
    latin = lib / os.fsdecode(b"caf\xe9.jpg")  # SQLite text cannot hold its name as it is
    latin.write_bytes((lib / "img_0000.jpg").read_bytes())
    db = tmp_path / "i.db"
    writers = ["xmp", "exif", "index"]
    results, summary = run([lib], captioner, db, writers=writers, workers=0)
    failed = {r.path.name: r for r in results if r.status == "failed"}
    assert {name: r.stage for name, r in failed.items()} == {
        latin.name: "discover", "empty.jpg": "decode", "corrupt_exif.jpg": "exif",
        "img_0001.jpg": "xmp",
    }  # fmt: skip
    assert summary.failed == 4
    table = {r["path"]: r for r in rows(db)}
    recorded = {p: (r["stage"], r["error"]) for p, r in table.items() if r["error"] is not None}
    assert recorded == {
        str(lib / "caf\\xe9.jpg"): ("discover", failed[latin.name].error),
        str(lib / "empty.jpg"): ("decode", "empty file (0 bytes)"),
        str(lib / "corrupt_exif.jpg"): ("exif", failed["corrupt_exif.jpg"].error),
        str(lib / "img_0001.jpg"): ("xmp", failed["img_0001.jpg"].error),
    }
    kept = table[str(lib / "img_0001.jpg")]
    assert kept["caption"] == failed["img_0001.jpg"].caption and kept["caption"]
    with PhotoIndex(db) as index:
        stats = index.stats()
        assert stats.failed == summary.failed
        assert [(f.path, f.stage) for f in stats.failures] == sorted(
            (p, stage) for p, (stage, _) in recorded.items()
        )
        word = kept["caption"].split()[1].strip(".")
        assert str(lib / "img_0001.jpg") in [h.path for h in index.search(word, limit=50)]

    sidecar.unlink()  # the user deletes the broken sidecar; the name is fixed
    latin.rename(lib / "cafe.jpg")
    results, summary = run([lib], captioner, db, writers=writers, workers=0)
    by_name = {r.path.name: r for r in results}
    assert by_name["img_0001.jpg"].status == "carried"  # its caption kept: no model call
    assert by_name["img_0001.jpg"].caption == kept["caption"]
    assert sidecar.is_file()
    table = {r["path"]: r for r in rows(db)}
    assert (table[str(lib / "img_0001.jpg")]["error"], table[str(lib / "img_0001.jpg")]["stage"]) \
        == (None, None)  # fmt: skip
    assert str(lib / "caf\\xe9.jpg") not in table  # walked without failing: forgotten
    assert {p for p, r in table.items() if r["error"]} == {
        str(lib / "empty.jpg"),
        str(lib / "corrupt_exif.jpg"),
    }
    assert summary.failed == 2


def test_a_model_failure_is_recorded_with_its_stage(
    tmp_path: Path, captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tiny_jpegs(tmp_path / "lib", 2)

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(captioner, "caption_batch", out_of_memory)
    results, summary = run([tmp_path / "lib"], captioner, tmp_path / "i.db", workers=0)
    assert {(r.status, r.stage) for r in results} == {("failed", "model")}
    assert {(r["stage"], r["caption"]) for r in rows(tmp_path / "i.db")} == {("model", None)}
    assert summary.failed == 2


def test_a_reason_the_writers_share_is_said_once_naming_the_sidecar(
    captioner: Any, tmp_path: Path
) -> None:
    # 252 bytes: the photo's name fits (255), its sidecar's (photo name + ".xmp") does not.
    lib = tmp_path / "lib"
    [first] = make_tiny_jpegs(lib, 1)
    photo = first.rename(lib / ("a" * 248 + ".jpg"))
    sidecar = f"{photo}.xmp"
    results, summary = run([lib], captioner, tmp_path / "i.db", writers=["xmp", "exif", "index"])
    [result] = results
    assert result.status == "failed" and summary.failed == 1
    reason = f"file name too long (256 bytes): {sidecar}"
    assert result.error == f"xmp, exif: {reason}"  # the sidecar's name, and only once
    assert summary.failures == ((str(photo), result.error),)


def test_the_model_gets_every_core_when_no_worker_is_decoding(
    tmp_path: Path, captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a CPU, torch's spin-waiting threads stall when a decode worker takes one of their
    # cores: while a photo is being decoded the model gets half the cores; when none is (the
    # photos in flight are decoded, or the last batches) it gets every thread torch had.
    import torch

    from photocap.run.local import LocalRun as _Run

    submitted: list[Any] = []  # the futures of the photos sent to decode
    submit = _Run._submit

    def tracked(self: Any, pool: Any, path: Path) -> Any:
        submitted.append(submit(self, pool, path))
        return submitted[-1]

    monkeypatch.setattr(_Run, "_submit", tracked)
    from photocap.run.caption import CoreShare, usable_cores

    # What the run decided before each batch, beside what the test saw at that moment (the
    # test looks again only at the decision: a worker may finish while the batch starts).
    decisions: list[tuple[bool, bool]] = []  # (the run: decoding, the test: decoding)
    decide = CoreShare.set_for_batch

    def watched(self: Any, *, decoding: bool) -> None:
        decisions.append((decoding, any(not f.done() for f in submitted)))
        decide(self, decoding=decoding)

    monkeypatch.setattr(CoreShare, "set_for_batch", watched)
    seen: list[tuple[bool, int]] = []  # (the run said a worker was decoding, torch threads)

    class Watching(_CountingCaptioner):
        def caption_batch(self, pixels: Any, beam_size: int) -> Any:
            seen.append((decisions[-1][0], torch.get_num_threads()))
            return super().caption_batch(pixels, beam_size)

    make_tiny_jpegs(tmp_path / "lib", 14)
    threads = torch.get_num_threads()
    shared = max(1, min(threads, usable_cores() // 2))
    _, summary = run([tmp_path / "lib"], Watching(captioner), tmp_path / "i.db", workers=2)
    assert summary.captioned == 14 and len(seen) == 4  # batches of 4, 4, 4, 2
    assert torch.get_num_threads() == threads  # restored
    assert seen[-1] == (False, threads)  # the last batch: nothing left to decode
    # The run's view is the futures': decoding while one is not done. The test looks just
    # after the run: a future may finish in between, never start again.
    assert all(ours or not theirs for ours, theirs in decisions)
    for decoding, used in seen:
        assert used == (shared if decoding else threads)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_decode_workers_default_to_the_cores_the_run_may_use(
    tmp_path: Path, captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under taskset, or in a container given a CPU set, a worker per core of the machine
    # would crowd the few cores the run has.
    from photocap.run import decode

    made: list[int] = []
    make_pool = decode.make_pool

    def recorded(workers: int) -> Any:
        made.append(workers)
        return make_pool(workers)

    monkeypatch.setattr(decode, "make_pool", recorded)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    make_tiny_jpegs(tmp_path / "lib", 3)
    _, summary = run([tmp_path / "lib"], captioner, tmp_path / "i.db", workers=None)
    assert summary.captioned == 3
    assert made == [1]


def test_sidecar_keywords_are_indexed_and_searched(tmp_path: Path, captioner) -> None:
    lib = tmp_path / "lib"
    photo = make_tiny_jpegs(lib, 1)[0]
    photo.with_name(photo.name + ".xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
        "<dc:subject><rdf:Bag><rdf:li>lighthouse</rdf:li><rdf:li>holiday</rdf:li></rdf:Bag>"
        "</dc:subject><lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|France|Brest</rdf:li>"
        "</rdf:Bag></lr:hierarchicalSubject></rdf:Description></rdf:RDF></x:xmpmeta>",
        encoding="utf-8",
    )
    run([lib], captioner, tmp_path / "i.db", writers=["xmp", "index"])
    (row,) = rows(tmp_path / "i.db")
    assert row["keywords"] == "lighthouse, holiday, Places, France, Brest"
    with PhotoIndex(tmp_path / "i.db") as index:
        assert [h.path for h in index.search("brest")] == [str(photo)]
        assert [h.path for h in index.search("lighthouse")] == [str(photo)]


def test_keywords_inside_the_file_are_indexed_and_searched(tmp_path: Path, captioner) -> None:
    # Lightroom, digiKam, Photos and cameras' apps write keywords into the file itself: the
    # embedded XMP (dc:subject, Lightroom's hierarchical subjects) and IPTC Keywords (2:25).
    from metadata_helpers import app_segment, insert_after_app, xmp_packet, xmp_segment

    lib = tmp_path / "lib"
    photo = make_tiny_jpegs(lib, 1)[0]
    subjects = (
        "<dc:subject><rdf:Bag><rdf:li>lighthouse</rdf:li></rdf:Bag></dc:subject>"
        "<lr:hierarchicalSubject xmlns:lr='http://ns.adobe.com/lightroom/1.0/'><rdf:Bag>"
        "<rdf:li>Places|France|Brest</rdf:li></rdf:Bag></lr:hierarchicalSubject>"
    )
    iim = b"\x1c\x02\x00\x00\x02\x00\x04"  # RecordVersion 4, then two Keywords datasets
    for word in (b"vacances", b"Bretagne"):
        iim += b"\x1c\x02\x19" + len(word).to_bytes(2, "big") + word
    irb = b"8BIM\x04\x04\x00\x00" + len(iim).to_bytes(4, "big") + iim + b"\x00" * (len(iim) & 1)
    blob = xmp_segment(xmp_packet(extra=subjects)) + app_segment(0xED, b"Photoshop 3.0\x00" + irb)
    photo.write_bytes(insert_after_app(photo.read_bytes(), blob))
    run([lib], captioner, tmp_path / "i.db", writers=["xmp", "index"])
    (row,) = rows(tmp_path / "i.db")
    assert row["keywords"] == "lighthouse, Places, France, Brest, vacances, Bretagne"
    with PhotoIndex(tmp_path / "i.db") as index:
        for word in ("brest", "lighthouse", "bretagne", "vacances"):
            assert [h.path for h in index.search(word)] == [str(photo)], word


def test_a_pool_broken_between_results_and_the_next_submit_is_replaced(
    tmp_path: Path, captioner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker may die (the OOM killer, a SIGTERM to the process group) after the last result
    # was read: the next submit then raises BrokenProcessPool. That photo is decoded again
    # like those in flight, and the run goes on.
    from concurrent.futures.process import BrokenProcessPool

    from photocap.run import decode

    submit = decode.submit_decode
    calls = {"n": 0}

    def breaks_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            raise BrokenProcessPool("A child process terminated abruptly")
        return submit(*args, **kwargs)

    monkeypatch.setattr(decode, "submit_decode", breaks_once)
    make_tiny_jpegs(tmp_path / "lib", 6)
    _, summary = run([tmp_path / "lib"], captioner, tmp_path / "i.db", workers=1)
    assert calls["n"] >= 5
    assert (summary.captioned, summary.failed) == (6, 0) and not summary.interrupted
