"""Sequence-level knowledge distillation (Kim and Rush 2016): a *teacher* model's beam captions
of the train photos join the human captions as cross-entropy targets of a smaller *student*
(``photocap train --teacher ENSEMBLE``). The student learns to say in one decoder what the
ensemble says with three; self-critical training then tunes it against the human captions.

The teacher's captions are cached on disk by the teacher's id, the beam size and each photo's
content, so a second run (or a resumed one) decodes none of them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from photocap.checkpoint import load_captioner, read_metadata, resolve_model_path
from photocap.errors import ModelError
from photocap.preset import Preset
from photocap.training.features import content_key
from photocap.vocab import Vocab

BATCH = 64  # photos the teacher captions at a time; the cache is written after each


def teach_captions(
    teacher: Path,
    paths: Sequence[Path],
    pixels: torch.Tensor,
    cache_dir: Path,
    beam_size: int,
    device: torch.device,
) -> list[str]:
    """The teacher's beam-search caption of each photo, from the cache or decoded now.

    ``pixels``: uint8 (N, 3, S, S), decoded through the student's preset; the teacher's
    vocabulary and preset are the student's (:func:`check_teacher`, before the decoding)."""
    captioner = load_captioner(teacher, str(device))
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_id = captioner.model_id.replace("/", "_").replace("@", "-")
    cache = cache_dir / f"teacher-{model_id}-beam{beam_size}.json"
    stored = _read_cache(cache)
    keys = [content_key(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in stored]
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        captions = captioner.caption_batch(pixels[chunk], beam_size)  # uint8 (b, 3, S, S) in
        stored.update({keys[i]: c.text for i, c in zip(chunk, captions, strict=True)})
        # Atomic, and a temporary name per process: two runs sharing the cache (two students
        # of one teacher) never write one file; an interrupted run keeps what it decoded.
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(stored))
            os.replace(tmp, cache)
        finally:
            tmp.unlink(missing_ok=True)
    return [stored[k] for k in keys]


def check_teacher(teacher: Path, vocab: Vocab, preset: Preset) -> None:
    """Refuse a teacher whose vocabulary or preset is not the student's, from its header only:
    before the train photos are decoded for nothing."""
    meta = read_metadata(resolve_model_path(teacher))
    try:
        words, theirs = json.loads(meta["vocab"]), Preset.from_dict(json.loads(meta["preset"]))
    except (KeyError, ValueError, TypeError) as err:
        raise ModelError(f"corrupt teacher model file {teacher}: {err!r}") from None
    if Vocab(tuple(words)) != vocab:
        raise ModelError(f"teacher {teacher}: another vocabulary than the student's")
    if theirs != preset:
        raise ModelError(f"teacher {teacher}: another image preset than the student's")


def _read_cache(cache: Path) -> dict[str, str]:
    """The cached captions; an unreadable cache (cut short, or edited) is decoded again."""
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}
