"""Decoding: from a decoder's next-word scores to sentences.

Read top to bottom:

1. The word lists   - words a caption never ends on, words it may repeat.
2. :class:`DecodingRules` - the vocabulary and the rules every search follows (no <end> after a
                      dangling word, no stutter, no repeated content word or trigram), as one
                      mask over the next word's scores.
3. :func:`greedy`, :func:`beam_search` (what ``photocap caption`` runs), :func:`sample` (the
   policy of self-critical training, with gradients).
4. :func:`to_caption` - token hypotheses -> a :class:`Caption` with its alternatives.

A decoder is anything with the step interface of :class:`photocap.model.Decoder`
(``init_state``, ``attend_features``, ``step``): one decoder or an ensemble of them. This module
knows no network; :mod:`photocap.model` uses it, never the reverse.

Shapes: B photos, K beams, L = grid locations, D = feature channels, A = attention size,
H = LSTM hidden (M*H for an ensemble), V = vocabulary, T = caption tokens.

torch is imported inside the functions: the CLI reads :data:`DEFAULT_BEAM_SIZE` for its
``--help`` without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from photocap.vocab import Vocab, to_sentence

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_BEAM_SIZE = 3  # chosen on Flickr8k dev for the shipped model (models/README.md)

# Words an English caption does not end on: decoding never puts <end> right after them.
# fmt: off
DANGLING_WORDS: tuple[str, ...] = (
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "with", "for", "from", "by",
    "into", "onto", "over", "under", "near", "behind", "through", "while", "as", "his", "her",
    "their", "its", "is", "are", "some", "another", "other", "two", "three", "several",
)
# ... nor on a word that (almost) never ends a caption a person wrote: adjectives, verbs and
# pronouns that wait for their noun ("A boy is sitting on a wooden."; ~1 % of dev captions
# before this rule). Derived from the data, not chosen by hand: the vocabulary words that
# occur 30+ times in the train split's captions and end fewer than 0.5 % of them
# (`python benchmarks/final_words.py --data ../shared/flickr8k` prints the list again).
RARELY_FINAL_WORDS: tuple[str, ...] = (
    "about", "across", "african", "against", "all", "american", "among", "asian", "attempting",
    "attempts", "bald", "bathing", "be", "bearded", "beautiful", "beige", "being", "beside",
    "between", "big", "biker", "biting", "blond", "blonde", "both", "brick", "bright",
    "brightly", "brown", "bunch", "carries", "carrying", "catches", "catching", "chases",
    "chasing", "chewing", "clear", "closeup", "colorful", "couple", "cowboy", "crowded",
    "curly", "digging", "do", "does", "doing", "dressed", "drives", "driving", "during", "each",
    "elderly", "empty", "facing", "fenced", "few", "flies", "four", "full", "furry", "german",
    "get", "gets", "getting", "go", "goes", "going", "gold", "golden", "grassy", "gray",
    "green", "grey", "greyhounds", "grinding", "group", "haired", "hangs", "has", "have",
    "having", "he", "hiker", "hikers", "hind", "hits", "hold", "holds", "huge", "hula", "just",
    "kicking", "kicks", "kid", "large", "laying", "lays", "leaning", "leans", "leather", "life",
    "like", "lined", "lit", "little", "lone", "long", "looking", "looks", "low", "lying",
    "make", "makes", "making", "many", "matching", "metal", "motocross", "motorcyclist",
    "muddy", "next", "no", "number", "old", "older", "opposing", "outdoor", "overlooking",
    "parking", "paved", "pink", "plaid", "plays", "police", "prepares", "pulling", "pushes",
    "pushing", "ready", "resting", "rocky", "rolling", "rough", "rural", "sandy", "seated",
    "shaking", "shallow", "she", "shooting", "silver", "sit", "skateboarder", "sliding",
    "small", "smaller", "snowy", "standing", "staring", "steep", "sticking", "striped",
    "stuffed", "sunny", "surrounded", "t", "take", "takes", "talks", "tall", "tan", "teams",
    "teenage", "that", "they", "third", "this", "throwing", "throws", "toward", "towards",
    "tries", "trying", "tug", "upside", "urban", "using", "very", "wading", "wearing", "wears",
    "wetsuit", "where", "which", "whilst", "who", "wooded", "wooden", "young", "younger",
)
# Words a caption may use more than once ("a man in a red shirt on a bench"). Any other word
# (nouns, verbs, colours) is used at most once when ModelConfig.no_repeat_words is on, which
# stops the "playing in a water in the water" loops that CIDEr-optimised models fall into.
FUNCTION_WORDS = frozenset(DANGLING_WORDS) | {
    "up", "down", "out", "off", "around", "front", "each", "one", "it", "they", "he", "she",
    "there", "who", "that", "be", "being", "has", "have", "very", "next", "top", "side",
}
# fmt: on


@dataclass(frozen=True)
class Caption:
    """One photo's caption: the sentence, its score and the runner-up sentences."""

    text: str  # "A dog runs through the grass."
    score: float  # mean log-probability per token (<end> included); closer to 0 = surer
    alternatives: tuple[str, ...] = ()  # other beam hypotheses, best first
    # The photo's vector in the text-image embedding (photocap.embedding.vector_bytes), when
    # the model has one: what search by meaning compares queries with.
    vector: bytes | None = None


class StepDecoder(Protocol):
    """What decoding needs of a network (:class:`photocap.model.Decoder` or ``Ensemble``)."""

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attend_features(self, features: torch.Tensor) -> torch.Tensor: ...

    def step(
        self,
        words: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        features: torch.Tensor,
        att_features: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]: ...


@dataclass
class DecodingRules:
    """The vocabulary and the rules a caption follows, whatever the search.

    Built from a model's config (``Captioner.rules``); the word masks are made once per device.
    """

    vocab: Vocab
    max_words: int = 20  # longest caption generated
    length_penalty: float = 0.7  # beam ranking: sum log p / words ** length_penalty
    no_repeat_words: bool = True  # content words at most once per caption (FUNCTION_WORDS)
    _masks: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def clear_cache(self) -> None:
        """Forget the word masks (made again from the word lists when next needed)."""
        self._masks.clear()

    def _word_masks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids a caption may not end on, (V,) True for words used at most once) on ``device``."""
        import torch

        masks = self._masks.get(device)
        if masks is None:
            v = self.vocab
            ids = [v.id(w) for w in DANGLING_WORDS + RARELY_FINAL_WORDS]
            dangling = torch.tensor(
                [i for i in ids if i != v.unk_id] or [v.pad_id], dtype=torch.long, device=device
            )
            content = torch.tensor(
                [i >= 4 and w not in FUNCTION_WORDS for i, w in enumerate(v.words)], device=device
            )
            masks = self._masks[device] = (dangling, content)
        return masks

    def ban(self, logp: torch.Tensor, history: torch.Tensor, t: int) -> torch.Tensor:
        """Mask words a caption must not take next. logp (N, V), history (N, t) -> (N, V).

        Never <pad>/<start>/<unk>; no <end> before the first word, nor right after a word
        that cannot end an English sentence ("... catch a ball in the.") or almost never ends
        a person's caption ("... sitting on a wooden."); never the previous
        word again ("a a"); no trigram that already occurred in this caption.
        """
        import torch

        v = self.vocab
        logp[:, [v.pad_id, v.start_id, v.unk_id]] = -math.inf
        if t == 0:
            logp[:, v.end_id] = -math.inf
            return logp
        dangling_ids, content = self._word_masks(logp.device)
        logp.scatter_(1, history[:, -1:], -math.inf)  # no immediate repeat
        if self.no_repeat_words:
            used = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, history, True)  # (N, V)
            logp.masked_fill_(used & content, -math.inf)
        if t < self.max_words:  # at the last step <end> must stay possible
            dangling = torch.isin(history[:, -1], dangling_ids)  # (N,)
            logp[:, v.end_id] = logp[:, v.end_id].masked_fill(dangling, -math.inf)
        if t >= 3:
            last2 = history[:, t - 2 :]  # (N, 2) the bigram just generated
            seen = (history[:, : t - 2] == last2[:, :1]) & (history[:, 1 : t - 1] == last2[:, 1:])
            follow = history[:, 2:t]  # (N, t-2): the word that followed bigram i
            banned = torch.where(seen, follow, torch.full_like(follow, v.pad_id))  # (N, t-2)
            logp.scatter_(1, banned, -math.inf)
        return logp


def _autocast(features: torch.Tensor) -> Any:
    import torch

    # bf16 on the GPU: the decoder's matrix products are happy in bf16; the CPU stays fp32.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=features.device.type == "cuda")


def greedy(
    decoder: StepDecoder, rules: DecodingRules, features: torch.Tensor
) -> tuple[list[list[int]], list[float]]:
    """Most likely word at each step. features (B, L, D) -> token lists and mean log p."""
    import torch

    B = features.shape[0]
    dec, v = decoder, rules.vocab
    with _autocast(features):
        state = dec.init_state(features)  # (B, H) x2
        att = dec.attend_features(features)  # (B, L, A)
    words = torch.full((B,), v.start_id, dtype=torch.long, device=features.device)  # (B,)
    history = torch.zeros((B, 0), dtype=torch.long, device=features.device)  # (B, t)
    total = torch.zeros(B, device=features.device)  # (B,)
    length = torch.zeros(B, device=features.device)  # (B,)
    done = torch.zeros(B, dtype=torch.bool, device=features.device)  # (B,)
    for t in range(rules.max_words + 1):
        with _autocast(features):
            logits, state, _ = dec.step(words, state, features, att)  # (B, V)
        logp = rules.ban(logits.float().log_softmax(-1), history, t)  # (B, V)
        if t == rules.max_words:  # out of room: only <end> may follow
            keep_end = logp[:, v.end_id].clone()
            logp.fill_(-math.inf)
            logp[:, v.end_id] = keep_end
        best, words = logp.max(dim=-1)  # (B,), (B,)
        total += torch.where(done, 0.0, best)
        length += (~done).float()
        words = torch.where(done, v.pad_id, words)  # (B,)
        history = torch.cat([history, words[:, None]], dim=1)  # (B, t+1)
        done |= words == v.end_id
        if bool(done.all()):
            break
    means = (total / length.clamp(min=1)).tolist()
    return history.tolist(), means


def beam_search(
    decoder: StepDecoder, rules: DecodingRules, features: torch.Tensor, beam_size: int
) -> list[list[tuple[list[int], float]]]:
    """Batched beam search over B photos at once.

    Returns, per photo, up to ``beam_size`` hypotheses ``(token ids, mean log p)`` ranked by
    ``sum log p / words ** length_penalty``. All B*K beams advance together on the device;
    only finished hypotheses (a handful per step) go through Python.
    """
    import torch

    B, L, D = features.shape
    K = beam_size
    dec, v = decoder, rules.vocab
    dev = features.device
    with _autocast(features):
        att = dec.attend_features(features)  # (B, L, A), once per photo
        state = dec.init_state(features)  # (B, H) x2
    # Every beam of a photo shares its features: expand views, no copies until indexed.
    feats_k = features[:, None].expand(B, K, L, D).reshape(B * K, L, D)  # (BK, L, D)
    att_k = att[:, None].expand(B, K, L, att.shape[-1]).reshape(B * K, L, -1)  # (BK, L, A)
    h0, c0 = (s[:, None].expand(B, K, -1).reshape(B * K, -1) for s in state)  # (BK, H)
    state = (h0, c0)
    words = torch.full((B * K,), v.start_id, dtype=torch.long, device=dev)  # (BK,)
    history = torch.zeros((B * K, 0), dtype=torch.long, device=dev)  # (BK, t)
    scores = torch.full((B, K), -math.inf, device=dev)  # (B, K) summed log p
    scores[:, 0] = 0.0  # at t=0 all beams are the same: keep one
    finished: list[list[tuple[float, list[int], float]]] = [[] for _ in range(B)]
    # Photos still being decoded: row b of the tensors above is photo photo_of[b]. A photo
    # with K finished hypotheses is done (later ones are never accepted), so its rows are
    # dropped from the batch instead of being carried to the longest photo's last word.
    photo_of = list(range(B))
    alpha = rules.length_penalty
    for t in range(rules.max_words + 1):
        n = len(photo_of)  # photos left (n <= B)
        with _autocast(features):
            logits, state, _ = dec.step(words, state, feats_k, att_k)  # (nK, V)
        logp = rules.ban(logits.float().log_softmax(-1), history, t)  # (nK, V)
        V = logp.shape[1]
        if t == rules.max_words:  # out of room: only <end> may follow
            keep_end = logp[:, v.end_id].clone()
            logp.fill_(-math.inf)
            logp[:, v.end_id] = keep_end
        cand = (scores[:, :, None] + logp.view(n, K, V)).view(n, K * V)  # (n, K*V)
        top_scores, top_idx = cand.detach().topk(2 * K, dim=1)  # (n, 2K)
        top_beam, top_word = top_idx // V, top_idx % V  # (n, 2K) each
        is_end = top_word == v.end_id  # (n, 2K)
        # Finished hypotheses: an <end> among the best K candidates (as fairseq does).
        accept = is_end & (torch.arange(2 * K, device=dev) < K) & top_scores.isfinite()
        if bool(accept.any()):
            for b, j in accept.nonzero().tolist():
                done_b = finished[photo_of[b]]
                if len(done_b) >= K:
                    continue
                beam = int(top_beam[b, j]) + b * K
                ids = history[beam].tolist()
                total = float(top_scores[b, j].detach())
                n_words = len(ids)
                done_b.append((total / max(n_words, 1) ** alpha, ids, total / (n_words + 1)))
        # Next beams: the best K candidates that did not end.
        alive = top_scores.masked_fill(is_end, -math.inf)  # (n, 2K)
        scores, pick = alive.topk(K, dim=1)  # (n, K), (n, K)
        offsets = (torch.arange(n, device=dev) * K)[:, None]  # (n, 1)
        beam_idx = (top_beam.gather(1, pick) + offsets).view(-1)  # (nK,) flat source beams
        words = top_word.gather(1, pick).view(-1)  # (nK,)
        history = torch.cat([history[beam_idx], words[:, None]], dim=1)  # (nK, t+1)
        rows = beam_idx  # (nK,) rows of the state and features each new beam continues
        left = [b for b in range(n) if len(finished[photo_of[b]]) < K]
        if not left:
            break
        if len(left) < n:  # drop the photos that are done
            keep = torch.tensor(left, device=dev)  # (n',)
            keep_rows = (keep[:, None] * K + torch.arange(K, device=dev)).view(-1)  # (n'K,)
            rows = rows[keep_rows]
            words, history = words[keep_rows], history[keep_rows]
            scores = scores[keep]  # (n', K)
            feats_k, att_k = feats_k[keep_rows], att_k[keep_rows]  # (n'K, L, D), (n'K, L, A)
            photo_of = [photo_of[b] for b in left]
        state = (state[0][rows], state[1][rows])  # (n'K, H) x2
    results = []
    for b in range(B):
        hyps = sorted(finished[b], key=lambda h: h[0], reverse=True)[:K]
        if not hyps:  # cannot happen: the last step allows only <end>, which is accepted
            hyps = [(0.0, [], 0.0)]
        results.append([(ids, mean) for _, ids, mean in hyps])
    return results


def sample(
    decoder: StepDecoder,
    rules: DecodingRules,
    features: torch.Tensor,
    n: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``n`` captions per photo with gradients, for self-critical training.

    features (B, L, D) -> tokens (B*n, T), log p of each sampled token (B*n, T), and a mask
    (B*n, T) that is 1 up to and including <end>.
    """
    import torch

    B = features.shape[0]
    dec, v = decoder, rules.vocab
    feats = features.repeat_interleave(n, dim=0)  # (Bn, L, D)
    with _autocast(feats):
        state = dec.init_state(feats)  # (Bn, H) x2
        att = dec.attend_features(feats)  # (Bn, L, A)
    words = torch.full((B * n,), v.start_id, dtype=torch.long, device=feats.device)  # (Bn,)
    history = torch.zeros((B * n, 0), dtype=torch.long, device=feats.device)  # (Bn, t)
    logps, masks = [], []
    done = torch.zeros(B * n, dtype=torch.bool, device=feats.device)  # (Bn,)
    for t in range(rules.max_words + 1):
        with _autocast(feats):
            logits, state, _ = dec.step(words, state, feats, att)  # (Bn, V)
        with torch.no_grad():
            # The policy is the distribution over the words decoding may take: the banned
            # ones are masked out *before* the softmax, so the gradient never moves
            # probability onto words that are never sampled (that drifts and collapses).
            allowed = rules.ban(torch.zeros_like(logits, dtype=torch.float), history, t)
            if t == rules.max_words:
                allowed[:, : v.end_id] = -math.inf
                allowed[:, v.end_id + 1 :] = -math.inf
            allowed[done] = 0.0  # finished captions only emit <pad>; keep softmax finite
        logp = (logits.float() + allowed).log_softmax(-1)  # (Bn, V)
        with torch.no_grad():
            probs = (logp.detach() / temperature).softmax(-1)  # (Bn, V)
            words = torch.multinomial(probs, 1).squeeze(1)  # (Bn,)
            words = torch.where(done, v.pad_id, words)
        logps.append(logp.gather(1, words[:, None]).squeeze(1))  # (Bn,)
        masks.append((~done).float())  # (Bn,)
        history = torch.cat([history, words[:, None]], dim=1)  # (Bn, t+1)
        done = done | (words == v.end_id)
        if bool(done.all()):
            break
    return history, torch.stack(logps, 1), torch.stack(masks, 1)  # (Bn, T) x3


def to_caption(vocab: Vocab, hypotheses: list[tuple[list[int], float]]) -> Caption:
    """The best hypothesis as a sentence, the other distinct sentences as alternatives."""
    sentences = [to_sentence(vocab.decode(ids)) for ids, _ in hypotheses]
    unique = list(dict.fromkeys(s for s in sentences if s))
    text = unique[0] if unique else ""
    return Caption(text=text, score=float(hypotheses[0][1]), alternatives=tuple(unique[1:]))
