"""Model files made from model files: several decoders merged into one ensemble
(:func:`merge_decoders`, ``photocap ensemble``), and the shipping copy of a trained model
(:func:`finalize_model`: fp16 weights, decoding settings chosen on dev).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from photocap.checkpoint import load_captioner, resolve_model_path, save_captioner
from photocap.encoder import Encoder, branch_state_dict
from photocap.errors import ModelError
from photocap.model import Captioner, Decoder, Ensemble


def merge_decoders(
    paths: Sequence[Path],
    out: Path,
    info: dict[str, Any] | None = None,
    keep: Sequence[int] | None = None,
) -> Path:
    """Write one model file whose decoder is an :class:`~photocap.model.Ensemble` of the
    decoders of ``paths`` (single models or ensembles): all of them, or those at the positions
    ``keep`` of the list of every file's decoders in turn. The models must share the preset,
    the vocabulary, the decoder architecture and the encoder's trunk; decoding settings come
    from the first. Models with one encoder (``--init BASE --reset-decoder``) share it; models
    whose encoders differ in their last blocks (``--scst-encoder-blocks``) get one encoder
    branch each (:class:`~photocap.encoder.EncoderBranch`), their decoders reading their own
    branch's grid, and the trunk runs once. Weights are stored fp16 like
    :func:`finalize_model`."""
    from dataclasses import replace

    if len(paths) < 2:
        raise ModelError("an ensemble needs at least two model files")
    models = [load_captioner(p, "cpu") for p in paths]
    first = models[0]
    for path, model in zip(paths, models, strict=True):
        if model.config.encoder.branches > 1:
            raise ModelError(f"{path} already has encoder branches: give the models it joined")
    for path, other in zip(paths[1:], models[1:], strict=True):
        same_arch = (
            replace(
                other.config,
                decoders=first.config.decoders,
                length_penalty=first.config.length_penalty,
                no_repeat_words=first.config.no_repeat_words,
            )
            == first.config
        )
        if not same_arch or other.preset != first.preset:
            raise ModelError(f"{path}: another architecture or preset than {paths[0]}")
        if other.vocab != first.vocab:
            raise ModelError(f"{path}: another vocabulary than {paths[0]}")
    # Every file's decoders in turn, as (model index, decoder); then the ones kept.
    pool = [(i, d) for i, m in enumerate(models) for d in _decoders_of(m)]
    if keep is not None:
        if len(keep) < 2 or len(set(keep)) < len(keep) or not set(keep) <= set(range(len(pool))):
            raise ModelError(
                f"keep two or more different decoders among 0..{len(pool) - 1}, not {list(keep)}"
            )
        pool = [pool[k] for k in keep]
    used = sorted({i for i, _ in pool})  # the models that give a decoder
    # One branch per distinct encoder among them, in order of first appearance.
    encoders: list[dict[str, torch.Tensor]] = []
    branch_of: dict[int, int] = {}  # model -> branch
    for i in used:
        state = models[i].encoder.state_dict()
        same = [b for b, known in enumerate(encoders) if _same_tensors(known, state)]
        branch_of[i] = same[0] if same else len(encoders)
        if not same:
            encoders.append(state)
    n_blocks = len(first.encoder._blocks)
    start = _shared_trunk([models[i].encoder for i in used])
    if start is None:
        bad = next(paths[i] for i in used if branch_of[i] > 0)
        raise ModelError(
            f"{bad}: another encoder than {paths[used[0]]}, not even the stem is shared "
            "(train decoders for one encoder with --init BASE --reset-decoder)"
        )
    branched = len(encoders) > 1
    encoder_config = replace(
        first.config.encoder,
        branches=len(encoders),
        branch_blocks=n_blocks - start if branched else 0,
    )
    config = replace(
        first.config,
        encoder=encoder_config,
        decoders=len(pool),
        decoder_branches=tuple(branch_of[i] for i, _ in pool) if branched else (),
    )
    ensemble = Captioner(config, first.vocab, first.preset)
    state = dict(encoders[0])
    for b, top in enumerate(encoders[1:]):  # each branch's own blocks and head
        state |= {f"_branches.{b}.{k}": v for k, v in branch_state_dict(top, start).items()}
    ensemble.encoder.load_state_dict(state)
    assert isinstance(ensemble.decoder, Ensemble)
    for member, (_, decoder) in zip(ensemble.decoder.decoders, pool, strict=True):
        member.load_state_dict(decoder.state_dict())
    ensemble.metadata = {  # what the members were, each with its own training run
        "name": first.metadata.get("name", "photocap-ensemble"),
        "training_data": first.metadata.get("training_data", ""),
        "ensemble_of": [
            {
                "file": Path(paths[i]).name,
                "model_id": models[i].model_id,
                "decoders": sum(1 for j, _ in pool if j == i),
                **({"encoder_branch": branch_of[i]} if branched else {}),
                **{
                    k: models[i].metadata[k]
                    # an ensemble's file keeps what its own members were
                    for k in (
                        "dev_greedy",
                        "best_stage",
                        "best_epoch",
                        "train_config",
                        "ensemble_of",
                    )
                    if k in models[i].metadata
                },
            }
            for i in used
        ],
    }
    return save_captioner(ensemble, out, half=True, info=info)


def extract_decoder(path: Path, index: int, out: Path, info: dict[str, Any] | None = None) -> Path:
    """Write decoder ``index`` of the ensemble in ``path`` as a model of its own
    (:meth:`~photocap.model.Captioner.decoder_alone`: that decoder, and the encoder branch it
    reads as a plain encoder). Weights are stored fp16, as the ensemble's."""
    source = load_captioner(path, "cpu")
    try:
        one = source.decoder_alone(index)
    except ValueError as err:
        raise ModelError(f"{path} has {err}") from None
    one.metadata["decoder_of"]["file"] = resolve_model_path(path).name
    return save_captioner(one, out, half=True, info=info)


def _decoders_of(model: Captioner) -> list[Decoder]:
    return model.decoder.decoders if isinstance(model.decoder, Ensemble) else [model.decoder]


def _shared_trunk(encoders: Sequence[Encoder]) -> int | None:
    """How many blocks all ``encoders`` share, from the first (their stems equal too): the
    trunk a branched encoder runs once; None if not even their stems are equal."""
    first, others = encoders[0], encoders[1:]
    if not all(_same_tensors(first.trunk_state_dict(0), e.trunk_state_dict(0)) for e in others):
        return None
    for i, block in enumerate(first._blocks):
        ours = block.state_dict()
        if not all(_same_tensors(ours, e._blocks[i].state_dict()) for e in others):
            return i
    return len(first._blocks)


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Equal at the precision an ensemble's file stores (fp16): a training run's fp32 output
    and the fp16 file it started from hold the same encoder."""

    def stored(t: torch.Tensor) -> torch.Tensor:
        return t.half() if t.is_floating_point() else t

    return a.keys() == b.keys() and all(torch.equal(stored(a[k]), stored(b[k])) for k in a)


def finalize_model(
    path: Path, out: Path, info: dict[str, Any] | None = None, **decoding: Any
) -> Path:
    """Write the shipping copy of a trained model: fp16 weights, extra info merged, and
    decoding settings chosen on dev (``length_penalty=``, ``no_repeat_words=``) stored in its
    config. fp16 halves the file; captions are unchanged within float noise."""
    from dataclasses import replace

    captioner = load_captioner(path, "cpu")
    if decoding:
        captioner.config = replace(captioner.config, **decoding)
    return save_captioner(captioner, out, half=True, info=info)
