"""Does pretraining pay? SST-2 dev accuracy against the number of labelled training sentences, for one network
per family (a ~5M-parameter GPT-2, a ~4M ELMo biLM) started four ways, and for the packaged MiniLM with and
without stage 2:

  scratch        the same network, random weights;
  general        pretrained on WikiText-2 + the Project Gutenberg books (their licence headers stripped);
  general+2      general, then ULMFiT's stage 2: its LM objective continued on SST-2's unlabelled training text;
  general+2dt    the same stage 2 as ULMFiT runs it: discriminative rates (/2.6 per layer group) + slanted
                 triangular rates (GPT-2 only: the Table 6 comparison);
  stage2-only    task-adaptive pretraining alone: the LM on SST-2's training text from random weights;
  minilm, minilm+2   the packaged all-MiniLM-L6-v2, and the same after masked LM on SST-2's training text.
ELMo's rows carry an "elmo-" prefix.

Every row fine-tunes on the same label subsets (`--train-size N --seed S` draws the same sentences for every
model). A row's recipe (features, full or ulmfit fine-tuning) is chosen on held-out training labels: `select`
fine-tunes each recipe on 80 % of the 1,000-label subset (seed 0) and scores it on the other 20 %, never on
SST-2's dev split; stage 2 and the task text never read the dev split either.

    python benchmarks/pretraining_pays.py build --out runs/pays --general-minutes 60 --stage2-minutes 15
    python benchmarks/pretraining_pays.py select --out runs/pays
    python benchmarks/pretraining_pays.py table --out runs/pays --sizes 100,300,1000,3000 --seeds 0,1,2

`build` makes the models (in --out, never committed; each step is skipped once done and resumes when
interrupted); `select` writes selection.md and chosen.json; `table` fine-tunes every row with its chosen recipe
(or `--recipe R` for all) at every size and seed (each run's result in results/, not run again) and writes
pays.md and pays.png (accuracy against labels on a log axis, as ULMFiT's Fig. 3).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from common import mean_cell, named_rows, once_json, plot_curves

import ctxlm
from ctxlm.checkpoint import is_checkpoint
from ctxlm.models import build_model
from ctxlm.paths import cache_root, dataset_path
from ctxlm.transfer.data import load_task

# Each family's general pretraining: its shape, batch and schedule (runs stop on time, so ELMo's rate is constant
# after a short warm-up, as in elmo_wikitext2.py; its softmax over the corpus' words is adaptive, half the time).
FAMILIES = {
    "gpt2": dict(model="gpt2", layers=4, dim=256, heads=4, vocab_size=8192, block_size=128, batch_size=16,
                 lr=2e-3, warmup=100),
    "elmo": dict(model="elmo", dim=128, softmax="adaptive", block_size=128, batch_size=32, lr=1e-3, warmup=20,
                 schedule="constant"),
}
# The fine-tuning recipes a row chooses from: feature extraction; full fine-tuning at GPT's rate (§4.1, for 117M
# parameters) and at a rate for a network 20 times smaller; ULMFiT (gradual unfreezing, discriminative and
# slanted triangular rates).
RECIPES = {"features": dict(strategy="features"), "full": dict(strategy="full"),
           "full-5e-4": dict(strategy="full", lr=5e-4), "ulmfit": dict(strategy="ulmfit", lr=2e-3)}
SELECT_SIZE, HELD_OUT = 1000, 0.2
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


def once(run: Path, train) -> None:
    """Train `run` unless a "done" marker says it was; an interrupted one resumes."""
    if not (run / "done").exists():
        train(resume=(run / "checkpoint").exists())
        (run / "done").touch()  # a later build does not train it further


def build(args) -> None:
    out = Path(args.out)
    valid = dataset_path("wikitext2", "valid.txt.gz")
    for family in args.families.split(","):
        recipe = FAMILIES[family]
        general = out / f"{family}-general"
        once(general, partial(ctxlm.pretrain, data=general_corpus(), out=general, valid=valid,
                              steps=args.general_steps, max_minutes=args.general_minutes, **recipe))
        stage2 = dict(data="task:sst2", steps=args.stage2_steps, lr=args.stage2_lr, warmup=20,
                      max_minutes=args.stage2_minutes, block_size=recipe["block_size"],
                      batch_size=recipe["batch_size"])
        starts = {"general+2": (general / "checkpoint", {}),
                  "stage2-only": (random_copy(general / "checkpoint", out / f"{family}-scratch"), {})}
        if family == "gpt2":  # ULMFiT Table 6: stage 2 with discriminative + slanted rates
            starts["general+2dt"] = (general / "checkpoint", dict(lr_decay=2.6, schedule="slanted"))
        for name, (init, extra) in starts.items():
            run = out / f"{family}-{name}"
            once(run, partial(ctxlm.pretrain, init=str(init), out=run, **(stage2 | extra)))
    if args.minilm:
        run = out / "minilm+2"
        once(run, partial(ctxlm.pretrain, init="minilm", out=run, data="task:sst2", steps=args.minilm_stage2_steps,
                          lr=5e-5, warmup=20, max_minutes=args.stage2_minutes, block_size=64, batch_size=32))


def rows(out: Path) -> dict[str, str]:
    """Every row whose model exists: name → what `ctxlm.finetune` loads."""
    found = {}
    for family in FAMILIES:
        prefix = "" if family == "gpt2" else f"{family}-"  # GPT-2's rows keep their first names
        found[f"{prefix}scratch"] = out / f"{family}-scratch"
        for name in ("general", "general+2", "general+2dt", "stage2-only"):
            found[f"{prefix}{name}"] = out / f"{family}-{name}" / "checkpoint"
    found |= {"minilm": "minilm", "minilm+2": out / "minilm+2" / "checkpoint"}
    return {name: str(path) for name, path in found.items() if path == "minilm" or is_checkpoint(path)}


def held_out_task(out: Path) -> dict:
    """The 1,000-label subset of seed 0 split 80/20 into csv files: the recipes train on the first part and are
    scored on the second (a csv task with a dev file)."""
    folder = out / "select"
    folder.mkdir(parents=True, exist_ok=True)
    train = load_task("sst2", train_size=SELECT_SIZE, seed=0).train
    cut = round(len(train) * (1 - HELD_OUT))
    for name, part in (("train.csv", train[:cut]), ("held-out.csv", train[cut:])):
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((example.texts[0], example.label) for example in part)
    return dict(task=f"csv:{folder / 'train.csv'}", user_task=dict(dev_path=str(folder / "held-out.csv")))


def select(args) -> None:
    """Fine-tune every row with every recipe on the held-out split; the best held-out accuracy wins."""
    out = Path(args.out)
    task = held_out_task(out)
    chosen, lines = {}, []
    recipes = {r: RECIPES[r] for r in args.recipes.split(",")} if args.recipes else RECIPES
    for name, model in pick_rows(out, args.rows).items():
        scores = {}
        for recipe, options in recipes.items():
            run = partial(ctxlm.finetune, model=model, seed=0, epochs=args.epochs,
                          out=out / "select" / "runs" / name / recipe, **task, **options)
            result = once_json(out / "select" / "results" / f"{name}-{recipe}.json",
                               lambda run=run: {"accuracy": run()["dev_accuracy"]})
            scores[recipe] = result["accuracy"]
        chosen[name] = max(scores, key=scores.get)
        lines.append(f"| {name} | " + " | ".join(f"{100 * s:.1f}" for s in scores.values()) + f" | {chosen[name]} |")
        print(lines[-1], flush=True)
    previous = json.loads((out / "chosen.json").read_text()) if (out / "chosen.json").exists() else {}
    (out / "chosen.json").write_text(json.dumps(previous | chosen, indent=1) + "\n")
    (out / "selection.md").write_text(
        f"Held-out accuracy ×100: {SELECT_SIZE} SST-2 training labels (seed 0), trained on "
        f"{round(SELECT_SIZE * (1 - HELD_OUT))}, scored on {round(SELECT_SIZE * HELD_OUT)}\n\n"
        f"| model | {' | '.join(recipes)} | chosen |\n|---|{'---:|' * len(recipes)}---|\n" + "\n".join(lines) + "\n")


def pick_rows(out: Path, names: str | None) -> dict[str, str]:
    return named_rows(rows(out), names, out)


def table(args) -> None:
    """Fine-tune every row (or `--rows`) at every size and seed with its chosen recipe (or `--recipe`); a
    finished run's result is kept in results/ROW-RECIPE-SIZE-SEED.json and not run again, so several `table`
    processes can share the work."""
    out = Path(args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    (out / "results").mkdir(parents=True, exist_ok=True)
    chosen = json.loads((out / "chosen.json").read_text()) if (out / "chosen.json").exists() else {}
    for name, model in pick_rows(out, args.rows).items():
        recipe = args.recipe or chosen.get(name)
        if recipe is None:
            raise SystemExit(f"row {name}: no recipe chosen yet (run select, or give --recipe)")
        row_sizes = sizes if not name.startswith("minilm") else [s for s in sizes if s in args.minilm_sizes]
        for size in row_sizes:
            for seed in seeds:
                once_json(out / "results" / f"{name}-{recipe}-{size}-{seed}.json",
                          partial(table_cell, out, name, model, recipe, size, seed, args.epochs))
    records = [json.loads(f.read_text()) for f in sorted((out / "results").glob("*.json"))]
    write_table(out, records, sizes, chosen)


def table_cell(out: Path, name: str, model: str, recipe: str, size: int, seed: int, epochs: float | None) -> dict:
    """One fine-tuning run of the table: its SST-2 dev accuracy and minutes."""
    start = time.perf_counter()
    metrics = ctxlm.finetune(model=model, task="sst2", train_size=size, seed=seed, epochs=epochs,
                             out=out / "finetune" / f"{name}-{recipe}" / f"{size}-{seed}", **RECIPES[recipe])
    print(f"{name} ({recipe}) {size} labels seed {seed}: {100 * metrics['dev_accuracy']:.1f}", flush=True)
    return {"row": name, "recipe": recipe, "size": size, "seed": seed, "accuracy": metrics["dev_accuracy"],
            "minutes": round((time.perf_counter() - start) / 60, 2)}


def write_table(out: Path, records: list[dict], sizes: list[int], chosen: dict[str, str]) -> None:
    """pays.md: each row with its chosen recipe (mean ± std where several seeds ran), the other recipes measured
    below; pays.png: the chosen recipes' curves."""
    order = list(rows(out))
    keys = sorted({(r["row"], r["recipe"]) for r in records},
                  key=lambda k: (chosen.get(k[0]) != k[1], order.index(k[0]) if k[0] in order else 99, k[1]))
    lines = [f"SST-2 dev accuracy ×100 (mean ± std over the seeds run; [n] seeds), "
             f"{platform.processor() or platform.machine()}", "",
             "| model (recipe) | " + " | ".join(f"{s:,} labels" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    curves = {}
    for name, recipe in keys:
        cells, curve = [], []
        for size in sizes:
            values = [100 * r["accuracy"] for r in records
                      if r["row"] == name and r["recipe"] == recipe and r["size"] == size]
            cells.append(mean_cell(values))
            if values:
                curve.append((size, statistics.mean(values)))
        mark = " ✓" if chosen.get(name) == recipe else ""
        lines.append(f"| {name} ({recipe}{mark}) | " + " | ".join(cells) + " |")
        if chosen.get(name) == recipe:
            curves[f"{name} ({recipe})"] = curve
    lines += ["", "✓: the recipe chosen on held-out training labels (selection.md)"]
    (out / "pays.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_curves(curves, out / "pays.png", xlabel="labelled training sentences (log scale)",
                ylabel="SST-2 dev accuracy (%)", dashed=lambda label: label.startswith("elmo"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["build", "select", "table"])
    parser.add_argument("--out", default="runs/pays")
    parser.add_argument("--families", default="gpt2,elmo", help="build: which families' rows")
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
    parser.add_argument("--recipe", choices=list(RECIPES), help="table: this recipe for every row, not the chosen")
    parser.add_argument("--recipes", help="select: only these candidates (comma-separated) [default: all]")
    parser.add_argument("--rows", help="only these rows (comma-separated), e.g. scratch,general")
    parser.add_argument("--epochs", type=float, default=None)
    args = parser.parse_args()
    {"build": build, "select": select, "table": table}[args.stage](args)


if __name__ == "__main__":
    main()
