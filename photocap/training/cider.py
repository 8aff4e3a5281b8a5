"""CIDEr-D and BLEU-4, computed in-process: the reward of self-critical training and the score
that picks the best epoch.

This follows the reference implementation (pycocoevalcap ``cider_scorer.py``, which is CIDEr-D:
n = 1..4, tf-idf weighted n-gram vectors, candidate counts clipped by the reference's, a Gaussian
length penalty with sigma 6, times 10). It needs no Java and is fast enough to score tens of
thousands of captions per second-ish, which training needs; ``photocap evaluate`` reports the
official numbers from pycocoevalcap itself. BLEU-4 is here too, for the training logs (corpus
BLEU-4, as coco-eval) and for a reward that mixes it in (one caption's smoothed BLEU-4).

Inputs are token lists (see :func:`photocap.vocab.tokenize`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

NGRAMS = 4


SIGMA = 6.0


Ngrams = Counter[tuple[str, ...]]


def count_ngrams(words: Sequence[str], n: int = NGRAMS) -> Ngrams:
    counts: Ngrams = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D with document frequencies taken from a fixed set of reference groups.

    ``CiderD(refs)`` with ``refs[i]`` = the tokenised references of photo i. Evaluation as in
    pycocoevalcap uses the evaluated set's own references; training uses the train set's.
    """

    def __init__(self, refs: Sequence[Sequence[Sequence[str]]]) -> None:
        df: Counter[tuple[str, ...]] = Counter()
        for group in refs:
            df.update({g for ref in group for g in count_ngrams(ref)})
        self.df = df
        self.log_n = math.log(float(max(len(refs), 1)))
        self._ref_cache: dict[
            tuple[tuple[str, ...], ...], list[tuple[list[dict], list[float], int]]
        ] = {}

    def _vector(self, counts: Ngrams) -> tuple[list[dict[tuple[str, ...], float]], list[float]]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(NGRAMS)]
        norms = [0.0] * NGRAMS
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = tf * (self.log_n - math.log(max(1.0, float(self.df.get(gram, 0.0)))))
            vec[n][gram] = weight
            norms[n] += weight * weight
        return vec, [math.sqrt(x) for x in norms]

    def _refs(self, group: Sequence[Sequence[str]]) -> list[tuple[list[dict], list[float], int]]:
        key = tuple(tuple(r) for r in group)
        cached = self._ref_cache.get(key)
        if cached is None:
            cached = [(*self._vector(count_ngrams(r)), len(r)) for r in group]
            self._ref_cache[key] = cached
        return cached

    def score_one(self, candidate: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
        vec, norms = self._vector(count_ngrams(candidate))
        total = 0.0
        ref_vectors = self._refs(refs)
        for ref_vec, ref_norms, ref_len in ref_vectors:
            delta = len(candidate) - ref_len
            penalty = math.exp(-(delta * delta) / (2 * SIGMA * SIGMA))
            for n in range(NGRAMS):
                if norms[n] == 0 or ref_norms[n] == 0:
                    continue
                ref_n = ref_vec[n]
                dot = sum(min(w, ref_n[g]) * ref_n[g] for g, w in vec[n].items() if g in ref_n)
                total += penalty * dot / (norms[n] * ref_norms[n])
        return total / NGRAMS / max(len(ref_vectors), 1) * 10.0

    def score(
        self, candidates: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]
    ) -> list[float]:
        """CIDEr-D of each candidate against its reference group."""
        return [self.score_one(c, r) for c, r in zip(candidates, refs, strict=True)]


def corpus_cider(
    candidates: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]
) -> float:
    """Mean CIDEr-D over a set, document frequencies from that set's references (as coco-eval)."""
    scorer = CiderD(refs)
    scores = scorer.score(candidates, refs)
    return sum(scores) / max(len(scores), 1)


def _bleu_stats(
    candidate: Sequence[str], refs: Sequence[Sequence[str]]
) -> tuple[list[int], list[int], int]:
    """Clipped n-gram matches and candidate n-gram counts (n = 1..4) of one candidate, and the
    length of its closest reference (ties: the shorter, as coco-eval)."""
    ref_len = min((abs(len(r) - len(candidate)), len(r)) for r in refs)[1]
    max_ref: Ngrams = Counter()
    for r in refs:
        for g, c in count_ngrams(r).items():
            max_ref[g] = max(max_ref[g], c)
    matches = [0] * NGRAMS
    for g, c in count_ngrams(candidate).items():
        matches[len(g) - 1] += min(c, max_ref.get(g, 0))
    totals = [max(len(candidate) - k, 0) for k in range(NGRAMS)]
    return matches, totals, ref_len


def corpus_bleu4(
    candidates: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]
) -> float:
    """Corpus BLEU-4, closest-reference brevity penalty (as coco-eval); for training logs."""
    matches = [0] * NGRAMS
    totals = [0] * NGRAMS
    cand_len = ref_len = 0
    for cand, group in zip(candidates, refs, strict=True):
        m, t, r = _bleu_stats(cand, group)
        matches = [a + b for a, b in zip(matches, m, strict=True)]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        cand_len += len(cand)
        ref_len += r
    if min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / NGRAMS
    brevity = min(0.0, 1 - ref_len / max(cand_len, 1))
    return math.exp(log_p + brevity)


def sentence_bleu4(candidate: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """BLEU-4 of one caption, with add-one smoothing of the 2..4-gram precisions (BLEU+1, Lin
    and Och 2004) so that a caption without a matching 4-gram still scores by its shorter
    matches; unsmoothed, most single captions would score 0 and give a reward no gradient."""
    matches, totals, ref_len = _bleu_stats(candidate, refs)
    if matches[0] == 0:
        return 0.0
    log_p = math.log(matches[0] / totals[0])
    log_p += sum(math.log((m + 1) / (t + 1)) for m, t in zip(matches[1:], totals[1:], strict=True))
    brevity = min(0.0, 1 - ref_len / len(candidate))
    return math.exp(log_p / NGRAMS + brevity)
