"""``photocap evaluate``: the standard captioning metrics on a Flickr8k split.

Scores come from **pycocoevalcap**, the reference implementation used by published work: the PTB
tokenizer, BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr(-D). The tokenizer and METEOR run Java
(``default-jre-headless``); without Java, METEOR is reported as missing rather than guessed.
SPICE is never called (it downloads Stanford CoreNLP at run time).

Photos go through the same preset as ``photocap caption`` and training.

Also the in-training dev score: :func:`score_dev` (greedy captions scored in-process) and
:func:`selection_score`, which picks a run's best epoch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from photocap.decoding import DEFAULT_BEAM_SIZE
from photocap.errors import PhotocapError
from photocap.training.cider import corpus_bleu4, corpus_cider
from photocap.training.config import TrainConfig
from photocap.vocab import tokenize

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from photocap.model import Captioner


def score_dev(
    captioner: Captioner, features: torch.Tensor, refs: list[list[list[str]]], beam_size: int = 1
) -> dict[str, float]:
    """Caption dev features and score them (CIDEr-D, BLEU-4 in-process)."""
    captions = []
    for i in range(0, len(features), 250):
        captions += captioner.caption_features(features[i : i + 250].float(), beam_size)
    hyps = [tokenize(c.text) for c in captions]
    return {"cider": corpus_cider(hyps, refs), "bleu4": corpus_bleu4(hyps, refs)}


def selection_score(dev: dict[str, float], config: TrainConfig) -> float:
    """What picks the best epoch: dev CIDEr-D, plus ``bleu_weight`` x dev BLEU-4."""
    return dev["cider"] + config.bleu_weight * dev.get("bleu4", 0.0)


METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@dataclass
class EvalReport:
    """Scores of one model on one split, plus a few examples beside their references."""

    split: str
    photos: int
    beam_size: int
    model_id: str
    scores: dict[str, float | None]
    examples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What ran the encoder and the decoders' step (on a CPU, OpenVINO; the decoders in int8,
    # whose captions differ from torch's on ~2 % of photos: see photocap.runtime).
    runtime: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "photos": self.photos,
            "beam_size": self.beam_size,
            "model_id": self.model_id,
            "scores": self.scores,
            "examples": self.examples,
            "notes": self.notes,
            "runtime": self.runtime,
        }


def score_captions(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[str, float | None], list[str]]:
    """pycocoevalcap scores of hypotheses[i] against references[i]. Returns (scores, notes)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ModuleNotFoundError:
        raise PhotocapError(
            "evaluation needs pycocoevalcap: pip install 'photocap[train]'"
        ) from None
    notes: list[str] = []
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": h}] for i, h in enumerate(hypotheses)}
    java = shutil.which("java") is not None
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts_tok, res_tok = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    else:  # the PTB tokenizer is Java; this fallback lower-cases and drops punctuation alike
        from photocap.vocab import tokenize

        notes.append("java not found: simple tokenizer used, METEOR not computed")
        gts_tok = {i: [" ".join(tokenize(c["caption"])) for c in v] for i, v in gts.items()}
        res_tok = {i: [" ".join(tokenize(c["caption"])) for c in v] for i, v in res.items()}
    # An empty hypothesis breaks BLEU's reference implementation; score it as one unknown word.
    res_tok = {i: [h if h.strip() else "<empty>" for h in v] for i, v in res_tok.items()}
    scores: dict[str, float | None] = {}
    bleu, _ = Bleu(4).compute_score(gts_tok, res_tok, verbose=0)
    for n in range(4):
        scores[f"BLEU-{n + 1}"] = float(bleu[n])
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            scores["METEOR"] = float(meteor.compute_score(gts_tok, res_tok)[0])
        finally:
            close = getattr(meteor, "close", None)
            if callable(close):
                close()
    else:
        scores["METEOR"] = None
    scores["ROUGE-L"] = float(Rouge().compute_score(gts_tok, res_tok)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts_tok, res_tok)[0])
    return scores, notes


def evaluate_model(
    data: Path,
    split: str = "dev",
    model: Path | None = None,
    beam_size: int = DEFAULT_BEAM_SIZE,
    device: str = "auto",
    batch_size: int = 64,
    limit: int | None = None,
    workers: int = 0,
    examples: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Caption every photo of ``split`` with ``model`` and score the captions."""
    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.features import load_pixels

    dataset = load_flickr8k(data)
    names = dataset.split(split, limit)
    captioner = load_captioner(model, device, runtime=True)
    hypotheses: list[str] = []
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        pixels = load_pixels([dataset.image_path(n) for n in chunk], captioner.preset, workers)
        with torch.inference_mode():
            hypotheses += [c.text for c in captioner.caption_batch(pixels, beam_size)]
        if progress is not None:
            progress(len(hypotheses), len(names))
    references = [dataset.captions[n] for n in names]
    scores, notes = score_captions(hypotheses, references)
    shown = [
        {"image": n, "caption": h, "references": r}
        for n, h, r in list(zip(names, hypotheses, references, strict=True))[:examples]
    ]
    runtime = {"encoder": captioner.runtime_name, "decoders": captioner.decoder_runtime_name}
    return EvalReport(
        split, len(names), beam_size, captioner.model_id, scores, shown, notes, runtime
    )
