"""`photocap caption --fast-heic`: what captioning a HEIC's embedded thumbnail costs and saves.

Two measurements in one run:

* **Speed**: a 4032x3024 HEIC with a 320x240 thumbnail (an iPhone's layout, made from the
  first of ``../shared/flickr8k/originals-dev-sample`` scaled up, or from a gradient without
  it) through ``decode_photo``, with and without the option, best of ``--repeats`` (libheif
  decodes with its default threads, as in ``photocap caption``).
* **Captions**: the 48 dev photos in ``originals-dev-sample`` (long side 500 px) saved as HEIC
  with a 320-px thumbnail, captioned by the model (default: the shipped one) from the photo
  and from its thumbnail. Only photos whose thumbnail is big enough to be used count (both sides
  >= the model's input, so landscape ones). Reported: captions that changed, and corpus CIDEr-D
  / BLEU-4 (``photocap.training.cider``) of both against the 5 references. 25 photos: a rough check,
  not a dev-set score.

    python benchmarks/heic_thumbnails.py
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="originals to use (default all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import pillow_heif
    import torch
    from PIL import Image

    from photocap.checkpoint import load_captioner
    from photocap.image import DecodedPhoto, decode_photo
    from photocap.training.cider import corpus_bleu4, corpus_cider

    torch.set_num_threads(1)
    captioner = load_captioner(args.model, device="cpu")
    preset = captioner.preset
    originals = sorted((FLICKR8K / "originals-dev-sample").glob("*.jpg"))[: args.limit]
    big = (
        Image.open(originals[0]).convert("RGB")
        if originals
        else Image.linear_gradient("L").convert("RGB")
    ).resize((4032, 3024))

    def decode(path: Path, fast: bool) -> Any:
        result = decode_photo(str(path), preset, None, fast)
        assert isinstance(result, DecodedPhoto), result
        return result

    def best_ms(path: Path, fast: bool) -> float:
        decode(path, fast)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decode(path, fast)
            times.append((time.perf_counter() - start) * 1e3)
        return min(times)

    tok = re.compile(r"[a-z0-9]+")
    refs: dict[str, list[list[str]]] = {}
    captions_file = FLICKR8K / "captions.txt"
    if captions_file.is_file():
        with open(captions_file, encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                refs.setdefault(row["image"], []).append(tok.findall(row["caption"].lower()))
    with tempfile.TemporaryDirectory() as tmp:
        iphone = Path(tmp) / "IMG_0001.HEIC"
        pillow_heif.from_pillow(big).save(iphone, quality=80, thumbnails=[320])
        full_ms, fast_ms = best_ms(iphone, False), best_ms(iphone, True)
        used, full_caps, fast_caps = [], [], []
        for original in originals:
            heic = Path(tmp) / f"{original.stem}.heic"
            pillow_heif.from_pillow(Image.open(original).convert("RGB")).save(
                heic, quality=85, thumbnails=[320]
            )
            thumb = pillow_heif.open_heif(heic)[0].get_thumbnail(0)
            if min(thumb.size) < preset.size:
                continue  # portrait: 212x320, too small, the photo itself is decoded
            pixels = torch.stack([torch.from_numpy(decode(heic, f).pixels) for f in (False, True)])
            full, fast = captioner.caption_batch(pixels)
            used.append(original.name)
            full_caps.append(tok.findall(full.text.lower()))
            fast_caps.append(tok.findall(fast.text.lower()))
    changed = sum(a != b for a, b in zip(full_caps, fast_caps, strict=True))
    rows: list[list[Any]] = [
        ["decode_photo, 12-MP HEIC, best ms", full_ms, fast_ms, fast_ms / full_ms],
        ["captions changed", "", f"{changed} of {len(used)}", ""],
    ]
    if used and all(name in refs for name in used):
        gold = [refs[name] for name in used]
        for label, scorer in (("CIDEr-D", corpus_cider), ("BLEU-4", corpus_bleu4)):
            a, b = scorer(full_caps, gold), scorer(fast_caps, gold)
            rows.append([f"{label} on those photos", a, b, b - a])
    table = markdown_table(rows, ["", "the photo", "--fast-heic", "ratio / diff"])
    data = {"full_ms": full_ms, "fast_ms": fast_ms, "photos": len(used), "changed": changed}
    report("HEIC thumbnails (--fast-heic)", table, data, args.json)


if __name__ == "__main__":
    main()
