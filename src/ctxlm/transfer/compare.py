"""`ctxlm compare`: models × strategies × seeds on one task → a mean ± std table and a plot.

Each run is an ordinary fine-tuning run folder `OUT/<model>/<strategy>/seed<S>`; one that finished (its
metrics.json says so) is not run again, and one that was interrupted resumes from its checkpoint, so an
interrupted comparison continues where it stopped, inside the run it was in.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import replace
from pathlib import Path

from ctxlm.checkpoint import is_resumable
from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.finetune import finetune
from ctxlm.transfer.task import task_named


def model_label(model: str) -> str:
    """A short folder-safe name: the last path part ("runs/gpt2-wt2" → "gpt2-wt2")."""
    name = Path(model.rstrip("/")).name if Path(model).exists() else model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "model"


def compare(base: FinetuneConfig, models: list[str], strategies: list[str], seeds: list[int], out: str | Path,
            *, say=print) -> list[dict]:
    """Run every combination (skipping finished ones, resuming interrupted ones from their checkpoint); write
    compare.json, compare.md and compare.png."""
    out = Path(out)
    rows = []
    for model in models:
        for strategy in strategies:
            for seed in seeds:
                run_dir = out / model_label(model) / strategy.replace(":", "_") / f"seed{seed}"
                done = run_dir / "metrics.json"
                metrics = json.loads(done.read_text())["metrics"] if done.is_file() else None
                if metrics is None or not metrics.get("finished", True):  # not run, or stopped by --max-minutes
                    resume = is_resumable(run_dir / "checkpoint")  # killed or stopped: continue from there
                    say(f"== {model} · {strategy} · seed {seed}" + (" (resuming from its checkpoint)" if resume
                                                                     else ""))
                    metrics = finetune(replace(base, model=model, strategy=strategy, seed=seed), run_dir,
                                       resume=resume)
                rows.append({"model": model_label(model), "strategy": strategy, "seed": seed, **metrics})
    main = "dev_" + task_named(base.task)(base).main_metric
    summary = summarize(rows, main)
    (out / "compare.json").write_text(json.dumps({"metric": main, "runs": rows, "summary": summary}, indent=2) + "\n")
    table = markdown_table(summary, main)
    (out / "compare.md").write_text(table + "\n")
    plot(summary, main, out / "compare.png")
    say(table)
    return summary


def summarize(rows: list[dict], metric: str) -> list[dict]:
    groups: dict[tuple[str, str], list[float]] = {}
    minutes: dict[tuple[str, str], list[float]] = {}
    trainable: dict[tuple[str, str], float | None] = {}
    for row in rows:
        key = (row["model"], row["strategy"])
        groups.setdefault(key, []).append(row[metric])
        minutes.setdefault(key, []).append(row.get("minutes", 0.0))
        trainable[key] = row.get("trainable_share")  # runs finished before the figure was recorded lack it
    return [{"model": m, "strategy": s, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
             "runs": len(v), "minutes": statistics.fmean(minutes[m, s]), "trainable_share": trainable[m, s]}
            for (m, s), v in groups.items()]


def markdown_table(summary: list[dict], metric: str) -> str:
    """Strategies as rows, models as columns, cells "mean ± std" in percent, with the share of the model's
    parameters that the strategy trained."""
    models = list(dict.fromkeys(r["model"] for r in summary))
    strategies = list(dict.fromkeys(r["strategy"] for r in summary))

    def text(r: dict) -> str:
        share = r.get("trainable_share")
        return f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}" + ("" if share is None else f" ({100 * share:.3g} %)")

    cell = {(r["model"], r["strategy"]): text(r) for r in summary}
    runs = max(r["runs"] for r in summary)
    title = f"{metric} ×100, mean ± std over {runs} seeds (share of parameters trained)"
    lines = [f"| {title} | " + " | ".join(models) + " |",
             "|---|" + "---|" * len(models)]
    lines += [f"| {s} | " + " | ".join(cell.get((m, s), "") for m in models) + " |" for s in strategies]
    return "\n".join(lines)


def plot(summary: list[dict], metric: str, path: Path) -> None:
    # Only when plotting: matplotlib takes a noticeable part of a second to import. A Figure of its own, not pyplot,
    # whose backend switch to Agg would silence a notebook's inline figures.
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in summary))
    strategies = list(dict.fromkeys(r["strategy"] for r in summary))
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6, 1.3 * len(strategies) * max(1, len(models) / 2)), 4))
    ax = fig.subplots()
    for k, model in enumerate(models):
        found = {r["strategy"]: r for r in summary if r["model"] == model}
        xs = [i + (k - (len(models) - 1) / 2) * width for i, s in enumerate(strategies) if s in found]
        ax.bar(xs, [found[s]["mean"] for s in strategies if s in found], width,
               yerr=[found[s]["std"] for s in strategies if s in found], capsize=3, label=model)
    ax.set_xticks(range(len(strategies)), strategies, rotation=20)
    ax.set(ylabel=metric.replace("_", " "), title="fine-tuning strategies")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
