"""The captioning model: CNN encoder + LSTM decoder with soft visual attention.

Read top to bottom:

1. :class:`ModelConfig`   - every architecture number, stored in each checkpoint.
2. :class:`Decoder`       - Show, Attend and Tell (Xu et al. 2015): at each word the LSTM state
                            attends over the encoder's grid, a sigmoid gate scales the context,
                            and a "deep output" layer predicts the next word.
3. :class:`Ensemble`      - several decoders over the same encoder, decoding as one: the mean of
                            their word probabilities.
4. :class:`Captioner`     - encoder + decoder + vocabulary + preset: pixels in, sentences out,
                            through the searches of :mod:`photocap.decoding` (beam search
                            with length normalisation, no stuttering, no repeated trigrams;
                            greedy).

Shapes: B photos, K beams, L = grid locations (49 at 224 px), D = feature channels (1280),
E = embedding, H = LSTM hidden, A = attention size, V = vocabulary, T = caption tokens,
M = decoders in an ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from photocap.decoding import (
    DEFAULT_BEAM_SIZE,
    Caption,
    DecodingRules,
    StepDecoder,
    beam_search,
    greedy,
    to_caption,
)
from photocap.encoder import Encoder, EncoderConfig, fold_batchnorm
from photocap.errors import one_line
from photocap.preset import Preset
from photocap.vocab import Vocab

if TYPE_CHECKING:  # pragma: no cover
    from photocap.runtime import DecoderRuntime, EncoderRuntime


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
        return (*_mean_of_members(logps, new_h, new_c), torch.stack(alphas).mean(dim=0))

    def fused_step(
        self,
        words: torch.Tensor,  # (N,)
        state: tuple[torch.Tensor, torch.Tensor],  # (N, M*H), (N, M*H)
        features: torch.Tensor,  # (N, L, branches*D)
        att_features: torch.Tensor,  # (N, L, M*A)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """:meth:`step` with the members' attention computed together: the same numbers (to
        float rounding), for an inference runtime (:mod:`photocap.runtime` exports it).

        :meth:`step` splits the two large inputs by member, and a runtime copies each part
        (28 % of an OpenVINO step went to those copies). Here the attention MLP runs over all
        members' (N, L, M*A) at once, each member's score vector is one column of a
        block-diagonal (M*A, M) weight, and the contexts come from one weighted sum over the
        whole feature width, each member keeping its branch's D columns."""
        M, D = len(self.members), self.feature_dim
        hs = state[0].split(self.hidden_dim, dim=-1)  # M x (N, H)
        cs = state[1].split(self.hidden_dim, dim=-1)  # M x (N, H)
        decoders = self.decoders
        hidden = torch.cat([m.att_hidden(h) for m, h in zip(decoders, hs, strict=True)], -1)
        energy = torch.tanh(att_features + hidden[:, None])  # (N, L, M*A)
        # Block-diagonal: member k's (A, 1) score vector in column k (torch.block_diag has no
        # ONNX export; zero padding does).
        score_w = torch.cat(
            [F.pad(m.att_score.weight.t(), (k, M - 1 - k)) for k, m in enumerate(decoders)]
        )  # (M*A, M)
        score_b = torch.cat([m.att_score.bias for m in decoders])  # (M,)
        scores = energy @ score_w + score_b  # (N, L, M)
        alpha = scores.softmax(dim=1)  # (N, L, M): each member's weights over the locations
        context_all = torch.bmm(alpha.transpose(1, 2).to(features.dtype), features)  # (N, M, bD)
        logps, new_h, new_c = [], [], []
        for k, (member, h, c) in enumerate(zip(decoders, hs, cs, strict=True)):
            b = self.branch_of[k]
            context = context_all[:, k, b * D : (b + 1) * D]  # (N, D): its branch's grid
            context = torch.sigmoid(member.gate(h)) * context  # (N, D)
            embedded = member.embed(words)  # (N, E)
            h, c = member.lstm(torch.cat([embedded, context], dim=-1), (h, c))  # (N, H) x2
            deep = embedded + member.out_hidden(h) + member.out_context(context)  # (N, E)
            logits = member.out(member.dropout(deep))  # (N, V)
            logps.append(logits.float().log_softmax(-1))
            new_h.append(h)
            new_c.append(c)
        return (*_mean_of_members(logps, new_h, new_c), alpha.mean(dim=-1))  # ..., (N, L)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> Any:
        raise TypeError("an Ensemble only decodes: train its members one by one")


def _mean_of_members(
    logps: list[torch.Tensor], new_h: list[torch.Tensor], new_c: list[torch.Tensor]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """An ensemble's step from its members': the log of their mean probability (N, V) and
    their new states side by side, (N, M*H) x2."""
    mean_logp = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))  # (N, V)
    return mean_logp, (torch.cat(new_h, dim=-1), torch.cat(new_c, dim=-1))


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
        self.decoder_runtime_name = "torch"  # what runs the decoders' step
        # (the decoder's weights key when it was made, the runtime's step decoder), or None
        self._decoder_runtime: tuple[tuple[Any, ...], StepDecoder] | None = None
        # The text-image embedding (photocap.embedding) in a tuple: not a submodule, so never
        # saved with the model's weights; None without one.
        self._embedding: tuple[Any] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def rules(self) -> DecodingRules:
        """The vocabulary and decoding rules of this model (:mod:`photocap.decoding`)."""
        c = self.config
        rules = getattr(self, "_rules", None)
        # Built again when the vocabulary or a setting changes (a sweep assigns a new config).
        if (
            rules is None
            or rules.vocab is not self.vocab
            or (
                (rules.max_words, rules.length_penalty, rules.no_repeat_words)
                != (c.max_words, c.length_penalty, c.no_repeat_words)
            )
        ):
            rules = DecodingRules(
                self.vocab,
                max_words=c.max_words,
                length_penalty=c.length_penalty,
                no_repeat_words=c.no_repeat_words,
            )
            self._rules = rules
        return rules

    def prepare(
        self, wait: bool = False, started_only: bool = False, photos: int | None = None
    ) -> None:
        """Nothing to do: built already (a run calls this on any model; see
        :class:`photocap.checkpoint.LazyCaptioner`)."""

    def decoder_alone(self, index: int) -> Captioner:
        """Decoder ``index`` of this ensemble as a model of its own, on the CPU: that decoder,
        and a plain encoder whose top is the branch that decoder reads. Its captions are the
        decoder's alone; it costs a third of a three-decoder ensemble's decoding and one
        branch's encoder top (the fast model; ``photocap ensemble M --decoders K``)."""
        from photocap.encoder import unbranch_state_dict

        decoder = self.decoder
        members = decoder.decoders if isinstance(decoder, Ensemble) else [cast(Decoder, decoder)]
        if not 0 <= index < len(members):
            raise ValueError(f"decoders 0..{len(members) - 1}, not {index}")
        c = self.config
        branch = c.decoder_branches[index] if c.decoder_branches else 0
        start = len(self.encoder._blocks) - c.encoder.branch_blocks
        one = Captioner(
            replace(c, encoder=replace(c.encoder, branches=1, branch_blocks=0), decoders=1,
                    decoder_branches=()),
            self.vocab,
            self.preset,
        )  # fmt: skip
        state = {k: v.cpu() for k, v in self.encoder.state_dict().items()}
        one.encoder.load_state_dict(unbranch_state_dict(state, branch, start))
        one.decoder.load_state_dict({k: v.cpu() for k, v in members[index].state_dict().items()})
        one.metadata = {
            "name": f"{self.metadata.get('name', 'photocap')}-decoder{index}",
            "training_data": self.metadata.get("training_data", ""),
            "decoder_of": {"model_id": self.model_id, "decoder": index},
        }
        return one

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
                reason = one_line(err, 160)
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
        if runtime.encoder is not None:
            self._fused = None  # the BN-folded copy (34 MB): made again if torch encodes

    def _runtime_encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        runtime = self._runtime
        if runtime is None or self.encoder.training or torch.is_grad_enabled():
            return None
        if self.device.type != "cpu" or runtime[0] != self._encoder_key():
            return None  # moved, or trained since: it would compute the old weights' features
        return runtime[1]

    def _encoder_key(self) -> tuple[Any, ...]:
        """Changes whenever the encoder's weights do (a training step, load_state_dict, .to())."""
        return _weights_key(self.encoder)

    def use_decoder_runtime(self, runtime: DecoderRuntime) -> None:
        """Run the decoders' step with ``runtime`` (:mod:`photocap.runtime`: int8 on
        OpenVINO, for a CPU) while the decoders' weights stay as they are now; in eval mode
        without gradients only, so training never sees it."""
        self.decoder_runtime_name = runtime.name
        key = _weights_key(self.decoder)
        self._decoder_runtime = (key, runtime.decoder) if runtime.decoder else None

    def _runtime_decoder(self) -> StepDecoder | None:
        runtime = self._decoder_runtime
        if runtime is None or self.decoder.training or torch.is_grad_enabled():
            return None
        if self.device.type != "cpu" or runtime[0] != _weights_key(self.decoder):
            return None  # moved, or trained since: it would compute the old weights' words
        return runtime[1]

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
                fused = (key, fold_batchnorm(self.encoder))
            self._fused = fused  # a tuple: not registered as a submodule
        return fused[1]

    @torch.inference_mode()
    def caption_batch(
        self, pixels: torch.Tensor, beam_size: int = DEFAULT_BEAM_SIZE
    ) -> list[Caption]:
        """Caption a batch of photos given as uint8 (B, 3, S, S) tensors from the preset."""
        self.eval()
        features = self.encode(pixels)  # (B, L, D)
        captions = self.caption_features(features, beam_size)
        if self._embedding is None or not captions:
            return captions
        from photocap.embedding import vector_bytes

        vectors = self._embedding[0].image_vectors(features.float()).cpu().numpy()  # (B, dim)
        return [replace(c, vector=vector_bytes(v)) for c, v in zip(captions, vectors, strict=True)]

    @property
    def vector_size(self) -> int:
        """Bytes of each photo's vector in the index (float16), 0 without an embedding."""
        return 0 if self._embedding is None else 2 * int(self._embedding[0].image.out_features)

    @torch.inference_mode()
    def embed_batch(self, pixels: torch.Tensor) -> list[bytes]:
        """The vectors of a batch of photos (uint8 (B, 3, S, S), as :meth:`caption_batch`
        takes them) in the embedding, without captioning them: the encoder only (a photo
        captioned before photocap stored vectors). Empty without an embedding."""
        if self._embedding is None or pixels.shape[0] == 0:
            return []
        from photocap.embedding import vector_bytes

        self.eval()
        features = self.encode(pixels)  # (B, L, D)
        vectors = self._embedding[0].image_vectors(features.float()).cpu().numpy()  # (B, dim)
        return [vector_bytes(v) for v in vectors]

    def use_embedding(self, embedding: nn.Module | None) -> None:
        """Give each caption its photo's vector in ``embedding`` (a
        :func:`photocap.embedding.load_embedding` module), or stop (None)."""
        self._embedding = None if embedding is None else (embedding.to(self.device).eval(),)

    @torch.inference_mode()
    def caption_features(
        self, features: torch.Tensor, beam_size: int = DEFAULT_BEAM_SIZE
    ) -> list[Caption]:
        """Caption precomputed features (B, L, D); used by evaluation on a feature cache."""
        self.eval()
        features = features.to(self.device).float()
        if features.shape[0] == 0:
            return []
        runtime = self._runtime_decoder()
        if runtime is not None:
            try:
                return self._search(runtime, features, beam_size)
            except Exception as err:  # an inference failure: this batch and the rest on torch
                reason = one_line(err, 160)
                self._decoder_runtime = None
                self.decoder_runtime_name = f"torch (openvino: {reason})"
        return self._search(self.decoder, features, beam_size)

    def _search(
        self, decoder: StepDecoder, features: torch.Tensor, beam_size: int
    ) -> list[Caption]:
        if beam_size <= 1:
            tokens, logps = greedy(decoder, self.rules, features)
            return [to_caption(self.vocab, [(t, s)]) for t, s in zip(tokens, logps, strict=True)]
        hypotheses = beam_search(decoder, self.rules, features, beam_size)
        return [to_caption(self.vocab, h) for h in hypotheses]


def _weights_key(module: nn.Module) -> tuple[Any, ...]:
    """Changes whenever ``module``'s weights do (a training step, load_state_dict, .to())."""
    tensors = [*module.parameters(), *module.buffers()]
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
