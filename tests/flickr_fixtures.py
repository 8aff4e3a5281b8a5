"""Helpers for the model/training/evaluation tests: tiny fake Flickr8k folders, tiny configs.

A fake Flickr8k has a handful of small JPEGs whose colour decides what their captions say, so a
tiny model can actually learn something in a few CPU seconds. Both on-disk layouts are written:

- ``kaggle``:   ``Images/`` + ``captions.txt`` (CSV, captions with commas quoted) + split lists
                at the top of the folder;
- ``original``: ``Flicker8k_Dataset/`` (sic) + ``Flickr8k_text/Flickr8k.token.txt``
                (``name.jpg#k<TAB>caption``) + split lists in ``Flickr8k_text/``, including the
                real release's quirky ``name.jpg.1#k`` line.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

#: The shared, real Flickr8k copy (224x224 photos), next to the repository: ../shared/flickr8k.
SHARED_FLICKR = Path(__file__).resolve().parents[2] / "shared" / "flickr8k"
REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "models" / "photocap-flickr8k.safetensors"
EXAMPLES = REPO / "examples"

needs_shared = pytest.mark.skipif(
    not (SHARED_FLICKR / "Images").is_dir(), reason=f"{SHARED_FLICKR} not present"
)

# colour -> five captions (one with a comma, so the Kaggle CSV must quote it)
SCENES: dict[tuple[int, int, int], list[str]] = {
    (200, 40, 40): [
        "A dog runs on the grass.",
        "A brown dog is running on green grass .",
        "The dog, happy and fast, runs through the grass.",
        "A dog plays on the grass",
        "a dog running in a field",
    ],
    (40, 60, 210): [
        "A man swims in the water.",
        "A man is swimming in blue water .",
        "Someone swims in the water, far from the shore.",
        "A swimmer in the water",
        "a man in the water",
    ],
    (40, 180, 60): [
        "A child plays in the park.",
        "A little child is playing in a park .",
        "The child, smiling, plays in the park.",
        "Children play in the park",
        "a child in a green park",
    ],
    (230, 210, 60): [
        "A woman sits on the beach.",
        "A woman is sitting on the sand .",
        "The woman, in a hat, sits on a sunny beach.",
        "A woman on the beach",
        "a woman sitting at the beach",
    ],
}
DEV_ONLY_WORD = "zeppelin"  # appears only in dev captions: must never enter the vocabulary
TEST_ONLY_WORD = "quokka"  # only in test captions


@dataclass
class FakeFlickr:
    root: Path
    layout: str
    image_dir: Path
    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    captions: dict[str, list[str]] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.image_dir / name


def _photo(colour: tuple[int, int, int], seed: int, size: int) -> Image.Image:
    """A small photo: the scene colour plus a little noise and a darker square."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), colour)
    px = img.load()
    for _ in range(size * size // 6):
        x, y = rng.randrange(size), rng.randrange(size)
        px[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in colour)
    q = size // 4
    x0, y0 = rng.randrange(size - q), rng.randrange(size - q)
    img.paste(tuple(c // 3 for c in colour), (x0, y0, x0 + q, y0 + q))
    return img


def make_fake_flickr(
    root: Path,
    layout: str = "kaggle",
    n_train: int = 12,
    n_dev: int = 4,
    n_test: int = 0,
    size: int = 48,
) -> FakeFlickr:
    """Write a fake Flickr8k under ``root`` in ``layout`` ("kaggle" or "original")."""
    if layout not in ("kaggle", "original"):
        raise ValueError(layout)
    root.mkdir(parents=True, exist_ok=True)
    image_dir = root / ("Images" if layout == "kaggle" else "Flicker8k_Dataset")
    image_dir.mkdir()
    text_dir = root if layout == "kaggle" else root / "Flickr8k_text"
    text_dir.mkdir(exist_ok=True)
    fake = FakeFlickr(root, layout, image_dir)
    colours = list(SCENES)
    counter = 0
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        names = []
        for _ in range(n):
            colour = colours[counter % len(colours)]
            name = f"{1000000 + counter * 7919}_{counter:04x}ab.jpg"
            _photo(colour, counter, size).save(image_dir / name, quality=90)
            caps = list(SCENES[colour])
            if split == "dev":
                caps[-1] = f"a {DEV_ONLY_WORD} over the scene"
            elif split == "test":
                caps[-1] = f"a {TEST_ONLY_WORD} in the scene"
            fake.captions[name] = caps
            names.append(name)
            counter += 1
        setattr(fake, split, names)
        if n:
            (text_dir / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    if layout == "kaggle":
        with (root / "captions.txt").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for name, caps in fake.captions.items():
                for cap in caps:
                    writer.writerow([name, cap])
    else:
        lines = [
            f"{name}#{k}\t{cap}"
            for name, caps in fake.captions.items()
            for k, cap in enumerate(caps)
        ]
        # The real release's quirk: a caption group for "<name>.jpg.1", a file that never exists.
        quirky = f"{fake.train[0]}.1" if fake.train else "nothing.jpg.1"
        lines[5:5] = [f"{quirky}#{k}\tSome people waiting for the subway ." for k in range(5)]
        (text_dir / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return fake


def tiny_train_config(data: Path, out: Path, cache_dir: Path, **overrides: Any) -> Any:
    """A :class:`photocap.training.config.TrainConfig` that trains in seconds on a 2-core CPU."""
    from photocap.training.config import TrainConfig

    settings: dict[str, Any] = {
        "data": data,
        "out": out,
        "encoder": "tiny",
        "image_size": 64,
        "epochs": 2,
        "fine_tune_epochs": 0,
        "scst_epochs": 0,
        "batch_size": 20,
        "lr": 5e-3,
        "fine_tune_lr": 1e-3,
        "encoder_lr": 1e-4,
        "scst_lr": 1e-4,
        "scst_batch": 6,
        "scst_samples": 3,
        "min_count": 1,
        "max_words": 12,
        "embed_dim": 24,
        "hidden_dim": 24,
        "attention_dim": 24,
        "dropout": 0.1,
        "device": "cpu",
        "workers": 0,
        "cache_dir": cache_dir,
        "seed": 7,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def scst_config(init: Path, tmp_path: Path) -> Any:
    """One epoch of stage 3 (the encoder frozen) continuing the model file ``init``, on a
    6-photo fake Flickr8k; the best model goes to ``tmp_path / "t.safetensors"``."""
    from photocap.training.config import TrainConfig

    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=6, n_dev=2)
    return TrainConfig(
        data=fake.root,
        out=tmp_path / "t.safetensors",
        init=init,
        device="cpu",
        epochs=0,
        scst_epochs=1,
        scst_batch=3,
        scst_lr=1e-2,
        workers=0,
        cache_dir=tmp_path / "cache",
    )


def assert_decoders_moved_and_encoder_kept(start: Any, last: Any) -> None:
    """Every member of ``last``'s ensemble was trained away from ``start``'s; the encoder
    (branches included) was not."""
    import torch

    for before, after in zip(start.decoder.decoders, last.decoder.decoders, strict=True):
        moved = after.state_dict()
        assert any(not torch.equal(v, moved[k]) for k, v in before.state_dict().items())
    encoder = start.encoder.state_dict()
    assert all(torch.equal(v, encoder[k]) for k, v in last.encoder.state_dict().items())


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """Tiny models run fastest on one thread; two threads on a loaded 2-core box spin badly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class TinyRun:
    """A finished tiny training run (xe 2 + finetune 1 + scst 1) on a fake Kaggle Flickr8k."""

    fake: FakeFlickr
    config: Any
    events: list[Any]

    @property
    def out(self) -> Path:
        return Path(self.config.out)


_RUNS: dict[str, TinyRun] = {}


@pytest.fixture(scope="session", name="tiny_run")
def tiny_run_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Train once per session, shared by the train and evaluate tests."""
    if "main" not in _RUNS:
        import torch

        from photocap.training.run import iter_train

        base = tmp_path_factory.mktemp("tiny_run")
        fake = make_fake_flickr(base / "f8k", "kaggle", n_train=12, n_dev=4)
        config = tiny_train_config(
            fake.root,
            base / "model.safetensors",
            base / "cache",
            epochs=2,
            fine_tune_epochs=1,
            scale_jitter=0.1,  # the augmentation path runs too
            scst_epochs=1,
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _RUNS["main"] = TinyRun(fake, config, list(iter_train(config)))
        finally:
            torch.set_num_threads(threads)
    return _RUNS["main"]
