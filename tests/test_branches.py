"""Encoder branches: models whose encoders differ only in their top, joined in one file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from flickr_fixtures import assert_decoders_moved_and_encoder_kept, scst_config
from safetensors import safe_open
from typer.testing import CliRunner

from photocap.checkpoint import build_random_captioner, load_captioner, save_captioner
from photocap.cli import app
from photocap.encoder import EncoderConfig
from photocap.errors import ModelError
from photocap.model import Captioner, Ensemble, ModelConfig
from photocap.training.ensembles import merge_decoders
from photocap.training.run import iter_train


def _retopped(model: Captioner, seed: int) -> Captioner:
    """Another decoder, and an encoder whose last block and head moved (its trunk did not):
    what ``train --scst-encoder-blocks 1`` makes of a model."""
    other = build_random_captioner(seed=seed)
    other.encoder.load_state_dict(model.encoder.state_dict())
    with torch.no_grad():
        for p in [*other.encoder._blocks[-1].parameters(), *other.encoder._conv_head.parameters()]:
            p.add_(0.2 * torch.randn_like(p))
    return other


def _pixels(n: int = 3) -> torch.Tensor:
    torch.manual_seed(5)
    return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8)  # (n, 3, S, S)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    a = build_random_captioner(seed=1)
    b = _retopped(a, seed=2)
    sibling = build_random_captioner(seed=3)  # a's encoder, another decoder
    sibling.encoder.load_state_dict(a.encoder.state_dict())
    return {  # fp16, as an ensemble's file stores them: the weights compare exactly
        "a": save_captioner(a, tmp_path / "a.safetensors", half=True),
        "b": save_captioner(b, tmp_path / "b.safetensors", half=True),
        "sibling": save_captioner(sibling, tmp_path / "sibling.safetensors", half=True),
    }


def test_branched_ensemble_decodes_as_its_models_would_together(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = merge_decoders([files["a"], files["b"]], tmp_path / "ab.safetensors")
    joined = load_captioner(out, "cpu")  # BatchNorm folded on CPU: the fused path, branches too
    a, b = load_captioner(files["a"], "cpu"), load_captioner(files["b"], "cpu")
    n_blocks = len(a.encoder._blocks)
    assert joined.config.encoder.branches == 2
    assert joined.config.encoder.branch_blocks == 1  # only the last block and head differ
    assert joined.config.decoder_branches == (0, 1)
    assert joined.info()["encoder_branches"] == 2
    with safe_open(str(out), framework="pt") as f:
        assert (f.metadata() or {})["format_version"] == "3"
        keys = set(f.keys())
    # one trunk: the branch holds copies of the last block and the head, nothing below
    assert "encoder._branches.0._blocks.0._project_conv.weight" in keys
    assert not any(k.startswith("encoder._branches.0._blocks.1.") for k in keys)
    assert not any(k.startswith("encoder._branches.0._conv_stem") for k in keys)
    assert len(joined.encoder._blocks) == n_blocks

    pixels = _pixels()
    with torch.no_grad():  # the BatchNorm-folded copies of the encoders
        feats = joined.encode(pixels)  # (n, L, 2D): each model's grid, side by side
        fa, fb = a.encode(pixels), b.encode(pixels)  # (n, L, D) each
    assert feats.shape == (3, fa.shape[1], 2 * fa.shape[2])
    assert torch.allclose(feats, torch.cat([fa, fb], dim=-1), atol=1e-5)
    assert not torch.allclose(fa, fb, atol=1e-2)
    plain = joined.encoder(joined.preset.normalize(pixels))  # with gradients: not folded
    assert torch.allclose(plain, feats, rtol=1e-4, atol=1e-5)

    # the next word: the mean of each model's distribution on its own grid
    words = torch.tensor([a.vocab.start_id] * 3)
    with torch.no_grad():
        expected = [
            m.decoder.step(words, m.decoder.init_state(f), f, m.decoder.attend_features(f))[0]
            .float()
            .softmax(-1)
            for m, f in ((a, fa), (b, fb))
        ]  # 2 x (n, V)
        dec = joined.decoder
        assert isinstance(dec, Ensemble)
        logp, _, alpha = dec.step(words, dec.init_state(feats), feats, dec.attend_features(feats))
    assert torch.allclose(logp.exp(), (expected[0] + expected[1]) / 2, atol=1e-5)
    assert alpha.shape == (3, fa.shape[1])
    captions = joined.caption_batch(pixels, beam_size=3)
    assert len(captions) == 3 and all(c.text for c in captions)


def test_decoders_to_keep_and_their_branches(files: dict[str, Path], tmp_path: Path) -> None:
    paths = [files["a"], files["b"], files["sibling"]]
    everything = load_captioner(merge_decoders(paths, tmp_path / "all.safetensors"), "cpu")
    assert everything.config.decoder_branches == (0, 1, 0)  # sibling shares a's encoder
    kept = merge_decoders(paths, tmp_path / "kept.safetensors", keep=[2, 1])
    model = load_captioner(kept, "cpu")
    # the decoders in the order asked for; the branches in the order of the files
    assert model.config.decoders == 2 and model.config.decoder_branches == (1, 0)
    assert [m["file"] for m in model.metadata["ensemble_of"]] == [
        "b.safetensors",
        "sibling.safetensors",
    ]
    b, sibling = load_captioner(files["b"], "cpu"), load_captioner(files["sibling"], "cpu")
    assert isinstance(model.decoder, Ensemble)
    assert torch.equal(model.encoder._conv_head.weight, b.encoder._conv_head.weight)
    first = model.decoder.decoders[0].state_dict()
    assert all(torch.equal(v, first[k]) for k, v in sibling.decoder.state_dict().items())
    one_encoder = load_captioner(
        merge_decoders(paths, tmp_path / "same.safetensors", keep=[0, 2]), "cpu"
    )
    assert one_encoder.config.encoder.branches == 1 and one_encoder.config.decoder_branches == ()
    with safe_open(str(tmp_path / "same.safetensors"), framework="pt") as f:
        assert (f.metadata() or {})["format_version"] == "2"
    for bad in ([0], [0, 0], [0, 3]):
        with pytest.raises(ModelError, match="two or more different decoders"):
            merge_decoders(paths, tmp_path / "x.safetensors", keep=bad)
    with pytest.raises(ModelError, match="already has encoder branches"):
        merge_decoders([tmp_path / "all.safetensors", files["a"]], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_ensemble_keeps_the_decoders_asked_for(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli.safetensors"
    args = ["ensemble", str(files["a"]), str(files["b"]), str(files["sibling"]), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--decoders", "0,1"])
    assert result.exit_code == 0, result.output
    assert "2 decoders, 2 encoder branches" in result.output
    info = CliRunner().invoke(
        app, ["info", "--model", str(out), "--json", "--db", str(tmp_path / "none.db")]
    )
    assert json.loads(info.output)["model"]["encoder_branches"] == 2
    bad = CliRunner().invoke(app, [*args, "--decoders", "0,x"])
    assert bad.exit_code == 2 and "--decoders" in bad.output


def test_model_config_checks_the_branch_of_every_decoder() -> None:
    two = EncoderConfig(branches=2, branch_blocks=1)
    config = ModelConfig(encoder=two, decoders=3, decoder_branches=(0, 1, 0))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for decoders, branches in ((2, (0, 0)), (2, (0,)), (2, (0, 2)), (1, ())):
        with pytest.raises(ValueError, match="decoder_branches"):
            ModelConfig(encoder=two, decoders=decoders, decoder_branches=branches)
    # without branches the config is written as older photocap releases wrote it
    plain = ModelConfig(decoders=2).to_dict()
    assert "decoder_branches" not in plain and "branches" not in plain["encoder"]


def test_training_a_branched_model(files: dict[str, Path], tmp_path: Path) -> None:
    out = merge_decoders([files["a"], files["b"]], tmp_path / "ab.safetensors")
    config = scst_config(out, tmp_path)
    for bad in (
        replace(config, scst_encoder_blocks=1),
        replace(config, reset_decoder=True, epochs=1),
    ):
        with pytest.raises(ModelError, match="has encoder branches"):
            list(iter_train(bad))
    # self-critical training of its decoders works, on its own feature cache
    events = list(iter_train(config))
    assert [e.stage for e in events if e.kind == "epoch"] == ["scst"]
    last = load_captioner(tmp_path / "t.safetensors.last.safetensors", "cpu")
    start = load_captioner(out, "cpu")
    assert last.config == start.config
    assert_decoders_moved_and_encoder_kept(start, last)


def test_the_fused_step_computes_the_ensembles_step() -> None:
    """``Ensemble.fused_step`` (what photocap.runtime exports: the members' attention
    together, no copies of the large inputs by member) gives the step's numbers, for members
    reading different branches, word after word."""
    encoder = EncoderConfig(name="tiny", stem_channels=8, head_channels=32, branches=2,
                            branch_blocks=1)  # fmt: skip
    config = ModelConfig(encoder=encoder, embed_dim=24, hidden_dim=20, attention_dim=12,
                         dropout=0.0, decoders=3, decoder_branches=(0, 1, 0))  # fmt: skip
    torch.manual_seed(3)
    ensemble = Ensemble(config, vocab_size=30, feature_dim=32).eval()
    features = torch.rand(5, 9, 2 * 32)  # (N, L, branches * D)
    with torch.no_grad():
        att = ensemble.attend_features(features)  # (N, L, M*A)
        plain = fused = ensemble.init_state(features)
        words = torch.tensor([1, 4, 7, 2, 9])
        for _ in range(3):
            want, plain, want_alpha = ensemble.step(words, plain, features, att)
            got, fused, got_alpha = ensemble.fused_step(words, fused, features, att)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got_alpha, want_alpha, rtol=1e-5, atol=1e-6)
            words = want.argmax(-1)


def test_a_branched_ensemble_captions_on_openvino_as_on_torch(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step exported from ``fused_step`` for members reading different branches: the
    tiny models' layers are too small for int8, so OpenVINO's captions are torch's exactly."""
    pytest.importorskip("openvino", reason="OpenVINO is a dependency on x86_64 and ARM64 only")
    from photocap.checkpoint import LazyCaptioner

    monkeypatch.setenv("PHOTOCAP_CACHE", str(tmp_path / "cache"))
    out = merge_decoders([files["a"], files["b"], files["sibling"]], tmp_path / "abs.safetensors")
    fast = LazyCaptioner(out, device="cpu").captioner()
    plain = load_captioner(out, "cpu")
    assert fast.config.decoder_branches == (0, 1, 0)
    assert fast.decoder_runtime_name.startswith("openvino ")
    pixels = _pixels(4)
    assert [c.text for c in fast.caption_batch(pixels)] == [
        c.text for c in plain.caption_batch(pixels)
    ]
