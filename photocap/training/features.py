"""The training data as tensors: photos decoded through the preset (:func:`load_pixels`),
captions as token ids (:func:`encode_captions`), and the encoder's features of the photos
(:func:`extract_features`), cached on disk keyed by the photos' content and the encoder's
weights (:func:`cached_features`), so that every epoch of the frozen-encoder stages, and the
next run, costs no encoder pass.

Shapes: N photos, S image size, L grid locations, D feature channels, T caption tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from photocap.model import Captioner
from photocap.preset import Preset
from photocap.vocab import Vocab


class _PhotoFiles(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, paths: Sequence[Path], preset: Preset) -> None:
        self.paths, self.preset = list(paths), preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.preset.to_uint8(image)  # (3, S, S) uint8


def load_pixels(paths: Sequence[Path], preset: Preset, workers: int) -> torch.Tensor:
    """Decode photos in worker processes -> uint8 (N, 3, S, S) in memory (Flickr8k: ~1 GB)."""
    loader = torch.utils.data.DataLoader(
        _PhotoFiles(paths, preset), batch_size=64, num_workers=workers, shuffle=False
    )
    return (
        torch.cat(list(loader))
        if len(paths)
        else torch.zeros(0, 3, preset.size, preset.size, dtype=torch.uint8)
    )


def content_key(path: Path) -> str:
    """SHA-1 of a file's bytes: what the caches of its features and captions are keyed by."""
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


def _encoder_digest(captioner: Captioner, start: int | None = None) -> str:
    """Digest of what the cached tensors depend on: the preset and the encoder's weights, or
    with ``start`` only the trunk's (a run that trains the encoder's top, and a run continued
    from it, share one cache of trunk activations)."""
    import hashlib

    h = hashlib.sha256()
    state = (
        captioner.encoder.state_dict()
        if start is None
        else captioner.encoder.trunk_state_dict(start)
    )
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    h.update(json.dumps(captioner.preset.to_dict()).encode())
    return h.hexdigest()[:16]


@torch.inference_mode()
def extract_features(
    captioner: Captioner, pixels: torch.Tensor, batch_size: int = 128, start: int | None = None
) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> fp16 features (N, L, D) on the captioner's device; with ``start``,
    the encoder's activations before block ``start`` instead (N, c, h, w)."""
    captioner.encoder.eval()
    out = []
    for i in range(0, len(pixels), batch_size):
        if start is None:
            out.append(captioner.encode(pixels[i : i + batch_size]).half())  # (b, L, D)
        else:
            images = captioner.preset.normalize(pixels[i : i + batch_size].to(captioner.device))
            with autocast_for(captioner.device):
                acts = captioner.encoder.forward_trunk(images, start)  # (b, c, h, w)
            out.append(acts.half())
    return torch.cat(out)  # (N, L, D) or (N, c, h, w)


def encode_top(
    captioner: Captioner, acts: torch.Tensor, start: int, batch_size: int = 250
) -> torch.Tensor:
    """Cached trunk activations (N, c, h, w) -> features (N, L, D) float, without gradients."""
    with torch.no_grad(), autocast_for(captioner.device):
        out = [
            captioner.encoder.forward_top(acts[i : i + batch_size].float(), start).float()
            for i in range(0, len(acts), batch_size)
        ]  # each (b, L, D)
    return torch.cat(out)  # (N, L, D)


def cached_features(
    captioner: Captioner,
    paths: Sequence[Path],
    pixels: torch.Tensor,
    cache_dir: Path | None,
    start: int | None = None,
) -> torch.Tensor:
    """Features of ``paths`` from the cache (by content + encoder), extracting what is missing.
    With ``start``: the activations before encoder block ``start`` (:func:`extract_features`)."""
    if cache_dir is None:
        return extract_features(captioner, pixels, start=start)
    from safetensors.torch import load_file, save_file

    cache_dir.mkdir(parents=True, exist_ok=True)
    kind = "features" if start is None else f"trunk{start}"
    cache = cache_dir / f"{kind}-{_encoder_digest(captioner, start)}.safetensors"
    keys = [content_key(p) for p in paths]
    stored: dict[str, torch.Tensor] = load_file(str(cache)) if cache.exists() else {}
    todo = [i for i, k in enumerate(keys) if k not in stored]
    if todo:
        fresh = extract_features(captioner, pixels[todo], start=start).cpu()  # (n, ...)
        stored.update({keys[i]: fresh[j] for j, i in enumerate(todo)})
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")  # one per process: no race
        try:
            save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp))
            os.replace(tmp, cache)
        finally:
            tmp.unlink(missing_ok=True)
    return torch.stack([stored[k] for k in keys]).to(captioner.device)  # (N, L, D)


def encode_captions(vocab: Vocab, captions: Sequence[str], max_words: int) -> torch.Tensor:
    rows = [vocab.encode(c, max_words) for c in captions]
    tokens = torch.full((len(rows), max_words + 2), vocab.pad_id, dtype=torch.long)  # (P, T)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


def autocast_for(device: torch.device) -> Any:
    """bf16 autocast on a GPU, nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
