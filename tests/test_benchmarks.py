"""Smoke runs of benchmarks/*.py so they never rot: each runs on a tiny input and reports.

These assert that the scripts run and print/write their summary, never a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str, timeout: int = 120) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
        timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(
    "script",
    ["make_library.py", "bench_caption.py", "bench_model.py", "bench_scale.py",
     "bench_search.py", "bench_train.py", "beam_check.py", "decoding.py", "test_time.py",
     "grid_proxy.py", "bench_raw.py", "heic_thumbnails.py", "bench_writers.py", "final_words.py",
     "user_path.py", "bench_undo.py", "bench_startup.py", "bench_cores.py", "bench_runtime.py",
     "bench_engines.py", "search_quality.py", "bench_gallery.py", "int8_decoders.py",
     "gpu_decode.py", "bench_fast.py", "model_threads.py"],
)  # fmt: skip
def test_help(script: str) -> None:
    assert "usage:" in _run(script, "--help")


def test_make_library(tmp_path: Path) -> None:
    from PIL import Image

    from photocap.image import DecodeFailure, decode_photo
    from photocap.library import discover_photos
    from photocap.preset import Preset

    out = json.loads(_run("make_library.py", str(tmp_path / "lib"), "--count", "3",
                          "--size", "320x240", "--png", "1", "--raw", "3"))  # fmt: skip
    assert out["jpegs"] == 3 and out["rotated_exif6"] == 1 and out["png"] == 1
    with Image.open(tmp_path / "lib" / "IMG_00002.jpg") as img:
        assert img.size == (240, 320)  # stored sideways
        assert img.getexif()[0x0112] == 6
        assert img.getexif()[0x010F]  # camera Make
    # RAW+JPEG shots: each DNG pairs with its JPEG and decodes, upright, to the same picture
    found = {p.path.name: p.lead for p in discover_photos([tmp_path / "lib"])}
    assert out["raw"] == 3 and found["IMG_00002.DNG"] == tmp_path / "lib" / "IMG_00002.jpg"
    raw, jpeg = (decode_photo(str(tmp_path / "lib" / f"IMG_00002.{e}"), Preset(size=32))
                 for e in ("DNG", "jpg"))  # fmt: skip
    assert not isinstance(raw, DecodeFailure) and not isinstance(jpeg, DecodeFailure)
    difference = abs(raw.pixels.astype(int) - jpeg.pixels.astype(int)).mean()  # JPEG-encoded again
    assert raw.format == "RAW" and difference < 4, difference


def test_bench_caption_smoke(tmp_path: Path) -> None:
    from photocap.checkpoint import build_random_captioner, save_captioner

    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    out = _run("bench_caption.py", "--count", "3", "--size", "320x240", "--baseline-count", "2",
               "--batch-size", "2", "--model", str(model), "--marginal-from", "1",
               "--rounds", "1", "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert "ratio vs naive" in out and "stage: encoder" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["photocap"]["photos"] == 3 and data["ratio_vs_full_decode"] > 0
    assert data["marginal"]["counts"] == [1, 3] and "ratio_vs_full_decode_marginal" in data


def test_bench_model_smoke() -> None:
    out = _run("bench_model.py", "--random-model", "--batch-sizes", "2", "--batches", "1",
               "--variants", "shipped,eager,channels_last,folded")  # fmt: skip
    assert "encoder img/s" in out and "| folded |" in out


def test_bench_search_smoke(tmp_path: Path) -> None:
    _run("bench_search.py", "--rows", "500", "--repeats", "1", "--json", str(tmp_path / "s.json"))
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["rows"] == 500 and data["median_ms"] >= 0


def test_bench_gallery_smoke(tmp_path: Path) -> None:
    out = _run("bench_gallery.py", "--rows", "300", "--repeats", "1",
               "--json", str(tmp_path / "g.json"))  # fmt: skip
    assert "review, first page" in out


def test_bench_raw_smoke(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    _run("bench_raw.py", "--size", "320x240", "--repeats", "1", "--json", str(tmp_path / "r.json"))
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["raw_ms"] > 0 and data["jpeg_ms"] > 0


def test_bench_writers_smoke(tmp_path: Path) -> None:
    _run("make_library.py", str(tmp_path / "lib"), "--count", "2", "--size", "320x240")
    _run("bench_writers.py", str(tmp_path / "lib"), "--json", str(tmp_path / "w.json"))
    rows = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["read", "check", "xmp", "exif"]
    assert all(r["photos"] == 2 and r["median ms"] > 0 for r in rows)


def test_bench_undo_smoke(tmp_path: Path) -> None:
    _run("make_library.py", str(tmp_path / "lib"), "--count", "2", "--size", "320x240",
         "--png", "1")  # fmt: skip
    _run("bench_undo.py", str(tmp_path / "lib"), "--json", str(tmp_path / "u.json"))
    rows = {r["format"]: r for r in json.loads((tmp_path / "u.json").read_text())["rows"]}
    assert rows["JPEG"]["sha256 equal after revert"] == "2/2"
    assert rows["PNG"]["sha256 equal after revert"] == "1/1"


def test_heic_thumbnails_smoke(tmp_path: Path) -> None:
    pytest.importorskip("pillow_heif")
    _run("heic_thumbnails.py", "--limit", "3", "--repeats", "1", "--json", str(tmp_path / "h.json"))
    data = json.loads((tmp_path / "h.json").read_text())
    assert data["fast_ms"] > 0 and data["full_ms"] > 0


@pytest.mark.slow
def test_bench_scale_smoke(tmp_path: Path) -> None:
    out = _run("bench_scale.py", "--count", "20", "--size", "160x120", "--write", "xmp,index",
               "--reruns", "2")  # fmt: skip
    assert "| caption 20 new photos | 20 |" in out  # each through the model, copies too
    assert out.count("| re-run, 20 unchanged | 20 |") == 2  # every photo skipped, sidecars too


@pytest.mark.slow
@pytest.mark.shared
def test_bench_train_smoke() -> None:
    if not (ROOT.parent / "shared" / "flickr8k").is_dir():
        pytest.skip("needs ../shared/flickr8k")
    out = _run("bench_train.py", "--encoder", "tiny", "--limit", "8", "--batch-size", "8",
               timeout=600)  # fmt: skip
    assert "samples/s" in out or "skipped" in out


@pytest.mark.shared
def test_rarely_final_words_match_the_train_captions(tmp_path: Path) -> None:
    # The decoding rule's word list is derived from data; the list in the code must be that.
    if not (ROOT.parent / "shared" / "flickr8k").is_dir():
        pytest.skip("needs ../shared/flickr8k")
    _run("final_words.py", "--data", str(ROOT.parent / "shared" / "flickr8k"),
         "--json", str(tmp_path / "w.json"))  # fmt: skip
    data = json.loads((tmp_path / "w.json").read_text())
    assert data["matches_code"], (data["only_derived"], data["only_in_code"])


def test_final_words_compare_smoke(tmp_path: Path) -> None:
    from flickr_fixtures import make_fake_flickr

    from photocap.checkpoint import build_random_captioner, save_captioner

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=2, n_dev=3)
    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    _run("final_words.py", "--data", str(fake.root), "--model", str(model), "--limit", "3",
         "--min-count", "1", "--compare", "--json", str(tmp_path / "w.json"))  # fmt: skip
    data = json.loads((tmp_path / "w.json").read_text())
    assert set(data["with"]["scores"]) >= {"BLEU-4", "CIDEr"} and data["with"]["scores"]


def test_beam_check_smoke(tmp_path: Path) -> None:
    from flickr_fixtures import make_fake_flickr

    from photocap.checkpoint import build_random_captioner, save_captioner

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=2, n_dev=3)
    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    common = ["--data", str(fake.root), "--model", str(model), "--limit", "3",
              "--features", str(tmp_path / "feats.pt")]  # fmt: skip
    _run("beam_check.py", *common, "--out", str(tmp_path / "a.json"))
    out = _run("beam_check.py", *common, "--out", str(tmp_path / "b.json"),
               "--compare", str(tmp_path / "a.json"))  # fmt: skip
    assert "beam 3: 3/3 identical" in out
    assert len(json.loads((tmp_path / "b.json").read_text())["5"]) == 3


def test_int8_decoders_smoke(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the decoders' step is measured on OpenVINO")
    from flickr_fixtures import make_fake_flickr

    from photocap.checkpoint import build_random_captioner, save_captioner

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=2, n_dev=3)
    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    out = _run("int8_decoders.py", "--data", str(fake.root), "--model", str(model),
               "--limit", "3", "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert "| torch fp32 (shipped) |" in out and "| openvino fp32, the whole step |" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["openvino fp32, the whole step"]["identical"] == 3


def test_gpu_decode_smoke(tmp_path: Path) -> None:
    # On the CPU: the script's code paths run; the measurement needs a GPU (nvJPEG).
    _run("make_library.py", str(tmp_path / "lib"), "--count", "2", "--size", "640x480")
    out = _run("gpu_decode.py", "--library", str(tmp_path / "lib"), "--count", "4",
               "--workers", "1", "--batch", "2", "--device", "cpu")  # fmt: skip
    assert "| photocap decode, 1 processes |" in out and "smoke), batches of 2 | " in out


def test_test_time_smoke(tmp_path: Path) -> None:
    from flickr_fixtures import make_fake_flickr

    from photocap.checkpoint import build_random_captioner, save_captioner

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=2, n_dev=2)
    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    _run("test_time.py", "--data", str(fake.root), "--model", str(model), "--limit", "2",
         "--variants", "plain,mirror,size-256,dense,mbr", "--mbr-samples", "2",
         "--json", str(tmp_path / "t.json"), timeout=300)  # fmt: skip
    rows = {r["variant"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    # the grid each variant decodes from (the random model's preset is 64 px): 2x2, 8x8 at
    # 256 px, 4x4 at output stride 16
    assert {v: r["grid"] for v, r in rows.items()} == {
        "plain": 4, "mirror": 4, "size-256": 64, "dense": 16, "mbr": 4,
    }  # fmt: skip
    assert all(r["photos"] == 2 and "CIDEr" in r for r in rows.values())


def test_grid_proxy_smoke(tmp_path: Path) -> None:
    from flickr_fixtures import make_fake_flickr

    from photocap.checkpoint import build_random_captioner, save_captioner

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=4, n_dev=2)
    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    for grid, cells in (("dense", 196), ("plain", 49)):
        _run("grid_proxy.py", "--data", str(fake.root), "--init", str(model), "--grid", grid,
             "--epochs", "1", "--batch-size", "10", "--out", str(tmp_path / f"{grid}.safetensors"),
             "--json", str(tmp_path / f"{grid}.json"), timeout=300)  # fmt: skip
        summary = json.loads((tmp_path / f"{grid}.json").read_text())
        assert summary["locations_at_224px"] == cells
        assert [row["epoch"] for row in summary["epochs"]] == [1]


def test_user_path_smoke(tmp_path: Path) -> None:
    from flickr_fixtures import make_fake_flickr

    from photocap.checkpoint import build_random_captioner, save_captioner

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=2, n_dev=3)
    model = save_captioner(build_random_captioner(), tmp_path / "tiny.safetensors")
    out = _run("user_path.py", "--data", str(fake.root), "--model", str(model), "--workers", "0",
               "--compare-evaluate", "--json", str(tmp_path / "u.json"), timeout=300)  # fmt: skip
    result = json.loads((tmp_path / "u.json").read_text())
    # every dev photo went through `photocap caption` into the index and was scored from there
    assert result["photos"] == result["captioned"] == 3 and result["missing_captions"] == 0
    assert set(result["scores"]) >= {"BLEU-4", "CIDEr"}
    # the CLI and `photocap evaluate` caption the same photos alike
    assert result["evaluate"]["captions_differing"] == 0
    assert result["evaluate"]["scores"] == result["scores"]
    assert "| CIDEr |" in out


def test_bench_startup_smoke(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    _run("bench_startup.py", "--count", "3", "--size", "64x48", "--model", "tiny",
         "--reruns", "1", "--starts", "1", "--json", str(out), timeout=300)  # fmt: skip
    data = json.loads(out.read_text())
    for way in ("eager", "lazy"):
        assert len(data[way]["rerun_wall_s"]) == 1 and len(data[way]["first_caption_s"]) == 1
        assert data[way]["first_caption_s"][0] == data[way]["first_caption_s"][0]  # not NaN


def test_bench_cores_smoke(tmp_path: Path) -> None:
    out = tmp_path / "cores.json"
    _run("bench_cores.py", "--counts", "1,2", "--size", "160x120", "--rounds", "1",
         "--batch-size", "2", "--json", str(out), timeout=300)  # fmt: skip
    data = json.loads(out.read_text())
    assert data["stages"]["decode_ms"] > 0 and data["stages"]["model_ms"] > 0
    ways = ("before", "threads", "openvino")
    assert all(set(data[way]["walls"]) == {"1", "2"} for way in ways)
