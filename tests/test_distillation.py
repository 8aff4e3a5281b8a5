"""The fast model: one decoder taken out of an ensemble (``photocap ensemble M --decoders K``),
distilled from the ensemble (``photocap train --teacher``), and shipped as ``--model fast``."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from flickr_fixtures import REPO, TinyRun, tiny_run_fixture, tiny_train_config  # noqa: F401
from PIL import Image
from typer.testing import CliRunner

from photocap.checkpoint import (
    SHIPPED_MODELS,
    build_random_captioner,
    load_captioner,
    model_info,
    resolve_model_path,
    save_captioner,
)
from photocap.cli import app
from photocap.errors import ModelError
from photocap.model import Captioner, Decoder, Ensemble
from photocap.training.ensembles import extract_decoder, merge_decoders
from photocap.training.features import content_key
from photocap.training.run import iter_train

FAST_MODEL = REPO / "models" / SHIPPED_MODELS["fast"]


def _retopped(model: Captioner, seed: int) -> Captioner:
    """Another decoder, and the encoder with its last block and head moved."""
    other = build_random_captioner(seed=seed)
    other.encoder.load_state_dict(model.encoder.state_dict())
    with torch.no_grad():
        for p in [*other.encoder._blocks[-1].parameters(), *other.encoder._conv_head.parameters()]:
            p.add_(0.2 * torch.randn_like(p))
    return other


def test_one_decoder_of_a_branched_ensemble_is_the_model_it_came_from(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    b = _retopped(a, seed=2)
    paths = [
        save_captioner(m, tmp_path / f"{n}.safetensors", half=True) for n, m in (("a", a), ("b", b))
    ]
    joined = merge_decoders(paths, tmp_path / "ab.safetensors")
    torch.manual_seed(5)
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)  # (n, 3, S, S)
    for index, source in enumerate(paths):
        one = load_captioner(extract_decoder(joined, index, tmp_path / f"{index}.safetensors"))
        want = load_captioner(source, "cpu")
        assert one.config.decoders == 1 and isinstance(one.decoder, Decoder)
        assert one.config.encoder.branches == 1 and one.config.decoder_branches == ()
        assert one.metadata["decoder_of"]["decoder"] == index
        # the second decoder reads the second branch: its blocks became the encoder's top
        with torch.no_grad():
            assert torch.equal(one.encode(pixels), want.encode(pixels))  # (3, L, D)
        assert [c.text for c in one.caption_batch(pixels)] == [
            c.text for c in want.caption_batch(pixels)
        ]
    with pytest.raises(ModelError, match=r"decoders 0\.\.1, not 2"):
        extract_decoder(joined, 2, tmp_path / "x.safetensors")
    result = CliRunner().invoke(
        app, ["ensemble", str(joined), "--decoders", "1", "--out", str(tmp_path / "c.safetensors")]
    )
    assert result.exit_code == 0, result.output
    assert "1 decoder, 1 encoder branch" in result.output


def test_the_teachers_captions_are_targets_beside_the_human_ones(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, teacher = tiny_run.fake, tiny_run.out
    cache = tmp_path / "cache"

    def run(**extra: object) -> list:  # type: ignore[type-arg]
        out = tmp_path / f"{len(os.listdir(tmp_path))}.safetensors"
        config = tiny_train_config(
            fake.root, out, cache, epochs=1, batch_size=6, init=teacher, **extra
        )
        return list(iter_train(config))

    def steps(events: list) -> int:  # type: ignore[type-arg]
        return max(e.steps for e in events if e.kind == "step" and e.stage == "xe")

    plain = run()
    taught = run(teacher=teacher)
    # 12 photos x 5 human captions = 60 pairs, 10 steps of 6; one teacher caption more each
    assert steps(plain) == 10 and steps(taught) == 12
    assert any("12 captions (beam 3)" in e.message for e in taught)
    # the cache holds what the teacher says of each train photo, by the photo's content
    (stored,) = cache.glob("teacher-*-beam3.json")
    captions = json.loads(stored.read_text())
    model = load_captioner(teacher, "cpu")
    photo = fake.path(fake.train[0])
    with Image.open(photo) as image:
        pixels = model.preset.to_uint8(image)[None]  # (1, 3, S, S)
    assert captions[content_key(photo)] == model.caption_batch(pixels, 3)[0].text
    assert len(captions) == 12
    # a second run decodes nothing: the teacher's captions come from the cache
    monkeypatch.setattr(Captioner, "caption_batch", lambda *a, **k: pytest.fail("decoded again"))
    assert steps(run(teacher=teacher)) == 12


def test_a_teacher_of_another_vocabulary_is_refused(tiny_run: TinyRun, tmp_path: Path) -> None:
    other = save_captioner(build_random_captioner(seed=3), tmp_path / "other.safetensors")
    config = tiny_train_config(
        tiny_run.fake.root, tmp_path / "o.safetensors", tmp_path / "c", epochs=1,
        init=tiny_run.out, teacher=other,
    )  # fmt: skip
    with pytest.raises(ModelError, match="another vocabulary"):
        list(iter_train(config))


def test_model_names_resolve_to_the_shipped_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_model_path("fast").name == SHIPPED_MODELS["fast"]
    assert resolve_model_path("default").name == SHIPPED_MODELS["default"]
    assert resolve_model_path(None).name == SHIPPED_MODELS["default"]
    assert resolve_model_path(tmp_path / "m.safetensors") == tmp_path / "m.safetensors"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").write_bytes(b"")  # a file named like a model: the user's file wins
    assert resolve_model_path("fast") == Path("fast")


@pytest.mark.skipif(not FAST_MODEL.is_file(), reason=f"{FAST_MODEL} not present")
def test_the_fast_model_file_loads_and_captions(tmp_path: Path) -> None:
    info = model_info("fast")  # the header only
    assert info["decoders"] == 1 and info["encoder_branches"] == 1
    assert info["model_id"].startswith("photocap-flickr8k-fast@")
    model = load_captioner("fast", "cpu")
    assert isinstance(model.decoder, Decoder) and not isinstance(model.decoder, Ensemble)
    assert model.model_id == info["model_id"]
    default = model_info("default")
    assert info["parameters"] < default["parameters"] / 2
    # through the CLI, by name: the index records the fast model's captions
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (320, 240), (40, 120, 200)).save(photos / "sky.jpg", quality=90)
    db = tmp_path / "i.db"
    result = CliRunner().invoke(
        app, ["caption", str(photos), "--model", "fast", "--write", "index", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    rows = sqlite3.connect(db).execute("select caption, model_id from photos").fetchall()
    assert len(rows) == 1 and rows[0][0] and rows[0][1] == info["model_id"]
