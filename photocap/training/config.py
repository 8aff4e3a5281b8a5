"""What decides a training run (:class:`TrainConfig`, saved into the model file's info),
the events a run yields (:class:`TrainEvent`), and where a run keeps its last epoch and
its resume state beside ``--out``. Imports no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
    # Sequence-level distillation: this model's beam captions of the train photos (beam
    # teacher_beam) are cross-entropy targets too, beside the human captions.
    teacher: Path | None = None
    teacher_beam: int = 3
    teacher_only: bool = False  # the teacher's captions are the only cross-entropy targets
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


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pt")


def last_path(out: Path) -> Path:
    return out.with_name(out.name + ".last.safetensors")
