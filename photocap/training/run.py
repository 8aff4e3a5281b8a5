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
:mod:`photocap.training.cider`); the best epoch by CIDEr-D (+ ``--bleu-weight`` x BLEU-4) is what
``--out`` holds. A checkpoint of the last epoch and the optimiser state are written every epoch
so ``--resume`` continues an interrupted run.

The library never prints: :func:`iter_train` yields :class:`TrainEvent` s for the CLI to render.

This module is the run: data, model (new, ``--init`` or ``--resume``), and the stages in
order; each stage is a row of :data:`photocap.training.stages.STAGE_TABLE`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from photocap.checkpoint import load_captioner, resolve_device, save_captioner
from photocap.dataset import load_flickr8k
from photocap.encoder import EncoderConfig, load_imagenet_weights
from photocap.errors import DatasetError, ModelError
from photocap.model import Captioner, Decoder, ModelConfig
from photocap.preset import Preset
from photocap.training.config import TrainConfig, TrainEvent, last_path, state_path
from photocap.training.distillation import check_teacher, teach_captions
from photocap.training.evaluation import score_dev
from photocap.training.features import encode_captions, extract_features, load_pixels
from photocap.training.stages import STAGE_TABLE, STAGES, StageRun, TrainData, run_stage
from photocap.vocab import Vocab, tokenize


def _set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def iter_train(config: TrainConfig) -> Iterator[TrainEvent]:
    """Run the training stages, yielding progress; ``config.out`` ends up holding the best model."""
    if config.teacher_only and config.teacher is None:
        raise ModelError("--teacher-only needs a --teacher")
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
        state_file = state_path(config.out)
        if not state_file.exists() or not last_path(config.out).exists():
            raise ModelError(f"nothing to resume: {state_file} not found")
        resume_state = torch.load(state_file, map_location="cpu", weights_only=True)
        if "rng" in resume_state:
            torch.set_rng_state(resume_state["rng"])
        captioner = load_captioner(last_path(config.out), str(device))
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

    # The teacher's captions are targets of the cross-entropy stages only.
    teacher = config.teacher if config.epochs or config.fine_tune_epochs else None
    if teacher is not None:
        check_teacher(teacher, vocab, captioner.preset)  # its header: before any decoding
    elif config.teacher is not None:
        yield TrainEvent("info", message="--teacher not used: no cross-entropy stage runs")
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
    pair_tokens = encode_captions(
        vocab, [c for n in train_names for c in data.captions[n]], config.max_words
    )  # (P, T)

    if teacher is not None:
        t1 = time.time()
        taught = teach_captions(
            teacher, train_paths, train_pixels, cache_dir, config.teacher_beam, device
        )  # fmt: skip
        # One more pair per photo, its teacher caption (stage 1 and 2 targets; stage 3's
        # reward stays the human captions); with teacher_only, the one pair per photo.
        photos = torch.arange(len(train_names))
        tokens = encode_captions(vocab, taught, config.max_words)  # (N, T)
        pair_image = photos if config.teacher_only else torch.cat([pair_image, photos])
        pair_tokens = tokens if config.teacher_only else torch.cat([pair_tokens, tokens])
        yield TrainEvent(
            "info",
            message=f"teacher {teacher}: {len(taught)} captions "
            f"(beam {config.teacher_beam}) in {time.time() - t1:.1f}s",
        )

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
    train_data = TrainData(train_paths, train_pixels, dev_paths, dev_pixels, train_refs,
                           dev_refs, pair_image, pair_tokens, cache_dir)  # fmt: skip
    for name in STAGES[STAGES.index(start_stage) :]:
        stage = STAGE_TABLE[name]
        epochs = stage.epochs(config)
        first = start_epoch + 1 if name == start_stage else 1
        if epochs == 0 or first > epochs:
            continue
        if name != start_stage or resume_state is None:
            opt_state = None
        else:
            opt_state = resume_state.get("optimizer")
        # Each later stage starts from the best model so far, not from the last epoch.
        later_stage = first > 1 or name != STAGES[0]
        resuming_here = resume_state is not None and name == start_stage
        if later_stage and config.out.exists() and not resuming_here:
            best_model = load_captioner(config.out, str(device))
            captioner.load_state_dict(best_model.state_dict())
        yield TrainEvent("stage", stage=name, epochs=epochs, message=f"stage {name}")
        run = StageRun(captioner, config, device, train_data)
        yield from run_stage(stage, run, first, epochs, opt_state, best)
    if not config.out.exists():
        raise ModelError("training produced no model (no epoch was run)")
    yield TrainEvent("done", dev=best, message=f"best model: {config.out}")


def _encoder_config(name: str) -> EncoderConfig:
    if name == "tiny":
        return EncoderConfig(name="tiny", stem_channels=8, head_channels=64)
    if name not in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        raise DatasetError(f"unknown encoder {name!r}")
    return EncoderConfig(name=name)


def train(config: TrainConfig) -> dict[str, float]:
    """Run :func:`iter_train` to the end; returns the best dev scores."""
    result: dict[str, float] = {}
    for event in iter_train(config):
        if event.kind == "done":
            result = event.dev
    return result
