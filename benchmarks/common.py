"""Shared timing helpers for the side-by-side benchmarks: alternate rounds, report medians and ratios."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def train_rate(model: torch.nn.Module, step_loss: Callable[[], torch.Tensor], tokens: int, steps: int) -> float:
    """Tokens per second of forward + backward + fused AdamW (transformers' Trainer default optimizer)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        step_loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, kernels, compilation
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * tokens / (time.perf_counter() - start)


def median_rates(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each function once per round, in turn, so drift in the machine's speed hits every contender alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(fn())
    return {name: statistics.median(values) for name, values in samples.items()}


def add_model_arguments(parser, **defaults: int) -> None:
    """The model shape every benchmark takes: --layers --dim --heads --vocab --block --batch."""
    shape = {"layers": 4, "dim": 256, "heads": 4, "vocab": 8192, "block": 256, "batch": 8} | defaults
    for name, value in shape.items():
        parser.add_argument(f"--{name}", type=int, default=value)


def machine_line() -> str:
    import transformers

    return (f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def print_table(rows: list[tuple[str, float, float]], peer: str = "transformers") -> None:
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | {'ctxlm':>10} | {peer:>12} | {'ratio':>6} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 14}|{'-' * 8}|")
    for label, ours, theirs in rows:
        print(f"| {label:<{width}} | {ours:>10,.0f} | {theirs:>12,.0f} | {ours / theirs:>5.2f}x |")
