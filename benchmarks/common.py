"""Shared helpers for the benchmarks: model shapes, timed rates, alternating rounds, the machine; and for the
measurements made of many runs: results written once, mean ± std cells, accuracy-against-labels plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from ctxlm.precision import cpu_bf16_features


@dataclass(frozen=True)
class Shape:
    """A transformer's size and its training batch (the fields `add_model_arguments` parses, too)."""

    layers: int
    dim: int
    heads: int
    vocab: int
    block: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.layers}×{self.dim}, T={self.block}, batch {self.batch}"


def resolve_device(name: str) -> torch.device:
    """"auto": the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device | str) -> None:
    """GPU kernels run asynchronously: a clock read without this would time their launch, not their work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(fn: Callable[[], object], count: float, device: torch.device | str) -> float:
    """`count` (tokens, sentences, ...) over the seconds one call of `fn` takes."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return count / (time.perf_counter() - start)


def train_rate(model: torch.nn.Module, step_loss: Callable[[], torch.Tensor], tokens: int, steps: int) -> float:
    """Tokens per second of forward + backward + fused AdamW (transformers' Trainer default optimizer)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        step_loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, kernels, compilation
    device = next(model.parameters()).device

    def run() -> None:
        for _ in range(steps):
            step()

    return timed_rate(run, steps * tokens, device)


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


def shape_of(args) -> Shape:
    return Shape(args.layers, args.dim, args.heads, args.vocab, args.block, args.batch)


def _version(package: str) -> str | None:
    try:  # read from the installed metadata: importing transformers only for its version takes seconds
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the figures depend on: the CPU and how much of it this process may use, the GPU, the versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = ", ".join(cpu_bf16_features()) or "none"
    # The model name alone does not say it: one "AMD EPYC" here had AVX2 only, the next AVX-512 and AVX512-BF16.
    features = f"{torch.backends.cpu.get_cpu_capability()} kernels, bf16 units: {bf16}"
    return {"cpu": f"{cpu_model()} ({features})", "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": _version("transformers"),
            "sentence_transformers": _version("sentence-transformers")}


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    versions = ", ".join(f"{name.replace('_', '-')} {info[name]}" for name in ("torch", "transformers",
                                                                              "sentence_transformers") if info[name])
    return (f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['usable_cpus']} usable, "
            f"{info['torch_threads']} torch threads), {'GPU ' + info['gpu'] if info['gpu'] else 'no GPU'}; "
            f"{versions}")


def measured_peak_gflops(device: torch.device | str, size: int | None = None, repeats: int = 5,
                         dtype: torch.dtype = torch.float32) -> float:
    """The GFLOP/s of a large square matrix product here in `dtype` (fp32 by default), best of `repeats`: a peak
    the BLAS (or cuBLAS, or oneDNN for bf16) reaches in practice, below the datasheet's (which assumes every unit
    busy every cycle)."""
    size = size or (8192 if torch.device(device).type == "cuda" else 2048)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    timed_rate(lambda: a @ b, 1, device)  # warm-up: threads, allocator, cuBLAS handles
    return max(timed_rate(lambda: a @ b, 2 * size**3, device) for _ in range(repeats)) / 1e9


def print_table(rows: list[tuple[str, float, float]], peer: str = "transformers") -> None:
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | {'ctxlm':>10} | {peer:>12} | {'ratio':>6} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 14}|{'-' * 8}|")
    for label, ours, theirs in rows:
        print(f"| {label:<{width}} | {ours:>10,.0f} | {theirs:>12,.0f} | {ours / theirs:>5.2f}x |")


# -- measurements made of many runs (pretraining_pays.py, ulmfit_imdb.py) -----------------------------------------
def once_json(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON record at `path`, computed and written (atomically) the first time: a long measurement is many
    runs, and one interrupted, or shared between processes, must not run a finished one again."""
    if not path.exists():
        record = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(path)
    return json.loads(path.read_text())


def mean_cell(values: list[float], digits: int = 1) -> str:
    """"mean ± std [n]" (the sample standard deviation over the seeds run; "mean [1]" for one): a table cell that
    says how many runs it rests on."""
    if not values:
        return ""
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread} [{len(values)}]"


def plot_curves(curves: dict[str, list[tuple]], path: Path, *, xlabel: str, ylabel: str,
                dashed: Callable[[str], bool] = lambda name: False) -> None:
    """Accuracy against labelled examples on a log axis, one line per model (as ULMFiT's Fig. 3): each curve a
    list of (x, mean) or (x, mean, std) points, the std drawn as an error bar. Curves of one point are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = {name: points for name, points in curves.items() if len(points) > 1}
    for name, points in drawn.items():
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        errors = [p[2] if len(p) > 2 else 0.0 for p in points]
        ax.errorbar(xs, ys, yerr=errors if any(errors) else None, marker="o", capsize=3, label=name,
                    linestyle="--" if dashed(name) else "-")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def logged_rate(run_dir: Path) -> float:
    """A training run's tokens per second: the mean of the rates its metrics.jsonl logged, the first window left
    out (it pays for the allocator's and the kernels' warm-up); NaN when fewer than two were logged."""
    from ctxlm.runlog import read_metrics

    rates = [r["tokens_per_s"] for r in read_metrics(run_dir) if "tokens_per_s" in r][1:]
    return sum(rates) / len(rates) if rates else float("nan")


def named_rows(found: dict, names: str | None, out: Path) -> dict:
    """The rows of `found` (row name → model) named in `names` (comma-separated, in that order), or all of them;
    a row without a model in `out` ends the script, naming the rows there are."""
    if not names:
        return found
    missing = [name for name in names.split(",") if name not in found]
    if missing:
        raise SystemExit(f"no model for rows {', '.join(missing)} in {out} (run build first); have {', '.join(found)}")
    return {name: found[name] for name in names.split(",")}
