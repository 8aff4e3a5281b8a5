"""`photocap caption / search / status / info / prune` through the real CLI and real SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny_jpegs
from PIL import Image
from typer.testing import CliRunner

from photocap.cli import app

runner = CliRunner()


def caption(*args: str | Path) -> object:
    return runner.invoke(app, ["caption", *map(str, args)])


def test_import_cli_does_not_import_torch() -> None:
    heavy = "('torch', 'PIL', 'sqlite_utils', 'rich')"
    code = f"import sys, photocap.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_info_is_a_table_without_building_the_model(tmp_path: Path, model_file: Path) -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from photocap.cli import app; "
        f"r = CliRunner().invoke(app, ['info', '--model', {str(model_file)!r}, "
        f"'--db', {str(tmp_path / 'none.db')!r}]); "
        "print(r.exit_code, 'torch' in sys.modules); print(r.stdout)"
    )
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout  # fmt: skip
    status, table = out.split("\n", 1)
    assert status == "0 False"  # no torch imported: the header read, no model built
    lines = table.splitlines()
    assert lines[0] == "Model" and any(line.startswith("│ model id ") for line in lines)
    assert any("│ parameters " in line and "94,374" in line for line in lines)
    assert any(line.startswith("│ beam search ") and "length_penalty: 0.7" in line
               for line in lines)  # fmt: skip
    assert "{" not in table and "'" not in table  # no Python dicts or reprs
    assert "Index" in lines and any("no index yet" in line for line in lines)


def test_info_gives_the_index_size_with_its_unit(tmp_path: Path, model_file: Path) -> None:
    from photocap.index import PhotoIndex

    db = tmp_path / "i.db"
    PhotoIndex(db).close()
    shown = runner.invoke(app, ["info", "--model", str(model_file), "--db", str(db)]).stdout
    size = db.stat().st_size
    assert re.search(rf"file size +│ {size / 1e6:.1f} MB \({size:,} bytes\)", shown), shown
    as_json = runner.invoke(app, ["info", "--model", str(model_file), "--db", str(db), "--json"])
    assert json.loads(as_json.stdout)["index"]["file_size"] == size  # bytes, for scripts


def test_fast_heic_speed_up_is_the_measured_one_in_help_and_readme() -> None:
    # benchmarks/README.md holds the measurement; --help and README.md quote it alike.
    from typer.main import get_command

    repo = Path(__file__).resolve().parent.parent
    bench = " ".join((repo / "benchmarks" / "README.md").read_text().split())
    photo, thumb = re.search(
        r"\*\*([\d.]+) ms\*\* for the photo, \*\*([\d.]+) ms\*\* for its thumbnail", bench
    ).groups()  # type: ignore[union-attr]
    quoted = f"~{round(float(photo) / float(thumb))}x faster"
    option = next(p for p in get_command(app).commands["caption"].params  # type: ignore[attr-defined]
                  if p.name == "fast_heic")  # fmt: skip
    assert quoted in option.help
    assert quoted in " ".join((repo / "README.md").read_text().split())


def test_every_option_has_help() -> None:
    from typer.main import get_command

    group = get_command(app)
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in group.commands.items()  # type: ignore[attr-defined]
        for param in command.params
        if param.param_type_name == "option" and not param.help
    ]
    assert missing == []


def test_help_text_is_shown_whole() -> None:
    # Square brackets would be eaten as Rich markup ("Decode processes ."), and a docstring's
    # line breaks would break the sentence in the middle of the terminal line.
    result = runner.invoke(app, ["caption", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "[default: the usable cores; 0 = none]" in text
    assert "[default: $PHOTOCAP_MODEL, else the default model]" in text
    assert "are skipped, moved or renamed photos keep their caption" in result.output


def test_help_documents_exit_codes() -> None:
    result = runner.invoke(app, ["caption", "--help"])
    assert result.exit_code == 0
    assert "Exit status: 0 every photo succeeded, 1" in " ".join(result.output.split())


def test_caption_json_then_search(tmp_path: Path, sample_photos, model_file: Path) -> None:
    db = tmp_path / "cli.db"
    result = caption(sample_photos.root, "--db", db, "--model", model_file, "--write", "index",
                     "--workers", "1", "--batch-size", "8", "--json")  # fmt: skip
    assert result.exit_code == 1, result.output  # the bad samples failed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    photos, summary = lines[:-1], lines[-1]
    assert summary["event"] == "summary"
    assert summary["captioned"] == len(sample_photos.good)
    assert summary["failed"] == len(sample_photos.bad)
    failed = {p["path"]: p["error"] for p in photos if p["status"] == "failed"}
    assert failed[str(sample_photos.bad["empty.jpg"])] == "empty file (0 bytes)"
    ok = next(p for p in photos if p["status"] == "captioned")
    assert (
        ok["caption"]
        and isinstance(ok["alternatives"], list)
        and ok["outputs"] == {"index": "written"}
    )

    word = ok["caption"].split()[1].strip(".").lower()
    found = runner.invoke(app, ["search", word, "--db", str(db), "--json"])
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert hits and all(word in " ".join(h["matched"]).lower() for h in hits)
    plain = runner.invoke(app, ["search", f'{word} "AND -', "--db", str(db)])
    assert plain.exit_code == 0 and str(sample_photos.root) in plain.stdout

    again = caption(
        sample_photos.root, "--db", db, "--model", model_file, "--write", "index", "--workers", "1"
    )
    assert "skipped " + str(len(sample_photos.good)) in again.stderr
    status = runner.invoke(app, ["status", "--db", str(db), "--json"])
    counts = json.loads(status.stdout.splitlines()[-1])
    assert (counts["captioned"], counts["failed"]) == (
        len(sample_photos.good),
        len(sample_photos.bad),
    )


def test_default_db_from_env_and_exit_zero(tmp_path: Path, photocap_env, model_file: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 3)
    result = caption(tmp_path / "lib", "--model", model_file, "--write", "index", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert photocap_env["PHOTOCAP_DB"].exists()
    assert result.stdout.count("\n") == 3  # one line per captioned photo
    assert "Captioned 3" in result.stderr and " photos/s)." in result.stderr
    again = caption(tmp_path / "lib", "--model", model_file, "--write", "index", "--workers", "0")
    assert "Captioned 0, kept 0 (caption known), skipped 3 unchanged" in again.stderr
    assert "photos/s" not in again.stderr  # nothing captioned: no rate, rather than "0.0"
    info = runner.invoke(app, ["info", "--model", str(model_file), "--json"])
    data = json.loads(info.stdout)
    assert data["index"]["captioned"] == 3 and data["model"]["model_id"]


def test_writer_notes_a_photo_each_for_kept_captions_a_count_for_skips(
    tmp_path: Path, model_file: Path
) -> None:
    import piexif
    from metadata_helpers import camera_exif
    from PIL import Image

    from photocap.metadata.sidecar_writer import STEM_SIDECAR_BESIDE
    from photocap.metadata.xmp import XmpDocument

    lib = tmp_path / "lib"
    paths = make_tiny_jpegs(lib, 2)
    piexif.insert(camera_exif("Oma's garden"), str(paths[0]))
    for i in range(3):  # no EXIF in a GIF: its caption goes to the sidecar alone
        Image.new("P", (16, 16), i * 40).save(lib / f"anim_{i}.gif")
    (lib / "img_0001.xmp").write_bytes(XmpDocument.new().serialize())  # Capture One's, say
    result = caption(lib, "--db", tmp_path / "i.db", "--model", model_file, "--write",
                     "xmp,exif,index", "--workers", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(line.endswith("img_0000.jpg: kept human caption") for line in lines)
    assert not any(".gif:" in line for line in lines)  # no line per GIF ...
    assert "  3 × exif: exif not supported for GIF; caption in sidecar" in lines  # ... a count
    assert "  1 × exif: kept human caption" in lines
    assert f"  1 × xmp: {STEM_SIDECAR_BESIDE}" in lines
    assert not any("img_0001.jpg: written" in line for line in lines)


def test_name_not_utf8_is_one_failure_and_the_run_goes_on(tmp_path: Path, model_file: Path) -> None:
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    latin = os.fsdecode(b"caf\xe9.jpg")  # latin-1 bytes: the run used to end in a traceback
    (lib / "img_0001.jpg").rename(lib / latin)
    result = caption(lib, "--db", tmp_path / "i.db", "--model", model_file, "--write", "xmp,index",
                     "--workers", "0", "--json")  # fmt: skip
    assert result.exit_code == 1, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["path"], e["status"]) for e in events[:-1]] == [
        (str(lib / latin), "failed"),  # escaped as \udce9 in the JSON: decodes to the same path
        (str(lib / "img_0000.jpg"), "captioned"),
    ]
    assert events[-1]["captioned"] == 1 and events[-1]["failed"] == 1
    assert not (lib / f"{latin}.xmp").exists()


def test_unwritable_folder_hint(tmp_path: Path, model_file: Path, monkeypatch) -> None:
    # A read-only card or share: every photo fails the same way. Root ignores permission bits,
    # so os.access reports what it reports to a user for a folder they cannot write.
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    real_access = os.access
    denied = lambda p, m: Path(p) == lib and m & os.W_OK  # noqa: E731
    monkeypatch.setattr(os, "access", lambda p, m: not denied(p, m) and real_access(p, m))
    db = tmp_path / "i.db"
    result = caption(lib, "--db", db, "--model", model_file, "--write", "xmp,index",
                     "--workers", "0")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stderr.count(f"xmp: folder is not writable: {lib}") == 2
    assert "2 photos are in folders photocap cannot write" in result.stderr
    assert "their captions are in the index. To caption into the index only: --write index" in (
        " ".join(result.stderr.split())
    )
    found = runner.invoke(app, ["status", "--db", str(db), "--json"])
    assert json.loads(found.stdout.splitlines()[-1])["captioned"] == 2
    assert sorted(p.name for p in lib.iterdir()) == ["img_0000.jpg", "img_0001.jpg"]
    only_index = caption(lib, "--db", db, "--model", model_file, "--write", "index")
    assert only_index.exit_code == 0 and "cannot write" not in only_index.stderr


def test_one_photo_in_a_read_only_folder_is_one_photo(tmp_path: Path, model_file: Path) -> None:
    # A folder with no write bit: refused whoever runs (the tests run as root), and counted
    # in the singular.
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 1)
    lib.chmod(0o555)
    try:
        result = caption(lib, "--db", tmp_path / "i.db", "--model", model_file,
                         "--write", "xmp,index", "--workers", "0")  # fmt: skip
    finally:
        lib.chmod(0o755)
    assert result.exit_code == 1, result.output
    assert "1 photo is in a folder photocap cannot write (read-only media, a share, " \
        "permissions); its caption is in the index. To caption into the index only: " \
        "--write index" in " ".join(result.stderr.split())  # fmt: skip
    assert "photos" not in result.stderr.replace("photos/s", "")
    assert sorted(p.name for p in lib.iterdir()) == ["img_0000.jpg"]


def test_search_words_unquoted_in_a_folder_since_a_date(tmp_path: Path) -> None:
    from photocap.index import PhotoIndex

    db, lib = tmp_path / "i.db", tmp_path / "lib"
    with PhotoIndex(db) as index:
        taken = {lib / "old.jpg": "2019-07-01T10:00:00", lib / "new.jpg": "2024-07-01T10:00:00",
                 tmp_path / "x.jpg": None}  # fmt: skip
        index.upsert_photos(
            [{"path": str(p), "caption": "A dog on a beach.", "date_taken": d}
             for p, d in taken.items()]
        )  # fmt: skip

    def search(*args: str | Path) -> list[str]:
        result = runner.invoke(app, ["search", *map(str, args), "--db", str(db), "--json"])
        assert result.exit_code == 0, result.output
        return sorted(json.loads(line)["path"] for line in result.stdout.splitlines())

    everything = sorted([str(lib / "new.jpg"), str(lib / "old.jpg"), str(tmp_path / "x.jpg")])
    assert search("dog", "beach") == search("dog beach") == everything
    assert search("dog", "beach", "--in", lib) == [str(lib / "new.jpg"), str(lib / "old.jpg")]
    assert search("dogs", "--in", lib, "--since", "2020") == [str(lib / "new.jpg")]
    assert search("beach", "--until", "2019-07") == [str(lib / "old.jpg")]
    bad = runner.invoke(app, ["search", "dog", "--since", "last week", "--db", str(db)])
    assert bad.exit_code == 2 and "--since 'last week': give a date as YYYY" in bad.output


def test_search_says_which_matches_are_partial_and_suggests_for_a_typo(tmp_path: Path) -> None:
    from photocap.index import PhotoIndex

    db = tmp_path / "i.db"
    with PhotoIndex(db) as index:
        index.upsert_photos([
            {"path": "/p/a.jpg", "caption": "A dog runs on the beach."},
            {"path": "/p/b.jpg", "caption": "A dog sleeps on a sofa."},
        ])  # fmt: skip
    result = runner.invoke(app, ["search", "a", "dog", "on", "the", "beach", "--db", str(db)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("/p/a.jpg  ") and lines[1].startswith("/p/b.jpg ~ ")
    found = runner.invoke(app, ["search", "dog beach", "--db", str(db), "--json"])
    assert [json.loads(x)["complete"] for x in found.stdout.splitlines()] == [True, False]
    exact = runner.invoke(app, ["search", "dog", "--db", str(db), "--exact", "--json"])
    assert exact.exit_code == 0 and len(exact.stdout.splitlines()) == 2
    typo = runner.invoke(app, ["search", "dgo", "--db", str(db)])
    assert typo.exit_code == 0 and typo.stderr.strip() == "No photos match dgo; did you mean dog?"


def test_fast_heic_reaches_the_decoder(tmp_path: Path, model_file: Path, monkeypatch) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    import photocap.image as image

    lib = tmp_path / "lib"
    lib.mkdir()
    pillow_heif.from_pillow(Image.new("RGB", (600, 450), "teal")).save(
        lib / "IMG_0001.HEIC", thumbnails=[320]
    )
    used: list[bool] = []
    real = image._heif_thumbnail
    monkeypatch.setattr(image, "_heif_thumbnail", lambda *a: used.append(True) or real(*a))
    for flags in ([], ["--fast-heic"]):
        result = caption(lib, "--db", tmp_path / "i.db", "--model", model_file, "--write", "index",
                         "--workers", "0", "--force", *flags)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert len(used) == len(flags)  # the thumbnail only with the flag


def test_raw_and_jpeg_pair_share_a_caption_raw_untouched(tmp_path: Path, model_file: Path) -> None:
    pytest.importorskip("rawpy")
    from raw_helpers import make_dng

    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 1)
    jpeg = (lib / "img_0000.jpg").rename(lib / "IMG_0001.JPG")
    raw = make_dng(lib / "IMG_0001.CR2", orientation=6, taken="2021:07:04 10:11:12")
    (lib / "broken.arw").write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\x00" * 40)
    before = raw.read_bytes()
    result = caption(lib, "--db", tmp_path / "i.db", "--model", model_file, "--write",
                     "xmp,exif,index", "--workers", "0", "--json")  # fmt: skip
    assert result.exit_code == 1, result.output  # broken.arw
    events = {Path(e["path"]).name: e for e in map(json.loads, result.stdout.splitlines()[:-1])}
    # One shot, one caption: the RAW takes its JPEG's (the camera's rendering), no model call.
    assert events["IMG_0001.JPG"]["status"] == "captioned"
    assert events["IMG_0001.CR2"]["status"] == "carried"
    assert events["IMG_0001.CR2"]["reason"] == "same shot as IMG_0001.JPG"
    assert events["IMG_0001.CR2"]["caption"] == events["IMG_0001.JPG"]["caption"]
    assert events["IMG_0001.CR2"]["outputs"] == {"xmp": "written", "exif": "skipped",
                                                 "index": "written"}  # fmt: skip
    assert events["broken.arw"]["error"] == "truncated or corrupt RAW file"
    assert raw.read_bytes() == before and (lib / "IMG_0001.CR2.xmp").is_file()
    assert jpeg.with_name("IMG_0001.JPG.xmp").is_file()
    with sqlite3.connect(tmp_path / "i.db") as db:
        row = db.execute("SELECT date_taken, camera, width, height FROM photos WHERE path = ?",
                         [str(raw)]).fetchone()  # fmt: skip
    db.close()
    assert row == ("2021-07-04T10:11:12", "Canon EOS Test", 96, 128)  # the sensor's size, upright


@pytest.mark.parametrize(
    "words", [[""], ["   "], ["!!!"], ['"'], ["*"], ["AND"], ['"', "*", "AND", "OR"]]
)
def test_search_without_words_is_a_usage_error(tmp_path: Path, words: list[str]) -> None:
    result = runner.invoke(app, ["search", *words, "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2
    # One line naming the argument as --help does (WORDS), and what was given.
    assert result.stderr.splitlines() == [
        f"Error: nothing to search for in {' '.join(words)!r} (WORDS are words of a caption; "
        "-word and NOT word only leave photos out)"
    ]
    assert "QUERY" not in result.output
    assert "WORDS" in runner.invoke(app, ["search", "--help"]).output


def test_usage_and_setup_errors_are_one_line(tmp_path: Path, model_file: Path) -> None:
    bad_writer = caption(tmp_path, "--write", "index,nope", "--model", model_file)
    assert bad_writer.exit_code == 2 and "unknown writer nope" in bad_writer.stderr
    no_model = caption(tmp_path, "--model", tmp_path / "missing.safetensors")
    assert no_model.exit_code == 2 and "Traceback" not in no_model.output
    assert len(no_model.stderr.strip().splitlines()) == 1
    no_index = runner.invoke(app, ["search", "dog", "--db", str(tmp_path / "none.db")])
    assert no_index.exit_code == 2 and "no index" in no_index.stderr
    bad_flag = caption(tmp_path, "--batch-size", "0")
    assert bad_flag.exit_code == 2
    db = tmp_path / "typo.db"
    typo = caption(tmp_path / "Picturs", "--db", db, "--model", model_file)
    assert typo.exit_code == 2 and "no such file or folder" in typo.stderr
    assert not db.exists()  # no index, no row for a path that is not there
    # One missing among others (an unmounted drive): that path fails, the run goes on.
    make_tiny_jpegs(tmp_path / "lib", 1)
    some = caption(tmp_path / "lib", tmp_path / "gone", "--db", db, "--model", model_file,
                   "--write", "index", "--workers", "0")  # fmt: skip
    assert some.exit_code == 1 and "Captioned 1," in some.stderr and "gone" in some.stderr


def test_prune_and_status_pending(tmp_path: Path, model_file: Path) -> None:
    paths = make_tiny_jpegs(tmp_path / "lib", 3)
    db = str(tmp_path / "p.db")
    assert caption(tmp_path / "lib", "--db", db, "--model", model_file, "--write", "index",
                   "--workers", "0").exit_code == 0  # fmt: skip
    paths[0].unlink()
    make_tiny_jpegs(tmp_path / "lib2", 1)
    status = runner.invoke(app, ["status", str(tmp_path / "lib2"), "--db", db])
    assert "not captioned yet: 1" in status.stdout
    pruned = runner.invoke(app, ["prune", "--db", db])
    assert pruned.exit_code == 0 and pruned.stdout.strip() == str(paths[0])
    assert pruned.stderr.strip() == "Removed 1 row of a missing photo."
    assert sqlite3.connect(db).execute("SELECT count(*) FROM photos").fetchone()[0] == 2


def test_a_dry_run_in_json_says_what_each_writer_would_do(tmp_path: Path, model_file: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 1)
    out = caption(tmp_path / "lib", "--db", tmp_path / "d.db", "--model", model_file,
                  "--workers", "0", "--dry-run", "--json")  # fmt: skip
    photo = next(json.loads(line) for line in out.stdout.splitlines() if '"photo"' in line)
    assert photo["outputs"] == {"xmp": "would write", "index": "skipped"}
    assert not list((tmp_path / "lib").glob("*.xmp"))


def test_prune_keeps_the_rows_of_a_folder_that_is_gone(tmp_path: Path, model_file: Path) -> None:
    # A folder gone as a whole looks like a drive not mounted: its rows stay unless asked.
    make_tiny_jpegs(tmp_path / "nas" / "2019", 2)
    photos = make_tiny_jpegs(tmp_path / "home", 2)
    db = str(tmp_path / "p.db")
    for lib in ("nas", "home"):
        assert caption(tmp_path / lib, "--db", db, "--model", model_file, "--write", "index",
                       "--workers", "0").exit_code == 0  # fmt: skip
    (tmp_path / "nas").rename(tmp_path / "unmounted")
    photos[0].unlink()  # a photo deleted from a folder that is there
    pruned = runner.invoke(app, ["prune", "--db", db])
    assert pruned.exit_code == 0 and pruned.stdout.strip() == str(photos[0])
    assert "Kept 2 rows whose folder is missing too (1 folder" in pruned.stderr
    rows = lambda: sqlite3.connect(db).execute("SELECT count(*) FROM photos").fetchone()[0]  # noqa: E731
    assert rows() == 3
    assert runner.invoke(app, ["prune", "--db", db, "--missing-folders"]).exit_code == 0
    assert rows() == 1


def test_status_lists_photos_whose_caption_revert_removed(tmp_path: Path, model_file: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 2)
    db = str(tmp_path / "p.db")
    # In the files too: revert gives their bytes back (another size than the index holds).
    assert caption(tmp_path / "lib", "--db", db, "--model", model_file, "--workers", "0",
                   "--write", "xmp,exif,index").exit_code == 0  # fmt: skip
    assert runner.invoke(app, ["revert", str(tmp_path / "lib"), "--db", db]).exit_code == 0
    status = runner.invoke(app, ["status", str(tmp_path / "lib"), "--db", db])
    assert "captioned: 0  failed: 0  not captioned yet: 2" in status.stdout
    assert status.stdout.count("(caption removed)") == 2


def _caption_cmd(lib: Path, db: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "photocap", "caption", str(lib), "--db", str(db),
        "--model", str(model), "--write", "index", "--workers", "1", "--batch-size", "4", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_commits_and_next_run_resumes(tmp_path: Path, model_file: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 300)
    db = tmp_path / "c.db"
    proc = subprocess.Popen(_caption_cmd(tmp_path / "lib", db, model_file, "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    seen = 0
    workers: set[int] = set()
    for line in proc.stdout:
        seen += json.loads(line).get("event") == "photo"
        if seen == 20:
            workers = _children(proc.pid) if Path("/proc/self/stat").exists() else set()
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert _still_alive(workers) == set()  # no decode worker left behind
    summary = json.loads(out.splitlines()[-1])
    assert summary["interrupted"] and 20 <= summary["captioned"] < 300
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == summary["captioned"]
    conn.close()
    rest = subprocess.run(_caption_cmd(tmp_path / "lib", db, model_file, "--json"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    final = json.loads(rest.stdout.splitlines()[-1])
    assert final["skipped"] == summary["captioned"]
    assert final["captioned"] == 300 - summary["captioned"]


@pytest.mark.slow
def test_two_concurrent_runs_share_one_index(tmp_path: Path, model_file: Path) -> None:
    make_tiny_jpegs(tmp_path / "lib", 80)
    db = tmp_path / "both.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(_caption_cmd(tmp_path / "lib", db, model_file, "--json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]  # fmt: skip
    started = time.monotonic()
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["failed"] == 0
    assert time.monotonic() - started < 180
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM photos WHERE error IS NULL").fetchone()[0] == 80
    assert conn.execute("SELECT count(*) FROM photos_fts").fetchone()[0] == 80


# ----------------------------------------------------------------------------- stopping


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")  # a zombie has exited


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (its decode workers), found in /proc."""
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (state := _proc_state(int(entry))) and state[1] == pid:
            kids.add(int(entry))
    return {k for k in kids if _alive(k)}


def _still_alive(pids: set[int], within_s: float = 10.0) -> set[int]:
    """``pids`` still alive after waiting up to ``within_s`` for them to exit."""
    deadline = time.monotonic() + within_s
    while {p for p in pids if _alive(p)} and time.monotonic() < deadline:
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def _run_until_photos(cmd: list[str], photos: int, **popen: object) -> tuple[Any, set[int]]:
    """Start a caption run (--json) and read its events until ``photos`` photo events came;
    return the process and its decode workers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)  # type: ignore[call-overload]  # fmt: skip
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        seen += json.loads(line).get("event") == "photo"
        if seen == photos:
            break
    assert seen == photos, proc.stderr.read() if proc.stderr else ""
    return proc, _children(proc.pid)


def _kill_leftovers(pids: set[int]) -> None:
    for pid in pids:  # only the workers this test started, by their id
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds the decode workers in /proc"
)


@pytest.mark.slow
@needs_proc
def test_decode_workers_exit_when_the_run_is_killed(tmp_path: Path, model_file: Path) -> None:
    # kill -9, the OOM killer, a crash: the run cannot shut its pool down, and its workers
    # (~500 MB each with a real library) must not be left waiting for work for ever.
    make_tiny_jpegs(tmp_path / "lib", 300)
    cmd = _caption_cmd(tmp_path / "lib", tmp_path / "k.db", model_file, "--json", "--workers", "2")
    proc, workers = _run_until_photos(cmd, 8)
    try:
        assert len(workers) == 2
        proc.kill()
        proc.wait(timeout=30)
        assert _still_alive(workers) == set()
    finally:
        _kill_leftovers(workers)
        proc.kill()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("to_group", [False, True], ids=["process", "process-group"])
def test_sigterm_stops_like_ctrl_c(tmp_path: Path, model_file: Path, to_group: bool) -> None:
    # `kill -TERM PID` (Docker, a NAS scheduler), or the whole process group, workers included
    # (systemd stopping a unit): the current batch finishes or is dropped, the index is
    # committed, the summary printed, exit 143; no worker is left behind; the next run resumes.
    make_tiny_jpegs(tmp_path / "lib", 300)
    db = tmp_path / "t.db"
    cmd = _caption_cmd(tmp_path / "lib", db, model_file, "--json", "--workers", "2")
    proc, workers = _run_until_photos(cmd, 20, start_new_session=True)
    try:
        assert len(workers) == 2
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert "Stopping after the current batch (SIGTERM again to stop now)" in err
        summary = json.loads(out.splitlines()[-1])
        assert summary["event"] == "summary" and summary["interrupted"]
        assert summary["failed"] == 0 and 20 <= summary["captioned"] < 300
        assert _still_alive(workers) == set()
    finally:
        _kill_leftovers(workers)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == summary["captioned"]
    conn.close()
    rest = subprocess.run(_caption_cmd(tmp_path / "lib", db, model_file, "--json"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    final = json.loads(rest.stdout.splitlines()[-1])
    assert (final["skipped"], final["captioned"]) == (summary["captioned"],
                                                      300 - summary["captioned"])  # fmt: skip


def test_status_counts_and_lists_each_failure_once_with_its_stage(
    tmp_path: Path, model_file: Path
) -> None:
    lib = tmp_path / "lib"
    make_tiny_jpegs(lib, 2)
    (lib / "img_0001.jpg.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF")
    (lib / "empty.jpg").write_bytes(b"")
    db = str(tmp_path / "s.db")
    run = caption(lib, "--db", db, "--model", model_file, "--workers", "0", "--json")
    assert run.exit_code == 1, run.output
    assert json.loads(run.stdout.splitlines()[-1])["failed"] == 2
    status = runner.invoke(app, ["status", str(lib), "--db", db])
    assert status.exit_code == 0, status.output
    # the run said captioned 1, failed 2: the photo whose sidecar failed is said to be both
    assert json.loads(run.stdout.splitlines()[-1])["captioned"] == 1
    assert "captioned: 2 (1 of them not written: failed)  failed: 2  not captioned yet: 0" in (
        status.stdout
    )
    lines = status.stdout.splitlines()
    assert [line for line in lines if "empty.jpg" in line] == [
        f"  {lib / 'empty.jpg'} (decode): empty file (0 bytes)"
    ]
    [kept] = [line for line in lines if "img_0001.jpg" in line]
    assert kept.startswith(f"  {lib / 'img_0001.jpg'} (caption kept): xmp: malformed XML")
    as_json = runner.invoke(app, ["status", str(lib), "--db", db, "--json"])
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(Path(e["path"]).name, e["stage"]) for e in events[:-1]] == [
        ("empty.jpg", "decode"), ("img_0001.jpg", "xmp"),
    ]  # fmt: skip
    assert (events[-1]["failed"], events[-1]["pending"]) == (2, 0)
    assert (events[-1]["captioned"], events[-1]["captioned_not_written"]) == (2, 1)
