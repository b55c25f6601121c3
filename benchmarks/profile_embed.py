"""Where the time of one batch of long texts goes in `ctxlm.embed`, and how fast its matrix products run.

    python benchmarks/profile_embed.py                    # the default precision (auto: fp32 without bf16 units)
    python benchmarks/profile_embed.py --precision bf16   # bf16 autocast (emulated, slow, on a CPU without bf16)

The packaged MiniLM (`ctxlm.load("minilm")`) embeds 32 long texts (225 words of WikiText-2 valid each, cut at 256
tokens: one batch of 32 x 256) with mean pooling and normalisation, as `ctxlm bench` does, under torch.profiler.
Each operator's own time (not its children's) goes to the share of the outermost operator it runs in: matrix
products (linear, addmm, mm, bmm: the projections and the MLP, with addmm's copy of the bias into its output),
attention (SDPA's kernel, with its conversion of a boolean mask), layer norms, the other operators (GELU, residual
additions, the embedding lookup, ...), except that dtype conversions (aten::to, autocast's casts of inputs and
weights) are casts wherever they run. The phases that ctxlm.embed names with `record_function` count whole:
tokenization, padding (the id and mask tensors), pooling (the layers' mean over real tokens, normalisation, the
copy out). What no operator or phase holds is Python between them. Shares are of
the profiled time (the profiler adds a few per cent); the batch time is measured again without it (median of
`--repeats` calls).

GFLOP/s of the matrix products: their FLOPs, counted by torch.utils.flop_counter on the same batch, over their
profiled time, against the machine's peak for that dtype measured as `ctxlm bench` measures the fp32 one (the best
of 5 square 2048 x 2048 products; benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import defaultdict

import torch
from common import machine_line, measured_peak_gflops
from embed_vs_sentence_transformers import MAX_TOKENS, long_texts
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import ctxlm
from ctxlm.precision import bf16_units, choose

BATCH = 32
PHASES = {"embed: tokenize": "tokenization", "embed: pad": "padding", "embed: pool": "pooling"}
SHARES = ("matrix products", "attention", "layer norms", "casts", "other operators", "tokenization", "padding",
          "pooling", "Python and untracked")
MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
           "aten::_addmm_activation", "mkldnn")
FLOP_OPS = ("addmm", "mm", "bmm", "baddbmm", "_addmm_activation")


CASTS = ("aten::to", "aten::_to_copy")


def category(name: str) -> str:
    if any(name.startswith(prefix) for prefix in MATMULS):
        return "matrix products"
    if "scaled_dot_product" in name or "flash_attention" in name or "softmax" in name:
        return "attention"
    if "layer_norm" in name:
        return "layer norms"
    return "other operators"


def _share_of(event) -> str:
    """The share of an operator: casts if it is or runs in a dtype conversion, else its outermost operator's."""
    outermost = event
    while event is not None and event.name.startswith("aten::"):
        if event.name in CASTS:
            return "casts"
        outermost, event = event, event.cpu_parent
    return category(outermost.name)


def shares(prof, wall_us: float) -> dict[str, float]:
    """Microseconds per share, from the profiled events (see the module docstring)."""
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name in PHASES:  # a phase counts whole, its operators with it
            if not _inside_phase(event.cpu_parent):
                totals[PHASES[event.name]] += event.cpu_time_total
            continue
        if not event.name.startswith("aten::") or _inside_phase(event.cpu_parent):
            continue
        totals[_share_of(event)] += event.self_cpu_time_total
    totals["Python and untracked"] = max(0.0, wall_us - sum(totals.values()))
    return {name: totals.get(name, 0.0) for name in SHARES}


def _inside_phase(event) -> bool:
    while event is not None:
        if event.name in PHASES:
            return True
        event = event.cpu_parent
    return False


def matmul_flops(model, texts: list[str], dtype: str) -> float:
    """FLOPs of the batch's matrix products (not attention's), by torch's counter."""
    with FlopCounterMode(display=False) as counter:
        ctxlm.embed(texts, model, batch_size=BATCH, max_length=MAX_TOKENS, normalize=True, dtype=dtype)
    counts = counter.get_flop_counts().get("Global", {})
    return float(sum(n for op, n in counts.items() if str(op).split(".")[1] in FLOP_OPS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*longer than max_length")  # the texts are cut on purpose

    model = ctxlm.load("minilm")
    texts = long_texts(BATCH, 225)
    choice = choose(args.precision, "cpu")
    run = lambda: ctxlm.embed(texts, model, batch_size=BATCH, max_length=MAX_TOKENS, normalize=True,
                              dtype=args.precision)
    run()  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        profiled_us = (time.perf_counter() - start) * 1e6
    parts = shares(prof, profiled_us)
    flops = matmul_flops(model, texts, args.precision)
    matmul_s = parts["matrix products"] / 1e6
    peak_dtype = choice.dtype or torch.float32
    emulated = peak_dtype == torch.bfloat16 and not bf16_units("cpu")[0]
    # Emulated bf16 runs square products far below its linear layers' rate (0.3 against 9 GFLOP/s on an AVX2 CPU),
    # minutes for no ceiling at all: no peak then.
    peak = float("nan") if emulated else measured_peak_gflops("cpu", dtype=peak_dtype)

    print(machine_line())
    print(f"MiniLM (6 x 384), one batch of {BATCH} x {MAX_TOKENS} tokens, mean pooling + normalisation; precision "
          f"{args.precision}: {choice.name} ({choice.reason})")
    print(f"batch time {statistics.median(seconds) * 1e3:,.0f} ms without the profiler (median of {args.repeats}), "
          f"{profiled_us / 1e3:,.0f} ms profiled\n")
    print("| share | ms | % of the batch |")
    print("|---|---:|---:|")
    for name, us in parts.items():
        print(f"| {name} | {us / 1e3:,.1f} | {100 * us / profiled_us:.1f} % |")
    achieved = flops / matmul_s / 1e9 if matmul_s else float("nan")
    against = (f"{100 * achieved / peak:.0f} % of the measured {str(peak_dtype).removeprefix('torch.')} peak "
               f"({peak:,.1f} GFLOP/s: the best of 5 square 2048 x 2048 products)" if not emulated else
               "no peak: bf16 is emulated on this CPU (no AMX or AVX512-BF16)")
    print(f"\nmatrix products: {flops / 1e9:,.1f} GFLOP in {matmul_s * 1e3:,.0f} ms = {achieved:,.1f} GFLOP/s, "
          f"{against}")


if __name__ == "__main__":
    main()
