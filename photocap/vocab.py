"""Words <-> token ids, and the sentence form users see.

Tokenisation is deliberately simple and matches how captions are scored: lower case, words and
numbers only, punctuation dropped (the PTB tokenizer of pycocoevalcap does the same before
BLEU/METEOR/CIDEr). The vocabulary is built from the *training* captions only and is stored in
every checkpoint, so a model file always decodes its own ids.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """``"A dog's ball, red."`` -> ``["a", "dog's", "ball", "red"]``."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocab:
    """An ordered list of words; index = token id. Ids 0..3 are the special tokens."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.words[: len(SPECIALS)] != SPECIALS:
            raise ValueError("a vocabulary starts with <pad>, <start>, <end>, <unk>")
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> Vocab:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(SPECIALS + tuple(kept))

    def id(self, word: str) -> int:
        return self._ids.get(word, self.unk_id)  # type: ignore[attr-defined]

    def encode(self, text: str, max_words: int | None = None) -> list[int]:
        """``"A dog runs."`` -> ``[<start>, a, dog, runs, <end>]`` ids (truncated to max_words)."""
        words = tokenize(text)
        if max_words is not None:
            words = words[:max_words]
        return [self.start_id, *(self.id(w) for w in words), self.end_id]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Token ids -> words, stopping at <end>, skipping the other special tokens."""
        out: list[str] = []
        for i in ids:
            if i == self.end_id:
                break
            if i >= len(SPECIALS):
                out.append(self.words[i])
        return out


def to_sentence(words: Sequence[str]) -> str:
    """``["a", "dog", "runs"]`` -> ``"A dog runs."``: what users, XMP and alt text get."""
    if not words:
        return ""
    text = " ".join(words)
    text = re.sub(r" (?='s\b)", "", text)  # tolerate tokens like "'s" from other tokenizers
    return text[0].upper() + text[1:] + "."
