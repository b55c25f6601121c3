"""Does pretraining pay? SST-2 dev accuracy against the number of labelled training sentences, for one network
(a ~5M-parameter GPT-2) started four ways, and for the packaged MiniLM with and without stage 2:

  scratch      the same network, random weights;
  general      pretrained on WikiText-2 + the Project Gutenberg books (their licence headers stripped);
  general+2    general, then ULMFiT's stage 2: the causal LM continued on SST-2's unlabelled training text;
  stage2-only  task-adaptive pretraining alone: the causal LM on SST-2's training text from random weights;
  minilm, minilm+2   the packaged all-MiniLM-L6-v2, and the same after masked-LM on SST-2's training text.

Every row fine-tunes on the same label subsets (`--train-size N --seed S` draws the same sentences for every
model) with the same strategy. Stage 2 and the task text never read SST-2's dev split.

    python benchmarks/pretraining_pays.py build --out runs/pays --general-minutes 15 --stage2-minutes 4
    python benchmarks/pretraining_pays.py table --out runs/pays --sizes 100,300,1000,3000 --seeds 0,1,2

`build` makes the models (in --out, never committed; each step is skipped once done and resumes when
interrupted); `table` fine-tunes every row at every size and seed (each run's result in results/) and writes
pays.md and pays.png (accuracy against labels on a log axis, as ULMFiT's Fig. 3).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch

import ctxlm
from ctxlm.checkpoint import is_checkpoint
from ctxlm.models import build_model
from ctxlm.paths import cache_root, dataset_path

GPT2_SHAPE = dict(layers=4, dim=256, heads=4, vocab_size=8192, block_size=128, batch_size=16)
_BODY_START = re.compile(r"\*END\*? ?THE SMALL PRINT|^\*\*\* START OF", re.M)
_BODY_END = re.compile(r"^End of (the )?Project Gutenberg", re.M | re.I)


def gutenberg_body(text: str) -> str:
    """A Project Gutenberg file without its licence header (up to the end of the "small print", or the
    "*** START OF" line of the newer files whose small print sits at the end) and its closing lines."""
    start = _BODY_START.search(text)
    body = text[text.index("\n", start.end()) + 1:] if start else text
    end = _BODY_END.search(body)
    return body[:end.start()] if end else body


def general_corpus() -> Path:
    """A folder of WikiText-2's training split (linked in place) and the Gutenberg bodies, in the cache."""
    folder = cache_root() / "pays-corpus"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "wikitext2-train.txt.gz"
    if not link.exists():
        link.symlink_to(dataset_path("wikitext2", "train.txt.gz"))
    for book in sorted(dataset_path("gutenberg").glob("*.txt")):
        target = folder / f"gutenberg-{book.name}"
        if not target.exists():  # shakespeare-caesar.txt is Latin-1; the others are ASCII
            raw = book.read_bytes()
            text = raw.decode("utf-8") if raw.isascii() else raw.decode("latin-1")
            tmp = target.with_suffix(".tmp")
            tmp.write_text(gutenberg_body(text), encoding="utf-8")
            tmp.replace(target)
    return folder


def random_copy(source: Path, out: Path, seed: int = 0) -> Path:
    """The network of `source` with fresh random weights (its tokenizer kept): the scratch row."""
    if not is_checkpoint(out):
        trained = ctxlm.load(source)
        torch.manual_seed(seed)
        model = build_model(trained.config)
        model.tokenizer = trained.tokenizer
        ctxlm.save(model, out)
    return out


def build(args) -> None:
    out = Path(args.out)
    valid = dataset_path("wikitext2", "valid.txt.gz")
    general = out / "gpt2-general"
    if not (general / "done").exists():
        ctxlm.pretrain("gpt2", general_corpus(), out=general, valid=valid, steps=args.general_steps, lr=2e-3,
                       warmup=100, max_minutes=args.general_minutes, resume=(general / "checkpoint").exists(),
                       **GPT2_SHAPE)
        (general / "done").touch()  # a marker: a later build does not train it further
    stage2 = dict(data="task:sst2", steps=args.stage2_steps, lr=args.stage2_lr, warmup=20,
                  max_minutes=args.stage2_minutes, block_size=GPT2_SHAPE["block_size"],
                  batch_size=GPT2_SHAPE["batch_size"])
    for name, init in (("gpt2-general+2", general / "checkpoint"),
                       ("gpt2-stage2-only", random_copy(general / "checkpoint", out / "gpt2-scratch"))):
        run = out / name
        if not (run / "done").exists():
            ctxlm.pretrain(init=str(init), out=run, resume=(run / "checkpoint").exists(), **stage2)
            (run / "done").touch()
    run = out / "minilm+2"
    if args.minilm and not (run / "done").exists():
        ctxlm.pretrain(init="minilm", out=run, data="task:sst2", steps=args.minilm_stage2_steps, lr=5e-5,
                       warmup=20, max_minutes=args.stage2_minutes, block_size=64, batch_size=32,
                       resume=(run / "checkpoint").exists())
        (run / "done").touch()


def rows(out: Path, minilm: bool) -> dict[str, str]:
    found = {"scratch": out / "gpt2-scratch", "general": out / "gpt2-general" / "checkpoint",
             "general+2": out / "gpt2-general+2" / "checkpoint",
             "stage2-only": out / "gpt2-stage2-only" / "checkpoint"}
    if minilm:
        found |= {"minilm": "minilm", "minilm+2": out / "minilm+2" / "checkpoint"}
    return {name: str(path) for name, path in found.items()}


def table(args) -> None:
    """Fine-tune every row (or `--rows`) at every size and seed; a finished run's result is kept in
    results/ROW-SIZE-SEED.json and not run again, so several `table` processes can share the work."""
    out = Path(args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    (out / "results").mkdir(parents=True, exist_ok=True)
    chosen = rows(out, args.minilm)
    if args.rows:
        chosen = {name: chosen[name] for name in args.rows.split(",")}
    for name, model in chosen.items():
        row_sizes = sizes if not name.startswith("minilm") else [s for s in sizes if s in args.minilm_sizes]
        for size in row_sizes:
            for seed in seeds:
                tag = "" if args.strategy == "full" else f"-{args.strategy}"
                result = out / "results" / f"{name}{tag}-{size}-{seed}.json"
                if result.exists():
                    continue
                start = time.perf_counter()
                metrics = ctxlm.finetune(model=model, task="sst2", strategy=args.strategy, train_size=size,
                                         seed=seed, epochs=args.epochs,
                                         out=out / "finetune" / f"{name}{tag}" / f"{size}-{seed}")
                record = {"row": name, "strategy": args.strategy, "size": size, "seed": seed,
                          "accuracy": metrics["dev_accuracy"],
                          "minutes": round((time.perf_counter() - start) / 60, 2)}
                result.write_text(json.dumps(record) + "\n")
                print(f"{name} {size} labels seed {seed}: {100 * metrics['dev_accuracy']:.1f}", flush=True)
    records = [json.loads(f.read_text()) for f in sorted((out / "results").glob("*.json"))]
    write_table(out, records, sizes, args)


def write_table(out: Path, records: list[dict], sizes: list[int], args) -> None:
    for r in records:
        r.setdefault("strategy", "full")
    names = [(name, strategy) for strategy in dict.fromkeys(r["strategy"] for r in records)
             for name in rows(out, True) if any(r["row"] == name and r["strategy"] == strategy for r in records)]
    lines = [f"SST-2 dev accuracy ×100 (mean over the seeds run), {platform.processor() or platform.machine()}", "",
             "| model | " + " | ".join(f"{s:,} labels" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    curves = {}
    for name, strategy in names:
        cells, curve = [], []
        for size in sizes:
            values = [r["accuracy"] for r in records
                      if r["row"] == name and r["strategy"] == strategy and r["size"] == size]
            cells.append(f"{100 * statistics.mean(values):.1f}" if values else "")
            if values:
                curve.append((size, 100 * statistics.mean(values)))
        curves[f"{name} ({strategy})"] = curve
        lines.append(f"| {name} ({strategy}) | " + " | ".join(cells) + " |")
    (out / "pays.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        if curve:
            ax.plot(*zip(*curve, strict=True), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training sentences (log scale)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pays.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["build", "table"])
    parser.add_argument("--out", default="runs/pays")
    parser.add_argument("--general-steps", type=int, default=20000)
    parser.add_argument("--general-minutes", type=float, default=60.0)
    parser.add_argument("--stage2-steps", type=int, default=2000)
    parser.add_argument("--minilm-stage2-steps", type=int, default=1000)
    parser.add_argument("--stage2-minutes", type=float, default=15.0)
    parser.add_argument("--stage2-lr", type=float, default=1e-3)
    parser.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--minilm-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000])
    parser.add_argument("--sizes", default="100,300,1000,3000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--rows", help="only these rows (comma-separated), e.g. scratch,general")
    parser.add_argument("--epochs", type=float, default=None)
    args = parser.parse_args()
    build(args) if args.stage == "build" else table(args)


if __name__ == "__main__":
    main()
