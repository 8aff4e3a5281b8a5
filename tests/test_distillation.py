"""The fast model: one decoder taken out of an ensemble (``photocap ensemble M --decoders K``),
distilled from the ensemble (``photocap train --teacher``), and shipped as ``--model fast``."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from flickr_fixtures import REPO, TinyRun, tiny_run_fixture, tiny_train_config  # noqa: F401
from PIL import Image
from typer.testing import CliRunner

import photocap.training.run as run_mod
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
from photocap.training.stages import TrainData
from photocap.vocab import tokenize


def _retopped(model: Captioner, seed: int) -> Captioner:
    """Another decoder, and the encoder with its last two blocks and its head moved (the
    head's BatchNorm statistics too)."""
    other = build_random_captioner(seed=seed)
    other.encoder.load_state_dict(model.encoder.state_dict())
    top = [*other.encoder._blocks[-2:], other.encoder._conv_head, other.encoder._bn1]
    with torch.no_grad():
        for p in [t for m in top for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]:
            p.add_(0.2 * torch.rand_like(p))  # positive: running variances stay positive
    return other


def test_one_decoder_of_a_branched_ensemble_is_the_model_it_came_from(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    b = _retopped(a, seed=2)
    paths = [
        save_captioner(m, tmp_path / f"{n}.safetensors", half=True) for n, m in (("a", a), ("b", b))
    ]
    joined = merge_decoders(paths, tmp_path / "ab.safetensors")
    assert load_captioner(joined, "cpu").config.encoder.branch_blocks == 2
    torch.manual_seed(5)
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)  # (n, 3, S, S)
    for index, source in enumerate(paths):
        one = load_captioner(extract_decoder(joined, index, tmp_path / f"{index}.safetensors"))
        want = load_captioner(source, "cpu")
        assert one.config.decoders == 1 and isinstance(one.decoder, Decoder)
        assert one.config.encoder.branches == 1 and one.config.decoder_branches == ()
        assert one.metadata["decoder_of"]["decoder"] == index
        assert one.metadata["decoder_of"]["file"] == "ab.safetensors"
        # the second decoder reads the second branch: its blocks became the encoder's top
        ours, theirs = one.encoder.state_dict(), want.encoder.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(v, theirs[k]) for k, v in ours.items())
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
    seen: list[TrainData] = []

    class Spy(run_mod.StageRun):  # type: ignore[misc]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            seen.append(self.data)

    monkeypatch.setattr(run_mod, "StageRun", Spy)

    def train(**extra: Any) -> TrainData:
        seen.clear()
        out = tmp_path / f"{len(os.listdir(tmp_path))}.safetensors"
        config = tiny_train_config(
            fake.root, out, cache, epochs=1, batch_size=6, init=teacher, **extra
        )
        list(iter_train(config))
        return seen[0]

    plain = train()
    taught = train(teacher=teacher)
    n = len(fake.train)  # 12 photos x 5 human captions, then one teacher caption each
    assert len(plain.pair_image) == 5 * n and len(taught.pair_image) == 6 * n
    assert torch.equal(taught.pair_image[: 5 * n], plain.pair_image)
    assert torch.equal(taught.pair_tokens[: 5 * n], plain.pair_tokens)
    assert torch.equal(taught.pair_image[5 * n :], torch.arange(n))  # photo k's caption, in order
    # ... and they are what the teacher says of each photo, as the cache keeps them (by content)
    (stored,) = cache.glob("teacher-*-beam3.json")
    cached = json.loads(stored.read_text())
    model = load_captioner(teacher, "cpu")
    for k, name in enumerate(fake.train):
        with Image.open(fake.path(name)) as image:
            said = model.caption_batch(model.preset.to_uint8(image)[None], 3)[0].text
        assert cached[content_key(fake.path(name))] == said
        words = model.vocab.decode(taught.pair_tokens[5 * n + k].tolist())
        assert words == tokenize(said)[: len(words)] and words
    alone = train(teacher=teacher, teacher_only=True)  # the teacher's captions, nothing else
    assert torch.equal(alone.pair_image, torch.arange(n))
    assert torch.equal(alone.pair_tokens, taught.pair_tokens[5 * n :])
    with pytest.raises(ModelError, match="needs a --teacher"):
        train(teacher_only=True)
    # a second run decodes nothing: the teacher's captions come from the cache
    monkeypatch.setattr(Captioner, "caption_batch", lambda *a, **k: pytest.fail("decoded again"))
    assert torch.equal(train(teacher=teacher).pair_tokens, taught.pair_tokens)
    # a cache cut short is made again, not a crash
    stored.write_text(stored.read_text()[:50])
    monkeypatch.undo()
    monkeypatch.setattr(run_mod, "StageRun", Spy)
    assert torch.equal(train(teacher=teacher).pair_tokens, taught.pair_tokens)
    assert len(json.loads(stored.read_text())) == n


def test_a_teacher_of_another_vocabulary_is_refused_before_decoding(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = save_captioner(build_random_captioner(seed=3), tmp_path / "other.safetensors")
    config = tiny_train_config(
        tiny_run.fake.root, tmp_path / "o.safetensors", tmp_path / "c", epochs=1,
        init=tiny_run.out, teacher=other,
    )  # fmt: skip
    monkeypatch.setattr(run_mod, "load_pixels", lambda *a: pytest.fail("decoded the photos"))
    with pytest.raises(ModelError, match="another vocabulary"):
        list(iter_train(config))


def test_model_names_resolve_to_the_shipped_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_model_path("default") == REPO / "models" / SHIPPED_MODELS["default"]
    assert resolve_model_path(None) == resolve_model_path("default")
    assert resolve_model_path(tmp_path / "m.safetensors") == tmp_path / "m.safetensors"
    monkeypatch.setenv("PHOTOCAP_MODEL", "default")  # a name there too
    assert resolve_model_path(None) == REPO / "models" / SHIPPED_MODELS["default"]
    # by name through the CLI: the header of the shipped model (no model built)
    result = CliRunner().invoke(
        app, ["info", "--model", "default", "--json", "--db", str(tmp_path / "i.db")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"]["decoders"] == 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").mkdir()  # a folder of that name is not a model file: the name wins
    (tmp_path / "default").write_bytes(b"")  # a file named like a model: the user's file wins
    assert resolve_model_path("default") == Path("default")


def test_a_shipped_model_not_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SHIPPED_MODELS, "fast", "photocap-nowhere.safetensors")
    with pytest.raises(ModelError, match="the fast model is not installed"):
        resolve_model_path("fast")
    result = CliRunner().invoke(app, ["info", "--model", "fast", "--json"])
    assert "the fast model is not installed" in result.output


def test_the_fast_model_file_loads_and_captions(tmp_path: Path) -> None:
    path = resolve_model_path("fast")
    assert path == REPO / "models" / SHIPPED_MODELS["fast"]
    info = model_info("fast")  # the header only
    assert info["decoders"] == 1 and info["encoder_branches"] == 1
    assert info["model_id"].startswith("photocap-flickr8k-fast@")
    assert info["parameters"] < model_info("default")["parameters"] / 2
    fast, default = load_captioner("fast", "cpu"), load_captioner("default", "cpu")
    assert isinstance(fast.decoder, Decoder) and isinstance(default.decoder, Ensemble)
    assert fast.model_id == info["model_id"] and fast.vocab == default.vocab
    # distilled with the encoder frozen: its features are the default's second branch's grid
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)  # (2, 3, S, S)
    with torch.no_grad():
        width = fast.encoder.feature_dim
        assert torch.equal(fast.encode(pixels), default.encode(pixels)[..., width : 2 * width])
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


def test_a_model_file_is_not_written_over_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ModelError, match="is a folder"):
        save_captioner(build_random_captioner(), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "out"]  # no temporary file


def test_teacher_only_without_a_teacher_fails_before_any_work(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path / "nowhere", tmp_path / "o.safetensors", None,
                               teacher_only=True)  # fmt: skip
    with pytest.raises(ModelError, match="needs a --teacher"):
        list(iter_train(config))


def test_search_with_a_model_without_an_embedding_uses_the_defaults(
    model_file: Path, model_with_embedding: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photocap.cli import _meaning

    monkeypatch.setenv("PHOTOCAP_MODEL", str(model_with_embedding))  # the default model here
    assert _meaning(None) is not None
    ours = _meaning(model_file)  # no embedding beside it: the default model's query encoder
    assert ours is not None and ours.model_id == _meaning(None).model_id


def test_the_same_model_saved_twice_is_the_same_file(tmp_path: Path) -> None:
    # safetensors writes its header in a hash map's order; photocap sorts it, so a model's id
    # (the file's hash) does not depend on the process that wrote it
    import subprocess
    import sys

    script = (
        "import sys; from photocap.checkpoint import build_random_captioner, save_captioner; "
        "m = build_random_captioner(seed=4); m.metadata = {str(k): k for k in range(40)}; "
        "save_captioner(m, sys.argv[1], half=True)"
    )
    files = [tmp_path / f"{k}.safetensors" for k in range(3)]
    for f in files:
        subprocess.run([sys.executable, "-c", script, str(f)], check=True)
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
    assert load_captioner(files[0], "cpu").metadata["39"] == 39
