"""``photocap train``: fit the captioner on Flickr8k in up to three stages.

1. **xe**   - cross-entropy on a cache of encoder features (the encoder frozen): extract once,
              then every epoch is cheap. The cache is keyed by image content and encoder
              weights, and reused across runs.
2. **finetune** (``--fine-tune-epochs``) - cross-entropy with the encoder unfrozen, on pixels.
3. **scst** (``--scst-epochs``) - self-critical sequence training (Rennie et al. 2017): sample
              captions, reward each by its CIDEr-D against the photo's five references (plus
              ``--bleu-weight`` x its BLEU-4), baseline = mean reward of the other samples of
              the same photo (Luo 2020).

Each epoch is scored on the dev split (greedy decoding, CIDEr-D and BLEU-4 from
:mod:`photocap.cider`); the best epoch by CIDEr-D (+ ``--bleu-weight`` x BLEU-4) is what
``--out`` holds. A checkpoint of the last epoch and the optimiser state are written every epoch
so ``--resume`` continues an interrupted run.

The library never prints: :func:`iter_train` yields :class:`TrainEvent` s for the CLI to render.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photocap.checkpoint import load_captioner, resolve_device, save_captioner
from photocap.cider import CiderD, corpus_bleu4, corpus_cider, sentence_bleu4
from photocap.dataset import load_flickr8k
from photocap.decoding import sample
from photocap.encoder import Encoder, EncoderConfig, branch_state_dict, load_imagenet_weights
from photocap.errors import DatasetError, ModelError
from photocap.model import Captioner, Decoder, Ensemble, ModelConfig
from photocap.preset import Preset
from photocap.vocab import Vocab, tokenize

STAGES = ("xe", "finetune", "scst")
# What a stage's ``images_per_s`` counts: caption pairs in stage 1, photos (each with its 5
# captions or its sampled ones) in the others.
STAGE_UNITS = {"xe": "caption pairs", "finetune": "photos", "scst": "photos"}


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved into the model file's info)."""

    data: Path
    out: Path = Path("models/photocap-flickr8k.safetensors")
    encoder: str = "efficientnet_lite2"  # or "tiny" (random weights, for tests)
    image_size: int = 224
    epochs: int = 20  # stage 1 (xe)
    fine_tune_epochs: int = 0  # stage 2; 0 = skip
    scst_epochs: int = 0  # stage 3; 0 = skip
    batch_size: int = 128  # caption pairs per step (xe); photos * 5 in the other stages
    lr: float = 4e-4
    fine_tune_lr: float = 1e-4
    encoder_lr: float = 5e-5
    scst_lr: float = 5e-5
    scst_batch: int = 50  # photos per self-critical step (x scst_samples captions)
    scst_samples: int = 5
    # Stage 3 also trains the encoder's last N blocks and its head (0 = encoder frozen). The
    # blocks below are run once and cached, so this costs a fraction of stage 2's backward pass.
    scst_encoder_blocks: int = 0
    # BLEU-4 beside CIDEr-D: stage 3's reward is CIDEr-D + w * the caption's BLEU-4, and every
    # stage picks its best epoch by dev CIDEr-D + w * BLEU-4 (0 = CIDEr-D alone). CIDEr-D-only
    # training trades BLEU-4 away; the project's goal counts both.
    bleu_weight: float = 0.0
    lr_decay: float = 0.8  # xe: lr *= decay every lr_decay_every epochs
    lr_decay_every: int = 3
    attention_reg: float = 1.0  # doubly stochastic attention (SAT eq. 14)
    grad_clip: float = 5.0
    min_count: int = 5
    max_words: int = 20
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    seed: int = 42
    device: str = "auto"
    workers: int = -1  # image decoding processes; -1 = all cores (max 8)
    limit: int | None = None  # use only the first N train photos (and N//5 dev): smoke runs
    cache_dir: Path | None = None
    resume: bool = False
    init: Path | None = None  # start from this model file (weights + vocabulary)
    reset_decoder: bool = False  # with init: keep its encoder + vocabulary, train a new decoder
    scale_jitter: float = 0.0  # stage 2 augmentation: random crops of (1 - j)..1 of each side
    patience: int = 6  # stop a stage after this many epochs without a better dev score

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainEvent:
    """Progress of a training run. ``kind``: start, step, epoch, stage, done, info."""

    kind: str
    stage: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float = 0.0
    images_per_s: float = 0.0
    eta_s: float = 0.0  # step events: seconds left in this epoch
    dev: dict[str, float] = field(default_factory=dict)
    best: bool = False
    message: str = ""


# -- data ------------------------------------------------------------------------------------


class _PhotoFiles(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, paths: Sequence[Path], preset: Preset) -> None:
        self.paths, self.preset = list(paths), preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.preset.to_uint8(image)  # (3, S, S) uint8


def load_pixels(paths: Sequence[Path], preset: Preset, workers: int) -> torch.Tensor:
    """Decode photos in worker processes -> uint8 (N, 3, S, S) in memory (Flickr8k: ~1 GB)."""
    loader = torch.utils.data.DataLoader(
        _PhotoFiles(paths, preset), batch_size=64, num_workers=workers, shuffle=False
    )
    return (
        torch.cat(list(loader))
        if len(paths)
        else torch.zeros(0, 3, preset.size, preset.size, dtype=torch.uint8)
    )


def _content_key(path: Path) -> str:
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


def _encoder_digest(captioner: Captioner, start: int | None = None) -> str:
    """Digest of what the cached tensors depend on: the preset and the encoder's weights, or
    with ``start`` only the trunk's (a run that trains the encoder's top, and a run continued
    from it, share one cache of trunk activations)."""
    import hashlib

    h = hashlib.sha256()
    state = (
        captioner.encoder.state_dict()
        if start is None
        else captioner.encoder.trunk_state_dict(start)
    )
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    h.update(json.dumps(captioner.preset.to_dict()).encode())
    return h.hexdigest()[:16]


@torch.inference_mode()
def extract_features(
    captioner: Captioner, pixels: torch.Tensor, batch_size: int = 128, start: int | None = None
) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> fp16 features (N, L, D) on the captioner's device; with ``start``,
    the encoder's activations before block ``start`` instead (N, c, h, w)."""
    captioner.encoder.eval()
    out = []
    for i in range(0, len(pixels), batch_size):
        if start is None:
            out.append(captioner.encode(pixels[i : i + batch_size]).half())  # (b, L, D)
        else:
            images = captioner.preset.normalize(pixels[i : i + batch_size].to(captioner.device))
            with _autocast(captioner.device):
                acts = captioner.encoder.forward_trunk(images, start)  # (b, c, h, w)
            out.append(acts.half())
    return torch.cat(out)  # (N, L, D) or (N, c, h, w)


def encode_top(
    captioner: Captioner, acts: torch.Tensor, start: int, batch_size: int = 250
) -> torch.Tensor:
    """Cached trunk activations (N, c, h, w) -> features (N, L, D) float, without gradients."""
    with torch.no_grad(), _autocast(captioner.device):
        out = [
            captioner.encoder.forward_top(acts[i : i + batch_size].float(), start).float()
            for i in range(0, len(acts), batch_size)
        ]  # each (b, L, D)
    return torch.cat(out)  # (N, L, D)


def cached_features(
    captioner: Captioner,
    paths: Sequence[Path],
    pixels: torch.Tensor,
    cache_dir: Path | None,
    start: int | None = None,
) -> torch.Tensor:
    """Features of ``paths`` from the cache (by content + encoder), extracting what is missing.
    With ``start``: the activations before encoder block ``start`` (:func:`extract_features`)."""
    if cache_dir is None:
        return extract_features(captioner, pixels, start=start)
    from safetensors.torch import load_file, save_file

    cache_dir.mkdir(parents=True, exist_ok=True)
    kind = "features" if start is None else f"trunk{start}"
    cache = cache_dir / f"{kind}-{_encoder_digest(captioner, start)}.safetensors"
    keys = [_content_key(p) for p in paths]
    stored: dict[str, torch.Tensor] = load_file(str(cache)) if cache.exists() else {}
    todo = [i for i, k in enumerate(keys) if k not in stored]
    if todo:
        fresh = extract_features(captioner, pixels[todo], start=start).cpu()  # (n, ...)
        stored.update({keys[i]: fresh[j] for j, i in enumerate(todo)})
        tmp = cache.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp))
        os.replace(tmp, cache)
    return torch.stack([stored[k] for k in keys]).to(captioner.device)  # (N, L, D)


def _encode_captions(vocab: Vocab, captions: Sequence[str], max_words: int) -> torch.Tensor:
    rows = [vocab.encode(c, max_words) for c in captions]
    tokens = torch.full((len(rows), max_words + 2), vocab.pad_id, dtype=torch.long)  # (P, T)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


# -- scoring ---------------------------------------------------------------------------------


def score_dev(
    captioner: Captioner, features: torch.Tensor, refs: list[list[list[str]]], beam_size: int = 1
) -> dict[str, float]:
    """Caption dev features and score them (CIDEr-D, BLEU-4 in-process)."""
    captions = []
    for i in range(0, len(features), 250):
        captions += captioner.caption_features(features[i : i + 250].float(), beam_size)
    hyps = [tokenize(c.text) for c in captions]
    return {"cider": corpus_cider(hyps, refs), "bleu4": corpus_bleu4(hyps, refs)}


def selection_score(dev: dict[str, float], config: TrainConfig) -> float:
    """What picks the best epoch: dev CIDEr-D, plus ``bleu_weight`` x dev BLEU-4."""
    return dev["cider"] + config.bleu_weight * dev.get("bleu4", 0.0)


# -- the run ---------------------------------------------------------------------------------


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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


def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pt")


def _last_path(out: Path) -> Path:
    return out.with_name(out.name + ".last.safetensors")


def iter_train(config: TrainConfig) -> Iterator[TrainEvent]:
    """Run the training stages, yielding progress; ``config.out`` ends up holding the best model."""
    device = resolve_device(config.device)
    _set_seed(config.seed)
    data = load_flickr8k(config.data)
    train_names = data.split("train", config.limit)
    dev_limit = None if config.limit is None else max(config.limit // 5, 2)
    dev_names = data.split("dev", dev_limit)
    workers = config.workers if config.workers >= 0 else min(os.cpu_count() or 1, 8)
    cache_dir = (
        config.cache_dir
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "photocap"
    )

    # Resume: the last epoch's model and the stage/epoch/optimiser it stopped at.
    resume_state: dict[str, Any] | None = None
    if config.resume:
        state_file = _state_path(config.out)
        if not state_file.exists() or not _last_path(config.out).exists():
            raise ModelError(f"nothing to resume: {state_file} not found")
        resume_state = torch.load(state_file, map_location="cpu", weights_only=True)
        if "rng" in resume_state:
            torch.set_rng_state(resume_state["rng"])
        captioner = load_captioner(_last_path(config.out), str(device))
        vocab = captioner.vocab
        yield TrainEvent(
            "info", message=f"resuming {resume_state['stage']} after epoch {resume_state['epoch']}"
        )
    elif config.init is not None:
        captioner = load_captioner(config.init, str(device))
        only_scst = config.epochs == 0 and config.fine_tune_epochs == 0
        if captioner.config.decoders > 1 and not (config.reset_decoder or only_scst):
            # Cross-entropy trains one decoder at a time; self-critical training can train the
            # ensemble as one policy (samples drawn from the members' mean distribution, the
            # same distribution beam search decodes with).
            raise ModelError(
                f"{config.init} is an ensemble: continue it with self-critical training only "
                "(--epochs 0 --scst-epochs N), or train a new decoder for its encoder with "
                "--reset-decoder"
            )
        if captioner.config.encoder.branches > 1 and (
            config.reset_decoder or config.scst_encoder_blocks
        ):
            # Its decoders read different grids; a new decoder or one encoder top to train
            # would have to pick one of them.
            raise ModelError(
                f"{config.init} has encoder branches: continue it with self-critical training "
                "of its decoders only (no --reset-decoder, no --scst-encoder-blocks)"
            )
        vocab = captioner.vocab
        if config.reset_decoder:
            # Another decoder for the same encoder (e.g. an ensemble member, also from an
            # ensemble's file): fresh weights from this run's seed, the starting model's
            # architecture and vocabulary; one decoder, whatever the starting file had.
            captioner.config = replace(captioner.config, decoders=1)
            captioner.decoder = Decoder(
                captioner.config, len(vocab), captioner.encoder.feature_dim
            ).to(device)
        yield TrainEvent(
            "info",
            message=f"starting from {config.init}"
            + (" (encoder and vocabulary; new decoder)" if config.reset_decoder else ""),
        )
    else:
        vocab = Vocab.build((c for n in train_names for c in data.captions[n]), config.min_count)
        model_config = ModelConfig(
            encoder=_encoder_config(config.encoder),
            embed_dim=config.embed_dim,
            hidden_dim=config.hidden_dim,
            attention_dim=config.attention_dim,
            dropout=config.dropout,
            max_words=config.max_words,
        )
        captioner = Captioner(model_config, vocab, Preset(size=config.image_size))
        if config.encoder != "tiny":
            load_imagenet_weights(captioner.encoder)
        captioner.to(device)
    # A continued or resumed model keeps its name (an ensemble stays "...-x2"); a new one is
    # named here.
    continued = (config.init is not None or config.resume) and not config.reset_decoder
    default_name = f"photocap-{captioner.config.encoder.name.replace('_', '')}-lstm"
    captioner.metadata = {
        "name": captioner.metadata.get("name", default_name) if continued else default_name,
        "training_data": "Flickr8k official train split "
        f"({len(train_names)} photos x 5 captions), selected on dev",
        "train_config": config.to_json(),
    }
    yield TrainEvent(
        "start",
        message=f"{len(train_names)} train / {len(dev_names)} dev photos, "
        f"vocabulary {len(vocab)}, device {device}",
    )

    t0 = time.time()
    train_paths = [data.image_path(n) for n in train_names]
    dev_paths = [data.image_path(n) for n in dev_names]
    train_pixels = load_pixels(train_paths, captioner.preset, workers)  # (Ntr, 3, S, S) uint8
    dev_pixels = load_pixels(dev_paths, captioner.preset, workers)  # (Ndev, 3, S, S) uint8
    yield TrainEvent(
        "info",
        message=f"decoded {len(train_paths) + len(dev_paths)} photos in {time.time() - t0:.1f}s",
    )
    dev_refs = [[tokenize(c) for c in data.captions[n]] for n in dev_names]
    train_refs = [[tokenize(c) for c in data.captions[n]] for n in train_names]
    # One row per (photo, caption) pair for the cross-entropy stages.
    pair_image = torch.tensor([i for i, n in enumerate(train_names) for _ in data.captions[n]])
    pair_tokens = _encode_captions(
        vocab, [c for n in train_names for c in data.captions[n]], config.max_words
    )  # (P, T)

    best = {"cider": -1.0} if resume_state is None else dict(resume_state["best"])
    if config.init is not None and resume_state is None and not config.reset_decoder:
        # The starting model is the one to beat: score it and keep it as the best so far.
        init_feats = extract_features(captioner, dev_pixels)
        best.update(score_dev(captioner, init_feats, dev_refs), stage=-1, epoch=0)
        captioner.metadata = {**captioner.metadata, "dev_greedy": dict(best)}
        save_captioner(captioner, config.out)
        yield TrainEvent(
            "info",
            dev=dict(best),
            message=f"starting model: dev CIDEr-D {best['cider']:.3f} BLEU-4 {best['bleu4']:.3f}",
        )
    start_stage = resume_state["stage"] if resume_state else STAGES[0]
    start_epoch = resume_state["epoch"] if resume_state else 0
    stage_epochs = {
        "xe": config.epochs,
        "finetune": config.fine_tune_epochs,
        "scst": config.scst_epochs,
    }
    for stage in STAGES[STAGES.index(start_stage) :]:
        epochs = stage_epochs[stage]
        first = start_epoch + 1 if stage == start_stage else 1
        if epochs == 0 or first > epochs:
            continue
        if stage != start_stage or resume_state is None:
            opt_state = None
        else:
            opt_state = resume_state.get("optimizer")
        # Each later stage starts from the best model so far, not from the last epoch.
        later_stage = first > 1 or stage != STAGES[0]
        resuming_here = resume_state is not None and stage == start_stage
        if later_stage and config.out.exists() and not resuming_here:
            best_model = load_captioner(config.out, str(device))
            captioner.load_state_dict(best_model.state_dict())
        yield TrainEvent("stage", stage=stage, epochs=epochs, message=f"stage {stage}")
        yield from _run_stage(
            stage,
            captioner,
            config,
            device,
            first,
            epochs,
            opt_state,
            best,
            train_paths,
            train_pixels,
            dev_paths,
            dev_pixels,
            train_refs,
            dev_refs,
            pair_image,
            pair_tokens,
            cache_dir,
        )
    if not config.out.exists():
        raise ModelError("training produced no model (no epoch was run)")
    yield TrainEvent("done", dev=best, message=f"best model: {config.out}")


def _encoder_config(name: str) -> EncoderConfig:
    if name == "tiny":
        return EncoderConfig(name="tiny", stem_channels=8, head_channels=64)
    if name not in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        raise DatasetError(f"unknown encoder {name!r}")
    return EncoderConfig(name=name)


def _run_stage(
    stage: str,
    captioner: Captioner,
    config: TrainConfig,
    device: torch.device,
    first: int,
    epochs: int,
    opt_state: Any,
    best: dict[str, float],
    train_paths: list[Path],
    train_pixels: torch.Tensor,
    dev_paths: list[Path],
    dev_pixels: torch.Tensor,
    train_refs: list[list[list[str]]],
    dev_refs: list[list[list[str]]],
    pair_image: torch.Tensor,
    pair_tokens: torch.Tensor,
    cache_dir: Path,
) -> Iterator[TrainEvent]:
    enc_params = list(captioner.encoder.parameters())
    dec_params = list(captioner.decoder.parameters())
    fine_tune = stage == "finetune"
    for p in enc_params:
        p.requires_grad_(fine_tune)
    # Stage 3 with --scst-encoder-blocks N: the encoder's top is trained on cached activations
    # of its (frozen) lower blocks; ``start`` is the first trained block.
    top_blocks = config.scst_encoder_blocks if stage == "scst" else 0
    start = captioner.encoder.split_index(top_blocks) if top_blocks else None
    top_params = captioner.encoder.top_parameters(top_blocks) if top_blocks else []
    for p in top_params:
        p.requires_grad_(True)
    if stage == "xe":
        optimizer = torch.optim.Adam(dec_params, lr=config.lr)
    elif stage == "finetune":
        optimizer = torch.optim.Adam(
            [
                {"params": dec_params, "lr": config.fine_tune_lr},
                {"params": enc_params, "lr": config.encoder_lr},
            ]
        )
    elif top_params:
        optimizer = torch.optim.Adam(
            [
                {"params": dec_params, "lr": config.scst_lr},
                {"params": top_params, "lr": config.encoder_lr},
            ]
        )
    else:
        optimizer = torch.optim.Adam(dec_params, lr=config.scst_lr)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)

    if fine_tune:
        train_feats = dev_feats = None
    else:
        t0 = time.time()
        # (N, L, D) features, or (N, c, h, w) trunk activations when the top is trained
        train_feats = cached_features(captioner, train_paths, train_pixels, cache_dir, start)
        dev_feats = cached_features(captioner, dev_paths, dev_pixels, cache_dir, start)
        yield TrainEvent(
            "info", stage=stage, message=f"encoder features ready in {time.time() - t0:.1f}s"
        )
    scorer = CiderD(train_refs) if stage == "scst" else None
    since_best = 0
    for epoch in range(first, epochs + 1):
        if stage == "xe":
            decay = config.lr_decay ** ((epoch - 1) // config.lr_decay_every)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * decay
        captioner.train()
        captioner.encoder.eval()  # BatchNorm statistics stay ImageNet's (small batches)
        if fine_tune:
            captioner.encoder.train()
            for m in captioner.encoder.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        t0, seen, total, n_steps = time.time(), 0, 0.0, 0
        if stage == "xe":
            order = torch.randperm(len(pair_image))
            batches = [
                order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
            ]
        else:  # photos per step: each brings 5 captions (finetune) or scst_samples samples
            per = config.scst_batch if stage == "scst" else max(1, config.batch_size // 5)
            order = torch.randperm(len(train_paths))
            batches = [order[i : i + per] for i in range(0, len(order), per)]
        for step, idx in enumerate(batches, 1):
            with _autocast(device):
                if stage == "xe":
                    assert train_feats is not None
                    feats = train_feats[pair_image[idx].to(device)].float()  # (b, L, D)
                    loss = _xe_loss(
                        captioner, feats, pair_tokens[idx].to(device), config.attention_reg
                    )
                    seen += len(idx)
                elif stage == "finetune":
                    loss = _finetune_loss(
                        captioner, train_pixels[idx], idx, pair_image, pair_tokens, config, device
                    )
                    seen += len(idx)
                else:
                    assert train_feats is not None and scorer is not None
                    feats = train_feats[idx.to(device)].float()  # (b, L, D) or (b, c, h, w)
                    if start is not None:
                        feats = captioner.encoder.forward_top(feats, start)  # (b, L, D)
                    loss = _scst_loss(
                        captioner,
                        feats,
                        [train_refs[i] for i in idx.tolist()],
                        scorer,
                        config,
                    )
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
                    stage=stage,
                    epoch=epoch,
                    epochs=epochs,
                    step=step,
                    steps=len(batches),
                    loss=total / n_steps,
                    images_per_s=seen / max(time.time() - t0, 1e-9),
                    eta_s=(time.time() - t0) / step * (len(batches) - step),
                )
        # -- score on dev, keep the best, checkpoint for --resume
        if fine_tune:
            dev_feats_now = extract_features(captioner, dev_pixels)
        else:
            assert dev_feats is not None
            dev_feats_now = dev_feats if start is None else encode_top(captioner, dev_feats, start)
        dev = score_dev(captioner, dev_feats_now, dev_refs, beam_size=1)
        improved = selection_score(dev, config) > selection_score(best, config)
        if improved:
            best.clear()
            best.update(dev, stage=STAGES.index(stage), epoch=epoch)
            captioner.metadata = {
                **captioner.metadata,
                "dev_greedy": dict(dev),
                "best_stage": stage,
                "best_epoch": epoch,
            }
            save_captioner(captioner, config.out)
            since_best = 0
        else:
            since_best += 1
        save_captioner(captioner, _last_path(config.out))
        torch.save(
            {
                "stage": stage,
                "epoch": epoch,
                "best": best,
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),  # a resumed run shuffles like an unbroken one
            },
            _state_path(config.out),
        )
        yield TrainEvent(
            "epoch",
            stage=stage,
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
                stage=stage,
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


def train(config: TrainConfig) -> dict[str, float]:
    """Run :func:`iter_train` to the end; returns the best dev scores."""
    result: dict[str, float] = {}
    for event in iter_train(config):
        if event.kind == "done":
            result = event.dev
    return result


def merge_decoders(
    paths: Sequence[Path],
    out: Path,
    info: dict[str, Any] | None = None,
    keep: Sequence[int] | None = None,
) -> Path:
    """Write one model file whose decoder is an :class:`~photocap.model.Ensemble` of the
    decoders of ``paths`` (single models or ensembles): all of them, or those at the positions
    ``keep`` of the list of every file's decoders in turn. The models must share the preset,
    the vocabulary, the decoder architecture and the encoder's trunk; decoding settings come
    from the first. Models with one encoder (``--init BASE --reset-decoder``) share it; models
    whose encoders differ in their last blocks (``--scst-encoder-blocks``) get one encoder
    branch each (:class:`~photocap.encoder.EncoderBranch`), their decoders reading their own
    branch's grid, and the trunk runs once. Weights are stored fp16 like
    :func:`finalize_model`."""
    from dataclasses import replace

    if len(paths) < 2:
        raise ModelError("an ensemble needs at least two model files")
    models = [load_captioner(p, "cpu") for p in paths]
    first = models[0]
    for path, model in zip(paths, models, strict=True):
        if model.config.encoder.branches > 1:
            raise ModelError(f"{path} already has encoder branches: give the models it joined")
    for path, other in zip(paths[1:], models[1:], strict=True):
        same_arch = (
            replace(
                other.config,
                decoders=first.config.decoders,
                length_penalty=first.config.length_penalty,
                no_repeat_words=first.config.no_repeat_words,
            )
            == first.config
        )
        if not same_arch or other.preset != first.preset:
            raise ModelError(f"{path}: another architecture or preset than {paths[0]}")
        if other.vocab != first.vocab:
            raise ModelError(f"{path}: another vocabulary than {paths[0]}")
    # Every file's decoders in turn, as (model index, decoder); then the ones kept.
    pool = [(i, d) for i, m in enumerate(models) for d in _decoders_of(m)]
    if keep is not None:
        if len(keep) < 2 or len(set(keep)) < len(keep) or not set(keep) <= set(range(len(pool))):
            raise ModelError(
                f"keep two or more different decoders among 0..{len(pool) - 1}, not {list(keep)}"
            )
        pool = [pool[k] for k in keep]
    used = sorted({i for i, _ in pool})  # the models that give a decoder
    # One branch per distinct encoder among them, in order of first appearance.
    encoders: list[dict[str, torch.Tensor]] = []
    branch_of: dict[int, int] = {}  # model -> branch
    for i in used:
        state = models[i].encoder.state_dict()
        same = [b for b, known in enumerate(encoders) if _same_tensors(known, state)]
        branch_of[i] = same[0] if same else len(encoders)
        if not same:
            encoders.append(state)
    n_blocks = len(first.encoder._blocks)
    start = _shared_trunk([models[i].encoder for i in used])
    if start is None:
        bad = next(paths[i] for i in used if branch_of[i] > 0)
        raise ModelError(
            f"{bad}: another encoder than {paths[used[0]]}, not even the stem is shared "
            "(train decoders for one encoder with --init BASE --reset-decoder)"
        )
    branched = len(encoders) > 1
    encoder_config = replace(
        first.config.encoder,
        branches=len(encoders),
        branch_blocks=n_blocks - start if branched else 0,
    )
    config = replace(
        first.config,
        encoder=encoder_config,
        decoders=len(pool),
        decoder_branches=tuple(branch_of[i] for i, _ in pool) if branched else (),
    )
    ensemble = Captioner(config, first.vocab, first.preset)
    state = dict(encoders[0])
    for b, top in enumerate(encoders[1:]):  # each branch's own blocks and head
        state |= {f"_branches.{b}.{k}": v for k, v in branch_state_dict(top, start).items()}
    ensemble.encoder.load_state_dict(state)
    assert isinstance(ensemble.decoder, Ensemble)
    for member, (_, decoder) in zip(ensemble.decoder.decoders, pool, strict=True):
        member.load_state_dict(decoder.state_dict())
    ensemble.metadata = {  # what the members were, each with its own training run
        "name": first.metadata.get("name", "photocap-ensemble"),
        "training_data": first.metadata.get("training_data", ""),
        "ensemble_of": [
            {
                "file": Path(paths[i]).name,
                "model_id": models[i].model_id,
                "decoders": sum(1 for j, _ in pool if j == i),
                **({"encoder_branch": branch_of[i]} if branched else {}),
                **{
                    k: models[i].metadata[k]
                    # an ensemble's file keeps what its own members were
                    for k in (
                        "dev_greedy",
                        "best_stage",
                        "best_epoch",
                        "train_config",
                        "ensemble_of",
                    )
                    if k in models[i].metadata
                },
            }
            for i in used
        ],
    }
    return save_captioner(ensemble, out, half=True, info=info)


def _decoders_of(model: Captioner) -> list[Decoder]:
    return model.decoder.decoders if isinstance(model.decoder, Ensemble) else [model.decoder]


def _shared_trunk(encoders: Sequence[Encoder]) -> int | None:
    """How many blocks all ``encoders`` share, from the first (their stems equal too): the
    trunk a branched encoder runs once; None if not even their stems are equal."""
    first, others = encoders[0], encoders[1:]
    if not all(_same_tensors(first.trunk_state_dict(0), e.trunk_state_dict(0)) for e in others):
        return None
    for i, block in enumerate(first._blocks):
        ours = block.state_dict()
        if not all(_same_tensors(ours, e._blocks[i].state_dict()) for e in others):
            return i
    return len(first._blocks)


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Equal at the precision an ensemble's file stores (fp16): a training run's fp32 output
    and the fp16 file it started from hold the same encoder."""

    def stored(t: torch.Tensor) -> torch.Tensor:
        return t.half() if t.is_floating_point() else t

    return a.keys() == b.keys() and all(torch.equal(stored(a[k]), stored(b[k])) for k in a)


def finalize_model(
    path: Path, out: Path, info: dict[str, Any] | None = None, **decoding: Any
) -> Path:
    """Write the shipping copy of a trained model: fp16 weights, extra info merged, and
    decoding settings chosen on dev (``length_penalty=``, ``no_repeat_words=``) stored in its
    config. fp16 halves the file; captions are unchanged within float noise."""
    from dataclasses import replace

    captioner = load_captioner(path, "cpu")
    if decoding:
        captioner.config = replace(captioner.config, **decoding)
    return save_captioner(captioner, out, half=True, info=info)
