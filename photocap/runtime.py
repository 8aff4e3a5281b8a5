"""The model on OpenVINO: a cheaper model stage when captioning on a CPU.

Two parts of the model run on OpenVINO, Intel's CPU inference runtime; the rest stays on torch.

**The encoder** (EfficientNet-Lite2, BatchNorm folded), in fp32: ~2.3x faster than torch on
the 2-core CPU (19-21 vs 46-54 ms a photo on one thread: ``benchmarks/bench_runtime.py``), its
features equal to torch's bit for bit there (on other CPUs they may differ by float rounding,
which can change a close beam-search choice). Each build checks them against torch's on a fixed
input. A ``photocap caption`` run with fewer than :data:`MIN_PHOTOS` photos to decode keeps the
encoder on torch: OpenVINO's start would cost more than it saves.

**The decoders' step** (every decoder's next word and their mean: an ensemble's
:meth:`photocap.model.Ensemble.fused_step`, or :meth:`photocap.model.Decoder.step`), with int8
weights: each large matrix product's weights in int8 with one scale per output row, the
activations quantised on the fly in groups of :data:`ACTIVATION_GROUP` values (OpenVINO's
dynamic quantisation, on the CPU's VNNI/AMX int8 units where it has them). Beam search is
1.7-1.9x cheaper for it, the model stage ~2x with the encoder (1.99-2.29x measured), and the
captions are not exactly torch's: 983 of the 1,000 dev photos identical, dev scores within
0.0009. So that a photo's caption does not depend on how many photos a run has (nor on the
engine), the decoders use OpenVINO in every CPU run that can have it, whatever its size. Each
build checks the step against torch's on a fixed input (:func:`_compile_step`). Training never
uses it: it runs only in eval mode without gradients, and only while the weights are those it
was made from.

The model file stays the one safetensors file. What OpenVINO runs is derived from it on first
use and kept in the user cache folder (``PHOTOCAP_CACHE``, else ``~/.cache/photocap`` on
Linux), named by the model file's SHA-256 and a version: the BN-folded encoder exported to ONNX
by ``torch.onnx`` (a protobuf file: loading it runs no code); the decoders' step exported the
same way, quantised, and saved in OpenVINO's own format (an XML graph and its weights: loading
it runs no code); and OpenVINO's compiled blobs beside them (its ``CACHE_DIR``). OpenVINO's
model converter (``ovc``, ``openvino.convert_model``) is not used: it sends telemetry unless
the user opted out; the runtime that reads ONNX and XML sends nothing. Anything that fails
here (OpenVINO or onnx not installed, an export or compile error, an unwritable cache, a part
unlike torch's) leaves that part on torch, with the reason in its runtime's ``name``; so does
a failure later in the run (:meth:`photocap.model.Captioner.encode`,
:meth:`~photocap.model.Captioner.caption_features`). ``PHOTOCAP_RUNTIME=torch`` keeps the
whole model on torch, ``PHOTOCAP_RUNTIME=openvino`` tries OpenVINO for the encoder in every
run too. On a GPU nothing here is used.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from photocap.errors import one_line
from photocap.paths import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

_T = TypeVar("_T")

RUNTIME_ENV = "PHOTOCAP_RUNTIME"  # "torch", "openvino", or unset: by the run's size
# OpenVINO's start in a process (its libraries, the ONNX file, two compiles, the check) costs
# ~2 s once; it saves ~20 ms a photo on 2 cores: a run with fewer photos to decode than this
# keeps the encoder on torch (PHOTOCAP_RUNTIME=openvino: always OpenVINO).
MIN_PHOTOS = 100


def wants_runtime(photos: int | None) -> bool:
    """Whether a run decoding ``photos`` photos (None: unknown, e.g. ``evaluate``'s own
    count) should try OpenVINO for its encoder (the decoders try it in every run)."""
    choice = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if choice in ("torch", "openvino"):
        return choice == "openvino"
    return photos is None or photos >= MIN_PHOTOS


# In the cached file's name with the model's hash: a new version of the export (or of what is
# exported: the encoder, the BatchNorm folding) must not reuse an old file.
EXPORT_VERSION = 1
# The decoders' step file: 2 since an ensemble's step is exported from its fused_step.
STEP_VERSION = 2
# OpenVINO's features must equal torch's on a fixed input to this (relative to the largest
# feature), else the file is exported again once, then torch: fp32 on both sides differs by
# rounding only (~1e-6; 0 on AVX-512), a wrong or stale file by whole units.
AGREEMENT = 1e-3
# The int8 step's next-word probabilities must be within this of torch's on a fixed input
# (measured: 0.004 at most for the shipped model), a wrong or stale file's differ by ~1.
STEP_AGREEMENT = 0.05
# Its new LSTM state (h, c) must be within this of torch's, relative to the largest |c| (at
# least 1): measured 0.028 for the shipped model; an output swapped or lost differs by ~1.
STATE_AGREEMENT = 0.1
# Activations are quantised in groups of this many values (OpenVINO's
# DYNAMIC_QUANTIZATION_GROUP_SIZE), each group with its own scale: the size measured in
# benchmarks/int8_decoders.py (captions and speed as good as 32 or 64).
ACTIVATION_GROUP = 128
# The exported step's outputs, read by these names.
STEP_OUTPUTS = ("scores", "h_next", "c_next", "alpha")
# Photos the OpenVINO encoder runs at a time (see OpenVinoEncoder): its memory, not its speed.
ENCODER_CHUNK = 4
# Matrix products with a weight smaller than this on either side stay in fp32: int8 saves
# nothing there (the attention's score vector, a tiny test model's layers).
MIN_INT8_SIDE = 64


def _missing_package(names: tuple[str, ...] = ("openvino",)) -> str:
    """The first of ``names`` not installed, or "". Found, not imported: importing onnx
    (``torch.onnx.export`` writes with it) costs ~0.7 s, and it is needed only when a file is
    exported, once per model."""
    from importlib.util import find_spec

    for name in names:
        try:
            if find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return ""


class _Compiled:
    """An OpenVINO model compiled for the threads the model was built with (a run: every core
    torch had), in fp32: OpenVINO's default on CPUs with bf16 units is bf16, which changes
    features by ~8 % and so captions.

    It keeps those threads while decode workers decode, unlike torch, whose threads the run
    halves then (``photocap.run.caption.CoreShare``): torch's OpenMP threads spin-wait for each
    other at every operator and stall when a worker takes a core; OpenVINO's do not. Measured
    on the 2-core CPU (2026-12-03): all the threads always against half while decoding, 240
    640x480 photos 19.5-20.5 vs 14.6-14.7 photos/s, 120 12-MP photos 13.6-13.7 vs 12.9-13.9;
    and one compiled model per part, not one per thread count, holds half the memory."""

    def __init__(self, path: Path, blobs: Path, config: dict[str, Any] | None = None) -> None:
        import openvino

        self.core = openvino.Core()
        self.path = path
        self.model: Any = None  # read when a thread count is compiled, then let go
        self.blobs = blobs
        self.config = config or {}
        self.version = openvino.get_version().split("-")[0]
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.threads = 1  # what it runs with: the largest count compile_for was given

    def compile_for(self, *threads: int) -> None:
        """Compile now for these thread counts (~0.6 s each for the encoder), e.g. on the
        thread that builds the model while photos decode, rather than on the first batch. The
        model read for it is let go after (~37 MB for both parts): a count compiled later reads
        the file again (~20 ms)."""
        for count in threads:
            self._compiled_for(max(1, count))
            self.threads = max(self.threads, count)
        with self._lock:
            self.model = None

    def _compiled_for(self, threads: int) -> Any:
        with self._lock:
            compiled = self._compiled.get(threads)
            if compiled is None:
                if self.model is None:
                    self.model = self.core.read_model(os.fspath(self.path))
                config = {
                    "INFERENCE_NUM_THREADS": threads,
                    "INFERENCE_PRECISION_HINT": "f32",
                    "PERFORMANCE_HINT": "LATENCY",
                    "CACHE_DIR": os.fspath(self.blobs),
                    **self.config,
                }
                compiled = self.core.compile_model(self.model, "CPU", config)
                self._compiled[threads] = compiled
            return compiled

    def _request(self, threads: int) -> Any:
        return self._compiled_for(threads).create_infer_request()


class OpenVinoEncoder(_Compiled):
    """An encoder compiled by OpenVINO: float (B, 3, S, S) normalised pixels -> (B, L, D).

    It runs :data:`ENCODER_CHUNK` photos at a time: each compiled model keeps a memory arena
    sized for the largest batch it has run, and the early blocks' expanded activations of 16
    photos at 224 px took ~200 MB per thread count compiled; 4 at a time take ~57 / 23 MB
    (1 / 2 threads) at the same speed (20.7 vs 21.1 ms a photo on one thread)."""

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        request = self._request(self.threads)
        chunks = []
        for start in range(0, pixels.shape[0], ENCODER_CHUNK):
            part = pixels[start : start + ENCODER_CHUNK].detach().contiguous().numpy()
            out = request.infer({0: part})[0]  # (b, L, D)
            chunks.append(torch.from_numpy(np.array(out, dtype=np.float32, copy=True)))
        return torch.cat(chunks) if len(chunks) != 1 else chunks[0]  # (B, L, D)


class OpenVinoDecoder(_Compiled):
    """The decoders' step with int8 weights, compiled by OpenVINO; ``init_state`` and
    ``attend_features`` (once per photo, not per word) stay on ``decoder``, torch. It has the
    step interface of :class:`photocap.model.Decoder`, so every search runs it unchanged."""

    def __init__(self, path: Path, blobs: Path, decoder: Any) -> None:
        super().__init__(path, blobs, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": ACTIVATION_GROUP})
        self.decoder = decoder
        # An infer request per (thread count, thread): a step's outputs live in its request
        # until they are copied out, and a request serves one inference at a time.
        self._requests: dict[tuple[int, int], Any] = {}

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.init_state(features)

    def attend_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder.attend_features(features)

    def step(
        self,
        words: torch.Tensor,  # (N,)
        state: tuple[torch.Tensor, torch.Tensor],  # (N, M*H) x2
        features: torch.Tensor,  # (N, L, branches*D)
        att_features: torch.Tensor,  # (N, L, M*A)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One word: next-word scores (N, V), the new state, attention weights (N, L)."""
        import numpy as np
        import torch

        key = (self.threads, threading.get_ident())
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = self._request(key[0])
        inputs = [words, state[0], state[1], features, att_features]
        request.infer([t.detach().contiguous().numpy() for t in inputs], share_inputs=True)
        # By name, copied out: the request's output buffers are reused by its next step.
        logp, h, c, alpha = (
            torch.from_numpy(np.array(request.get_tensor(name).data, copy=True))
            for name in STEP_OUTPUTS
        )
        return logp, (h, c), alpha


def _why_torch() -> str:
    """Why a part must stay on torch before anything is tried (``PHOTOCAP_RUNTIME=torch``,
    OpenVINO not installed), as its runtime's name; "" when OpenVINO may be tried."""
    if os.environ.get(RUNTIME_ENV, "").strip().lower() == "torch":
        return f"torch ({RUNTIME_ENV}=torch)"
    missing = _missing_package()
    return f"torch (openvino: {missing} is not installed)" if missing else ""


def _from_cache(path: Path, cached: bool, export: Callable[[], None], load: Callable[[], _T]) -> _T:
    """``load()`` of the derived file at ``path``, exported first when it is not ``cached``.
    A cached file that no longer loads or checks (a disk error, a file copied over it) is made
    again once, rather than used, or every later run falling back to torch."""
    if not cached:
        export()
        return load()
    try:
        return load()
    except Exception:
        path.unlink(missing_ok=True)
        export()
        return load()


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
    why = _why_torch()
    if why:
        return EncoderRuntime(None, why)
    try:
        # In the try: a cache path that cannot be made (PHOTOCAP_CACHE=~nosuchuser/x) is
        # OpenVINO that cannot be had, not a run that fails.
        folder = cache_dir() / "openvino"
        onnx_path = folder / f"encoder-{digest[:16]}-{image_size}-v{EXPORT_VERSION}.onnx"
        encoder = _from_cache(
            onnx_path,
            onnx_path.exists(),
            lambda: _export_onnx(fused, image_size, onnx_path),
            lambda: _compile(fused, image_size, onnx_path, folder / "blobs", threads),
        )
    except Exception as err:  # an export or compile failure must not stop a caption run
        reason = one_line(err, 160)
        return EncoderRuntime(None, f"torch (openvino: {reason})")
    return EncoderRuntime(encoder, f"openvino {encoder.version}")


class DecoderRuntime:
    """What runs the decoders' step on a CPU: ``decoder`` (OpenVINO, int8) or None (torch),
    and why."""

    def __init__(self, decoder: OpenVinoDecoder | None, name: str) -> None:
        self.decoder = decoder
        self.name = name  # "openvino 2026.4.1 int8", or "torch (openvino: <why not>)"


def build_decoder_runtime(
    decoder: Any, feature_shape: tuple[int, int], digest: str, threads: Iterable[int] = ()
) -> DecoderRuntime:
    """The int8 OpenVINO step of ``decoder`` (a :class:`photocap.model.Decoder` or
    ``Ensemble`` of the model file whose SHA-256 is ``digest``, reading features of
    ``feature_shape`` (L, D)), from the cache or made now, compiled for each of ``threads``;
    torch when it cannot be had."""
    why = _why_torch()
    if why:
        return DecoderRuntime(None, why)
    try:
        folder = cache_dir() / "openvino"  # in the try: see build_encoder_runtime
        xml = folder / f"decoders-{digest[:16]}-v{STEP_VERSION}.xml"
        runtime = _from_cache(
            xml,
            xml.exists() and xml.with_suffix(".bin").exists(),
            lambda: _export_int8_step(decoder, feature_shape, xml),
            lambda: _compile_step(decoder, feature_shape, xml, folder / "blobs", threads),
        )
    except Exception as err:  # an export or compile failure must not stop a caption run
        reason = one_line(err, 160)
        return DecoderRuntime(None, f"torch (openvino: {reason})")
    return DecoderRuntime(runtime, f"openvino {runtime.version} int8")


def _step_inputs(
    decoder: Any, feature_shape: tuple[int, int], n: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """A step's inputs for ``n`` rows: seeded random features in [0, 1) (the encoder's are
    non-negative), the state and attention features torch makes of them, varied words."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(n, *feature_shape, generator=generator)  # (n, L, D)
    vocab = decoder.step(
        torch.zeros(1, dtype=torch.long),
        tuple(s[:1] for s in decoder.init_state(features)),
        features[:1],
        decoder.attend_features(features[:1]),
    )[0].shape[-1]
    words = torch.randint(0, vocab, (n,), generator=generator)  # (n,)
    h, c = decoder.init_state(features)
    return words, h, c, features, decoder.attend_features(features)


def _compile_step(
    decoder: Any,
    feature_shape: tuple[int, int],
    xml: Path,
    blobs: Path,
    threads: Iterable[int],
) -> OpenVinoDecoder:
    """``xml`` compiled for ``threads``, checked to compute ``decoder``'s step to int8's
    rounding on a fixed input: the next-word probabilities within :data:`STEP_AGREEMENT`, the
    word it ranks first as likely under torch's within that too (a close second may swap), the
    new state within :data:`STATE_AGREEMENT` of its scale, the attention within 0.01."""
    import torch

    runtime = OpenVinoDecoder(xml, blobs, decoder)
    runtime.compile_for(*sorted(threads))
    with torch.no_grad():
        words, h, c, features, att = _step_inputs(decoder, feature_shape, 6, seed=1)
        want, (want_h, want_c), want_alpha = decoder.step(words, (h, c), features, att)
        got, (got_h, got_c), got_alpha = runtime.step(words, (h, c), features, att)
    pairs = [(got, want), (got_h, want_h), (got_c, want_c), (got_alpha, want_alpha)]
    for ours, theirs in pairs:
        if ours.shape != theirs.shape:
            raise RuntimeError(f"its step gives {tuple(ours.shape)}, torch's {tuple(theirs.shape)}")
    # Probabilities of the scores (an ensemble's are log-probabilities, a decoder's logits).
    p_got, p_want = got.float().softmax(-1), want.float().softmax(-1)  # (6, V)
    first = p_got.argmax(-1, keepdim=True)  # (6, 1): the word it would put first
    lost = p_want.max(-1).values - p_want.gather(1, first)[:, 0]  # (6,) 0 where torch agrees
    scale = max(1.0, float(want_c.abs().max()))
    state = torch.cat([(got_h - want_h).abs().flatten(), (got_c - want_c).abs().flatten()])
    checks = [  # (what, difference, limit)
        ("next-word probabilities", float((p_got - p_want).abs().max()), STEP_AGREEMENT),
        ("first word's probability", float(lost.max()), STEP_AGREEMENT),
        ("state", float(state.max()) / scale, STATE_AGREEMENT),
        ("attention", float((got_alpha - want_alpha).abs().max()), 0.01),
    ]
    for what, difference, limit in checks:
        if not difference <= limit:  # NaN fails too
            raise RuntimeError(f"its {what} differ from torch's by {difference:.2g}")
    return runtime


def _export_int8_step(decoder: Any, feature_shape: tuple[int, int], xml: Path) -> None:
    """``decoder``'s step exported by ``torch.onnx`` (opset 18: OpenVINO's reading of opset
    17's ReduceLogSumExp loses its axes, so an ensemble's mean came out a scalar), read by
    OpenVINO, its weights made int8 (:func:`_quantise_weights`), saved as OpenVINO's XML + BIN
    at ``xml`` (the BIN first, the XML renamed last: the XML is what says it is there)."""
    import warnings

    import openvino
    import torch

    if _missing_package(("onnx",)):
        raise RuntimeError("onnx is not installed (it exports the model for OpenVINO)")
    xml.parent.mkdir(parents=True, exist_ok=True)
    _tidy(xml)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    onnx_tmp = xml.with_name(f".{xml.stem}.onnx.tmp-{tag}")
    xml_tmp = xml.with_name(f".{xml.stem}.tmp-{tag}.xml")

    class Step(torch.nn.Module):
        """The step as a module with tensors in and out, for the exporter."""

        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, words: Any, h: Any, c: Any, features: Any, att: Any) -> Any:
            # An ensemble's fused_step: the same step without copying the large inputs apart.
            step = getattr(self.decoder, "fused_step", self.decoder.step)
            scores, (h, c), alpha = step(words, (h, c), features, att)
            return scores, h, c, alpha

    names = ["words", "h", "c", "features", "attention"]
    outputs = list(STEP_OUTPUTS)
    was_training = decoder.training
    try:
        # In eval mode, the wrapper too: the exporter puts back the mode the module it is given
        # had, to every submodule; a wrapper left in training mode turned the decoders'
        # dropout on for the rest of the run.
        decoder.eval()
        example = _step_inputs(decoder, feature_shape, 2)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's warnings on python values
            torch.onnx.export(
                Step().eval(), example, os.fspath(onnx_tmp), input_names=names,
                output_names=outputs, opset_version=18, dynamo=False,
                dynamic_axes={name: {0: "rows"} for name in names + outputs},
            )  # fmt: skip
        model = openvino.Core().read_model(os.fspath(onnx_tmp))
        _quantise_weights(model)
        openvino.save_model(model, os.fspath(xml_tmp), compress_to_fp16=False)
        os.replace(xml_tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(xml_tmp, xml)
    finally:
        decoder.train(was_training)
        for tmp in (onnx_tmp, xml_tmp, xml_tmp.with_suffix(".bin")):
            tmp.unlink(missing_ok=True)


def _quantise_weights(model: Any) -> int:
    """Give every MatMul by a constant weight of at least :data:`MIN_INT8_SIDE` on both sides
    int8 weights, one scale per output row (symmetric: round(w / scale), scale = max |w| / 127),
    in the pattern OpenVINO's CPU plugin keeps compressed (int8 -> f32 -> x scale) and runs
    on its int8 units. Returns how many it changed."""
    import numpy as np
    import openvino
    import openvino.opset13 as ops

    changed = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        source = node.input_value(1).get_node()
        if source.get_type_name() == "Convert":  # an fp16 constant's decompression
            source = source.input_value(0).get_node()
        if source.get_type_name() != "Constant":
            continue
        weight = source.get_data().astype(np.float32)
        if weight.ndim != 2 or min(weight.shape) < MIN_INT8_SIDE:
            continue
        by_row = node.get_attributes()["transpose_b"]
        rows = weight if by_row else weight.T  # (out, in)
        scale = np.abs(rows).max(1, keepdims=True) / 127  # (out, 1)
        scale[scale == 0] = 1
        q = np.clip(np.round(rows / scale), -127, 127).astype(np.int8)
        dequant = ops.multiply(
            ops.convert(ops.constant(q), openvino.Type.f32),
            ops.constant(scale.astype(np.float32)),
        )
        if not by_row:
            dequant = ops.transpose(dequant, ops.constant(np.array([1, 0], dtype=np.int64)))
        node.input(1).replace_source_output(dequant.output(0))
        changed += 1
    model.validate_nodes_and_infer_types()
    return changed


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

    if _missing_package(("onnx",)):
        raise RuntimeError("onnx is not installed (it exports the model for OpenVINO)")
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
    """Remove what ``path`` replaces: the same model's files of this kind (encoder, decoders)
    and other export versions, and temp files of exports killed mid-way (over an hour old:
    another run's may be writing)."""
    import time

    kind, model = path.name.split("-")[:2]
    for old in path.parent.glob(f"{kind}-{model}-*"):
        if old.stem != path.stem:
            with contextlib.suppress(OSError):  # in use elsewhere (Windows): left for later
                old.unlink(missing_ok=True)
    for temp in path.parent.glob(f".{kind}-*.tmp-*"):
        try:
            if time.time() - temp.stat().st_mtime > 3600:
                temp.unlink(missing_ok=True)
        except OSError:
            pass
