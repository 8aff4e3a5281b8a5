"""The encoder on OpenVINO: a cheaper model stage when captioning on a CPU.

On the 2-core CPU, OpenVINO runs photocap's encoder (EfficientNet-Lite2, BatchNorm folded)
~2.3x faster than torch does (28.9 vs 67.4 ms a photo on one thread, 16.3 vs 37.4 on two; the
model stage 1.35-1.39x: ``benchmarks/bench_runtime.py``), and its features equal torch's bit
for bit there (fp32 both; on other CPUs they may differ by float rounding, which can change a
close beam-search choice). Each build checks OpenVINO's features against torch's on a fixed
input. The decoders stay on torch.

The model file stays the one safetensors file. What OpenVINO runs is derived from it on first
use and kept in the user cache folder (``PHOTOCAP_CACHE``, else ``~/.cache/photocap`` on
Linux), named by the model file's SHA-256 and :data:`EXPORT_VERSION`: the BN-folded encoder
exported to ONNX by ``torch.onnx`` (a protobuf file: loading it runs no code), and OpenVINO's
compiled blobs beside it (its ``CACHE_DIR``). OpenVINO's model converter (``ovc``,
``openvino.convert_model``) is not used: it sends telemetry unless the user opted out; the
runtime that reads ONNX sends nothing. Anything that fails here (OpenVINO not installed, an
export or compile error, an unwritable cache, features unlike torch's) leaves the encoder on
torch, with the reason in :attr:`EncoderRuntime.name`; so does a failure later in the run
(:meth:`photocap.model.Captioner.encode`).

A ``photocap caption`` run with fewer than :data:`MIN_PHOTOS` photos to decode keeps the
encoder on torch: OpenVINO's start would cost more than it saves. ``PHOTOCAP_RUNTIME=torch``
keeps the encoder on torch always, ``PHOTOCAP_RUNTIME=openvino`` tries OpenVINO always.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from photocap.errors import one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

RUNTIME_ENV = "PHOTOCAP_RUNTIME"  # "torch", "openvino", or unset: by the run's size
# OpenVINO's start in a process (its libraries, the ONNX file, two compiles, the check) costs
# ~2 s once; it saves ~20 ms a photo on 2 cores: a run with fewer photos to decode than this
# keeps the encoder on torch (PHOTOCAP_RUNTIME=openvino: always OpenVINO).
MIN_PHOTOS = 100


def wants_runtime(photos: int | None) -> bool:
    """Whether a run decoding ``photos`` photos (None: unknown, e.g. ``evaluate``'s own
    count) should try OpenVINO for its encoder."""
    choice = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if choice in ("torch", "openvino"):
        return choice == "openvino"
    return photos is None or photos >= MIN_PHOTOS


CACHE_ENV = "PHOTOCAP_CACHE"
# In the cached file's name with the model's hash: a new version of the export (or of what is
# exported: the encoder, the BatchNorm folding) must not reuse an old file.
EXPORT_VERSION = 1
# OpenVINO's features must equal torch's on a fixed input to this (relative to the largest
# feature), else the file is exported again once, then torch: fp32 on both sides differs by
# rounding only (~1e-6; 0 on AVX-512), a wrong or stale file by whole units.
AGREEMENT = 1e-3


def cache_dir() -> Path:
    """Where derived files live: ``$PHOTOCAP_CACHE``, else the per-user cache folder."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("photocap", appauthor=False)


class OpenVinoEncoder:
    """An encoder compiled by OpenVINO: float (B, 3, S, S) normalised pixels -> (B, L, D).

    Compiled once per torch thread count (the run gives the model half the cores while decode
    workers decode, every core otherwise: see ``photocap.run.caption.CoreShare``), in fp32:
    OpenVINO's default on CPUs with bf16 units is bf16, which changes features by ~8 % and so
    captions.
    """

    def __init__(self, onnx_path: Path, blobs: Path) -> None:
        import openvino

        self.core = openvino.Core()
        self.model = self.core.read_model(os.fspath(onnx_path))
        self.blobs = blobs
        self.version = openvino.get_version().split("-")[0]
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()

    def compile_for(self, *threads: int) -> None:
        """Compile now for these thread counts (~0.6 s each), e.g. on the thread that builds
        the model while photos decode, rather than on the first batch."""
        for count in threads:
            self._request(max(1, count))

    def _request(self, threads: int) -> Any:
        with self._lock:
            compiled = self._compiled.get(threads)
            if compiled is None:
                config = {
                    "INFERENCE_NUM_THREADS": threads,
                    "INFERENCE_PRECISION_HINT": "f32",
                    "PERFORMANCE_HINT": "LATENCY",
                    "CACHE_DIR": os.fspath(self.blobs),
                }
                compiled = self.core.compile_model(self.model, "CPU", config)
                self._compiled[threads] = compiled
            return compiled.create_infer_request()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        request = self._request(max(1, torch.get_num_threads()))
        out = request.infer({0: pixels.detach().contiguous().numpy()})[0]  # (B, L, D)
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))


class EncoderRuntime:
    """What runs the encoder on a CPU: ``encoder`` (OpenVINO) or None (torch), and why."""

    def __init__(self, encoder: OpenVinoEncoder | None, name: str) -> None:
        self.encoder = encoder
        self.name = name  # "openvino 2026.4.1", or "torch (openvino: <why not>)"


def build_encoder_runtime(
    fused: nn.Module, image_size: int, digest: str, threads: Iterable[int] = ()
) -> EncoderRuntime:
    """The OpenVINO encoder for ``fused`` (the BN-folded encoder of the model file whose SHA-256
    is ``digest``), from the cache or exported now, compiled for each of ``threads`` (others
    are compiled when first used); torch when it cannot be had."""
    if os.environ.get(RUNTIME_ENV, "").strip().lower() == "torch":
        return EncoderRuntime(None, f"torch ({RUNTIME_ENV}=torch)")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import openvino  # noqa: F401
    except ImportError as err:
        return EncoderRuntime(None, f"torch (openvino: {err.name or 'it'} is not installed)")
    folder = cache_dir() / "openvino"
    onnx_path = folder / f"encoder-{digest[:16]}-{image_size}-v{EXPORT_VERSION}.onnx"
    try:
        cached = onnx_path.exists()
        if not cached:
            _export_onnx(fused, image_size, onnx_path)
        try:
            encoder = _compile(fused, image_size, onnx_path, folder / "blobs", threads)
        except Exception:
            if not cached:
                raise
            # A cached file that no longer reads, or computes other features (a disk error, a
            # file copied over it): made again once, rather than used, or every later run
            # falling back to torch.
            onnx_path.unlink(missing_ok=True)
            _export_onnx(fused, image_size, onnx_path)
            encoder = _compile(fused, image_size, onnx_path, folder / "blobs", threads)
    except Exception as err:  # an export or compile failure must not stop a caption run
        reason = one_line(err, 160)
        return EncoderRuntime(None, f"torch (openvino: {reason})")
    return EncoderRuntime(encoder, f"openvino {encoder.version}")


def _compile(
    fused: nn.Module, image_size: int, onnx_path: Path, blobs: Path, threads: Iterable[int]
) -> OpenVinoEncoder:
    """``onnx_path`` compiled for ``threads``, checked to compute ``fused``'s features."""
    import torch

    encoder = OpenVinoEncoder(onnx_path, blobs)
    encoder.compile_for(*sorted(threads))
    # A fixed, varied input (a ramp through every channel), normalised like photos are.
    probe = torch.linspace(-1.0, 1.0, 3 * image_size * image_size).reshape(1, 3, image_size, -1)
    with torch.no_grad():
        want = fused(probe)  # (1, L, D)
    got = encoder(probe)
    scale = float(want.abs().max()) or 1.0
    difference = float((got - want).abs().max()) / scale if got.shape == want.shape else 1.0
    if not difference <= AGREEMENT:
        raise RuntimeError(f"its features differ from torch's by {difference:.2g}")
    return encoder


def _export_onnx(fused: nn.Module, image_size: int, path: Path) -> None:
    """``fused`` as ONNX at ``path`` (atomic: a temp file renamed), batch size dynamic."""
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    _tidy(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    example = torch.zeros(2, 3, image_size, image_size)
    try:
        # torch.onnx.export puts the module back in the mode it had: eval, so that the torch
        # encoder computes the same features afterwards (a training-mode wrapper came back
        # with stochastic depth on in every block).
        fused.eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: the padding is fixed per size
            torch.onnx.export(
                fused, (example,), os.fspath(tmp), input_names=["pixels"],
                output_names=["features"], opset_version=17, dynamo=False,
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            )  # fmt: skip
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tidy(path: Path) -> None:
    """Remove what ``path`` replaces: the same model's files of other export versions, and
    temp files of exports killed mid-way (over an hour old: another run's may be writing)."""
    import time

    model = path.name.split("-")[1]
    for old in path.parent.glob(f"encoder-{model}-*.onnx"):
        if old != path:
            old.unlink(missing_ok=True)
    for temp in path.parent.glob(".encoder-*.onnx.tmp-*"):
        try:
            if time.time() - temp.stat().st_mtime > 3600:
                temp.unlink(missing_ok=True)
        except OSError:
            pass
