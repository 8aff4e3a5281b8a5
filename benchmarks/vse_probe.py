"""How far a joint text-image embedding (a visual-semantic embedding, VSE) takes sentence search.

Issue 24's sentence targets (R@1 15 / R@5 35 / R@10 48 on 1,000 photos) are beyond what text
matching over the captions reaches (R@1 8.9 on dev, ``search_quality.py``). This probe measures
the lever before it is wired into the run and the index: the shipped model's encoder features of
the Flickr8k train and dev photos (mean- and max-pooled, computed once and cached), a small
text encoder (the decoder's word vectors as a start, a GRU) and a linear image projection,
trained with a symmetric contrastive loss (InfoNCE) on the 6,000 train photos x 5 captions, all
on the CPU; then the sentence protocol on the 1,000 dev photos: each photo's first reference
caption as the query, the photo's rank among the 1,000 by cosine similarity.

    python benchmarks/vse_probe.py --data ../shared/flickr8k --epochs 6 [--save]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report


def pooled_features(split: str, data: Any, captioner: Any, cache: Path, workers: int) -> Any:
    """(N, 2D) float32: mean- and max-pooled encoder features of a split's photos, cached."""
    import torch

    from photocap.training.features import extract_features, load_pixels

    path = cache / f"vse-{split}-{captioner.model_id.split('@')[-1]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    names = data.split(split)
    pooled = []
    for start in range(0, len(names), 500):  # bounded memory: 500 photos at a time
        paths = [data.image_path(n) for n in names[start : start + 500]]
        pixels = load_pixels(paths, captioner.preset, workers)
        feats = extract_features(captioner, pixels, batch_size=50).float()  # (n, L, D)
        pooled.append(torch.cat([feats.mean(1), feats.amax(1)], dim=1))  # (n, 2D)
        print(f"  {split}: {start + len(paths)}/{len(names)} photos", file=sys.stderr)
    out = torch.cat(pooled)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=FLICKR8K)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/photocap-vse"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--save", action="store_true", help="write it beside the shipped model")
    args = parser.parse_args(argv)

    import torch

    from photocap.checkpoint import default_model_path, load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.embedding import MAX_WORDS, embedding_path, save_embedding
    from photocap.training.embedding import train_embedding
    from photocap.training.features import encode_captions

    data = load_flickr8k(args.data)
    captioner = load_captioner(None, "cpu")
    started = time.perf_counter()
    train_x = pooled_features("train", data, captioner, args.cache, args.workers)
    dev_x = pooled_features("dev", data, captioner, args.cache, args.workers)
    features_s = time.perf_counter() - started
    vocab = captioner.vocab
    train_names, dev_names = data.split("train"), data.split("dev")
    train_caps = [c for n in train_names for c in data.captions[n][:5]]  # (P = 5 N)
    photo_of = torch.arange(len(train_names)).repeat_interleave(5)  # (P,)
    train_tok = encode_captions(vocab, train_caps, MAX_WORDS)  # (P, T)
    dev_tok = encode_captions(vocab, [data.captions[n][0] for n in dev_names], MAX_WORDS)
    first: Any = captioner.decoder.members[0]  # type: ignore[index]
    word_vectors = first.embed.weight.detach().float()  # (V, 512): the decoder's words
    started = time.perf_counter()
    module, history = train_embedding(
        train_x.float(), train_tok, photo_of, word_vectors, epochs=args.epochs, dim=args.dim,
        batch_size=args.batch, seed=args.seed, dev=(dev_x.float(), dev_tok),
        log=lambda line: print("  " + line, file=sys.stderr),
    )  # fmt: skip
    train_s = time.perf_counter() - started
    rows = [(e, loss, *r) for e, loss, r in history]
    best = max(rows, key=lambda h: h[2] + h[3] + h[4])
    table = markdown_table(rows, ["epoch", "loss", "R@1", "R@5", "R@10"])
    table += (f"\n\nkept: epoch {best[0]}: R@1 {best[2]} / R@5 {best[3]} / R@10 {best[4]} "
              f"(features {features_s:.0f} s, training {train_s:.0f} s)")  # fmt: skip
    if args.save:
        out = save_embedding(
            module, vocab, captioner.model_id, embedding_path(default_model_path())
        )
        table += f"\n\nsaved: {out}"
    data_out = {"history": rows, "best": best, "features_s": features_s, "train_s": train_s}
    report("Embedding: dev sentence search by the embedding alone", table, data_out, args.json)


if __name__ == "__main__":
    main()
