"""How ctxlm GPT-2's training step grows with sequence length and with width (also `ctxlm bench --only scaling`).

    python benchmarks/scaling.py                      # lengths 128-2048 at 4 × 256, widths 128-768 at T=256
    python benchmarks/scaling.py --tokens 4096 --rounds 5 --no-memory

Every step trains the same number of tokens (`--tokens`, batch = tokens / T), so the weights' FLOPs per token
are fixed along the length sweep and only attention's grow: QK^T and AV cost 12 × layers × T × width per trained
token (benchmarks/flops.py), linear in T per token and so quadratic per sequence. The tables give time per
token against the first row beside the FLOPs per token against the first row and attention's share of the
FLOPs: where time follows FLOPs, attention is run at the same efficiency as the matrix products; where the
share passes one half, attention is the larger cost. Along the width sweep (T fixed, heads of 64) the weights'
FLOPs grow as width², attention's as width. Memory: what a training step adds at its peak on top of the weights,
in a fresh process per row (benchmarks/peak_memory.py). Times are medians over rounds; each round visits every
row, so a busy spell of the machine hits all rows alike.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import gpt2_vs_transformers as gpt2
import peak_memory
import torch
from common import Shape, machine_line, measured_peak_gflops, median_rates, resolve_device, train_rate
from flops import attention_train_flops, gpt_train_flops


@dataclass
class ScalingSettings:
    lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    widths: tuple[int, ...] = (128, 256, 512, 768)
    layers: int = 4
    width: int = 256  # of the length sweep
    length: int = 256  # of the width sweep
    vocab: int = 8192
    tokens: int = 2048  # per training step
    rounds: int = 5
    steps: int = 2  # timed steps per round, after a warm-up step
    memory: bool = True


def quick_settings() -> ScalingSettings:
    return ScalingSettings(lengths=(128, 256), widths=(128, 256), tokens=512, rounds=1, steps=1)


def shapes(settings: ScalingSettings) -> dict[str, list[Shape]]:
    def shape(width: int, length: int) -> Shape:
        if settings.tokens % length:
            raise ValueError(f"{settings.tokens} tokens per step do not split into sequences of {length}")
        return Shape(settings.layers, width, width // 64, settings.vocab, length, settings.tokens // length)

    return {"length": [shape(settings.width, length) for length in settings.lengths],
            "width": [shape(width, settings.length) for width in settings.widths]}


def tokens_per_s(s: Shape, steps: int, device: torch.device) -> float:
    """Training tokens/s of ctxlm's GPT-2 of shape `s`, built afresh (only one sweep row's model is held at a time)."""
    model = gpt2.build_ctxlm(s, dropout=0.1).to(device)
    x, y = gpt2.batch(s, device)
    return train_rate(model, lambda: gpt2.ctxlm_loss(model, x, y), x.numel(), steps)


def parameters(s: Shape) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        return sum(p.numel() for p in gpt2.build_ctxlm(s).parameters())


def measure(settings: ScalingSettings, device: torch.device, peak: float) -> dict[str, list[dict]]:
    if settings.memory:
        peak_memory.check_supported(device)
    sweeps = shapes(settings)
    every = {(sweep, i): s for sweep, rows in sweeps.items() for i, s in enumerate(rows)}
    fns = {key: (lambda s=s: tokens_per_s(s, settings.steps, device)) for key, s in every.items()}
    rates = median_rates(fns, settings.rounds)
    results: dict[str, list[dict]] = {}
    for sweep, rows in sweeps.items():
        first = rows[0]
        first_flops = gpt_train_flops(first.layers, first.dim, first.block, first.vocab)
        results[sweep] = []
        for i, s in enumerate(rows):
            rate, flops = rates[sweep, i], gpt_train_flops(s.layers, s.dim, s.block, s.vocab)
            row = {"length": s.block, "width": s.dim, "heads": s.heads, "batch": s.batch,
                   "parameters": parameters(s),
                   "ms_per_step": 1e3 * s.batch * s.block / rate, "us_per_token": 1e6 / rate,
                   "time_per_token_vs_first": rates[sweep, 0] / rate, "flops_per_token_vs_first": flops / first_flops,
                   "attention_share": attention_train_flops(s.layers, s.dim, s.block) / flops,
                   "gflops": rate * flops / 1e9, "peak_fraction": rate * flops / 1e9 / peak, "memory_mib": None}
            if settings.memory:
                row["memory_mib"] = peak_memory.in_fresh_process("gpt2", "ctxlm", s, device)["bytes"] / 2**20
            results[sweep].append(row)
    return results


def print_tables(results: dict[str, list[dict]], settings: ScalingSettings, peak: float) -> None:
    columns = ("ms/step | µs/token | time/token vs first | FLOPs/token vs first | attention share of FLOPs | "
               "GFLOP/s (% of peak) | memory MiB")
    for sweep, varied, fixed in (("length", "T", f"{settings.layers} layers × {settings.width}"),
                                 ("width", "width", f"{settings.layers} layers, T={settings.length}, heads of 64")):
        rows = results[sweep]
        print(f"\nctxlm GPT-2 training against {sweep}: {fixed}, {settings.tokens:,} tokens per step, vocab "
              f"{settings.vocab:,}")
        print(f"| {varied} | batch | parameters | {columns} |")
        print("|---:" * 10 + "|")
        for r in rows:
            memory = "–" if r["memory_mib"] is None else f"{r['memory_mib']:,.0f}"
            print(f"| {r[sweep]:,} | {r['batch']} | {r['parameters'] / 1e6:.1f}M | {r['ms_per_step']:,.0f} "
                  f"| {r['us_per_token']:,.1f} | {r['time_per_token_vs_first']:.2f}x "
                  f"| {r['flops_per_token_vs_first']:.2f}x | {100 * r['attention_share']:.0f} % "
                  f"| {r['gflops']:,.1f} ({100 * r['peak_fraction']:.0f} %) | {memory} |")
    print(f"\nmedians of {settings.rounds} rounds of {settings.steps} timed step(s); FLOPs by formula "
          f"(benchmarks/flops.py); peak {peak:,.0f} GFLOP/s")


def run(settings: ScalingSettings, device: torch.device, peak: float) -> dict:
    results = measure(settings, device, peak)
    print_tables(results, settings, peak)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,256,512,1024,2048")
    parser.add_argument("--widths", default="128,256,512,768")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per training step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--no-memory", action="store_true", help="leave out the peak memory column")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-gflops", type=float, help="the machine's peak [default: a measured fp32 product]")
    args = parser.parse_args()
    settings = ScalingSettings(lengths=tuple(int(x) for x in args.lengths.split(",")),
                               widths=tuple(int(x) for x in args.widths.split(",")), tokens=args.tokens,
                               rounds=args.rounds, steps=args.steps, memory=not args.no_memory)
    device = resolve_device(args.device)
    print(machine_line() + f"; device {device}")
    run(settings, device, args.peak_gflops or measured_peak_gflops(device))


if __name__ == "__main__":
    main()
