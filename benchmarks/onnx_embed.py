"""ONNX Runtime on the same MiniLM weights: the CPU peer a deployment would reach for, in fp32 and dynamic int8.

    python benchmarks/onnx_embed.py            # export, optimise, quantise; check the vectors; one timing

Needs the optional `bench` extra (pip install -e '.[bench]': onnxruntime, onnx). `ctxlm bench --only embed`
uses these functions beside sentence-transformers; without onnxruntime its ONNX rows say so and are skipped.

The packaged all-MiniLM-L6-v2 files (the weights ctxlm and sentence-transformers read) are loaded as transformers'
BertModel, as optimum and sentence-transformers' ONNX backend export it, and exported once per process with
torch.onnx.export (the TorchScript exporter, dynamic batch and length: it works offline with torch 2.13) to a
temporary folder. That graph is the one onnxruntime's transformer optimiser knows: it fuses every block's attention
into one Attention kernel, bias + GELU and residual + LayerNorm, as optimum's O2 does (ctxlm's own graph, exported
the same way, ran with unfused attention and did not fuse). The int8 model is
`onnxruntime.quantization.quantize_dynamic` of the optimised fp32 one (int8 weights per output channel,
activations quantised per batch at run time). Texts go through the same steps as `ctxlm.embed`: ctxlm's
tokenizer, cut at 256 tokens, batches of similar lengths, mean pooling over real tokens, normalisation; only the
model runs in ONNX Runtime, with as many threads as torch has and no spinning between runs (it would take the
CPU from the next contender in alternating rounds).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

MAX_TOKENS = 256
WHY_MISSING = "onnxruntime is not installed (pip install -e '.[bench]')"


def missing() -> str | None:
    """Why the ONNX contenders cannot run here, or None when they can."""
    for module in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None


class _LastLayer(nn.Module):
    """ids, mask → the top layer's states, as the exported graph computes them."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def export(model, folder: Path) -> dict[str, Path]:
    """{"fp32": the optimised fp32 model, "int8": its dynamic int8 quantisation} in `folder`, from the packaged
    MiniLM files that ctxlm's `model` was read from."""
    import onnx
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ctxlm.convert import packaged_model_path

    folder.mkdir(parents=True, exist_ok=True)
    raw, fp32, int8 = folder / "minilm.onnx", folder / "minilm-opt.onnx", folder / "minilm-int8.onnx"
    bert = transformers.AutoModel.from_pretrained(str(packaged_model_path("minilm")), attn_implementation="eager")
    wrapped = _LastLayer(bert).eval()
    ids = torch.randint(1000, 2000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditions it fixes at export
        torch.onnx.export(wrapped, (ids, mask), str(raw), input_names=["ids", "mask"], output_names=["states"],
                          dynamic_axes={"ids": axes, "mask": axes, "states": axes}, opset_version=17, dynamo=False)
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(raw), model_type="bert", num_heads=bert.config.num_attention_heads,
                       hidden_size=bert.config.hidden_size).save_model_to_file(str(fp32))
    except Exception as err:  # noqa: BLE001 - the optimiser is an extra: the plain graph still runs
        warnings.warn(f"onnxruntime's transformer optimiser failed ({err}); using the plain export", stacklevel=2)
        fp32 = raw
    # the fused operators (com.microsoft) have no ONNX shape inference: their outputs are float32
    logging.disable(logging.WARNING)  # the quantiser advises pre-processing (for static quantisation) at length
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)
    return {"fp32": fp32, "int8": int8}


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encoder(model, path: Path, batch_size: int) -> Callable[[list[str]], torch.Tensor]:
    """Texts → unit vectors (float32, input order) through the ONNX model at `path`."""
    runner = session(path)
    tokenizer = model.tokenizer
    pad = tokenizer.pad_id

    def encode(texts: list[str]) -> torch.Tensor:
        encoded = [e.ids for e in tokenizer.encode_text_batch(texts, max_length=MAX_TOKENS)]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out = np.empty((len(texts), model.config.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i])] = encoded[i]
                mask[r, :len(encoded[i])] = True
            states = runner.run(None, {"ids": ids, "mask": mask})[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (states * weights).sum(1) / weights.sum(1)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return torch.from_numpy(out)

    return encode


def encoders(model, batch_size: int, folder: Path | None = None) -> dict[str, Callable[[list[str]], torch.Tensor]]:
    """{"ONNX Runtime fp32": ..., "ONNX Runtime int8": ...} for ctxlm's loaded MiniLM (its tokenizer; the packaged
    weights); the files go to `folder` (default: a temporary folder, removed at the end of the process)."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="ctxlm-onnx-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths = export(model, folder)
    return {f"ONNX Runtime {kind}": encoder(model, path, batch_size) for kind, path in paths.items()}


def main() -> None:
    import time

    from common import machine_line
    from embed_vs_sentence_transformers import long_texts

    import ctxlm

    if (why := missing()) is not None:
        raise SystemExit(why)
    warnings.filterwarnings("ignore", message=".*longer than max_length")
    model = ctxlm.load("minilm")
    texts = long_texts(64, 225)
    reference = ctxlm.embed(texts, model, normalize=True, batch_size=32, max_length=MAX_TOKENS, dtype="fp32")
    print(machine_line())
    for name, encode in encoders(model, 32).items():
        encode(texts)
        start = time.perf_counter()
        vectors = encode(texts)
        rate = len(texts) / (time.perf_counter() - start)
        cosine = float((vectors * reference).sum(-1).min())
        print(f"{name}: {rate:,.1f} texts/s on 64 long texts, min cosine to ctxlm fp32 {cosine:.5f}")


if __name__ == "__main__":
    main()
