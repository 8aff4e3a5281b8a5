"""Near words from the model's own knowledge, for search: "kid" also finds boy, child, girl.

The decoder's output layer holds one vector per word of the vocabulary: the weights that score
it as the caption's next word. Words the model says in the same places have near vectors, so
the nearest ones are synonyms and near terms as the captions of Flickr8k use them: kid ~ boy,
child, girl; puppy ~ dog; lady ~ woman; guy ~ man; bike ~ bicycle; ocean ~ sea; city ~ street.
(The input embeddings, measured too, are not: their neighbours are unrelated words.) They come
from the model file itself, read with numpy through safetensors (no torch, ~60 ms), the
members of an ensemble side by side, so they need no download and no other resource.

What they are not: synonyms in the dictionary's sense. Near vectors also join opposites the
captions use alike (woman ~ man, red ~ blue), so search uses near words only after the words
typed (:meth:`photocap.index.PhotoIndex.search`): a photo with the word itself always ranks
above one found through a near word. Measured on dev by ``benchmarks/search_quality.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Cosine similarity a near word needs (of the concatenated, normalised output vectors), and
# how many are taken per word: chosen on dev (benchmarks/search_quality.py --near-sweep).
NEAR_SIMILARITY = 0.3
NEAR_WORDS = 2


class NearWords:
    """The vocabulary of a model and its words' output vectors, normalised: (V, E)."""

    def __init__(self, words: list[str], vectors: Any) -> None:
        import numpy as np

        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = vectors / np.maximum(norms, 1e-12)  # (V, E)

    @classmethod
    def from_model(cls, path: Path) -> NearWords:
        """The near words of the model file at ``path`` (a photocap safetensors file)."""
        import numpy as np
        from safetensors import safe_open

        from photocap.checkpoint import read_metadata

        words = json.loads(read_metadata(path)["vocab"])
        with safe_open(str(path), framework="numpy") as f:
            names = sorted(k for k in f.keys() if k.endswith("out.weight"))  # noqa: SIM118
            parts = [f.get_tensor(k).astype(np.float32) for k in names]  # each (V, E)
        parts = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
        return cls(words, np.concatenate(parts, axis=1))  # (V, M*E)

    def of(self, word: str, k: int = NEAR_WORDS, similarity: float = NEAR_SIMILARITY) -> list[str]:
        """Up to ``k`` words nearest to ``word`` with at least ``similarity``, nearest first;
        none for a word the model does not know or a token that is not a word."""
        i = self.index.get(word)
        if i is None:
            return []
        sims = self.vectors @ self.vectors[i]  # (V,)
        out: list[str] = []
        for j in sims.argsort()[::-1]:
            if len(out) >= k or sims[j] < similarity:
                break
            near = self.words[j]
            if j != i and near.isalpha() and not near.startswith("<"):
                out.append(near)
        return out
