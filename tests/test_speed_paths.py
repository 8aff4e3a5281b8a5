"""Speed paths give the same answers: the BatchNorm-folded, channels-last inference encoder
(``Captioner.optimize_for_inference``, used by ``load_captioner`` on CPU) against the unfused
module, on the tiny random model and on the shipped model with the example photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from photocap.checkpoint import build_random_captioner, default_model_path, load_captioner
from photocap.model import Captioner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _unfused_features(cap: Captioner, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return cap.encoder(cap.preset.normalize(pixels)).float()


def _trained_bn(cap: Captioner, seed: int = 1) -> Captioner:
    """Non-trivial BatchNorm statistics, so that folding actually changes the weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in cap.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return cap


def _pixels(cap: Captioner, n: int, seed: int = 0) -> torch.Tensor:
    size = cap.preset.size
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def test_folded_encoder_matches_unfused_on_tiny_model() -> None:
    cap = _trained_bn(build_random_captioner(seed=3))
    pixels = _pixels(cap, 6)
    ref = _unfused_features(cap, pixels)
    plain = cap.caption_batch(pixels, beam_size=3)
    state_before = {k: v.clone() for k, v in cap.state_dict().items()}
    cap.optimize_for_inference()
    assert cap._inference_encoder() is None  # gradients on: never the copy
    with torch.inference_mode():
        assert cap._inference_encoder() is not None
        got = cap.encode(pixels)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert cap.caption_batch(pixels, beam_size=3) == plain
    # The model itself is untouched: same keys and values, BatchNorm still there for training.
    state_after = cap.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in cap.encoder.modules())
    assert not any(name.startswith("_fused") for name, _ in cap.named_modules())


def test_folded_copy_follows_weight_changes_and_train_mode() -> None:
    cap = _trained_bn(build_random_captioner(seed=4)).optimize_for_inference()
    pixels = _pixels(cap, 3)
    with torch.inference_mode():
        before = cap.encode(pixels)
    _trained_bn(cap, seed=9)  # like a training step / load_state_dict: weights change in place
    ref = _unfused_features(cap, pixels)
    with torch.inference_mode():
        after = cap.encode(pixels)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    cap.encoder.train()
    with torch.no_grad():
        assert cap._inference_encoder() is None  # training mode: the real encoder (BN batch stats)
    cap.encoder.eval()


def test_load_captioner_folds_on_cpu(model_file: Path) -> None:
    cap = load_captioner(model_file, device="cpu")
    with torch.inference_mode():
        assert cap._inference_encoder() is not None


@pytest.mark.skipif(not default_model_path().exists(), reason="shipped model not present")
def test_shipped_model_same_features_and_captions_on_examples() -> None:
    from photocap.image import DecodedPhoto, decode_photo

    cap = load_captioner(None, device="cpu")  # folded + channels-last
    photos = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    decoded = [decode_photo(str(p), cap.preset) for p in photos]
    assert decoded and all(isinstance(d, DecodedPhoto) for d in decoded)
    pixels = torch.stack(
        [torch.from_numpy(d.pixels) for d in decoded if isinstance(d, DecodedPhoto)]
    )
    ref = _unfused_features(cap, pixels)
    with torch.inference_mode():
        got = cap.encode(pixels)
        folded = cap.caption_features(got, beam_size=3)
        unfused = cap.caption_features(ref, beam_size=3)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert [c.text for c in folded] == [c.text for c in unfused]
    assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(folded, unfused, strict=True))
