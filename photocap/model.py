"""The captioning model: CNN encoder + LSTM decoder with soft visual attention.

Read top to bottom:

1. :class:`ModelConfig`   - every architecture number, stored in each checkpoint.
2. :class:`Decoder`       - Show, Attend and Tell (Xu et al. 2015): at each word the LSTM state
                            attends over the encoder's grid, a sigmoid gate scales the context,
                            and a "deep output" layer predicts the next word.
3. :class:`Ensemble`      - several decoders over the same encoder, decoding as one: the mean of
                            their word probabilities.
4. :class:`Captioner`     - encoder + decoder + vocabulary + preset: pixels in, sentences out,
                            with a batched beam search (length normalisation, no stuttering,
                            no repeated trigrams) and greedy decoding.

Shapes: B photos, K beams, L = grid locations (49 at 224 px), D = feature channels (1280),
E = embedding, H = LSTM hidden, A = attention size, V = vocabulary, T = caption tokens,
M = decoders in an ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from photocap.checkpoint import DEFAULT_BEAM_SIZE
from photocap.encoder import Encoder, EncoderConfig
from photocap.preset import Preset
from photocap.vocab import Vocab, to_sentence

if TYPE_CHECKING:  # pragma: no cover
    from photocap.runtime import EncoderRuntime

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
class ModelConfig:
    """Architecture of the whole captioner (saved in the checkpoint)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed_dim: int = 512  # E
    hidden_dim: int = 512  # H
    attention_dim: int = 512  # A
    dropout: float = 0.5
    max_words: int = 20  # longest caption generated (Flickr8k: 95 % of captions <= 20 words)
    length_penalty: float = 0.7  # beam ranking: sum log p / words ** length_penalty
    no_repeat_words: bool = True  # content words at most once per caption (see FUNCTION_WORDS)
    decoders: int = 1  # M > 1: an Ensemble of M decoders (format version 2)
    # With encoder branches (format version 3): the branch each decoder reads, M entries.
    decoder_branches: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        branches = self.encoder.branches
        if branches == 1 and not self.decoder_branches:
            return
        if len(self.decoder_branches) != self.decoders or set(self.decoder_branches) != set(
            range(branches)
        ):
            raise ValueError(
                f"decoder_branches {list(self.decoder_branches)} must give each of the "
                f"{self.decoders} decoders one of the {branches} encoder branches, each used"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["decoders"] == 1:  # as format version 1 wrote it: older readers still load it
            del data["decoders"]
        if not self.decoder_branches:  # as format version 2 wrote it
            del data["decoder_branches"]
        data["encoder"] = self.encoder.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        encoder = EncoderConfig(**data.pop("encoder"))
        branches = tuple(data.pop("decoder_branches", ()))
        return cls(encoder=encoder, decoder_branches=branches, **data)


@dataclass(frozen=True)
class Caption:
    """One photo's caption: the sentence, its score and the runner-up sentences."""

    text: str  # "A dog runs through the grass."
    score: float  # mean log-probability per token (<end> included); closer to 0 = surer
    alternatives: tuple[str, ...] = ()  # other beam hypotheses, best first


class Decoder(nn.Module):
    """LSTM with soft attention over the image grid, one word per step."""

    def __init__(self, config: ModelConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__()
        E, H, A, D, V = (
            config.embed_dim,
            config.hidden_dim,
            config.attention_dim,
            feature_dim,
            vocab_size,
        )
        self.embed = nn.Embedding(V, E)
        self.init_h = nn.Linear(D, H)  # initial state from the mean feature (SAT eq. 5)
        self.init_c = nn.Linear(D, H)
        self.att_feat = nn.Linear(D, A)  # computed once per photo (see attend_features)
        self.att_hidden = nn.Linear(H, A)
        self.att_score = nn.Linear(A, 1)
        self.gate = nn.Linear(H, D)  # beta: how much the word should look at the image
        self.lstm = nn.LSTMCell(E + D, H)
        self.out_hidden = nn.Linear(H, E)  # deep output: L_o(E y + L_h h + L_z z)
        self.out_context = nn.Linear(D, E)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(E, V)

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = features.mean(dim=1)  # (N, D)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # (N, H) each

    def attend_features(self, features: torch.Tensor) -> torch.Tensor:
        """The image half of the attention MLP; cached for the whole caption."""
        return self.att_feat(features)  # (N, L, A)

    def step(
        self,
        words: torch.Tensor,  # (N,) previous word ids
        state: tuple[torch.Tensor, torch.Tensor],  # (N, H), (N, H)
        features: torch.Tensor,  # (N, L, D)
        att_features: torch.Tensor,  # (N, L, A)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One word: returns logits (N, V), the new state, and attention weights (N, L)."""
        h, c = state
        scores = self.att_score(torch.tanh(att_features + self.att_hidden(h)[:, None]))  # (N, L, 1)
        alpha = scores.squeeze(-1).softmax(dim=-1)  # (N, L)
        context = torch.bmm(alpha[:, None].to(features.dtype), features).squeeze(1)  # (N, D)
        context = torch.sigmoid(self.gate(h)) * context  # (N, D)
        embedded = self.embed(words)  # (N, E)
        h, c = self.lstm(torch.cat([embedded, context], dim=-1), (h, c))  # (N, H), (N, H)
        deep = embedded + self.out_hidden(h) + self.out_context(context)  # (N, E)
        logits = self.out(self.dropout(deep))  # (N, V)
        return logits, (h, c), alpha

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing. features (N, L, D), tokens (N, T) = <start> w1 .. <end> <pad>..

        Returns logits (N, T-1, V) predicting tokens[:, 1:], and attention (N, T-1, L).
        """
        state = self.init_state(features)  # (N, H) x2
        att_features = self.attend_features(features)  # (N, L, A)
        logits, alphas = [], []
        for t in range(tokens.shape[1] - 1):
            step_logits, state, alpha = self.step(tokens[:, t], state, features, att_features)
            logits.append(step_logits)  # (N, V)
            alphas.append(alpha)  # (N, L)
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)  # (N, T-1, V), (N, T-1, L)


class Ensemble(nn.Module):
    """M decoders trained separately on the same encoder's features, decoding as one model.

    The next-word distribution is the mean of the members' probabilities: independently
    trained decoders make different mistakes, and averaging cancels some of them. It has the
    decoding interface of :class:`Decoder` (``init_state``, ``attend_features``, ``step``); the
    members' states and attention features are concatenated on the last dimension, so beam
    search reorders them as if they were one model's. ``step`` returns log-probabilities
    (already normalised, so a further log_softmax leaves them unchanged). Decoding only: train
    the members one by one (``photocap train --reset-decoder``), then ``photocap ensemble``.

    With an encoder of ``branches`` > 1 the features are the branches' grids side by side,
    (N, L, branches * D), and each member reads the grid of its branch
    (``ModelConfig.decoder_branches``).
    """

    def __init__(self, config: ModelConfig, vocab_size: int, feature_dim: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            Decoder(config, vocab_size, feature_dim) for _ in range(config.decoders)
        )
        self.hidden_dim, self.attention_dim = config.hidden_dim, config.attention_dim
        self.feature_dim = feature_dim  # D, one branch's channels
        self.branch_of = list(config.decoder_branches) or [0] * config.decoders  # member -> branch

    @property
    def decoders(self) -> list[Decoder]:
        """The members, typed."""
        return cast(list[Decoder], list(self.members))

    def _grids(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Each member's grid: features (N, L, branches * D) -> M x (N, L, D) (views)."""
        branches = features.split(self.feature_dim, dim=-1)  # branches x (N, L, D)
        return [branches[b] for b in self.branch_of]

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grids = self._grids(features)  # M x (N, L, D)
        states = [m.init_state(g) for m, g in zip(self.decoders, grids, strict=True)]
        h = torch.cat([h for h, _ in states], dim=-1)  # (N, M*H)
        c = torch.cat([c for _, c in states], dim=-1)  # (N, M*H)
        return h, c

    def attend_features(self, features: torch.Tensor) -> torch.Tensor:
        grids = self._grids(features)  # M x (N, L, D)
        att = [m.attend_features(g) for m, g in zip(self.decoders, grids, strict=True)]
        return torch.cat(att, dim=-1)  # (N, L, M*A)

    def step(
        self,
        words: torch.Tensor,  # (N,)
        state: tuple[torch.Tensor, torch.Tensor],  # (N, M*H), (N, M*H)
        features: torch.Tensor,  # (N, L, branches*D)
        att_features: torch.Tensor,  # (N, L, M*A)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One word for every member: log of the mean probability (N, V), the new concatenated
        state, and the members' mean attention (N, L)."""
        hs = state[0].split(self.hidden_dim, dim=-1)  # M x (N, H)
        cs = state[1].split(self.hidden_dim, dim=-1)  # M x (N, H)
        atts = att_features.split(self.attention_dim, dim=-1)  # M x (N, L, A)
        grids = self._grids(features)  # M x (N, L, D)
        logps, new_h, new_c, alphas = [], [], [], []
        for member, h, c, att, grid in zip(self.decoders, hs, cs, atts, grids, strict=True):
            logits, (h, c), alpha = member.step(words, (h, c), grid, att)  # (N, V), ...
            logps.append(logits.float().log_softmax(-1))  # (N, V)
            new_h.append(h)
            new_c.append(c)
            alphas.append(alpha)  # (N, L)
        mean_logp = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))  # (N, V)
        new_state = (torch.cat(new_h, dim=-1), torch.cat(new_c, dim=-1))  # (N, M*H) x2
        return mean_logp, new_state, torch.stack(alphas).mean(dim=0)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> Any:
        raise TypeError("an Ensemble only decodes: train its members one by one")


class Captioner(nn.Module):
    """Everything needed to caption: preset, encoder, decoder, vocabulary."""

    def __init__(self, config: ModelConfig, vocab: Vocab, preset: Preset | None = None) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.preset = preset or Preset()
        self.encoder = Encoder(config.encoder)
        self.decoder: Decoder | Ensemble = (
            Decoder(config, len(vocab), self.encoder.feature_dim)
            if config.decoders == 1
            else Ensemble(config, len(vocab), self.encoder.feature_dim)
        )
        self.model_id = "untrained"
        self.metadata: dict[str, Any] = {}  # training data, dev scores, ... (saved with weights)
        self.source: str | None = None  # the model file it was loaded from, if any
        self.runtime_name = "torch"  # what runs the encoder (see use_encoder_runtime)
        # (the encoder's weights key when it was made, the runtime's encoder), or None
        self._runtime: tuple[tuple[Any, ...], Callable[[torch.Tensor], torch.Tensor]] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(
        self, wait: bool = False, started_only: bool = False, photos: int | None = None
    ) -> None:
        """Nothing to do: built already (a run calls this on any model; see
        :class:`photocap.checkpoint.LazyCaptioner`)."""

    def info(self) -> dict[str, Any]:
        """Name, training data, scores, size: what ``photocap info`` shows."""
        return {
            "model_id": self.model_id,
            "parameters": sum(p.numel() for p in self.parameters()),
            "vocabulary": len(self.vocab),
            "image_size": self.preset.size,
            "encoder": self.config.encoder.name,
            "decoders": self.config.decoders,
            "encoder_branches": self.config.encoder.branches,
            "beam_search": {
                "length_penalty": self.config.length_penalty,
                "no_repeat_words": self.config.no_repeat_words,
            },
            **({"file": self.source} if self.source else {}),
            **self.metadata,
        }

    def _autocast(self) -> Any:
        # bf16 on the GPU: the encoder is the heavy part and is happy in bf16; CPU stays fp32.
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (B, 3, S, S) on any device -> features (B, L, D) float32 on self.device."""
        pixels = pixels.to(self.device, non_blocking=True)
        runtime = self._runtime_encoder()
        if runtime is not None:
            try:
                return runtime(self.preset.normalize(pixels))  # (B, L, D)
            except Exception as err:  # a compile or inference failure: torch from now on
                reason = " ".join(str(err).split())[:160] or type(err).__name__
                self._runtime = None
                self.runtime_name = f"torch (openvino: {reason})"
        encoder = self._inference_encoder() or self.encoder
        with self._autocast():
            features = encoder(self.preset.normalize(pixels))  # (B, L, D)
        return features.float()

    def optimize_for_inference(self) -> Captioner:
        """Encode through a copy of the encoder with every BatchNorm folded into its convolution.

        The copy also runs channels-last. Same features to float rounding (~1e-5 relative),
        ~2x faster encoder on a CPU. The copy is private (not a submodule: state_dict,
        parameters and training are unchanged) and is used only while the encoder is in eval
        mode with gradients off; it is rebuilt when the encoder's weights or device change
        (training steps, load_state_dict, ``.to()``). ``load_captioner`` calls this on CPU.
        """
        self._fold_bn = True
        self._fused: tuple[tuple[Any, ...], nn.Module] | None = None
        if not self.encoder.training:
            with torch.no_grad():
                self._inference_encoder()  # build it now, not on the first batch
        return self

    def use_encoder_runtime(self, runtime: EncoderRuntime) -> None:
        """Encode with ``runtime`` (:mod:`photocap.runtime`: the BN-folded encoder on
        OpenVINO, for a CPU) while the encoder's weights stay as they are now; in eval mode
        without gradients, like the folded copy it was made from."""
        self.runtime_name = runtime.name
        self._runtime = (self._encoder_key(), runtime.encoder) if runtime.encoder else None

    def _runtime_encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        runtime = self._runtime
        if runtime is None or self.encoder.training or torch.is_grad_enabled():
            return None
        if self.device.type != "cpu" or runtime[0] != self._encoder_key():
            return None  # moved, or trained since: it would compute the old weights' features
        return runtime[1]

    def _encoder_key(self) -> tuple[Any, ...]:
        """Changes whenever the encoder's weights do (a training step, load_state_dict, .to())."""
        tensors = [*self.encoder.parameters(), *self.encoder.buffers()]
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def _inference_encoder(self) -> nn.Module | None:
        """The BN-folded encoder copy, or None when it must not or need not be used."""
        if not getattr(self, "_fold_bn", False) or self.encoder.training:
            return None
        if torch.is_grad_enabled():
            return None
        key = self._encoder_key()
        fused = getattr(self, "_fused", None)
        if fused is None or fused[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                fused = (key, _fold_batchnorm(self.encoder))
            self._fused = fused  # a tuple: not registered as a submodule
        return fused[1]

    @torch.inference_mode()
    def caption_batch(
        self, pixels: torch.Tensor, beam_size: int = DEFAULT_BEAM_SIZE
    ) -> list[Caption]:
        """Caption a batch of photos given as uint8 (B, 3, S, S) tensors from the preset."""
        self.eval()
        features = self.encode(pixels)  # (B, L, D)
        return self.caption_features(features, beam_size)

    @torch.inference_mode()
    def caption_features(
        self, features: torch.Tensor, beam_size: int = DEFAULT_BEAM_SIZE
    ) -> list[Caption]:
        """Caption precomputed features (B, L, D); used by evaluation on a feature cache."""
        self.eval()
        features = features.to(self.device).float()
        if features.shape[0] == 0:
            return []
        if beam_size <= 1:
            tokens, logps = self.greedy(features)
            return [self._caption([(t, s)]) for t, s in zip(tokens, logps, strict=True)]
        return [self._caption(h) for h in self.beam_search(features, beam_size)]

    def _caption(self, hypotheses: list[tuple[list[int], float]]) -> Caption:
        sentences = [to_sentence(self.vocab.decode(ids)) for ids, _ in hypotheses]
        unique = list(dict.fromkeys(s for s in sentences if s))
        text = unique[0] if unique else ""
        return Caption(text=text, score=float(hypotheses[0][1]), alternatives=tuple(unique[1:]))

    # -- decoding ------------------------------------------------------------------------------

    def _dangling_ids(self, device: torch.device) -> torch.Tensor:
        """Ids of the words a caption may not end on (articles, prepositions, conjunctions,
        and words that almost never end a person's caption)."""
        cached = getattr(self, "_dangling_cache", None)
        if cached is None or cached.device != device:
            ids = [self.vocab.id(w) for w in DANGLING_WORDS + RARELY_FINAL_WORDS]
            cached = torch.tensor(
                [i for i in ids if i != self.vocab.unk_id] or [self.vocab.pad_id],
                dtype=torch.long,
                device=device,
            )
            self._dangling_cache = cached
        return cached

    def _content_mask(self, device: torch.device) -> torch.Tensor:
        """(V,) True for words that may appear only once in a caption."""
        cached = getattr(self, "_content_cache", None)
        if cached is None or cached.device != device:
            words = self.vocab.words
            cached = torch.tensor(
                [i >= 4 and w not in FUNCTION_WORDS for i, w in enumerate(words)], device=device
            )
            self._content_cache = cached
        return cached

    def _banned(self, logp: torch.Tensor, history: torch.Tensor, t: int) -> torch.Tensor:
        """Mask words a caption must not take next. logp (N, V), history (N, t) -> (N, V).

        Never <pad>/<start>/<unk>; no <end> before the first word, nor right after a word
        that cannot end an English sentence ("... catch a ball in the.") or almost never ends
        a person's caption ("... sitting on a wooden."); never the previous
        word again ("a a"); no trigram that already occurred in this caption.
        """
        v = self.vocab
        logp[:, [v.pad_id, v.start_id, v.unk_id]] = -math.inf
        if t == 0:
            logp[:, v.end_id] = -math.inf
            return logp
        logp.scatter_(1, history[:, -1:], -math.inf)  # no immediate repeat
        if self.config.no_repeat_words:
            used = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, history, True)  # (N, V)
            logp.masked_fill_(used & self._content_mask(logp.device), -math.inf)
        if t < self.config.max_words:  # at the last step <end> must stay possible
            dangling = torch.isin(history[:, -1], self._dangling_ids(history.device))  # (N,)
            logp[:, v.end_id] = logp[:, v.end_id].masked_fill(dangling, -math.inf)
        if t >= 3:
            last2 = history[:, t - 2 :]  # (N, 2) the bigram just generated
            seen = (history[:, : t - 2] == last2[:, :1]) & (history[:, 1 : t - 1] == last2[:, 1:])
            follow = history[:, 2:t]  # (N, t-2): the word that followed bigram i
            banned = torch.where(seen, follow, torch.full_like(follow, v.pad_id))  # (N, t-2)
            logp.scatter_(1, banned, -math.inf)
        return logp

    def greedy(self, features: torch.Tensor) -> tuple[list[list[int]], list[float]]:
        """Most likely word at each step. features (B, L, D) -> token lists and mean log p."""
        B = features.shape[0]
        dec, v = self.decoder, self.vocab
        with self._autocast():
            state = dec.init_state(features)  # (B, H) x2
            att = dec.attend_features(features)  # (B, L, A)
        words = torch.full((B,), v.start_id, dtype=torch.long, device=features.device)  # (B,)
        history = torch.zeros((B, 0), dtype=torch.long, device=features.device)  # (B, t)
        total = torch.zeros(B, device=features.device)  # (B,)
        length = torch.zeros(B, device=features.device)  # (B,)
        done = torch.zeros(B, dtype=torch.bool, device=features.device)  # (B,)
        for t in range(self.config.max_words + 1):
            with self._autocast():
                logits, state, _ = dec.step(words, state, features, att)  # (B, V)
            logp = self._banned(logits.float().log_softmax(-1), history, t)  # (B, V)
            if t == self.config.max_words:  # out of room: only <end> may follow
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
        self, features: torch.Tensor, beam_size: int
    ) -> list[list[tuple[list[int], float]]]:
        """Batched beam search over B photos at once.

        Returns, per photo, up to ``beam_size`` hypotheses ``(token ids, mean log p)`` ranked by
        ``sum log p / words ** length_penalty``. All B*K beams advance together on the device;
        only finished hypotheses (a handful per step) go through Python.
        """
        B, L, D = features.shape
        K = beam_size
        dec, v = self.decoder, self.vocab
        dev = features.device
        with self._autocast():
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
        alpha = self.config.length_penalty
        for t in range(self.config.max_words + 1):
            n = len(photo_of)  # photos left (n <= B)
            with self._autocast():
                logits, state, _ = dec.step(words, state, feats_k, att_k)  # (nK, V)
            logp = self._banned(logits.float().log_softmax(-1), history, t)  # (nK, V)
            V = logp.shape[1]
            if t == self.config.max_words:  # out of room: only <end> may follow
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
        self, features: torch.Tensor, n: int, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample ``n`` captions per photo with gradients, for self-critical training.

        features (B, L, D) -> tokens (B*n, T), log p of each sampled token (B*n, T), and a mask
        (B*n, T) that is 1 up to and including <end>.
        """
        B = features.shape[0]
        dec, v = self.decoder, self.vocab
        feats = features.repeat_interleave(n, dim=0)  # (Bn, L, D)
        with self._autocast():
            state = dec.init_state(feats)  # (Bn, H) x2
            att = dec.attend_features(feats)  # (Bn, L, A)
        words = torch.full((B * n,), v.start_id, dtype=torch.long, device=feats.device)  # (Bn,)
        history = torch.zeros((B * n, 0), dtype=torch.long, device=feats.device)  # (Bn, t)
        logps, masks = [], []
        done = torch.zeros(B * n, dtype=torch.bool, device=feats.device)  # (Bn,)
        for t in range(self.config.max_words + 1):
            with self._autocast():
                logits, state, _ = dec.step(words, state, feats, att)  # (Bn, V)
            with torch.no_grad():
                # The policy is the distribution over the words decoding may take: the banned
                # ones are masked out *before* the softmax, so the gradient never moves
                # probability onto words that are never sampled (that drifts and collapses).
                allowed = self._banned(torch.zeros_like(logits, dtype=torch.float), history, t)
                if t == self.config.max_words:
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


def _fold_batchnorm(encoder: Encoder) -> nn.Module:
    """An eval-mode deep copy of ``encoder`` with each BatchNorm folded into the convolution
    before it (w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta),
    run channels-last."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from photocap.encoder import EncoderBranch, MBConvBlock

    fused = copy.deepcopy(encoder).eval()
    for module in fused.modules():
        if isinstance(module, (Encoder, EncoderBranch)):
            pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
        elif isinstance(module, MBConvBlock):
            pairs = [
                ("_expand_conv", "_bn0"),
                ("_depthwise_conv", "_bn1"),
                ("_project_conv", "_bn2"),
            ]
        else:
            continue
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return _ChannelsLast(fused.requires_grad_(False))


class _ChannelsLast(nn.Module):
    """Runs a module on channels-last (NHWC) input: ~1.6x faster convolutions on a CPU (oneDNN),
    and the encoder's (B, C, H, W) -> (B, L, C) output is then a view, not a copy."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last))
