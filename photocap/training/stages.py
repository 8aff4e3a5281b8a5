"""The training stages as data: :data:`STAGE_TABLE` holds one :class:`Stage` per stage
(what it trains, on cached features or pixels, its optimiser, learning-rate schedule,
batches and loss), and :func:`run_stage` runs any of them: epochs of steps, each epoch scored
on dev, the best model kept in ``--out``, a checkpoint for ``--resume``.

1. **xe**: cross-entropy + doubly stochastic attention on cached features, (photo, caption)
   pairs, step decay of the learning rate.
2. **finetune**: the same loss with the encoder unfrozen, on pixels (mirrored, optionally
   scale-jittered), each photo with its five captions.
3. **scst**: self-critical sequence training: sampled captions rewarded by CIDEr-D (+ w x
   BLEU-4) against the references, baseline the mean of the photo's other samples; with
   ``--scst-encoder-blocks`` the encoder's top trains too, on cached trunk activations.

Shapes: b photos (or pairs) in a batch, L grid locations, D feature channels, T tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photocap.checkpoint import save_captioner
from photocap.decoding import sample
from photocap.model import Captioner
from photocap.training.cider import CiderD, sentence_bleu4
from photocap.training.config import TrainConfig, TrainEvent, last_path, state_path
from photocap.training.evaluation import score_dev, selection_score
from photocap.training.features import autocast_for, cached_features, encode_top, extract_features


def _xe_loss(
    captioner: Captioner, features: torch.Tensor, tokens: torch.Tensor, reg: float
) -> torch.Tensor:
    """Cross-entropy + doubly stochastic attention. features (N, L, D), tokens (N, T)."""
    length = int((tokens != captioner.vocab.pad_id).sum(1).max())
    tokens = tokens[:, :length]  # (N, T) trimmed to the longest caption in the batch
    logits, alphas = captioner.decoder(features, tokens)  # (N, T-1, V), (N, T-1, L)
    targets = tokens[:, 1:]  # (N, T-1)
    mask = (targets != captioner.vocab.pad_id).float()  # (N, T-1)
    loss = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=captioner.vocab.pad_id
    )
    # Each location should be attended to about once over the caption.
    coverage = (alphas.float() * mask[:, :, None]).sum(1)  # (N, L)
    return loss + reg * ((1.0 - coverage) ** 2).mean()


@dataclass(frozen=True)
class TrainData:
    """The run's data, decoded once and shared by every stage."""

    train_paths: list[Path]
    train_pixels: torch.Tensor  # (Ntr, 3, S, S) uint8
    dev_paths: list[Path]
    dev_pixels: torch.Tensor  # (Ndev, 3, S, S) uint8
    train_refs: list[list[list[str]]]  # per train photo: its captions, as words
    dev_refs: list[list[list[str]]]
    pair_image: torch.Tensor  # (P,) the train photo of each (photo, caption) pair
    pair_tokens: torch.Tensor  # (P, T) the caption of each pair, as token ids
    cache_dir: Path  # where encoder features are cached (keyed by content and weights)


@dataclass
class StageRun:
    """One stage under way: the model and the data, and what the stage set up for its steps."""

    captioner: Captioner
    config: TrainConfig
    device: torch.device
    data: TrainData
    # The cached train features (N, L, D), or with ``start`` the trunk's activations
    # (N, c, h, w) under the trained top; None when the stage trains the whole encoder.
    features: torch.Tensor | None = None
    dev_features: torch.Tensor | None = None
    start: int | None = None  # the first encoder block the stage trains (its top), if any
    scorer: CiderD | None = None  # the reward of self-critical training


@dataclass(frozen=True)
class Stage:
    """A training stage as data: what it trains, on what, with which loss."""

    name: str
    unit: str  # what its images_per_s counts
    epochs: Callable[[TrainConfig], int]
    trains_encoder: bool  # the whole encoder, on pixels (else on cached features)
    top_blocks: Callable[[TrainConfig], int]  # encoder blocks trained on cached activations
    # (config, decoder params, encoder params, encoder top params) -> the optimiser
    optimizer: Callable[[TrainConfig, list[Any], list[Any], list[Any]], torch.optim.Optimizer]
    lr_at: Callable[[TrainConfig, int], float] | None  # the learning rate of an epoch, if it moves
    batches: Callable[[StageRun], list[torch.Tensor]]  # the epoch's steps, as index tensors
    loss: Callable[[StageRun, torch.Tensor], torch.Tensor]  # one step's loss
    rewards: bool = False  # needs the CIDEr-D scorer of the train captions


def _shuffled(count: int, size: int) -> list[torch.Tensor]:
    """``range(count)`` shuffled, in batches of ``size``."""
    order = torch.randperm(count)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _pair_batches(run: StageRun) -> list[torch.Tensor]:
    """Batches of (photo, caption) pairs."""
    return _shuffled(len(run.data.pair_image), run.config.batch_size)


def _finetune_batches(run: StageRun) -> list[torch.Tensor]:
    """Batches of photos, each with its captions (5 human ones, and a ``--teacher``'s):
    about as many captions as an xe batch."""
    return _shuffled(len(run.data.train_paths), max(1, run.config.batch_size // 5))


def _scst_batches(run: StageRun) -> list[torch.Tensor]:
    """Batches of photos, each with ``scst_samples`` sampled captions."""
    return _shuffled(len(run.data.train_paths), run.config.scst_batch)


def _xe_step(run: StageRun, idx: torch.Tensor) -> torch.Tensor:
    assert run.features is not None
    data, device = run.data, run.device
    feats = run.features[data.pair_image[idx].to(device)].float()  # (b, L, D)
    return _xe_loss(
        run.captioner, feats, data.pair_tokens[idx].to(device), run.config.attention_reg
    )


def _finetune_step(run: StageRun, idx: torch.Tensor) -> torch.Tensor:
    data = run.data
    return _finetune_loss(run.captioner, data.train_pixels[idx], idx, data.pair_image,
                          data.pair_tokens, run.config, run.device)  # fmt: skip


def _scst_step(run: StageRun, idx: torch.Tensor) -> torch.Tensor:
    assert run.features is not None and run.scorer is not None
    feats = run.features[idx.to(run.device)].float()  # (b, L, D) or (b, c, h, w)
    if run.start is not None:
        feats = run.captioner.encoder.forward_top(feats, run.start)  # (b, L, D)
    refs = [run.data.train_refs[i] for i in idx.tolist()]
    return _scst_loss(run.captioner, feats, refs, run.scorer, run.config)


def _xe_optimizer(c: TrainConfig, dec: list[Any], enc: list[Any], top: list[Any]) -> Any:
    return torch.optim.Adam(dec, lr=c.lr)


def _finetune_optimizer(c: TrainConfig, dec: list[Any], enc: list[Any], top: list[Any]) -> Any:
    return torch.optim.Adam([{"params": dec, "lr": c.fine_tune_lr},
                             {"params": enc, "lr": c.encoder_lr}])  # fmt: skip


def _scst_optimizer(c: TrainConfig, dec: list[Any], enc: list[Any], top: list[Any]) -> Any:
    if not top:
        return torch.optim.Adam(dec, lr=c.scst_lr)
    return torch.optim.Adam([{"params": dec, "lr": c.scst_lr},
                             {"params": top, "lr": c.encoder_lr}])  # fmt: skip


def _xe_lr(c: TrainConfig, epoch: int) -> float:
    """Step decay: ``lr * lr_decay`` every ``lr_decay_every`` epochs."""
    return c.lr * c.lr_decay ** ((epoch - 1) // c.lr_decay_every)


# The stages, in the order a run goes through them (``--epochs``, ``--fine-tune-epochs``,
# ``--scst-epochs``; 0 skips one). See the module docstring.
STAGE_TABLE: dict[str, Stage] = {
    "xe": Stage(
        "xe", "caption pairs", lambda c: c.epochs, trains_encoder=False,
        top_blocks=lambda c: 0, optimizer=_xe_optimizer, lr_at=_xe_lr,
        batches=_pair_batches, loss=_xe_step,
    ),
    "finetune": Stage(
        "finetune", "photos", lambda c: c.fine_tune_epochs, trains_encoder=True,
        top_blocks=lambda c: 0, optimizer=_finetune_optimizer, lr_at=None,
        batches=_finetune_batches, loss=_finetune_step,
    ),
    "scst": Stage(
        "scst", "photos", lambda c: c.scst_epochs, trains_encoder=False,
        top_blocks=lambda c: c.scst_encoder_blocks, optimizer=_scst_optimizer, lr_at=None,
        batches=_scst_batches, loss=_scst_step, rewards=True,
    ),
}  # fmt: skip
STAGES = tuple(STAGE_TABLE)
# What a stage's ``images_per_s`` counts: caption pairs in stage 1, photos (each with its 5
# captions or its sampled ones) in the others.
STAGE_UNITS = {name: stage.unit for name, stage in STAGE_TABLE.items()}


def run_stage(
    stage: Stage,
    run: StageRun,
    first: int,
    epochs: int,
    opt_state: Any,
    best: dict[str, float],
) -> Iterator[TrainEvent]:
    """Epochs ``first``..``epochs`` of ``stage``: train, score on dev, keep the best model in
    ``config.out`` (``best`` updated in place) and checkpoint for ``--resume``."""
    captioner, config, data, device = run.captioner, run.config, run.data, run.device
    enc_params = list(captioner.encoder.parameters())
    dec_params = list(captioner.decoder.parameters())
    for p in enc_params:
        p.requires_grad_(stage.trains_encoder)
    # With top blocks (stage 3's --scst-encoder-blocks N) the encoder's top is trained on
    # cached activations of its (frozen) lower blocks; ``start`` is the first trained block.
    top_blocks = stage.top_blocks(config)
    run.start = captioner.encoder.split_index(top_blocks) if top_blocks else None
    top_params = captioner.encoder.top_parameters(top_blocks) if top_blocks else []
    for p in top_params:
        p.requires_grad_(True)
    optimizer = stage.optimizer(config, dec_params, enc_params, top_params)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)

    if not stage.trains_encoder:
        t0 = time.time()
        run.features = cached_features(captioner, data.train_paths, data.train_pixels,
                                       data.cache_dir, run.start)  # fmt: skip
        run.dev_features = cached_features(captioner, data.dev_paths, data.dev_pixels,
                                           data.cache_dir, run.start)  # fmt: skip
        yield TrainEvent(
            "info", stage=stage.name, message=f"encoder features ready in {time.time() - t0:.1f}s"
        )
    run.scorer = CiderD(data.train_refs) if stage.rewards else None
    since_best = 0
    for epoch in range(first, epochs + 1):
        if stage.lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = stage.lr_at(config, epoch)
        captioner.train()
        captioner.encoder.eval()  # BatchNorm statistics stay ImageNet's (small batches)
        if stage.trains_encoder:
            captioner.encoder.train()
            for m in captioner.encoder.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        t0, seen, total, n_steps = time.time(), 0, 0.0, 0
        batches = stage.batches(run)
        for step, idx in enumerate(batches, 1):
            with autocast_for(device):
                loss = stage.loss(run, idx)
                seen += len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip
            )
            optimizer.step()
            total += loss.item()
            n_steps += 1
            if step % 20 == 0 or step == len(batches):
                yield TrainEvent(
                    "step",
                    stage=stage.name,
                    epoch=epoch,
                    epochs=epochs,
                    step=step,
                    steps=len(batches),
                    loss=total / n_steps,
                    images_per_s=seen / max(time.time() - t0, 1e-9),
                    eta_s=(time.time() - t0) / step * (len(batches) - step),
                )
        # -- score on dev, keep the best, checkpoint for --resume
        if stage.trains_encoder:
            dev_feats_now = extract_features(captioner, data.dev_pixels)
        else:
            assert run.dev_features is not None
            dev_feats_now = (
                run.dev_features
                if run.start is None
                else encode_top(captioner, run.dev_features, run.start)
            )
        dev = score_dev(captioner, dev_feats_now, data.dev_refs, beam_size=1)
        improved = selection_score(dev, config) > selection_score(best, config)
        if improved:
            best.clear()
            best.update(dev, stage=STAGES.index(stage.name), epoch=epoch)
            captioner.metadata = {
                **captioner.metadata,
                "dev_greedy": dict(dev),
                "best_stage": stage.name,
                "best_epoch": epoch,
            }
            save_captioner(captioner, config.out)
            since_best = 0
        else:
            since_best += 1
        save_captioner(captioner, last_path(config.out))
        torch.save(
            {
                "stage": stage.name,
                "epoch": epoch,
                "best": best,
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),  # a resumed run shuffles like an unbroken one
            },
            state_path(config.out),
        )
        yield TrainEvent(
            "epoch",
            stage=stage.name,
            epoch=epoch,
            epochs=epochs,
            loss=total / max(n_steps, 1),
            images_per_s=seen / max(time.time() - t0, 1e-9),
            dev=dev,
            best=improved,
        )
        if since_best >= config.patience:
            yield TrainEvent(
                "info",
                stage=stage.name,
                message=f"no better dev score for {since_best} epochs: next stage",
            )
            break


def _finetune_loss(
    captioner: Captioner,
    pixels: torch.Tensor,
    photo_idx: torch.Tensor,
    pair_image: torch.Tensor,
    pair_tokens: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """Encoder + decoder on pixels: each photo of the batch with all of its captions."""
    pixels = pixels.to(device, non_blocking=True)  # (b, 3, S, S) uint8
    flip = torch.rand(len(pixels), device=device) < 0.5  # (b,) mirror half the photos
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    images = captioner.preset.normalize(pixels)  # (b, 3, S, S) float
    if config.scale_jitter > 0:
        images = jitter_scale(images, config.scale_jitter)
    features = captioner.encoder(images)  # (b, L, D)
    # Pairs of these photos: row -> position in the batch.
    where = {int(p): i for i, p in enumerate(photo_idx.tolist())}
    rows = torch.nonzero(torch.isin(pair_image, photo_idx)).squeeze(1)  # (b*5,) pair rows
    slot = torch.tensor([where[int(i)] for i in pair_image[rows].tolist()], device=device)
    return _xe_loss(captioner, features[slot], pair_tokens[rows].to(device), config.attention_reg)


def jitter_scale(images: torch.Tensor, jitter: float) -> torch.Tensor:
    """Random crop of each image, resized back to its size: each side keeps a random
    fraction in [1 - jitter, 1] (independently, so the aspect ratio moves a little too) at a
    random position. images (b, C, S, S) -> (b, C, S, S). The whole caption stays in view."""
    b = images.shape[0]
    scale = 1.0 - jitter * torch.rand(b, 2, device=images.device)  # (b, 2) kept fraction x, y
    shift = (1.0 - scale) * (2.0 * torch.rand(b, 2, device=images.device) - 1.0)  # (b, 2)
    theta = torch.zeros(b, 2, 3, device=images.device)  # (b, 2, 3) affine: output -> input
    theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 1]
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (b, S, S, 2)
    return F.grid_sample(images, grid.to(images.dtype), align_corners=False)  # (b, C, S, S)


def _scst_loss(
    captioner: Captioner,
    features: torch.Tensor,
    refs: list[list[list[str]]],
    scorer: CiderD,
    config: TrainConfig,
) -> torch.Tensor:
    """Self-critical policy gradient with the mean of the other samples as baseline."""
    n = config.scst_samples
    tokens, logp, mask = sample(captioner.decoder, captioner.rules, features, n)  # (B*n, T) x3
    words = [captioner.vocab.decode(row) for row in tokens.tolist()]
    groups = [refs[i // n] for i in range(len(words))]
    scores = scorer.score(words, groups)
    if config.bleu_weight:
        scores = [
            s + config.bleu_weight * sentence_bleu4(w, g)
            for s, w, g in zip(scores, words, groups, strict=True)
        ]
    rewards = torch.tensor(scores, device=features.device).view(-1, n)  # (B, n)
    baseline = (rewards.sum(1, keepdim=True) - rewards) / max(n - 1, 1)  # (B, n)
    advantage = (rewards - baseline).view(-1, 1)  # (B*n, 1)
    return -(advantage * logp * mask).sum() / mask.sum()
