"""The one image preset shared by training, evaluation and captioning.

A model is only as good as the match between the pixels it was trained on and the pixels it is
shown later. Every path into the model (``train``, ``evaluate``, ``caption``) therefore goes
through :class:`Preset`: the photo is decoded to RGB (EXIF orientation applied by the caller),
squashed to ``size x size`` (Flickr8k as shipped is squashed, so we do the same), turned into a
uint8 tensor, and normalised on the model's device.

The preset's values are stored in every checkpoint (see :mod:`photocap.checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Preset:
    """Image size and normalisation a model expects."""

    size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # EfficientNet-Lite: scale to [-1, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def resize(self, image: Image.Image) -> Image.Image:
        """RGB, squashed to ``size x size`` (aspect ratio not kept, as in training)."""
        from PIL import Image as PILImage

        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize(
                (self.size, self.size), PILImage.Resampling.BILINEAR, reducing_gap=None
            )
        return image

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 tensor (3, size, size), ready to be batched and sent to a device."""
        import numpy as np
        import torch

        array = np.asarray(self.resize(image), dtype=np.uint8)  # (S, S, 3)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (3, S, S)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) on any device -> float (B, 3, S, S) normalised for the encoder."""
        import torch

        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std  # (B, 3, S, S)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        return cls(
            size=int(data["size"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
        )
