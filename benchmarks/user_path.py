"""Caption quality as a user gets it: `photocap caption` on a split's photos, scored from the index.

The maintainers score a model on the held-out test split "through `photocap caption` as a user
runs it". This script does the same on a split we have: it copies the split's photos into a
fresh folder (their names only, as a user's library would hold them), runs the real CLI in a
subprocess (`photocap caption FOLDER --write index --db NEW.db`, decode workers, batching,
the default beam unless `--beam-size`), reads the captions back from the `photos` table and
scores them with pycocoevalcap, as `photocap evaluate` does. With `--compare-evaluate` it also
decodes the same photos in-process the way `photocap evaluate` does and counts the captions
that differ: the two paths should agree photo for photo.

    python benchmarks/user_path.py --data ../shared/flickr8k --split dev --compare-evaluate
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dev_set_parser, last_json_line, markdown_table, report, run_timed


def main() -> None:
    parser = dev_set_parser(__doc__)
    parser.add_argument("--beam-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--workers", type=int, default=None, help="default: photocap's")
    parser.add_argument(
        "--compare-evaluate", action="store_true",
        help="also run `photocap evaluate`'s in-process captioning; count captions that differ",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from photocap.dataset import load_flickr8k
    from photocap.training.evaluation import score_captions

    data = load_flickr8k(args.data)
    names = data.split(args.split, args.limit)
    refs = [data.captions[n] for n in names]
    with tempfile.TemporaryDirectory(prefix="photocap-user-path-") as tmp:
        library, db = Path(tmp) / "library", Path(tmp) / "index.db"
        library.mkdir()
        for name in names:
            shutil.copyfile(data.image_path(name), library / name)
        cmd = [sys.executable, "-m", "photocap", "caption", str(library), "--write", "index",
               "--db", str(db), "--json"]  # fmt: skip
        for flag, value in (("--model", args.model), ("--beam-size", args.beam_size),
                            ("--workers", args.workers)):  # fmt: skip
            if value is not None:
                cmd += [flag, str(value)]
        run = run_timed(cmd)
        if run["rc"] != 0:
            sys.exit(f"photocap caption failed (exit {run['rc']}):\n{run['stderr'][-2000:]}")
        summary = last_json_line(run["stdout"])
        with sqlite3.connect(db) as conn:  # the `photos` table: the maintainers' contract
            rows = dict(conn.execute("SELECT path, caption FROM photos"))
    by_name = {os.path.basename(path): caption for path, caption in rows.items()}
    missing = [n for n in names if not by_name.get(n)]
    texts = [by_name.get(n) or "" for n in names]
    scores, notes = score_captions(texts, refs)
    result = {
        "split": args.split, "photos": len(names), "missing_captions": len(missing),
        "captioned": summary["captioned"], "failed": summary["failed"],
        "caption_wall_s": round(run["wall_s"], 1), "model_id": summary["model_id"],
        "scores": scores, "notes": notes,
    }  # fmt: skip
    if args.compare_evaluate:
        result["evaluate"] = _compare_with_evaluate(args, names, texts)
    table_rows = [[k, f"{v:.4f}" if v is not None else "n/a"] for k, v in scores.items()]
    table_rows += [["photos (captioned / failed / missing)",
                    f"{summary['captioned']} / {summary['failed']} / {len(missing)}"]]  # fmt: skip
    if args.compare_evaluate:
        differing = result["evaluate"]["captions_differing"]
        table_rows.append(["captions differing from `photocap evaluate`'s", differing])
    report(f"`photocap caption` on {args.split} ({len(names)} photos), {summary['model_id']}",
           markdown_table(table_rows, ["metric", "value"]), result, args.json)  # fmt: skip


def _compare_with_evaluate(
    args: argparse.Namespace, names: list[str], texts: list[str]
) -> dict[str, object]:
    """`photocap evaluate`'s own run on the same photos: its scores, and how many of ``texts``
    differ from its captions."""
    from photocap.decoding import DEFAULT_BEAM_SIZE
    from photocap.training.evaluation import evaluate_model

    evaluated = evaluate_model(
        args.data, args.split, args.model, args.beam_size or DEFAULT_BEAM_SIZE, device="cpu",
        limit=args.limit, examples=len(names),
    )  # fmt: skip
    theirs = [e["caption"] for e in evaluated.examples]
    return {
        "scores": evaluated.scores,
        "captions_differing": sum(a != b for a, b in zip(texts, theirs, strict=True)),
    }


if __name__ == "__main__":
    main()
