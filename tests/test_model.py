"""The captioner: teacher forcing, beam search, greedy decoding, sampling, the word bans."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from flickr_fixtures import one_torch_thread  # noqa: F401

from photocap.checkpoint import build_random_captioner
from photocap.decoding import (
    DANGLING_WORDS,
    FUNCTION_WORDS,
    RARELY_FINAL_WORDS,
    beam_search,
    greedy,
    sample,
)
from photocap.model import Captioner, ModelConfig
from photocap.vocab import SPECIALS, Vocab, to_sentence, tokenize

L, D = 4, 32  # tiny captioner: 64 px -> 2x2 grid, 32 feature channels


@pytest.fixture(scope="module")
def cap() -> Captioner:
    return build_random_captioner(device="cpu", seed=0)


@pytest.fixture(scope="module")
def peaky() -> Captioner:
    """A random captioner with a sharper output layer: <end> and repeats actually compete."""
    c = build_random_captioner(device="cpu", seed=3)
    with torch.no_grad():
        c.decoder.out.weight.mul_(6.0)
        c.decoder.out.bias.mul_(3.0)
    return c


def _features(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, L, D, generator=g) * 3.0  # (n, L, D), ReLU6-like range


def _has_repeat(ids: list[int]) -> bool:
    return any(a == b for a, b in itertools.pairwise(ids))


def _has_repeated_trigram(ids: list[int]) -> bool:
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    return len(grams) != len(set(grams))


def _teacher_forced_mean_logp(c: Captioner, feats: torch.Tensor, ids: list[int]) -> float:
    """Mean log p (full-vocabulary softmax) of ``ids`` + <end> given one photo's features."""
    v = c.vocab
    tokens = torch.tensor([[v.start_id, *ids, v.end_id]])
    with torch.no_grad():
        logits, _ = c.decoder(feats[None], tokens)  # (1, T-1, V)
    logp = logits.log_softmax(-1)[0].gather(1, tokens[0, 1:, None]).squeeze(1)
    return float(logp.mean())


def test_teacher_forcing_shapes(cap: Captioner) -> None:
    feats = _features(3)
    tokens = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0], [1, 8, 9, 10, 11, 2]])
    logits, alphas = cap.decoder(feats, tokens)
    assert logits.shape == (3, 5, len(cap.vocab))
    assert alphas.shape == (3, 5, L)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(3, 5))
    assert (alphas >= 0).all()


def test_encode_pixels_to_features(cap: Captioner) -> None:
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    feats = cap.encode(pixels)
    assert feats.shape == (2, L, D) and feats.dtype == torch.float32


def test_caption_batch_of_empty_batch(cap: Captioner) -> None:
    assert cap.caption_batch(torch.zeros(0, 3, 64, 64, dtype=torch.uint8)) == []
    assert cap.caption_features(torch.zeros(0, L, D), beam_size=1) == []


@pytest.mark.parametrize("beam", [1, 2, 3, 5])
def test_caption_batch_sentences_are_well_formed(
    cap: Captioner, peaky: Captioner, beam: int
) -> None:
    pixels = torch.randint(
        0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(beam)
    )
    for model in (cap, peaky):
        caps = model.caption_batch(pixels, beam_size=beam)
        assert len(caps) == 5
        for c in caps:
            for text in (c.text, *c.alternatives):
                assert text and text[0].isupper() and text.endswith(".")
                assert "<" not in text and ">" not in text  # no <unk>, <end>, <pad>, <start>
                words = tokenize(text)
                assert 1 <= len(words) <= model.config.max_words
                assert all(w in model.vocab.words[len(SPECIALS) :] for w in words)
            assert len(c.alternatives) <= beam - 1
            assert c.text not in c.alternatives
            assert math.isfinite(c.score) and c.score <= 0.0


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_beam_search_hypotheses_sorted_and_scored_right(peaky: Captioner, k: int) -> None:
    feats = _features(6, seed=k)
    alpha = peaky.config.length_penalty
    with torch.no_grad():
        results = beam_search(peaky.decoder, peaky.rules, feats, k)
    assert len(results) == 6
    for b, hyps in enumerate(results):
        assert 1 <= len(hyps) <= k
        normalised = []
        for ids, mean in hyps:
            assert ids and peaky.vocab.end_id not in ids
            assert not set(ids) & {peaky.vocab.pad_id, peaky.vocab.start_id, peaky.vocab.unk_id}
            assert len(ids) <= peaky.config.max_words
            assert not _has_repeat(ids) and not _has_repeated_trigram(ids)
            # the reported mean log p is the decoder's own, recomputed by teacher forcing:
            # this fails if beams' LSTM states were shuffled to the wrong hypotheses
            assert mean == pytest.approx(_teacher_forced_mean_logp(peaky, feats[b], ids), abs=1e-4)
            total = mean * (len(ids) + 1)
            normalised.append(total / len(ids) ** alpha)
        assert normalised == sorted(normalised, reverse=True)
        assert len({tuple(ids) for ids, _ in hyps}) == len(hyps)  # no duplicate hypotheses


def test_beam_one_equals_greedy(cap: Captioner, peaky: Captioner) -> None:
    for model in (cap, peaky):
        feats = _features(7, seed=11)
        with torch.no_grad():
            tokens, means = greedy(model.decoder, model.rules, feats)
            beams = beam_search(model.decoder, model.rules, feats, 1)
        for row, mean, hyps in zip(tokens, means, beams, strict=True):
            assert len(hyps) == 1
            ids, beam_mean = hyps[0]
            assert model.vocab.decode(row) == model.vocab.decode(ids)
            assert beam_mean == pytest.approx(mean, abs=1e-5)
        # and caption_features with beam 1 takes the greedy path with the same sentences
        texts = [c.text for c in model.caption_features(feats, beam_size=1)]
        assert texts == [to_sentence(model.vocab.decode(row)) for row in tokens]


def test_greedy_matches_teacher_forcing(peaky: Captioner) -> None:
    feats = _features(4, seed=5)
    with torch.no_grad():
        tokens, means = greedy(peaky.decoder, peaky.rules, feats)
    for b, (row, mean) in enumerate(zip(tokens, means, strict=True)):
        ids = []
        for i in row:
            if i == peaky.vocab.end_id:
                break
            ids.append(i)
        assert not _has_repeat(ids) and not _has_repeated_trigram(ids)
        assert mean == pytest.approx(_teacher_forced_mean_logp(peaky, feats[b], ids), abs=1e-4)


@pytest.mark.parametrize("beam", [1, 3, 5])
def test_batched_decoding_is_batch_independent(peaky: Captioner, cap: Captioner, beam: int) -> None:
    for model in (cap, peaky):
        feats = _features(6, seed=20 + beam)
        together = model.caption_features(feats, beam_size=beam)
        alone = [model.caption_features(feats[i : i + 1], beam_size=beam)[0] for i in range(6)]
        assert [c.text for c in together] == [c.text for c in alone]
        assert [c.alternatives for c in together] == [c.alternatives for c in alone]
        for a, b in zip(together, alone, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)
        # a reordered batch gives each photo the same caption
        rev = model.caption_features(feats.flip(0), beam_size=beam)
        assert [c.text for c in rev][::-1] == [c.text for c in together]


def test_beam_search_drops_finished_photos_from_the_batch(peaky: Captioner) -> None:
    """Photos that have their K hypotheses stop costing decoder steps; captions unchanged."""
    feats = _features(8, seed=31)
    sizes: list[int] = []
    real_step = peaky.decoder.step

    def counting_step(words, state, features, att):  # type: ignore[no-untyped-def]
        sizes.append(words.shape[0])
        return real_step(words, state, features, att)

    peaky.decoder.step = counting_step  # type: ignore[method-assign]
    try:
        with_counting = peaky.caption_features(feats, beam_size=3)
    finally:
        del peaky.decoder.step
    assert sizes[0] == 8 * 3
    assert sizes == sorted(sizes, reverse=True)  # never grows back
    assert sizes[-1] < sizes[0]  # these photos finish at different steps: the batch shrank
    assert [c.text for c in with_counting] == [
        c.text for c in peaky.caption_features(feats, beam_size=3)
    ]
    assert all(c.text for c in with_counting)


def test_decoding_respects_max_words() -> None:
    c = build_random_captioner(device="cpu", seed=1)
    short = Captioner(
        ModelConfig(**{**c.config.to_dict(), "encoder": c.config.encoder, "max_words": 2}),
        c.vocab,
        c.preset,
    )
    short.load_state_dict(c.state_dict())
    short.eval()
    feats = _features(5, seed=2)
    for beam in (1, 3):
        for caption in short.caption_features(feats, beam_size=beam):
            assert 1 <= len(tokenize(caption.text)) <= 2


def _with_config(c: Captioner, **changes: object) -> Captioner:
    config = ModelConfig(**{**c.config.to_dict(), "encoder": c.config.encoder, **changes})
    other = Captioner(config, c.vocab, c.preset)
    other.load_state_dict(c.state_dict())
    return other.eval()


def test_banned_words_masks() -> None:
    c = _with_config(build_random_captioner(device="cpu", seed=0), no_repeat_words=False)
    v = c.vocab
    a, dog, runs = v.id("a"), v.id("dog"), v.id("runs")
    V = len(v)
    # t = 0: never pad/start/unk, and no <end> before the first word
    out = c.rules.ban(torch.zeros(2, V), torch.zeros(2, 0, dtype=torch.long), 0)
    assert set(torch.nonzero(out[0] == -math.inf).flatten().tolist()) == {0, 1, 2, 3}
    # "a dog runs a dog": next may not be "dog" (repeat) nor "runs" (trigram a dog runs again)
    history = torch.tensor([[a, dog, runs, a, dog], [dog, a, runs, dog, runs]])
    out = c.rules.ban(torch.zeros(2, V), history, 5)
    banned0 = set(torch.nonzero(out[0] == -math.inf).flatten().tolist())
    banned1 = set(torch.nonzero(out[1] == -math.inf).flatten().tolist())
    assert banned0 == {v.pad_id, v.start_id, v.unk_id, dog, runs}
    assert v.end_id not in banned0  # <end> allowed after the first word
    # row 1 "dog a runs dog runs": bigram "dog runs" seen before only at the end -> no trigram ban
    assert banned1 == {v.pad_id, v.start_id, v.unk_id, runs}
    # t = 1: the immediate repeat, and no <end> right after "a" (a dangling word)
    out = c.rules.ban(torch.zeros(1, V), torch.tensor([[a]]), 1)
    assert set(torch.nonzero(out[0] == -math.inf).flatten().tolist()) == {0, 1, 2, 3, a}
    out = c.rules.ban(torch.zeros(1, V), torch.tensor([[dog]]), 1)
    assert v.end_id not in set(torch.nonzero(out[0] == -math.inf).flatten().tolist())


def test_content_words_are_not_repeated_and_captions_never_end_dangling() -> None:
    c = build_random_captioner(device="cpu", seed=0)
    v = c.vocab
    a, dog, runs, on, the = (v.id(w) for w in ("a", "dog", "runs", "on", "the"))
    history = torch.tensor([[a, dog, runs, on, the]])
    banned = set(
        torch.nonzero(c.rules.ban(torch.zeros(1, len(v)), history, 5)[0] == -math.inf)
        .flatten()
        .tolist()
    )
    assert {dog, runs} <= banned  # content words at most once
    assert a not in banned and on not in banned  # function words may come back
    assert v.end_id in banned  # "... on the." is not a sentence
    # At the last step <end> must stay possible, dangling or not.
    last = c.config.max_words  # 8 for the tiny model; history length must equal t
    grass, in_ = v.id("grass"), v.id("in")
    full = torch.tensor([[a, dog, runs, on, the, grass, in_, the]])[:, :last]
    out = c.rules.ban(torch.zeros(1, len(v)), full, last)
    assert out[0, v.end_id] == 0
    feats = _features(6, seed=3)
    for beam in (1, 3):
        for caption in c.caption_features(feats, beam_size=beam):
            words = tokenize(caption.text)
            content = [w for w in words if w not in FUNCTION_WORDS]
            assert len(content) == len(set(content)), caption.text
            if len(words) < c.config.max_words:
                assert words[-1] not in DANGLING_WORDS, caption.text


def test_no_end_after_a_word_that_waits_for_its_noun() -> None:
    # "A boy is sitting on a wooden." - an adjective that almost never ends a person's caption.
    c = build_random_captioner(device="cpu", seed=0)
    words = list(c.vocab.words)
    words[words.index("red")] = "wooden"  # same size: the tiny model's weights still fit
    c.vocab = Vocab(tuple(words))
    v = c.vocab
    assert "wooden" in RARELY_FINAL_WORDS and "grass" not in RARELY_FINAL_WORDS
    for last, ends in (("wooden", False), ("grass", True)):
        history = torch.tensor([[v.id("a"), v.id("dog"), v.id("on"), v.id("a"), v.id(last)]])
        out = c.rules.ban(torch.zeros(1, len(v)), history, 5)
        assert (out[0, v.end_id] == 0) == ends, last


def test_sample_shapes_masks_and_gradients() -> None:
    c = build_random_captioner(device="cpu", seed=2)
    c.train()
    torch.manual_seed(0)
    feats = _features(3, seed=9)
    n = 4
    tokens, logp, mask = sample(c.decoder, c.rules, feats, n)
    v = c.vocab
    assert tokens.shape == logp.shape == mask.shape
    assert tokens.shape[0] == 3 * n and 1 <= tokens.shape[1] <= c.config.max_words + 1
    for row, m, lp in zip(tokens.tolist(), mask.tolist(), logp.detach(), strict=True):
        # mask is 1 up to and including <end>, then 0, and <pad> after <end>
        if v.end_id in row:
            end = row.index(v.end_id)
            assert m == [1.0] * (end + 1) + [0.0] * (len(row) - end - 1)
            assert all(x == v.pad_id for x in row[end + 1 :])
            ids = row[:end]
        else:
            assert m == [1.0] * len(row)
            ids = row
        assert ids and not set(ids) & {v.pad_id, v.start_id, v.unk_id}
        assert not _has_repeat(ids) and not _has_repeated_trigram(ids)
        assert torch.isfinite(lp[torch.tensor(m) > 0]).all() and (lp <= 0).all()
    # every sample of a finished batch ends with <end> (max_words leaves no other choice)
    assert all(v.end_id in row for row in tokens.tolist())
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    grads = [p.grad for p in c.decoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    c.zero_grad(set_to_none=True)
    c.eval()


def test_sample_log_probs_are_the_masked_policy() -> None:
    """Re-score the samples by teacher forcing with the same bans: identical log p."""
    c = build_random_captioner(device="cpu", seed=4)
    c.eval()  # no dropout, so the re-scoring is deterministic
    torch.manual_seed(1)
    feats = _features(2, seed=3)
    with torch.no_grad():
        tokens, logp, mask = sample(c.decoder, c.rules, feats, 3)
        v = c.vocab
        for r in range(tokens.shape[0]):
            row = tokens[r]
            f = feats[r // 3 : r // 3 + 1]
            state = c.decoder.init_state(f)
            att = c.decoder.attend_features(f)
            word = torch.tensor([v.start_id])
            for t in range(int(mask[r].sum())):
                logits, state, _ = c.decoder.step(word, state, f, att)
                allowed = c.rules.ban(torch.zeros_like(logits), row[None, :t], t)
                if t == c.config.max_words:
                    keep = allowed[:, v.end_id].clone()
                    allowed.fill_(-math.inf)
                    allowed[:, v.end_id] = keep
                want = (logits + allowed).log_softmax(-1)[0, row[t]]
                assert float(logp[r, t]) == pytest.approx(float(want), abs=1e-5)
                word = row[t : t + 1]
