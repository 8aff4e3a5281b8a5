"""Model files: one self-contained safetensors file per model, loaded by one function.

A photocap model file holds everything needed to caption, nothing executable:

- the weights (encoder included), as safetensors tensors (fp16 for shipping, fp32 while
  training);
- in the safetensors header metadata (strings only): ``format`` / ``format_version``, the
  architecture (:class:`~photocap.model.ModelConfig`), the image preset, the vocabulary, and
  free-form ``info`` (training data and split, dev scores, training commands).

safetensors never unpickles, so loading a model file cannot run code. Training state for
``--resume`` (optimizer, epoch) lives in a separate ``.state.pt`` beside the checkpoint, read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from photocap.decoding import DEFAULT_BEAM_SIZE
from photocap.errors import ModelError, PhotocapError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from photocap.model import Captioner

FORMAT = "photocap-checkpoint"
# 2: ModelConfig.decoders (ensembles); 3: EncoderConfig.branches. A file is written as the
# oldest version that can read it, so a model without either stays version 1.
FORMAT_VERSION = 3
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL_NAME = "photocap-flickr8k.safetensors"
FAST_MODEL_NAME = "photocap-flickr8k-fast.safetensors"
# The models `--model` takes by name: the default (three decoders), and the fast one (one
# decoder distilled from them: about half the model's CPU time a photo, a little less
# quality). models/README.md has both model cards.
SHIPPED_MODELS = {"default": DEFAULT_MODEL_NAME, "fast": FAST_MODEL_NAME}
_MODEL_HINT = "--model and PHOTOCAP_MODEL take a model file, or a shipped model: default, fast"


def default_model_path() -> Path:
    """The default model: ``$PHOTOCAP_MODEL`` (a file, or a shipped model's name), else the
    shipped default in ``models/`` of the source tree or package."""
    env = os.environ.get("PHOTOCAP_MODEL")
    if env:
        return _named_or_path(env)
    return shipped_model_path(DEFAULT_MODEL_NAME)


def shipped_model_path(filename: str) -> Path:
    """A shipped model file: in ``models/`` of the source tree, else where pip installed it."""
    import sys

    installed = Path(sys.prefix) / "share" / "photocap" / "models"  # pip install (data-files)
    for folder in (MODELS_DIR, installed):
        candidate = folder / filename
        if candidate.exists():
            return candidate
    return MODELS_DIR / filename


def resolve_model_path(model: Path | str | None = None) -> Path:
    """What ``--model`` names, as a file: None is the default model (``$PHOTOCAP_MODEL``
    first); a shipped model's name (``default``, ``fast``: :data:`SHIPPED_MODELS`) is its file,
    unless a file of that name is in the current folder; anything else is a path."""
    return default_model_path() if model is None else _named_or_path(str(model))


def _named_or_path(model: str) -> Path:
    if model not in SHIPPED_MODELS or Path(model).is_file():
        return Path(model).expanduser()
    path = shipped_model_path(SHIPPED_MODELS[model])
    if not path.exists():
        raise ModelError(
            f"the {model} model is not installed with this photocap ({path} is missing): "
            "reinstall photocap, or pass a model file"
        )
    return path


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Unknown or unavailable devices raise."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)


def save_captioner(
    captioner: Captioner, path: Path, *, half: bool = False, info: dict[str, Any] | None = None
) -> Path:
    """Write ``captioner`` to ``path`` atomically (temp file + rename), the same bytes for the
    same model. Returns ``path``."""
    from safetensors.torch import save

    meta_info = {**captioner.metadata, **(info or {})}
    tensors = {}
    for name, tensor in captioner.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # BatchNorm bookkeeping, not needed to caption
        t = tensor.detach().to("cpu")
        if half and t.is_floating_point():
            t = t.half()
        tensors[name] = t.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(_oldest_reader(captioner)),
        "config": json.dumps(captioner.config.to_dict()),
        "preset": json.dumps(captioner.preset.to_dict()),
        "vocab": json.dumps(list(captioner.vocab.words)),
        "info": json.dumps(meta_info),
    }
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a folder: give the model file's name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(_canonical(save(tensors, metadata=metadata)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _canonical(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted. safetensors writes them in a
    hash map's order, which changes from process to process: the same model saved twice would
    get two model ids (the hash of the file), and a model made again from the same weights
    would caption every photo again. The tensors' bytes and offsets are unchanged."""
    import struct

    (size,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"))
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)  # the tensors stay 8-byte aligned, as safetensors keeps them
    return struct.pack("<Q", len(raw)) + raw + data[8 + size :]


def _oldest_reader(captioner: Captioner) -> int:
    """The oldest format version that reads this model: releases that predate ensembles still
    load a single-decoder model, and those that predate encoder branches an ensemble."""
    if captioner.config.encoder.branches > 1:
        return 3
    return 2 if captioner.config.decoders > 1 else 1


MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on its JSON header


def read_header(path: Path, data: bytes | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, tensors) from a safetensors file's JSON header: the metadata strings, and
    each tensor's dtype, shape and offsets by name. Reads the header only (KBs), with neither
    a tensor nor torch loaded; from ``data`` (the file's bytes, read already) if given."""
    path = Path(path)
    if data is None and not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with open(path, "rb") if data is None else io.BytesIO(data) as fh:
            total = path.stat().st_size if data is None else len(data)
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= min(MAX_HEADER_BYTES, total - 8):
                raise ValueError("bad header size")
            header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("metadata are not strings")
    except OSError as err:
        raise ModelError(f"cannot read model file {path}: {err.strerror}") from None
    except (ValueError, UnicodeDecodeError) as err:  # json's errors are ValueErrors too
        raise ModelError(f"not a photocap model file: {path} ({err})") from None
    return meta, header


def read_metadata(path: Path, data: bytes | None = None) -> dict[str, str]:
    """The header metadata of a model file (or of its bytes ``data``), without loading any
    tensor."""
    path = Path(path)
    meta, _ = read_header(path, data)
    if meta.get("format") != FORMAT:
        raise ModelError(f"not a photocap model file: {path}")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise ModelError(f"not a photocap model file: {path} (bad format_version)") from None
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{path} is format version {version}; this photocap reads up to {FORMAT_VERSION}: "
            "upgrade photocap"
        )
    return meta


# BatchNorm statistics: tensors of the file that are buffers, not parameters.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def model_info(path: Path | None = None) -> dict[str, Any]:
    """What ``photocap info`` shows of a model file (default: the shipped model), the same as
    ``load_captioner(path).info()`` but read from the file's header: no model is built and
    torch is not imported (milliseconds, not seconds)."""
    from photocap.preset import Preset

    path = resolve_model_path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path} ({_MODEL_HINT})")
    meta = read_metadata(path)
    _, tensors = read_header(path)
    try:
        config = json.loads(meta["config"])
        encoder = config["encoder"]
        info = json.loads(meta.get("info", "{}"))
        parameters = 0
        for name, tensor in tensors.items():
            if not name.endswith(_BUFFERS):
                parameters += math.prod(int(n) for n in tensor["shape"])
        summary = {
            "model_id": f"{info.get('name', path.stem)}@{file_digest(path)[:12]}",
            "parameters": parameters,
            "vocabulary": len(json.loads(meta["vocab"])),
            "image_size": Preset.from_dict(json.loads(meta["preset"])).size,
            "encoder": encoder.get("name", "efficientnet_lite2"),
            "decoders": config.get("decoders", 1),  # absent: one (as format version 1 wrote it)
            "encoder_branches": encoder.get("branches", 1),
            "beam_search": {  # absent: ModelConfig's defaults (tests compare with info())
                "length_penalty": config.get("length_penalty", 0.7),
                "no_repeat_words": config.get("no_repeat_words", True),
            },
            "file": f"{path} ({path.stat().st_size / 1e6:.1f} MB)",
        }
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ModelError(f"corrupt model file {path}: {err!r}") from None
    return {**summary, **info}


def load_captioner(
    path: Path | None = None, device: str = "auto", *, runtime: bool = False
) -> Captioner:
    """Load a model file (default: the shipped model) onto ``device``, ready to caption.

    ``runtime``: on a CPU, encode with OpenVINO and run the decoders' step on it in int8 where
    it is installed (:mod:`photocap.runtime`; what ``photocap caption`` and ``evaluate`` do).
    Off for training, which changes weights.
    """
    path = resolve_model_path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path} ({_MODEL_HINT})")
    return _build_captioner(path, read_metadata(path), device, runtime=runtime)


class LazyCaptioner:
    """A model file opened for captioning; the model itself is built when a photo needs it.

    Opening reads the header and hashes the file (the model id that incremental runs compare
    with the index); it imports no torch and builds nothing, so a re-run of an unchanged library
    costs its stat calls and index lookups only. :meth:`prepare` (or the first
    :meth:`caption_batch`) builds the model, and refuses a file whose bytes changed since it was
    opened: the captions must come from the model whose id they are recorded with.

    The build runs on a thread of its own while the run's decode workers (already forked)
    decode the first photos; the run waits for it before forking new workers.
    """

    def __init__(self, path: Path | None = None, device: str = "auto") -> None:
        self.path = resolve_model_path(path)
        if not self.path.exists():
            raise ModelError(f"model file not found: {self.path} ({_MODEL_HINT})")
        # The header and the hash from the same bytes: a file replaced while it is opened
        # must not pair one file's config and vocabulary with another's id.
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise ModelError(f"cannot read model file {self.path}: {err.strerror}") from None
        self._meta = read_metadata(self.path, data)
        self.digest = hashlib.sha256(data).hexdigest()
        del data
        from photocap.preset import Preset

        try:
            self.preset = Preset.from_dict(json.loads(self._meta["preset"]))
            info = json.loads(self._meta.get("info", "{}"))
            name = info.get("name", self.path.stem) if isinstance(info, dict) else self.path.stem
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise ModelError(f"corrupt model file {self.path}: {err!r}") from None
        self.model_id = f"{name}@{self.digest[:12]}"
        if device not in ("auto", "cpu"):
            resolve_device(device)  # --device cuda without a GPU: said now, not mid-run
        self._device = device
        from photocap.embedding import find_embedding, vector_size_of

        # Read now (a header), not built: the plan asks for the vectors photos lack.
        found = find_embedding(self.path, self.model_id)
        self.vector_size = vector_size_of(found) if found is not None else 0
        self._captioner: Captioner | None = None
        self._error: str | None = None  # why the build failed, one line
        self._builder: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def is_built(self) -> bool:
        """Whether the model has been built (tests: an unchanged re-run never builds it)."""
        return self._captioner is not None

    @property
    def runtime_name(self) -> str:
        """What runs the encoder (:attr:`photocap.model.Captioner.runtime_name`); "" until
        the model is built."""
        return self._captioner.runtime_name if self._captioner is not None else ""

    @property
    def decoder_runtime_name(self) -> str:
        """What runs the decoders' step
        (:attr:`photocap.model.Captioner.decoder_runtime_name`); "" until built."""
        return self._captioner.decoder_runtime_name if self._captioner is not None else ""

    @property
    def device(self) -> torch.device:
        """The device the model runs on (resolved without waiting for the model)."""
        return resolve_device(self._device)

    def prepare(
        self, wait: bool = False, started_only: bool = False, photos: int | None = None
    ) -> None:
        """Start building the model in the background (once), so that it loads while photos
        are decoded; ``wait``: until it is built or has failed (a failure is raised by
        :meth:`caption_batch`); ``started_only``: start nothing, only wait for a build already
        started (a run's end: no build thread is left running at exit); ``photos``: how many
        photos the run decodes (a small run keeps the encoder on torch:
        :func:`photocap.runtime.wants_runtime`)."""
        with self._lock:
            if self._builder is None:
                if started_only:
                    return
                import torch

                # Read here, on the run's thread, before the run gives torch fewer threads
                # while decode workers decode: OpenVINO is compiled for all of them.
                threads = torch.get_num_threads()
                self._builder = threading.Thread(
                    target=self._build,
                    args=(threads, photos),
                    name="photocap-model-load",
                    daemon=True,
                )
                self._builder.start()
        if wait:
            self._builder.join()

    def _build(self, threads: int, photos: int | None) -> None:
        try:
            self._captioner = _build_captioner(
                self.path, self._meta, self._device, expect_digest=self.digest,
                runtime=True, threads=threads, photos=photos,
            )  # fmt: skip
        except PhotocapError as err:  # handed to the thread that captions
            self._error = str(err)
        except Exception as err:  # torch's own (out of memory, a CUDA error): one line
            detail = one_line(err, 200)
            self._error = f"cannot build the model of {self.path}: {detail}"

    def captioner(self) -> Captioner:
        """The built model (building it now if :meth:`prepare` was not called)."""
        self.prepare(wait=True)
        if self._captioner is None:
            # A new error each time: re-raising one object would chain every batch's frames.
            raise ModelError(self._error or f"model file {self.path} could not be loaded")
        return self._captioner

    def caption_batch(self, pixels: torch.Tensor, beam_size: int = DEFAULT_BEAM_SIZE) -> Any:
        """:meth:`photocap.model.Captioner.caption_batch`, once the model is built."""
        return self.captioner().caption_batch(pixels, beam_size=beam_size)

    def embed_batch(self, pixels: torch.Tensor) -> list[bytes]:
        """:meth:`photocap.model.Captioner.embed_batch`, once the model is built."""
        return self.captioner().embed_batch(pixels)


def _build_captioner(
    path: Path,
    meta: dict[str, str],
    device: str,
    *,
    expect_digest: str | None = None,
    runtime: bool = False,
    threads: int | None = None,
    photos: int | None = None,
) -> Captioner:
    """The model of ``path`` (whose header metadata is ``meta``) on ``device``. The file is read
    once: the bytes hashed are the bytes loaded."""
    import torch
    from safetensors.torch import load as load_tensors

    from photocap.model import Captioner, ModelConfig
    from photocap.preset import Preset
    from photocap.vocab import Vocab

    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read model file {path}: {err.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expect_digest is not None and digest != expect_digest:
        raise ModelError(
            f"model file {path} changed during the run: run again to caption with the new one"
        )
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]))
        preset = Preset.from_dict(json.loads(meta["preset"]))
        vocab = Vocab(tuple(json.loads(meta["vocab"])))
        info = json.loads(meta.get("info", "{}"))
        state = load_tensors(data)
    except Exception as err:  # json's, the config's, safetensors' own (SafetensorError)
        detail = one_line(err, 200)
        raise ModelError(f"corrupt model file {path}: {detail}") from None
    del data
    target = resolve_device(device)
    captioner = Captioner(config, vocab, preset)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = captioner.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        detail = one_line(err, 200)
        raise ModelError(f"model file {path} does not match its config: {detail}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(
            f"model file {path} does not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    captioner.metadata = info
    captioner.model_id = f"{info.get('name', path.stem)}@{digest[:12]}"
    captioner.source = f"{path} ({path.stat().st_size / 1e6:.1f} MB)"
    captioner.to(target).eval()
    from photocap.embedding import find_embedding, load_embedding

    found = find_embedding(path, captioner.model_id)  # beside it, made for this model
    if found is not None:
        captioner.use_embedding(load_embedding(found, captioner.model_id, target))
    if captioner.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        # BatchNorm folded into the convolutions, channels-last: ~2x faster encoder on a CPU. A
        # private copy used in eval mode without gradients; training sees the unfused encoder.
        captioner.optimize_for_inference()
        if runtime:
            _use_runtimes(captioner, digest, threads, photos)
    return captioner


def _use_runtimes(
    captioner: Captioner, digest: str, threads: int | None, photos: int | None
) -> None:
    """On a CPU: the decoders' step on OpenVINO in int8 (every run: a photo's caption must not
    depend on the run's size), the encoder too in a run of ``photos`` large enough to repay its
    start (:func:`photocap.runtime.wants_runtime`). Each is torch, with the reason in its name,
    when OpenVINO cannot be had."""
    import torch

    from photocap.runtime import build_decoder_runtime, build_encoder_runtime, wants_runtime

    # Compiled once, for every thread torch has now (a run reads them before it halves torch's
    # while decode workers decode): OpenVINO keeps them all (photocap.runtime._Compiled).
    counts = {threads or torch.get_num_threads()}
    if wants_runtime(photos):
        with torch.no_grad():
            fused = captioner._inference_encoder()
        if fused is not None:
            size = captioner.preset.size
            captioner.use_encoder_runtime(build_encoder_runtime(fused, size, digest, counts))
    grid = math.ceil(captioner.preset.size / 32) ** 2  # L: the encoder's stride is 32
    channels = captioner.encoder.feature_dim * captioner.config.encoder.branches
    with torch.no_grad():
        built = build_decoder_runtime(captioner.decoder, (grid, channels), digest, counts)
    captioner.use_decoder_runtime(built)


def file_digest(path: Path) -> str:
    """sha256 of a file (model ids change whenever the weights change)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_random_captioner(
    device: str = "cpu", seed: int = 0, *, width: int = 16, decoders: int = 1
) -> Captioner:
    """A tiny, randomly initialised captioner: for tests and smoke runs, fast on a CPU.
    ``width``: the decoder's embedding, hidden and attention sizes; ``decoders`` > 1: an
    ensemble."""
    import torch

    from photocap.encoder import EncoderConfig
    from photocap.model import Captioner, ModelConfig
    from photocap.preset import Preset
    from photocap.vocab import SPECIALS, Vocab

    torch.manual_seed(seed)
    words = [
        "a",
        "dog",
        "cat",
        "man",
        "woman",
        "child",
        "runs",
        "sits",
        "on",
        "the",
        "grass",
        "beach",
        "water",
        "in",
        "red",
        "blue",
        "ball",
    ]
    config = ModelConfig(
        encoder=EncoderConfig(name="tiny", stem_channels=8, head_channels=32),
        embed_dim=width,
        hidden_dim=width,
        attention_dim=width,
        decoders=decoders,
        dropout=0.0,
        max_words=8,
    )
    captioner = Captioner(config, Vocab(SPECIALS + tuple(words)), Preset(size=64))
    captioner.model_id = f"random-tiny-seed{seed}" + (
        f"-w{width}-x{decoders}" if (width, decoders) != (16, 1) else ""
    )
    captioner.metadata = {"name": "random-tiny", "training_data": "none (random weights)"}
    return captioner.to(resolve_device(device)).eval()
