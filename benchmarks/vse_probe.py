"""How far a joint text-image embedding (a visual-semantic embedding, VSE) takes sentence search.

Issue 24's sentence targets (R@1 15 / R@5 35 / R@10 48 on 1,000 photos) are beyond what text
matching over the captions reaches (R@1 8.9 on dev, ``search_quality.py``). This probe measures
the lever before it is wired into the run and the index: the shipped model's encoder features of
the Flickr8k train and dev photos (mean- and max-pooled, computed once and cached), a small
text encoder (the decoder's word vectors as a start, a GRU) and a linear image projection,
trained with a symmetric contrastive loss (InfoNCE) on the 6,000 train photos x 5 captions, all
on the CPU; then the sentence protocol on the 1,000 dev photos: each photo's first reference
caption as the query, the photo's rank among the 1,000 by cosine similarity.

    python benchmarks/vse_probe.py --data ../shared/flickr8k --epochs 20
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
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/photocap-vse"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from torch import nn

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.features import encode_captions

    torch.manual_seed(args.seed)
    data = load_flickr8k(args.data)
    captioner = load_captioner(None, "cpu")
    started = time.perf_counter()
    train_x = pooled_features("train", data, captioner, args.cache, args.workers)
    dev_x = pooled_features("dev", data, captioner, args.cache, args.workers)
    features_s = time.perf_counter() - started
    vocab = captioner.vocab
    train_names, dev_names = data.split("train"), data.split("dev")
    # (6000 * 5) captions, each with the row of its photo
    train_caps = [c for n in train_names for c in data.captions[n][:5]]
    train_img = torch.arange(len(train_names)).repeat_interleave(5)
    train_tok = encode_captions(vocab, train_caps, 20)  # (P, T)
    dev_tok = encode_captions(vocab, [data.captions[n][0] for n in dev_names], 20)  # (1000, T)
    word_vectors = captioner.decoder.members[0].embed.weight.detach().clone()  # (V, 512)

    class TextEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding.from_pretrained(word_vectors, freeze=False)
            self.gru = nn.GRU(word_vectors.shape[1], args.dim, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * args.dim, args.dim)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, dim)
            mask = (tokens != vocab.pad_id).float().unsqueeze(-1)  # (B, T, 1)
            states, _ = self.gru(self.embed(tokens))  # (B, T, 2*dim)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over words
            return F.normalize(self.out(pooled), dim=-1)

    text = TextEncoder()
    image = nn.Sequential(nn.LayerNorm(train_x.shape[1]), nn.Linear(train_x.shape[1], args.dim))
    scale = nn.Parameter(torch.tensor(3.0))  # log of the inverse temperature
    params = [*text.parameters(), *image.parameters(), scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    steps = args.epochs * (len(train_caps) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)

    def recall(txt: torch.Tensor, img: torch.Tensor) -> tuple[float, float, float]:
        sims = txt @ img.T  # (1000, 1000): query i's photo is photo i
        rank = (sims > sims.diag().unsqueeze(1)).sum(1)  # photos ranked above the right one
        return tuple(round(100 * (rank < k).float().mean().item(), 1) for k in (1, 5, 10))  # type: ignore[return-value]

    history = []
    train_started = time.perf_counter()
    for epoch in range(args.epochs):
        text.train()
        image.train()
        # Captions of one photo met in the same batch are not negatives of each other (masked).
        order = torch.randperm(len(train_caps))
        for start in range(0, len(order) - args.batch + 1, args.batch):
            idx = order[start : start + args.batch]
            t = text(train_tok[idx])  # (B, dim)
            v = F.normalize(image(train_x[train_img[idx]]), dim=-1)  # (B, dim)
            logits = scale.exp().clamp(max=100) * t @ v.T  # (B, B)
            same = train_img[idx].unsqueeze(0) == train_img[idx].unsqueeze(1)  # duplicates
            logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), -1e4)
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        text.eval()
        image.eval()
        with torch.no_grad():
            r = recall(text(dev_tok), F.normalize(image(dev_x), dim=-1))
        history.append((epoch + 1, round(loss.item(), 3), *r))
        print(f"  epoch {epoch + 1}: loss {loss.item():.3f} dev R@1/5/10 {r}", file=sys.stderr)
    train_s = time.perf_counter() - train_started
    best = max(history, key=lambda h: h[2] + h[3] + h[4])
    table = markdown_table(history, ["epoch", "loss", "R@1", "R@5", "R@10"])
    table += (f"\n\nbest epoch {best[0]}: R@1 {best[2]} / R@5 {best[3]} / R@10 {best[4]} "
              f"(features {features_s:.0f} s, training {train_s:.0f} s)")  # fmt: skip
    data_out = {"history": history, "best": best, "features_s": features_s, "train_s": train_s}
    report("VSE probe: dev sentence search by embedding alone", table, data_out, args.json)


if __name__ == "__main__":
    main()
