"""The joint text-image embedding (a visual-semantic embedding): search by meaning.

A photo and a sentence that describes it land near each other in one space (``dim``-d, unit
length), so "a black dog runs along the beach" finds the photo of it although its caption says
"A dog running on the sand". Two small networks, trained with a contrastive loss on Flickr8k
train (:mod:`photocap.training.embedding`):

* the image side, on the captioning model's own encoder features (``(B, L, D)``, pooled by mean
  and max), so a photo's vector costs one linear layer at caption time;
* the text side: word vectors (started from the decoder's), a bidirectional GRU, a linear layer.

The file lives beside the model file (``photocap-flickr8k.safetensors`` ->
``photocap-flickr8k.embedding.safetensors``), a safetensors file like it (no pickle), holding
its config, vocabulary, format version and the id of the model whose encoder it was trained on:
with another model it is not used. Search needs only the text side, run in numpy
(:class:`QueryEncoder`): no torch import for ``photocap search``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from photocap.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from photocap.vocab import Vocab

FORMAT = "photocap-embedding"
FORMAT_VERSION = "1"
SUFFIX = ".embedding.safetensors"
MAX_WORDS = 20


def embedding_path(model_path: Path) -> Path:
    """Where the embedding of the model file at ``model_path`` lives: beside it."""
    name = model_path.name.removesuffix(".safetensors")
    return model_path.with_name(name + SUFFIX)


def _torch_module(feature_dim: int, word_vectors: torch.Tensor, dim: int) -> Any:
    import torch
    from torch import nn

    class PhotoTextEmbedding(nn.Module):
        """The two sides; both return unit vectors (B, dim)."""

        def __init__(self) -> None:
            super().__init__()
            self.image_norm = nn.LayerNorm(2 * feature_dim)
            self.image = nn.Linear(2 * feature_dim, dim)
            self.embed = nn.Embedding.from_pretrained(word_vectors.clone(), freeze=False)
            self.gru = nn.GRU(word_vectors.shape[1], dim, batch_first=True, bidirectional=True)
            self.text = nn.Linear(2 * dim, dim)
            self.log_scale = nn.Parameter(torch.tensor(3.0))  # inverse temperature, log

        def image_vectors(self, features: torch.Tensor) -> torch.Tensor:
            """Encoder features (B, L, D) -> (B, dim)."""
            pooled = torch.cat([features.mean(1), features.amax(1)], dim=1)  # (B, 2D)
            return self.pooled_vectors(pooled)

        def pooled_vectors(self, pooled: torch.Tensor) -> torch.Tensor:
            """Pooled features (B, 2D), mean then max -> (B, dim)."""
            out = self.image(self.image_norm(pooled.float()))
            return torch.nn.functional.normalize(out, dim=-1)

        def text_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
            """Token ids (B, T), padded with 0 -> (B, dim)."""
            mask = (tokens != 0).float().unsqueeze(-1)  # (B, T, 1)
            states, _ = self.gru(self.embed(tokens))  # (B, T, 2*dim)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over words
            return torch.nn.functional.normalize(self.text(pooled), dim=-1)

    return PhotoTextEmbedding()


def new_embedding(feature_dim: int, word_vectors: torch.Tensor, dim: int = 512) -> Any:
    """An untrained embedding for features of ``feature_dim`` channels, words started from
    ``word_vectors`` (V, E)."""
    return _torch_module(feature_dim, word_vectors, dim)


def save_embedding(module: Any, vocab: Vocab, model_id: str, path: Path) -> Path:
    """Write ``module`` (trained for the model ``model_id``) to ``path`` atomically, fp16."""
    from safetensors.torch import save

    from photocap.safeio import atomic_write

    tensors = {k: v.detach().cpu().half().contiguous() for k, v in module.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(
            {
                "feature_dim": module.image.in_features // 2,
                "dim": module.image.out_features,
                "word_dim": module.embed.embedding_dim,
            }
        ),
        "vocab": json.dumps(list(vocab.words)),
        "model_id": model_id,
    }
    atomic_write(path, save(tensors, metadata=metadata), preserve_mtime=False)
    return path


def _read(
    path: Path, model_id: str | None
) -> tuple[dict[str, Any], list[str], dict[str, Any], str]:
    """(config, vocabulary, numpy tensors, the model id it was trained for) of an embedding
    file; ModelError when it is not one, or was trained for another model than ``model_id``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise ModelError(
                    f"{path} is not a photocap embedding file (format {FORMAT_VERSION})"
                )
            if model_id is not None and meta.get("model_id") != model_id:
                raise ModelError(f"{path} was trained for another model ({meta.get('model_id')})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        config, words = json.loads(meta["config"]), json.loads(meta["vocab"])
        return config, words, tensors, meta.get("model_id", "")
    except ModelError:
        raise
    except Exception as err:  # OSError, json's, safetensors' own (SafetensorError)
        raise ModelError(f"cannot read embedding file {path}: {err}") from None


def load_embedding(path: Path, model_id: str, device: Any = "cpu") -> Any:
    """The embedding at ``path`` as a torch module (eval mode), for the model ``model_id``."""
    import torch

    config, _words, tensors, _model = _read(path, model_id)
    words = torch.from_numpy(tensors["embed.weight"].astype("float32"))
    module = _torch_module(config["feature_dim"], words, config["dim"])
    module.load_state_dict({k: torch.from_numpy(v.astype("float32")) for k, v in tensors.items()})
    return module.to(device).eval()


def vector_size_of(path: Path) -> int:
    """Bytes of one photo's vector in the index for the embedding file ``path`` (float16:
    twice its size), from its header; 0 when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return 2 * int(json.loads((f.metadata() or {})["config"])["dim"])
    except Exception:  # unreadable, or not an embedding: no vectors
        return 0


def find_embedding(model_path: Path, model_id: str) -> Path | None:
    """The embedding file beside ``model_path`` if there is one for ``model_id``."""
    path = embedding_path(model_path)
    if not path.is_file():
        return None
    try:
        _read_meta_only(path, model_id)
    except ModelError:
        return None
    return path


def _read_meta_only(path: Path, model_id: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as err:  # OSError, safetensors' own (SafetensorError)
        raise ModelError(f"cannot read embedding file {path}: {err}") from None
    if meta.get("format") != FORMAT or meta.get("model_id") != model_id:
        raise ModelError(f"{path} is not an embedding of {model_id}")


def vector_bytes(vector: np.ndarray) -> bytes:
    """A unit vector as the index stores it: float16, little-endian."""
    import numpy as np

    return np.asarray(vector, dtype="<f2").tobytes()


def vector_from_bytes(data: bytes) -> np.ndarray:
    import numpy as np

    return np.frombuffer(data, dtype="<f2").astype(np.float32)


class QueryEncoder:
    """The text side in numpy: a search query -> its unit vector (dim,). Loads in ~0.1 s and
    imports no torch."""

    def __init__(self, words: list[str], tensors: dict[str, Any], model_id: str = "") -> None:
        import numpy as np

        self.model_id = model_id  # the model whose photo vectors these queries compare with
        self.ids = {w: i for i, w in enumerate(words)}
        self.t = {k: v.astype(np.float32) for k, v in tensors.items() if not k.startswith("image")}

    @classmethod
    def from_model(cls, model_path: Path) -> QueryEncoder | None:
        """The query encoder of the embedding beside ``model_path``; None without one."""
        path = embedding_path(model_path)
        if not path.is_file():
            return None
        _config, words, tensors, model_id = _read(path, None)
        return cls(words, tensors, model_id)

    def tokens(self, text: str) -> list[int]:
        from photocap.vocab import tokenize

        unknown = 3  # <unk>, as photocap.vocab.Vocab numbers it; <start> 1, <end> 2
        words = tokenize(text)[:MAX_WORDS]
        return [1, *(self.ids.get(w, unknown) for w in words), 2]

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> (dim,) float32, unit length (as ``text_vectors`` computes it)."""
        import numpy as np

        ids = self.tokens(text)
        # Padded as in training (a batch pads to MAX_WORDS + 2): the backward direction runs
        # over the padding first, as it did there; the mean is over the words only.
        padded = ids + [0] * (MAX_WORDS + 2 - len(ids))
        x = self.t["embed.weight"][padded]  # (T, E)
        forward = self._gru(x, "")  # (T, H)
        backward = self._gru(x[::-1], "_reverse")[::-1]  # (T, H)
        states = np.concatenate([forward, backward], axis=1)  # (T, 2H)
        pooled = states[: len(ids)].mean(0)  # (2H,)
        out = self.t["text.weight"] @ pooled + self.t["text.bias"]  # (dim,)
        return out / max(float(np.linalg.norm(out)), 1e-12)

    def _gru(self, x: np.ndarray, suffix: str) -> np.ndarray:
        """One direction of torch's GRU (gates r, z, n) over ``x`` (T, E) -> (T, H)."""
        import numpy as np

        w_ih, w_hh = self.t[f"gru.weight_ih_l0{suffix}"], self.t[f"gru.weight_hh_l0{suffix}"]
        b_ih, b_hh = self.t[f"gru.bias_ih_l0{suffix}"], self.t[f"gru.bias_hh_l0{suffix}"]
        hidden = w_hh.shape[1]
        gates_x = x @ w_ih.T + b_ih  # (T, 3H)
        h = np.zeros(hidden, dtype=np.float32)
        out = np.empty((len(x), hidden), dtype=np.float32)
        for t in range(len(x)):
            gh = w_hh @ h + b_hh  # (3H,)
            r = 1 / (1 + np.exp(-(gates_x[t, :hidden] + gh[:hidden])))
            z = 1 / (1 + np.exp(-(gates_x[t, hidden : 2 * hidden] + gh[hidden : 2 * hidden])))
            n = np.tanh(gates_x[t, 2 * hidden :] + r * gh[2 * hidden :])
            h = (1 - z) * n + z * h
            out[t] = h
        return out
