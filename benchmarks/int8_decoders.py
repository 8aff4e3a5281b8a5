"""The decoders' step on OpenVINO, fp32 and with int8 weights: beam-search cost and captions.

Issue 23's model-stage target (>= 2x cheaper per photo on the CPU, captions identical on
>= 97 % of the dev photos, dev scores within 0.003) needs the beam search cheaper: after the
encoder moved to OpenVINO it is the larger half, and its cost is the decoders' matrix products
plus the attention's element-wise work. This measures the lever before it is built into
photocap: the shipped model's whole decoding step (the three decoders and their mean) exported
to OpenVINO as one model, run in fp32 and with every large matrix product's weights in int8
(one scale per output row; OpenVINO quantises the activations on the fly in groups of
``--groups`` values, using the CPU's VNNI/AMX int8 units), against torch in fp32, on the same
dev features, beam 3, batches of 16, in one run (a warm-up batch each, then ``--rounds``
rounds with the ways alternating, medians). Nothing here changes photocap.

    python benchmarks/int8_decoders.py --data ../shared/flickr8k --limit 1000 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FLICKR8K, markdown_table, report


def export_step(decoder: Any, example: tuple[Any, ...], int8: bool) -> Any:
    """The ensemble's ``step`` as an OpenVINO model with a dynamic batch; with ``int8`` each
    MatMul by a constant of at least 64 x 64 gets int8 weights (per output row scales)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, words: Any, h: Any, c: Any, features: Any, att: Any) -> Any:
            logp, (h, c), alpha = self.decoder.step(words, (h, c), features, att)
            return logp, h, c, alpha

    with torch.no_grad():
        model = ov.convert_model(Step().eval(), example_input=example)
    for k, param in enumerate(model.inputs):  # any batch size
        dims = [ov.Dimension(-1)] + [ov.Dimension(s) for s in example[k].shape[1:]]
        param.get_node().set_partial_shape(ov.PartialShape(dims))
    model.validate_nodes_and_infer_types()
    if not int8:
        return model
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        source = node.input_value(1).get_node()
        if source.get_type_name() == "Convert":  # an fp16 constant's decompression
            source = source.input_value(0).get_node()
        if source.get_type_name() != "Constant":
            continue
        weight = source.get_data().astype(np.float32)
        if weight.ndim != 2 or min(weight.shape) < 64:
            continue
        by_row = node.get_attributes()["transpose_b"]
        rows = weight if by_row else weight.T  # (out, in)
        scale = np.abs(rows).max(1, keepdims=True) / 127
        scale[scale == 0] = 1
        q = np.clip(np.round(rows / scale), -127, 127).astype(np.int8)
        # The pattern OpenVINO's CPU plugin keeps compressed: int8 -> f32 -> x scale.
        dequant = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32),
                               ops.constant(scale.astype(np.float32)))  # fmt: skip
        if not by_row:
            dequant = ops.transpose(dequant, ops.constant(np.array([1, 0], dtype=np.int64)))
        node.input(1).replace_source_output(dequant.output(0))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=FLICKR8K)
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--limit", type=int, default=300, help="dev photos")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--groups", default="128", help="activation group sizes for int8")
    parser.add_argument("--scores", action="store_true", help="also BLEU-4 / METEOR / CIDEr")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds (median)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import openvino as ov
    import torch

    from photocap.checkpoint import load_captioner
    from photocap.dataset import load_flickr8k
    from photocap.training.evaluation import score_captions
    from photocap.training.features import extract_features, load_pixels

    torch.set_num_threads(args.threads)
    captioner = load_captioner(args.model, "cpu")
    data = load_flickr8k(args.data)
    names = data.split("dev", args.limit)
    pixels = load_pixels([data.image_path(n) for n in names], captioner.preset, 0)
    with torch.inference_mode():
        features = extract_features(captioner, pixels, 32).float()  # (N, L, branches * D)
    decoder: Any = captioner.decoder
    torch_step = decoder.step
    members = len(getattr(decoder, "decoders", [decoder]))  # an ensemble, or one decoder
    hidden, attention = captioner.config.hidden_dim, captioner.config.attention_dim
    batch = 16 * 3  # photos x beams
    example = (
        torch.zeros(batch, dtype=torch.long),  # words
        torch.zeros(batch, members * hidden),  # h
        torch.zeros(batch, members * hidden),  # c
        torch.zeros(batch, *features.shape[1:]),  # features
        torch.zeros(batch, features.shape[1], members * attention),  # attention
    )

    def on_openvino(model: Any, group: str) -> Any:
        config = {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32",
                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": group, "NUM_STREAMS": 1}  # fmt: skip
        request = ov.Core().compile_model(model, "CPU", config).create_infer_request()

        def step(words: Any, state: Any, feats: Any, att: Any) -> Any:
            inputs = [words, state[0], state[1], feats, att]
            out = request.infer([t.contiguous().numpy() for t in inputs], share_inputs=True)
            logp, h, c, alpha = (torch.from_numpy(np.array(out[k])) for k in range(4))
            return logp, (h, c), alpha

        return step

    ways: dict[str, Any] = {"torch fp32 (shipped)": torch_step}
    ways["openvino fp32, the whole step"] = on_openvino(export_step(decoder, example, False), "0")
    int8_model = export_step(decoder, example, True)
    for group in args.groups.split(","):
        ways[f"openvino int8 weights, activations in groups of {group}"] = on_openvino(
            int8_model, group
        )
    refs = [data.captions[n] for n in names]

    def caption_all(step: Any) -> tuple[list[str], float]:
        decoder.step = step
        started = time.perf_counter()
        texts = []
        for i in range(0, len(features), 16):
            texts += [c.text for c in captioner.caption_features(features[i : i + 16], 3)]
        return texts, (time.perf_counter() - started) / len(features) * 1e3

    for step in ways.values():  # warm-up: first calls, OpenVINO's first inferences
        decoder.step = step
        captioner.caption_features(features[:16], 3)
    texts_of: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {way: [] for way in ways}
    for k in range(args.rounds):  # the ways alternate: each round in the other order
        for way in list(ways)[:: 1 if k % 2 == 0 else -1]:
            texts_of[way], ms = caption_all(ways[way])
            times[way].append(ms)
    rows, result, base = [], {}, None
    for way in ways:
        texts, ms = texts_of[way], statistics.median(times[way])
        base = base or (texts, ms)
        same = sum(a == b for a, b in zip(base[0], texts, strict=True))
        scores: dict[str, Any] = {}
        if args.scores:
            scores, _ = score_captions(texts, refs)
        rows.append([way, round(ms, 1), round(base[1] / ms, 2), f"{same}/{len(texts)}",
                     *(f"{scores[k]:.4f}" if scores.get(k) is not None else "-"
                       for k in ("BLEU-4", "METEOR", "CIDEr"))])  # fmt: skip
        result[way] = {"ms_per_photo": ms, "rounds_ms": times[way], "identical": same, **scores}
    decoder.step = torch_step
    table = markdown_table(rows, ["decoding step", "beam 3 ms/photo (median)", "x torch",
                                  "captions identical", "BLEU-4", "METEOR", "CIDEr"])  # fmt: skip
    report(f"Decoders' step, {len(names)} dev photos, {args.threads} thread(s)", table, result,
           args.json)  # fmt: skip


if __name__ == "__main__":
    main()
