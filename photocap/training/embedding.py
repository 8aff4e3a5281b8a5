"""Training the joint text-image embedding (:mod:`photocap.embedding`) on cached features.

The image side sees the captioning model's encoder features, pooled (mean and max) once per
photo, so an epoch over Flickr8k train (6,000 photos x 5 captions) costs the text side only:
about a minute on a 2-core CPU. The loss is the symmetric InfoNCE of CLIP over a batch: each
caption against every photo of the batch and each photo against every caption, with a learnt
temperature; the captions of a photo met in the same batch are not each other's negatives.

Shapes: N photos, P captions (5 N), 2D pooled features, T tokens, dim the embedding's size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from photocap.embedding import new_embedding


def recall_at(
    text: torch.Tensor, image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> list[float]:
    """Sentence search: query i's photo is photo i; the % of queries whose photo ranks in
    the top k by cosine, for each k. ``text``, ``image``: unit vectors (Q, dim), (Q, dim)."""
    sims = text @ image.T  # (Q, Q)
    above = (sims > sims.diag().unsqueeze(1)).sum(1)  # photos ranked above the right one
    return [round(100 * (above < k).float().mean().item(), 1) for k in ks]


def train_embedding(
    pooled: torch.Tensor,
    tokens: torch.Tensor,
    photo_of: torch.Tensor,
    word_vectors: torch.Tensor,
    *,
    epochs: int = 6,
    dim: int = 512,
    batch_size: int = 250,
    lr: float = 1e-3,
    seed: int = 0,
    dev: tuple[torch.Tensor, torch.Tensor] | None = None,
    log: Any = None,
) -> tuple[Any, list[tuple[int, float, list[float]]]]:
    """Train an embedding; returns (the module at its best dev epoch, history).

    ``pooled`` (N, 2D) float: each photo's pooled features; ``tokens`` (P, T): the captions;
    ``photo_of`` (P,): each caption's photo row; ``word_vectors`` (V, E): the start of the
    text side's words. ``dev``: (pooled (Q, 2D), one caption per photo (Q, T)) to measure
    :func:`recall_at` after each epoch (history: (epoch, last loss, [R@1, R@5, R@10]))."""
    torch.manual_seed(seed)
    module = new_embedding(pooled.shape[1] // 2, word_vectors, dim)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(tokens) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    history: list[tuple[int, float, list[float]]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(tokens))
        loss = torch.tensor(0.0)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            t = module.text_vectors(tokens[rows])  # (B, dim)
            v = module.pooled_vectors(pooled[photo_of[rows]])  # (B, dim)
            logits = module.log_scale.exp().clamp(max=100) * t @ v.T  # (B, B)
            same = photo_of[rows].unsqueeze(0) == photo_of[rows].unsqueeze(1)
            eye = torch.eye(len(rows), dtype=torch.bool)
            logits = logits.masked_fill(same & ~eye, -1e4)  # a photo's other captions
            target = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        recalls: list[float] = []
        if dev is not None:
            module.eval()
            with torch.no_grad():
                recalls = recall_at(module.text_vectors(dev[1]), module.pooled_vectors(dev[0]))
            if best is None or sum(recalls) > best[0]:
                best = (sum(recalls), {k: v.clone() for k, v in module.state_dict().items()})
        history.append((epoch + 1, round(loss.item(), 3), recalls))
        if log is not None:
            log(f"epoch {epoch + 1}: loss {loss.item():.3f} dev R@1/5/10 {recalls}")
    if best is not None:
        module.load_state_dict(best[1])
    return module.eval(), history
