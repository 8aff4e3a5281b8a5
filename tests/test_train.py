"""Training end to end on a tiny fake Flickr8k (CPU, seconds): stages, resume, init, cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from flickr_fixtures import (  # noqa: F401
    DEV_ONLY_WORD,
    TinyRun,
    make_fake_flickr,
    one_torch_thread,
    tiny_run_fixture,
    tiny_train_config,
)
from safetensors.torch import load_file
from typer.testing import CliRunner

import photocap.training.features as features_mod
import photocap.training.stages as stages_mod
from photocap.checkpoint import load_captioner
from photocap.cli import app
from photocap.dataset import load_flickr8k
from photocap.errors import DatasetError, ModelError
from photocap.training.evaluation import score_dev, selection_score
from photocap.training.features import (
    cached_features,
    encode_captions,
    extract_features,
    load_pixels,
)
from photocap.training.run import iter_train
from photocap.vocab import tokenize


def _epochs(events: list) -> list[tuple[str, int]]:
    return [(e.stage, e.epoch) for e in events if e.kind == "epoch"]


def _dev_score(model_path: Path, fake) -> float:  # type: ignore[no-untyped-def]
    """Greedy dev CIDEr-D of a model file, recomputed from scratch."""
    captioner = load_captioner(model_path, device="cpu")
    pixels = load_pixels([fake.path(n) for n in fake.dev], captioner.preset, 0)
    feats = extract_features(captioner, pixels)
    refs = [[tokenize(c) for c in fake.captions[n]] for n in fake.dev]
    return score_dev(captioner, feats, refs)["cider"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_fake_flickr(tmp_path_factory.mktemp("small") / "f8k", "original", 8, 3)


def test_full_run_goes_through_all_stages(tiny_run: TinyRun) -> None:
    events = tiny_run.events
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e.stage for e in events if e.kind == "stage"] == ["xe", "finetune", "scst"]
    assert _epochs(events) == [("xe", 1), ("xe", 2), ("finetune", 1), ("scst", 1)]
    for e in events:
        if e.kind == "epoch":
            assert set(e.dev) == {"cider", "bleu4"}
            assert e.loss == e.loss and abs(e.loss) < 1e3  # finite
        if e.kind == "step":
            assert 1 <= e.step <= e.steps
    xe = [e for e in events if e.kind == "epoch" and e.stage == "xe"]
    assert xe[1].loss < xe[0].loss  # cross-entropy goes down
    assert "12 train / 4 dev photos" in events[0].message


def test_best_model_is_written_and_matches_the_reported_dev_score(tiny_run: TinyRun) -> None:
    out = tiny_run.out
    assert out.is_file()
    assert out.with_name(out.name + ".last.safetensors").is_file()
    state = torch.load(out.with_name(out.name + ".state.pt"), weights_only=True)
    assert (state["stage"], state["epoch"]) == ("scst", 1)
    epochs = [e for e in tiny_run.events if e.kind == "epoch"]
    done = tiny_run.events[-1]
    best_cider = max(e.dev["cider"] for e in epochs)
    assert done.dev["cider"] == pytest.approx(best_cider)
    # the first epoch that reached the best is the one flagged and saved
    flagged = [e for e in epochs if e.best]
    assert flagged[-1].dev["cider"] == pytest.approx(best_cider)
    model = load_captioner(out, device="cpu")
    assert model.metadata["dev_greedy"]["cider"] == pytest.approx(best_cider)
    assert (model.metadata["best_stage"], model.metadata["best_epoch"]) == (
        flagged[-1].stage,
        flagged[-1].epoch,
    )
    assert json.loads(json.dumps(model.metadata["train_config"]))["encoder"] == "tiny"
    assert _dev_score(out, tiny_run.fake) == pytest.approx(best_cider, abs=1e-6)


def test_later_stage_starts_from_the_best_model(tiny_run: TinyRun) -> None:
    out = tiny_run.out
    best = load_file(str(out))
    last = load_file(str(out.with_name(out.name + ".last.safetensors")))
    epochs = {(e.stage, e.epoch): e for e in tiny_run.events if e.kind == "epoch"}
    if not epochs[("finetune", 1)].best and not epochs[("scst", 1)].best:
        # scst did not start from the fine-tuned encoder but from the best (xe) model,
        # and scst never touches the encoder
        for name, tensor in best.items():
            if name.startswith("encoder."):
                assert torch.equal(last[name], tensor), name
    # scst did train the decoder
    assert any(not torch.equal(last[n], t) for n, t in best.items() if n.startswith("decoder."))


def test_vocabulary_comes_from_train_captions_only(tiny_run: TinyRun) -> None:
    model = load_captioner(tiny_run.out, device="cpu")
    words = set(model.vocab.words)
    assert DEV_ONLY_WORD not in words
    train_words = {
        w for n in tiny_run.fake.train for c in tiny_run.fake.captions[n] for w in tokenize(c)
    }
    assert words - {"<pad>", "<start>", "<end>", "<unk>"} == train_words


def test_trained_model_captions_a_photo(tiny_run: TinyRun) -> None:
    from PIL import Image

    model = load_captioner(tiny_run.out, device="cpu")
    with Image.open(tiny_run.fake.path(tiny_run.fake.dev[0])) as img:
        pixels = model.preset.to_uint8(img)[None]
    assert pixels.shape == (1, 3, 64, 64)
    (caption,) = model.caption_batch(pixels, beam_size=3)
    assert caption.text[0].isupper() and caption.text.endswith(".")
    assert set(tokenize(caption.text)) <= set(model.vocab.words)


def test_resume_continues_an_interrupted_run(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.safetensors"
    config = tiny_train_config(small_data.root, out, tmp_path / "cache", epochs=3)
    run = iter_train(config)
    seen = []
    for event in run:  # interrupted right after the first epoch was saved
        seen.append(event)
        if event.kind == "epoch":
            break
    run.close()
    assert _epochs(seen) == [("xe", 1)]
    assert out.is_file()
    with pytest.raises(ModelError, match="nothing to resume"):
        list(
            iter_train(
                tiny_train_config(
                    small_data.root, tmp_path / "other.safetensors", tmp_path / "cache", resume=True
                )
            )
        )
    resumed = list(
        iter_train(
            tiny_train_config(small_data.root, out, tmp_path / "cache", epochs=3, resume=True)
        )
    )
    assert any("resuming xe after epoch 1" in e.message for e in resumed)
    assert _epochs(resumed) == [("xe", 2), ("xe", 3)]
    state = torch.load(out.with_name(out.name + ".state.pt"), weights_only=True)
    assert (state["stage"], state["epoch"]) == ("xe", 3)
    # the best score carries over: the final best is the best of all three epochs
    all_dev = [e.dev["cider"] for e in seen + resumed if e.kind == "epoch"]
    assert resumed[-1].dev["cider"] == pytest.approx(max(all_dev))
    # resuming a finished run runs nothing more; adding a stage runs only that stage
    again = list(
        iter_train(
            tiny_train_config(small_data.root, out, tmp_path / "cache", epochs=3, resume=True)
        )
    )
    assert _epochs(again) == [] and again[-1].kind == "done"
    more = list(
        iter_train(
            tiny_train_config(
                small_data.root, out, tmp_path / "cache", epochs=3, scst_epochs=1, resume=True
            )
        )
    )
    assert _epochs(more) == [("scst", 1)]


def test_init_never_writes_a_worse_model(tiny_run: TinyRun, tmp_path: Path) -> None:
    init = tiny_run.out
    init_score = _dev_score(init, tiny_run.fake)
    out = tmp_path / "from_init.safetensors"
    # a far too large learning rate: the scst epoch is likely to make things worse
    config = tiny_train_config(
        tiny_run.fake.root, out, tmp_path / "cache", epochs=0, scst_epochs=2, init=init, scst_lr=0.5
    )
    events = list(iter_train(config))
    assert any(f"starting from {init}" in e.message for e in events)
    starting = [e for e in events if "starting model" in e.message]
    assert starting and starting[0].dev["cider"] == pytest.approx(init_score, abs=1e-6)
    assert _epochs(events) == [("scst", 1), ("scst", 2)]
    assert out.is_file()
    final_score = _dev_score(out, tiny_run.fake)
    assert final_score >= init_score - 1e-9
    if not any(e.best for e in events if e.kind == "epoch"):
        init_t, out_t = load_file(str(init)), load_file(str(out))
        assert init_t.keys() == out_t.keys()
        assert all(torch.equal(out_t[k], v) for k, v in init_t.items())
    assert load_captioner(out, "cpu").vocab == load_captioner(init, "cpu").vocab


def test_scst_with_encoder_blocks_trains_the_top_of_the_encoder_only(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    init = tiny_run.out
    out = tmp_path / "top.safetensors"
    config = tiny_train_config(
        tiny_run.fake.root, out, tmp_path / "cache", epochs=0, scst_epochs=1, init=init,
        scst_encoder_blocks=1, encoder_lr=1e-2, scst_lr=1e-2,
    )  # fmt: skip
    events = list(iter_train(config))
    assert _epochs(events) == [("scst", 1)]
    before = load_captioner(init, "cpu")
    start = before.encoder.split_index(1)
    assert list((tmp_path / "cache").glob(f"trunk{start}-*.safetensors"))
    last = load_captioner(out.with_name(out.name + ".last.safetensors"), "cpu")
    assert last.metadata["train_config"]["scst_encoder_blocks"] == 1
    old, new = before.encoder.state_dict(), last.encoder.state_dict()
    top = {n for n, _ in before.encoder.named_parameters() if n.startswith(("_conv_head", "_bn1"))}
    top |= {n for n, _ in before.encoder.named_parameters() if n.startswith(f"_blocks.{start}.")}
    moved = {n for n in old if not torch.equal(old[n], new[n])}
    assert moved and moved <= top  # the last block and the head learn; nothing below them
    assert not any("running_" in n for n in moved)  # BatchNorm statistics stay frozen
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before.decoder.parameters(), last.decoder.parameters(), strict=True)
    )


def test_bleu_weight_mixes_bleu4_into_the_reward_and_the_choice_of_epoch(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[list[str]] = []
    real = stages_mod.sentence_bleu4

    def spy(candidate: list[str], refs: list[list[str]]) -> float:
        scored.append(list(candidate))
        return real(candidate, refs)

    monkeypatch.setattr(stages_mod, "sentence_bleu4", spy)
    out = tmp_path / "mixed.safetensors"
    config = tiny_train_config(
        tiny_run.fake.root, out, tmp_path / "cache", epochs=0, scst_epochs=3,
        init=tiny_run.out, scst_lr=1e-2, bleu_weight=3.0,
    )  # fmt: skip
    events = list(iter_train(config))
    # every sampled caption of every step got a BLEU-4 reward: photos x samples x epochs
    n_train = len(tiny_run.fake.train)
    assert len(scored) == n_train * config.scst_samples * config.scst_epochs
    # an epoch is the best so far exactly when its CIDEr-D + 3 x BLEU-4 beats the best so far
    (start,) = [e.dev for e in events if "starting model" in e.message]
    assert "bleu4" in start
    best = selection_score(start, config)
    assert best == pytest.approx(start["cider"] + 3.0 * start["bleu4"])
    for e in (e for e in events if e.kind == "epoch"):
        assert e.best == (selection_score(e.dev, config) > best)
        best = max(best, selection_score(e.dev, config))
    assert load_captioner(out, "cpu").metadata["train_config"]["bleu_weight"] == 3.0
    # weight 0 (the default): CIDEr-D alone, no BLEU-4 computed
    scored.clear()
    config = tiny_train_config(
        tiny_run.fake.root, tmp_path / "plain.safetensors", tmp_path / "cache", epochs=0,
        scst_epochs=1, init=tiny_run.out,
    )  # fmt: skip
    list(iter_train(config))
    assert scored == []


def test_reset_decoder_keeps_encoder_and_vocabulary(tiny_run: TinyRun, tmp_path: Path) -> None:
    init = tiny_run.out
    out = tmp_path / "second_decoder.safetensors"
    config = tiny_train_config(
        tiny_run.fake.root, out, tmp_path / "cache", epochs=1, init=init, reset_decoder=True
    )
    events = list(iter_train(config))
    assert any("new decoder" in e.message for e in events)
    assert not any("starting model" in e.message for e in events)  # old decoder not scored
    assert _epochs(events) == [("xe", 1)]
    init_t, out_t = load_file(str(init)), load_file(str(out))
    assert init_t.keys() == out_t.keys()
    for name, tensor in init_t.items():
        same = torch.equal(out_t[name], tensor)
        assert same if name.startswith("encoder.") else not same, name
    assert load_captioner(out, "cpu").vocab == load_captioner(init, "cpu").vocab


def test_jitter_scale_crops_inside_the_image() -> None:
    torch.manual_seed(0)
    ramp = torch.linspace(-1, 1, 32)  # x coordinate as the pixel value
    images = ramp.expand(4, 3, 32, 32).clone()  # (4, 3, 32, 32)
    assert torch.allclose(stages_mod.jitter_scale(images, 0.0), images, atol=1e-5)
    out = stages_mod.jitter_scale(images, 0.3)
    assert out.shape == images.shape
    # a crop, resized: values stay inside the image's range (no zero padding pulled in) and
    # each row still increases left to right, spanning at least 70 % of the original range
    assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
    rows = out[:, 0, 16]  # (4, 32)
    assert bool((rows[:, 1:] >= rows[:, :-1] - 1e-5).all())
    span = rows[:, -1] - rows[:, 0]
    assert bool((span >= 0.7 * 2 * 31 / 32 - 0.05).all()) and bool((span < 2).all())


def test_feature_cache_is_reused_across_runs(small_data, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = features_mod.extract_features

    def counting(captioner, pixels, batch_size=128, start=None):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return real(captioner, pixels, batch_size, start)

    monkeypatch.setattr(features_mod, "extract_features", counting)
    cache = tmp_path / "cache"
    list(
        iter_train(tiny_train_config(small_data.root, tmp_path / "a.safetensors", cache, epochs=1))
    )
    assert sorted(calls) == [3, 8]  # dev and train photos extracted once
    (cache_file,) = cache.glob("features-*.safetensors")
    before = (cache_file.stat().st_mtime_ns, cache_file.read_bytes())
    calls.clear()
    list(
        iter_train(tiny_train_config(small_data.root, tmp_path / "b.safetensors", cache, epochs=1))
    )
    assert calls == []  # nothing re-extracted
    assert (cache_file.stat().st_mtime_ns, cache_file.read_bytes()) == before
    assert len(load_file(str(cache_file))) == 11  # one entry per distinct photo


def test_cached_features_equal_fresh_ones_and_follow_content(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from photocap.checkpoint import build_random_captioner

    captioner = build_random_captioner(seed=1)
    data = load_flickr8k(small_data.root)
    paths = [data.image_path(n) for n in small_data.train[:4]]
    pixels = load_pixels(paths, captioner.preset, 0)
    cache = tmp_path / "cache"
    first = cached_features(captioner, paths, pixels, cache)
    fresh = extract_features(captioner, pixels)
    assert first.dtype == torch.float16 and torch.equal(first, fresh)
    assert torch.equal(cached_features(captioner, paths, pixels, cache), first)
    # another encoder gets its own cache file, never the first one's features
    other = build_random_captioner(seed=2)
    cached_features(other, paths, pixels, cache)
    assert len(list(cache.glob("features-*.safetensors"))) == 2
    # the trunk's activations (for training the encoder's top) have their own file, and the
    # top run on them gives the same features (to fp16 rounding of the activations)
    start = captioner.encoder.split_index(2)
    acts = cached_features(captioner, paths, pixels, cache, start)
    assert acts.dim() == 4 and acts.dtype == torch.float16
    assert len(list(cache.glob(f"trunk{start}-*.safetensors"))) == 1
    assert torch.equal(cached_features(captioner, paths, pixels, cache, start), acts)
    torch.testing.assert_close(
        features_mod.encode_top(captioner, acts, start), fresh.float(), atol=2e-2, rtol=2e-2
    )
    # the trunk's file is keyed by the trunk alone: a model whose top was trained (a run to
    # continue) reuses it; a change below the split gets a file of its own
    with torch.no_grad():
        captioner.encoder.top_parameters(2)[0].add_(1.0)
    assert torch.equal(cached_features(captioner, paths, pixels, cache, start), acts)
    assert len(list(cache.glob(f"trunk{start}-*.safetensors"))) == 1
    with torch.no_grad():
        next(iter(captioner.encoder.trunk_state_dict(start).values())).add_(1.0)
    assert not torch.equal(cached_features(captioner, paths, pixels, cache, start), acts)
    assert len(list(cache.glob(f"trunk{start}-*.safetensors"))) == 2


def test_encode_captions_pads_and_truncates(tiny_run: TinyRun) -> None:
    vocab = load_captioner(tiny_run.out, "cpu").vocab
    tokens = encode_captions(vocab, ["A dog runs.", "a dog " * 30], max_words=5)
    assert tokens.shape == (2, 7)
    assert tokens[0].tolist()[:5] == [1, vocab.id("a"), vocab.id("dog"), vocab.id("runs"), 2]
    assert tokens[0, 5:].tolist() == [0, 0]
    assert tokens[1, -1] == vocab.end_id


def test_bad_data_and_unknown_encoder(tmp_path: Path, small_data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DatasetError):
        list(iter_train(tiny_train_config(tmp_path / "nope", tmp_path / "m.safetensors", tmp_path)))
    with pytest.raises(DatasetError, match="unknown encoder"):
        list(
            iter_train(
                tiny_train_config(
                    small_data.root, tmp_path / "m.safetensors", tmp_path, encoder="resnet"
                )
            )
        )
    assert not (tmp_path / "m.safetensors").exists()


def _cli_train(data: Path, out: Path, cache: Path, *extra: str):  # type: ignore[no-untyped-def]
    """``photocap train`` on CPU with no decode workers, through the CLI."""
    args = ["train", "--data", str(data), "--out", str(out), "--workers", "0",
            "--device", "cpu", "--cache-dir", str(cache), *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_cli_train(small_data, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Without a terminal the status line is invisible: progress lines go to the log instead
    # (one a minute; every step here).
    monkeypatch.setattr("photocap.cli._LOG_EVERY_S", 0.0)
    out = tmp_path / "cli.safetensors"
    result = _cli_train(
        small_data.root, out, tmp_path / "cache",
        "--encoder", "tiny", "--epochs", "1", "--min-count", "1", "--batch-size", "20",
        "--hidden-dim", "16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "xe epoch 1/1" in result.stderr and "best model" in result.stderr
    assert re.search(r"xe epoch 1/1 step \d+/\d+ loss .* pairs/s", result.stderr)
    model = load_captioner(out, "cpu")
    assert model.config.hidden_dim == 16 and model.config.encoder.name == "tiny"
    # the ensemble recipe through the CLI: a second decoder for this encoder, then one file
    second = tmp_path / "second.safetensors"
    result = _cli_train(
        small_data.root, second, tmp_path / "cache",
        "--init", str(out), "--reset-decoder", "--seed", "3", "--epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "new decoder" in result.stderr
    # named after the encoder it has, not the --encoder default it was not given
    assert load_captioner(second, "cpu").metadata["name"] == "photocap-tiny-lstm"
    joined = tmp_path / "joined.safetensors"
    result = CliRunner().invoke(
        app, ["ensemble", str(out), str(second), "--out", str(joined), "--name", "tiny-x2"]
    )
    assert result.exit_code == 0, result.output
    ensemble = load_captioner(joined, "cpu")
    assert ensemble.config.decoders == 2 and ensemble.config.hidden_dim == 16
    pixels = load_pixels([small_data.path(small_data.dev[0])], ensemble.preset, 0)
    (caption,) = ensemble.caption_batch(pixels, beam_size=2)
    assert caption.text and caption.score <= 0
    # ... and the ensemble continued as one policy by self-critical training
    tuned = tmp_path / "tuned.safetensors"
    result = _cli_train(
        small_data.root, tuned, tmp_path / "cache", "--init", str(joined), "--epochs", "0",
        "--scst-epochs", "1", "--scst-batch", "4", "--scst-samples", "2",
        "--scst-encoder-blocks", "2", "--encoder-lr", "1e-3", "--bleu-weight", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "scst epoch 1/1" in result.stderr and "photos/s" in result.stderr
    last = load_captioner(tuned.with_name(tuned.name + ".last.safetensors"), "cpu")
    assert last.config.decoders == 2
    assert last.metadata["name"] == "tiny-x2"  # a continued model keeps its name
    assert (
        last.metadata["train_config"]["scst_batch"],
        last.metadata["train_config"]["scst_samples"],
    ) == (4, 2)
    assert last.metadata["train_config"]["scst_encoder_blocks"] == 2
    assert last.metadata["train_config"]["encoder_lr"] == pytest.approx(1e-3)
    assert last.metadata["train_config"]["bleu_weight"] == pytest.approx(0.5)
    assert not torch.equal(last.encoder._conv_head.weight, ensemble.encoder._conv_head.weight)
    # resumed for one more epoch (without --init), it is still the same model by name
    result = _cli_train(
        small_data.root, tuned, tmp_path / "cache", "--resume", "--epochs", "0",
        "--scst-epochs", "2", "--scst-batch", "4", "--scst-samples", "2",
        "--scst-encoder-blocks", "2", "--encoder-lr", "1e-3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "scst epoch 2/2" in result.stderr
    last = load_captioner(tuned.with_name(tuned.name + ".last.safetensors"), "cpu")
    assert last.metadata["name"] == "tiny-x2"
    # errors: one line on stderr, exit 2
    bad = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "x.safetensors"),
            "--encoder",
            "tiny",
        ],
    )
    assert bad.exit_code == 2
    assert bad.stderr.startswith("Error: data folder not found") and bad.stderr.count("\n") == 1
