"""Caption throughput on camera-sized JPEGs: photocap end to end, per stage, and two baselines.

All in one run, on the same photos, so the ratios hold on a noisy machine:

1. **full decode**: every JPEG decoded at full size with Pillow in this one process (the floor
   a naive tool can never beat);
2. **naive baseline** (``--baseline-count`` photos): what the tutorials do - full-size decode,
   EXIF transpose, resize to 224, one photo at a time through the encoder, greedy word-by-word
   decoding (batch 1), one SQLite INSERT + COMMIT per photo (default journal);
3. **photocap end to end**: ``python -m photocap caption LIB --json`` in a subprocess (the real
   CLI: model load, discovery, decode workers, batched beam search, XMP + index writes), timed
   with start-up (wall clock) and by the run's own summary (which holds the model load: it is
   lazy), with peak memory of the process tree; and its **marginal rate**, start-up excluded:
   the first ``--marginal-from`` photos and all of them, ``--rounds`` runs each, the
   difference (the ratios the issues' targets name);
4. **stages** in this process, each alone: discovery, decode+preprocess (the pipeline's worker
   pool and one process), encoder, beam search, writes (XMP sidecars + index, one transaction
   per batch).

    python benchmarks/bench_caption.py --count 48            # generates 48 12-MP JPEGs in /tmp
    python benchmarks/bench_caption.py --library ~/Pictures --count 200
    python benchmarks/bench_caption.py --device cuda --count 1000 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TreeMemorySampler, last_json_line, markdown_table, report, run_timed


def jpegs_in(folder: Path, count: int | None) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    return files[:count] if count else files


def bench_full_decode(files: list[Path]) -> dict[str, Any]:
    """Decode every JPEG at full size with Pillow in this process (no draft, no resize)."""
    from PIL import Image

    started = time.perf_counter()
    pixels = 0
    for path in files:
        with Image.open(path) as img:
            img.load()
            pixels += img.width * img.height
    seconds = time.perf_counter() - started
    return {"photos": len(files), "seconds": seconds, "photos_per_s": len(files) / seconds,
            "megapixels": pixels / len(files) / 1e6}  # fmt: skip


def bench_naive(files: list[Path], captioner: Any, db_path: Path) -> dict[str, Any]:
    """The tutorial way, one photo at a time. Returns photos/s and the time split."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from photocap.decoding import greedy
    from photocap.vocab import to_sentence

    size = captioner.preset.size
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE IF NOT EXISTS captions (path TEXT PRIMARY KEY, caption TEXT)")
    split = {"decode": 0.0, "model": 0.0, "write": 0.0}
    started = time.perf_counter()
    with torch.no_grad():
        for path in files:
            t0 = time.perf_counter()
            img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]  # (1, 3, S, S)
            t1 = time.perf_counter()
            features = captioner.encode(x)
            tokens, _ = greedy(captioner.decoder, captioner.rules, features)
            text = to_sentence(captioner.vocab.decode(tokens[0]))
            t2 = time.perf_counter()
            conn.execute("INSERT OR REPLACE INTO captions VALUES (?, ?)", (str(path), text))
            conn.commit()
            t3 = time.perf_counter()
            split["decode"] += t1 - t0
            split["model"] += t2 - t1
            split["write"] += t3 - t2
    seconds = time.perf_counter() - started
    conn.close()
    n = len(files)
    return {"photos": n, "seconds": seconds, "photos_per_s": n / seconds,
            **{f"{k}_ms_per_photo": v / n * 1e3 for k, v in split.items()}}  # fmt: skip


def bench_end_to_end(
    library: Path, workdir: Path, args: argparse.Namespace, count: int,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The real CLI in a subprocess, on a fresh index; XMP sidecars removed afterwards."""
    db = workdir / "e2e.db"
    db.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "photocap", "caption", str(library), "--db", str(db), "--json",
           "--batch-size", str(args.batch_size), "--device", args.device,
           "--beam-size", str(args.beam_size), "--write", args.write,
           "--limit", str(count)]  # fmt: skip
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.model:
        cmd += ["--model", str(args.model)]
    env = {"OMP_NUM_THREADS": str(args.torch_threads)} if args.torch_threads else {}
    run = run_timed(cmd, env={**env, **(extra_env or {})}, sample_memory=True)
    _remove_sidecars(library)
    if run["rc"] != 0:
        raise SystemExit(f"photocap caption failed ({run['rc']}):\n{run['stderr'][-3000:]}")
    summary = last_json_line(run["stdout"])
    n = summary["captioned"]
    return {
        "photos": n, "failed": summary["failed"], "wall_s": run["wall_s"],
        "run_s": summary["elapsed_s"], "photos_per_s_incl_startup": n / run["wall_s"],
        "photos_per_s": summary["photos_per_s"], "peak_rss_mb": run["peak_rss_mb"],
        "peak_pss_mb": run["peak_pss_mb"], "processes": run["peak_processes"],
        "command": " ".join(cmd),
    }  # fmt: skip


def bench_marginal(
    library: Path, workdir: Path, args: argparse.Namespace, small: int, large: int
) -> dict[str, Any]:
    """The CLI's marginal rate: wall seconds for the first ``small`` and ``large`` photos
    (``--rounds`` runs each, interleaved), the difference's photos/s. Start-up (imports, the
    model load, which happens inside the run since it is lazy, the first batch's wait) is
    paid by both sizes and cancels: both run the encoder the larger run would pick (a run of
    fewer than ``runtime.MIN_PHOTOS`` keeps it on torch, a larger one compiles OpenVINO), set
    through ``PHOTOCAP_RUNTIME`` unless it is set already."""
    from photocap.runtime import RUNTIME_ENV, wants_runtime

    pinned = {} if os.environ.get(RUNTIME_ENV) else {
        RUNTIME_ENV: "openvino" if wants_runtime(large) else "torch"}  # fmt: skip
    walls: dict[int, list[float]] = {small: [], large: []}
    captioned: dict[int, set[int]] = {small: set(), large: set()}
    for r in range(args.rounds):
        for n in (small, large) if r % 2 == 0 else (large, small):
            run = bench_end_to_end(library, workdir, args, n, pinned)
            walls[n].append(run["wall_s"])
            captioned[n].add(run["photos"])
    if any(len(c) != 1 for c in captioned.values()):
        raise SystemExit(f"runs of one size captioned different counts: {captioned}")
    done_small, done_large = (next(iter(captioned[n])) for n in (small, large))
    t_small, t_large = (statistics.median(walls[n]) for n in (small, large))
    more = done_large - done_small  # photos captioned, not asked for (failures, other types)
    rate = more / (t_large - t_small) if t_large > t_small and more > 0 else float("nan")
    return {"counts": [small, large], "captioned": [done_small, done_large],
            "walls": {str(n): w for n, w in walls.items()}, "photos_per_s": rate,
            "env": pinned}  # fmt: skip


def _remove_sidecars(library: Path) -> None:
    for sidecar in library.rglob("*.xmp"):
        sidecar.unlink(missing_ok=True)


def bench_stages(
    library: Path, files: list[Path], captioner: Any, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Each stage of the pipeline alone, the way the pipeline runs it; ms per photo."""
    import numpy as np
    import torch

    from photocap.image import DecodedPhoto, DecodeFailure, decode_photo
    from photocap.index import PhotoIndex, RunRecord
    from photocap.library import discover_photos
    from photocap.metadata import get_writers
    from photocap.run.decode import make_pool as _make_pool
    from photocap.writers import CaptionRecord, WriteOptions

    n = len(files)
    stages: dict[str, Any] = {}
    sync = torch.cuda.synchronize if captioner.device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    found = [p for p in discover_photos([library]) if hasattr(p, "size")]
    stages["discovery"] = {"seconds": time.perf_counter() - t0, "photos": len(found)}

    preset, paths = captioner.preset, [os.fspath(p) for p in files]
    sample = paths[: min(n, 8)]
    t0 = time.perf_counter()
    for path in sample:
        decode_photo(path, preset)
    stages["decode_1_process"] = {"seconds": time.perf_counter() - t0, "photos": len(sample)}
    from photocap.run.caption import usable_cores

    workers = args.workers if args.workers is not None else usable_cores()  # as the CLI
    t0 = time.perf_counter()
    if workers > 0:
        with _make_pool(workers) as pool:
            decoded = list(pool.map(decode_photo, paths, [preset] * n, chunksize=1))
    else:
        decoded = [decode_photo(p, preset) for p in paths]
    stages["decode_pool"] = {"seconds": time.perf_counter() - t0, "photos": n,
                             "workers": workers}  # fmt: skip
    failed = [d for d in decoded if isinstance(d, DecodeFailure)]
    if failed:
        raise SystemExit(f"benchmark photo failed to decode: {failed[0]}")
    pixels = torch.from_numpy(np.stack([d.pixels for d in decoded if isinstance(d, DecodedPhoto)]))
    # (N, 3, S, S) uint8

    bs = args.batch_size
    captioner.caption_batch(pixels[:bs], beam_size=args.beam_size)  # warm-up (cuDNN, allocator)
    sync()
    features, t_enc = [], 0.0
    with torch.inference_mode():
        for i in range(0, n, bs):
            t0 = time.perf_counter()
            features.append(captioner.encode(pixels[i : i + bs]))
            sync()
            t_enc += time.perf_counter() - t0
    stages["encoder"] = {"seconds": t_enc, "photos": n, "batch": bs}
    captions, t_beam = [], 0.0
    for feats in features:
        t0 = time.perf_counter()
        captions += captioner.caption_features(feats, beam_size=args.beam_size)
        t_beam += time.perf_counter() - t0
    stages["beam_search"] = {"seconds": t_beam, "photos": n, "beam": args.beam_size}

    index = PhotoIndex(workdir / "stages.db")
    from datetime import datetime, timezone

    writer_names = [w for w in args.write.split(",") if w != "index"]
    file_writers = get_writers(writer_names, WriteOptions())
    run_record = RunRecord(index, WriteOptions())
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    for i, (photo, cap) in enumerate(zip(files, captions, strict=True)):
        record = CaptionRecord(path=photo, caption=cap.text, score=cap.score,
                               alternatives=cap.alternatives, model_id=captioner.model_id,
                               captioned_at=now)  # fmt: skip
        for writer in file_writers:
            writer.write(record)
        run_record.write(record)
        if (i + 1) % bs == 0:
            run_record.flush()
    run_record.close()
    stages["writes"] = {"seconds": time.perf_counter() - t0, "photos": n, "writers": args.write}
    index.close()
    _remove_sidecars(library)
    for stage in stages.values():
        stage["ms_per_photo"] = stage["seconds"] / max(stage["photos"], 1) * 1e3
        stage["photos_per_s"] = stage["photos"] / max(stage["seconds"], 1e-9)
    return stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--library", type=Path, help="folder of photos (default: generate)")
    parser.add_argument("--count", type=int, default=24, help="photos (default 24)")
    parser.add_argument("--size", default="4032x3024", help="generated photo size")
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=8,
        help="photos for the naive baseline (slow; default 8)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="decode processes")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the photocap run (default: torch's)",
    )
    parser.add_argument("--write", default="xmp,index", help="photocap outputs")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--skip", default="", help="comma list: decode,naive,e2e,stages")
    parser.add_argument(
        "--marginal-from",
        type=int,
        default=None,
        help="the smaller library of the marginal rate (default: count / 5; 0: not measured)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each size (marginal, >= 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    skip = set(filter(None, args.skip.split(",")))

    workdir = Path(tempfile.mkdtemp(prefix="photocap-bench-"))
    try:
        if args.library is None:
            from make_library import generate, parse_size

            library = workdir / "library"
            gen = generate(library, args.count, parse_size(args.size), jobs=os.cpu_count() or 1)
        else:
            library, gen = args.library, None
        results = run_all(library, workdir, args, skip)
        results["library"] = gen or {"folder": str(library)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(results, args)


def run_all(library: Path, workdir: Path, args: argparse.Namespace, skip: set[str]) -> dict:
    import torch

    from photocap.checkpoint import load_captioner

    files = jpegs_in(library, args.count)
    if not files:
        raise SystemExit(f"no JPEGs in {library}")
    results: dict[str, Any] = {"count": len(files), "device": args.device}
    if "decode" not in skip:
        results["full_decode"] = bench_full_decode(files)
    if "e2e" not in skip:
        results["photocap"] = bench_end_to_end(library, workdir, args, len(files))
        small = len(files) // 5 if args.marginal_from is None else args.marginal_from
        if small >= len(files):
            raise SystemExit(f"--marginal-from {small} must be below --count {len(files)}")
        if small > 0:
            results["marginal"] = bench_marginal(library, workdir, args, small, len(files))
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    captioner = load_captioner(args.model, device=args.device)
    if "naive" not in skip:
        with TreeMemorySampler() as mem:
            results["naive"] = bench_naive(files[: args.baseline_count], captioner,
                                           workdir / "naive.db")  # fmt: skip
        results["naive"]["peak_rss_mb"] = round(mem.peak_rss_mb, 1)
    if "stages" not in skip:
        results["stages"] = bench_stages(library, files, captioner, workdir, args)
    pc, naive, dec = results.get("photocap"), results.get("naive"), results.get("full_decode")
    if pc and naive:
        results["ratio_vs_naive"] = pc["photos_per_s"] / naive["photos_per_s"]
        results["ratio_vs_naive_incl_startup"] = (
            pc["photos_per_s_incl_startup"] / naive["photos_per_s"]
        )
    marginal = results.get("marginal")
    if marginal and naive:
        results["ratio_vs_naive_marginal"] = marginal["photos_per_s"] / naive["photos_per_s"]
    if marginal and dec:
        results["ratio_vs_full_decode_marginal"] = marginal["photos_per_s"] / dec["photos_per_s"]
    if pc and dec:
        results["ratio_vs_full_decode"] = pc["photos_per_s"] / dec["photos_per_s"]
        results["ratio_vs_full_decode_incl_startup"] = (
            pc["photos_per_s_incl_startup"] / dec["photos_per_s"]
        )
    return results


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    rows: list[list[Any]] = []
    n = results["count"]
    if "full_decode" in results:
        d = results["full_decode"]
        rows.append(["Pillow full-size decode, 1 process", d["photos"], d["photos_per_s"],
                     1e3 / d["photos_per_s"], f"{d['megapixels']:.1f} MP"])  # fmt: skip
    if "naive" in results:
        d = results["naive"]
        note = (f"decode {d['decode_ms_per_photo']:.0f} + model {d['model_ms_per_photo']:.0f}"
                f" + write {d['write_ms_per_photo']:.0f} ms")  # fmt: skip
        rows.append(["naive baseline (batch 1, greedy, commit/photo)", d["photos"],
                     d["photos_per_s"], 1e3 / d["photos_per_s"], note])  # fmt: skip
    if "photocap" in results:
        d = results["photocap"]
        rows.append(["photocap caption (its run's own time: the model load is in it)", d["photos"],
                     d["photos_per_s"],
                     1e3 / max(d["photos_per_s"], 1e-9),
                     f"peak RSS {d['peak_rss_mb']:.0f} MB / PSS {d['peak_pss_mb']:.0f} MB "
                     f"({d['processes']} processes)"])  # fmt: skip
        rows.append(["photocap caption (start-up included)", d["photos"],
                     d["photos_per_s_incl_startup"], 1e3 / d["photos_per_s_incl_startup"],
                     f"wall {d['wall_s']:.1f} s"])  # fmt: skip
    if "marginal" in results:
        d = results["marginal"]
        small, large = d["captioned"]
        pinned = ", ".join(f"{k}={v}" for k, v in d["env"].items())
        rows.append([f"**photocap caption, marginal** (start-up excluded: {small} -> {large})",
                     large - small, d["photos_per_s"], 1e3 / d["photos_per_s"],
                     f"medians of {len(d['walls'][str(d['counts'][1])])} runs a size"
                     + (f"; {pinned} for both" if pinned else "")])  # fmt: skip
    for name, st in results.get("stages", {}).items():
        extra = ", ".join(f"{k} {v}" for k, v in st.items()
                          if k in ("workers", "batch", "beam", "writers"))  # fmt: skip
        rows.append([f"stage: {name}", st["photos"], st["photos_per_s"], st["ms_per_photo"],
                     extra])  # fmt: skip
    for key in ("ratio_vs_naive_marginal", "ratio_vs_full_decode_marginal", "ratio_vs_naive",
                "ratio_vs_naive_incl_startup", "ratio_vs_full_decode",
                "ratio_vs_full_decode_incl_startup"):  # fmt: skip
        if key in results:
            rows.append([key.replace("_", " "), "", f"{results[key]:.2f}x", "", ""])
    table = markdown_table(rows, ["measure", "photos", "photos/s", "ms/photo", "notes"])
    title = f"photocap caption benchmark ({n} JPEGs, device {args.device})"
    report(title, table, results, args.json)
    if args.json is None:
        print(json.dumps({k: v for k, v in results.items() if k.startswith("ratio")}))


if __name__ == "__main__":
    main()
