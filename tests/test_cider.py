"""In-process CIDEr-D and BLEU-4 against pycocoevalcap's reference scorers (no Java needed)."""

from __future__ import annotations

import math

import pytest

from photocap.training.cider import CiderD, corpus_bleu4, corpus_cider, count_ngrams, sentence_bleu4

cider_ref = pytest.importorskip("pycocoevalcap.cider.cider")
bleu_ref = pytest.importorskip("pycocoevalcap.bleu.bleu")

# Hand-made, pre-tokenised candidates and references: exact matches, clipping (repeats),
# too short (brevity penalty), too long (Gaussian length penalty), unseen words.
CANDIDATES = [
    "a dog runs on the grass",
    "a dog a dog a dog runs",
    "a man",
    "a woman is sitting on the sand at the beach in the sun with a big red hat on",
    "the child plays in the park",
    "a brown dog is running through the green grass",
]
REFERENCES = [
    ["a dog runs on the grass", "a brown dog is running on grass", "the dog plays outside"],
    ["a dog is running", "two dogs run in a field", "a dog runs on the grass", "a dog"],
    ["a man is swimming in the water", "a man swims", "someone in blue water"],
    ["a woman sits on the beach", "a woman is sitting on the sand", "woman on a beach"],
    ["a child plays in a park", "the child is playing in the park", "kids in the park"],
    ["a dog runs through grass", "a brown dog running on the green grass", "dog on grass"],
]


def _coco(refs: list[list[str]], cands: list[str]) -> tuple[dict, dict]:
    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    return gts, res


def _tok(refs: list[list[str]], cands: list[str]) -> tuple[list, list]:
    return [c.split() for c in cands], [[r.split() for r in group] for group in refs]


def test_count_ngrams() -> None:
    counts = count_ngrams(["a", "dog", "a", "dog"])
    assert counts[("a",)] == 2
    assert counts[("a", "dog")] == 2
    assert counts[("dog", "a")] == 1
    assert counts[("a", "dog", "a", "dog")] == 1
    assert sum(counts.values()) == 4 + 3 + 2 + 1


def test_cider_d_matches_pycocoevalcap_per_caption_and_corpus() -> None:
    expected_mean, expected = cider_ref.Cider().compute_score(*_coco(REFERENCES, CANDIDATES))
    cands, refs = _tok(REFERENCES, CANDIDATES)
    ours = CiderD(refs).score(cands, refs)
    assert len(ours) == len(CANDIDATES)
    for got, want in zip(ours, expected, strict=True):
        assert got == pytest.approx(float(want), abs=1e-6)
    assert corpus_cider(cands, refs) == pytest.approx(float(expected_mean), abs=1e-6)
    # sanity: the scores actually differ between good and bad candidates
    assert max(ours) > 1.0 > min(ours)


def test_cider_d_matches_pycocoevalcap_on_a_subset() -> None:
    # document frequencies depend on the set: check a second, smaller set too
    sub_c, sub_r = CANDIDATES[2:5], REFERENCES[2:5]
    expected_mean, _ = cider_ref.Cider().compute_score(*_coco(sub_r, sub_c))
    assert corpus_cider(*_tok(sub_r, sub_c)) == pytest.approx(float(expected_mean), abs=1e-6)


def test_cider_scorer_reused_for_training_rewards_is_stable() -> None:
    cands, refs = _tok(REFERENCES, CANDIDATES)
    scorer = CiderD(refs)
    first = scorer.score(cands, refs)
    again = scorer.score(cands, refs)  # served from the reference cache
    assert first == again
    # a candidate identical to all of its references scores higher than a poor one
    assert scorer.score_one(["a", "dog"], refs[1]) < scorer.score_one(cands[0], refs[0])


def test_bleu4_matches_pycocoevalcap() -> None:
    expected, _ = bleu_ref.Bleu(4).compute_score(*_coco(REFERENCES, CANDIDATES), verbose=0)
    got = corpus_bleu4(*_tok(REFERENCES, CANDIDATES))
    assert got == pytest.approx(float(expected[3]), abs=1e-6)
    assert 0.0 < got < 1.0


def test_bleu4_matches_pycocoevalcap_with_brevity_penalty() -> None:
    cands = ["a dog runs on", "a man swims in the"]
    refs = [["a dog runs on the grass today"], ["a man swims in the blue water now"]]
    expected, _ = bleu_ref.Bleu(4).compute_score(*_coco(refs, cands), verbose=0)
    got = corpus_bleu4(*_tok(refs, cands))
    assert got == pytest.approx(float(expected[3]), abs=1e-6)
    # brevity penalty applied: below the (perfect) n-gram precision of 1
    assert got == pytest.approx(math.exp(1 - 15 / 9), abs=1e-6)


def test_bleu4_perfect_and_zero() -> None:
    refs = [[["a", "dog", "runs", "on", "the", "grass"]]]
    assert corpus_bleu4([refs[0][0]], refs) == pytest.approx(1.0)
    assert corpus_bleu4([["cat", "sleeps"]], refs) == 0.0


def test_sentence_bleu4_is_smoothed_and_ordered() -> None:
    refs = [["a", "dog", "runs", "on", "the", "grass"], ["a", "brown", "dog", "is", "running"]]
    assert sentence_bleu4(refs[0], refs) == pytest.approx(1.0)
    assert sentence_bleu4(["cat", "sleeps"], refs) == 0.0
    assert sentence_bleu4([], refs) == 0.0
    # No matching 3- or 4-gram: unsmoothed BLEU-4 would be 0; BLEU+1 keeps the shorter matches.
    # 6 words, closest reference 6 words (no brevity penalty); matches 1..4-grams: 4 (a dog is
    # on), 2 (a dog, dog is), 0, 0 of 6, 5, 4, 3.
    partial = ["a", "dog", "is", "on", "green", "lawn"]
    want = math.exp((math.log(4 / 6) + math.log(3 / 6) + math.log(1 / 5) + math.log(1 / 4)) / 4)
    assert sentence_bleu4(partial, refs) == pytest.approx(want)
    better = ["a", "dog", "runs", "on", "green", "lawn"]  # shares a 4-gram
    assert sentence_bleu4(partial, refs) < sentence_bleu4(better, refs) < 1.0
    # a short caption pays the brevity penalty against its closest reference (5 words)
    assert sentence_bleu4(["a", "dog"], refs) < sentence_bleu4(["a", "dog", "is", "running"], refs)


def test_sentence_bleu4_equals_corpus_bleu4_of_one_full_match() -> None:
    refs = [["a", "man", "rides", "a", "bike", "down", "the", "road"]]
    cand = ["a", "man", "rides", "a", "bike", "down", "a", "hill"]
    # all four precisions non-zero: unsmoothed corpus BLEU of one caption is close to BLEU+1
    assert corpus_bleu4([cand], [refs]) > 0
    assert sentence_bleu4(cand, refs) == pytest.approx(corpus_bleu4([cand], [refs]), rel=0.15)
