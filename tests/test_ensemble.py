"""Ensembles: several decoders over one encoder, decoding as one model, stored in one file."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from flickr_fixtures import assert_decoders_moved_and_encoder_kept, make_fake_flickr, scst_config
from safetensors import safe_open
from typer.testing import CliRunner

from photocap.checkpoint import build_random_captioner, load_captioner, save_captioner
from photocap.cli import app
from photocap.errors import ModelError
from photocap.model import Captioner, Ensemble
from photocap.training.config import TrainConfig
from photocap.training.ensembles import merge_decoders
from photocap.training.run import iter_train


def _ensemble_of(*models: Captioner) -> Captioner:
    """Captioner whose decoder is an Ensemble of the models' decoders (encoder of the first)."""
    first = models[0]
    joined = Captioner(replace(first.config, decoders=len(models)), first.vocab, first.preset)
    joined.encoder.load_state_dict(first.encoder.state_dict())
    assert isinstance(joined.decoder, Ensemble)
    for member, model in zip(joined.decoder.decoders, models, strict=True):
        member.load_state_dict(model.decoder.state_dict())
    return joined.eval()


def _sibling(model: Captioner, seed: int) -> Captioner:
    """The same encoder and vocabulary, another randomly initialised decoder."""
    other = build_random_captioner(seed=seed)
    other.encoder.load_state_dict(model.encoder.state_dict())
    return other


def _features(model: Captioner, n: int = 3) -> torch.Tensor:
    torch.manual_seed(5)
    pixels = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8)  # (n, 3, S, S)
    return model.encode(pixels)  # (n, L, D)


def test_ensemble_of_copies_decodes_like_the_single_model() -> None:
    model = build_random_captioner(seed=1)
    twins = _ensemble_of(model, copy.deepcopy(model), copy.deepcopy(model))
    feats = _features(model)
    for beam in (1, 3):
        single = model.caption_features(feats, beam)
        joined = twins.caption_features(feats, beam)
        assert [c.text for c in joined] == [c.text for c in single]
        for a, b in zip(joined, single, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_ensemble_step_is_the_log_of_the_mean_probability() -> None:
    a = build_random_captioner(seed=1)
    b = _sibling(a, seed=2)
    joined = _ensemble_of(a, b)
    feats = _features(a)  # (3, L, D)
    words = torch.tensor([a.vocab.start_id] * 3)
    with torch.no_grad():
        expected = []
        for m in (a, b):
            logits, _, _ = m.decoder.step(
                words, m.decoder.init_state(feats), feats, m.decoder.attend_features(feats)
            )
            expected.append(logits.softmax(-1))
        dec = joined.decoder
        logp, state, alpha = dec.step(
            words, dec.init_state(feats), feats, dec.attend_features(feats)
        )
    mean = (expected[0] + expected[1]) / 2  # (3, V)
    assert torch.allclose(logp.exp(), mean, atol=1e-6)
    assert state[0].shape == (3, 2 * a.config.hidden_dim)
    assert alpha.shape == (3, feats.shape[1])
    assert torch.allclose(alpha.sum(-1), torch.ones(3))
    # and the members really differ, so this is a mean of two distributions
    assert not torch.allclose(expected[0], expected[1])


def test_ensemble_file_round_trip_and_format_versions(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    joined = _ensemble_of(a, _sibling(a, seed=2))
    single_path = save_captioner(a, tmp_path / "single.safetensors")
    joined_path = save_captioner(joined, tmp_path / "joined.safetensors")
    versions = {}
    for path in (single_path, joined_path):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            versions[path.stem] = meta["format_version"]
            keys = set(f.keys())
    assert versions == {"single": "1", "joined": "2"}  # single files stay readable by v1
    assert any(k.startswith("decoder.members.1.") for k in keys)
    loaded = load_captioner(joined_path, "cpu")
    assert loaded.config.decoders == 2 and loaded.info()["decoders"] == 2
    feats = _features(a)
    assert [c.text for c in loaded.caption_features(feats, 3)] == [
        c.text for c in joined.caption_features(feats, 3)
    ]


def test_merge_decoders_checks_its_members(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    pa = save_captioner(a, tmp_path / "a.safetensors")
    pb = save_captioner(_sibling(a, seed=2), tmp_path / "b.safetensors")
    out = merge_decoders([pa, pb], tmp_path / "ab.safetensors")
    merged = load_captioner(out, "cpu")
    assert merged.config.decoders == 2
    assert [m["file"] for m in merged.metadata["ensemble_of"]] == ["a.safetensors", "b.safetensors"]
    # fp16 storage: captions as the fp32 ensemble gives them
    expected = _ensemble_of(load_captioner(pa, "cpu"), load_captioner(pb, "cpu"))
    feats = _features(a)
    assert [c.text for c in merged.caption_features(feats, 3)] == [
        c.text for c in expected.caption_features(feats, 3)
    ]

    other_encoder = save_captioner(build_random_captioner(seed=3), tmp_path / "c.safetensors")
    with pytest.raises(ModelError, match="another encoder"):
        merge_decoders([pa, other_encoder], tmp_path / "x.safetensors")
    shrunk = _sibling(a, seed=4)
    shrunk.vocab = type(a.vocab)(a.vocab.words[:-1])
    shrunk.decoder = type(a.decoder)(a.config, len(shrunk.vocab), a.encoder.feature_dim)
    pd = save_captioner(shrunk, tmp_path / "d.safetensors")
    with pytest.raises(ModelError, match="vocabulary"):
        merge_decoders([pa, pd], tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match="at least two"):
        merge_decoders([pa], tmp_path / "x.safetensors")
    # an ensemble's file gives all its decoders (its fp16 encoder is a's, at fp16)
    three = load_captioner(merge_decoders([out, pa], tmp_path / "aba.safetensors"), "cpu")
    assert three.config.decoders == 3 and three.config.encoder.branches == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_ensemble_and_training_from_an_ensemble(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    pa = save_captioner(a, tmp_path / "a.safetensors")
    pb = save_captioner(_sibling(a, seed=2), tmp_path / "b.safetensors")
    out = tmp_path / "ab.safetensors"
    result = CliRunner().invoke(
        app, ["ensemble", str(pa), str(pb), "--out", str(out), "--name", "pair"]
    )
    assert result.exit_code == 0, result.output
    assert "(2 decoders, 1 encoder branch, " in result.output
    assert load_captioner(out, "cpu").model_id.startswith("pair@")
    bad = CliRunner().invoke(app, ["ensemble", str(pa), str(tmp_path / "nope.safetensors")])
    assert bad.exit_code != 0
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=4, n_dev=2)
    config = TrainConfig(data=fake.root, out=tmp_path / "t.safetensors", init=out, device="cpu")
    with pytest.raises(ModelError, match="is an ensemble"):  # whose decoder would it continue?
        list(iter_train(config))
    # A new decoder for the ensemble's encoder: one decoder, the encoder unchanged.
    config = replace(config, reset_decoder=True, epochs=1, batch_size=10, workers=0)
    events = list(iter_train(config))
    assert any(e.kind == "epoch" for e in events)
    trained = load_captioner(config.out, "cpu")
    assert trained.config.decoders == 1 and not isinstance(trained.decoder, Ensemble)
    with safe_open(str(config.out), framework="pt") as f:
        assert (f.metadata() or {})["format_version"] == "1"
    start = load_captioner(out, "cpu").encoder.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in trained.encoder.state_dict().items())


def test_self_critical_training_of_an_ensemble_moves_every_member(tmp_path: Path) -> None:
    """An ensemble's file may be continued by self-critical training alone: the samples come
    from the members' mean distribution, so every member gets a gradient; the encoder stays."""
    a = build_random_captioner(seed=1)
    out = save_captioner(_ensemble_of(a, _sibling(a, seed=2)), tmp_path / "ab.safetensors")
    config = scst_config(out, tmp_path)
    events = list(iter_train(config))
    assert [e.stage for e in events if e.kind == "epoch"] == ["scst"]
    last = load_captioner(tmp_path / "t.safetensors.last.safetensors", "cpu")
    assert isinstance(last.decoder, Ensemble) and last.config.decoders == 2
    with safe_open(str(config.out), framework="pt") as f:
        assert (f.metadata() or {})["format_version"] == "2"
    assert_decoders_moved_and_encoder_kept(load_captioner(out, "cpu"), last)
    # Cross-entropy still needs one decoder at a time.
    with pytest.raises(ModelError, match="self-critical training only"):
        list(iter_train(replace(config, epochs=1, out=tmp_path / "x.safetensors")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ensemble_on_cuda_matches_cpu(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    path = save_captioner(_ensemble_of(a, _sibling(a, seed=2)), tmp_path / "e.safetensors")
    cpu, gpu = load_captioner(path, "cpu"), load_captioner(path, "cuda")
    torch.manual_seed(5)
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    on_gpu = gpu.caption_batch(pixels, 3)  # bf16 autocast on the GPU
    on_cpu = cpu.caption_batch(pixels, 3)
    assert len(on_gpu) == 4 and all(c.text.endswith(".") for c in on_gpu)
    assert sum(g.text == c.text for g, c in zip(on_gpu, on_cpu, strict=True)) >= 2


def test_info_shows_the_members(tmp_path: Path) -> None:
    a = build_random_captioner(seed=1)
    pa = save_captioner(a, tmp_path / "a.safetensors")
    pb = save_captioner(_sibling(a, seed=2), tmp_path / "b.safetensors")
    out = merge_decoders([pa, pb], tmp_path / "ab.safetensors")
    db = ["--db", str(tmp_path / "none.db")]
    text = CliRunner().invoke(app, ["info", "--model", str(out), *db])
    assert text.exit_code == 0, text.output
    rows = [[cell.strip() for cell in x.split("│")[1:-1]] for x in text.output.splitlines()]
    assert ["decoders", "2"] in rows
    # the ensemble's members, one a line: its first line is the row's
    at = next(i for i, row in enumerate(rows) if row and row[0] == "ensemble of")
    assert rows[at][1].startswith("a.safetensors (random-tiny@")
    assert rows[at + 1][0] == "" and rows[at + 1][1].startswith("b.safetensors (random-tiny@")
    as_json = CliRunner().invoke(app, ["info", "--model", str(out), "--json", *db])
    members = json.loads(as_json.output)["model"]["ensemble_of"]
    assert [m["file"] for m in members] == ["a.safetensors", "b.safetensors"]
