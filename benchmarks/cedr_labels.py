"""Russian transfer with few labels: CEDR test macro-F1 against the number of labelled training sentences, for the
own Russian BERT and ELMo (russian_models.py's runs), the same networks with random weights, and TF-IDF + logistic
regression.

  bert, elmo                  the pretrained RusLit models (--models, default runs/ru: FAMILY/checkpoint);
  bert-scratch, elmo-scratch  the same networks and tokenizers, random weights;
  tfidf                       TF-IDF (word 1-2 grams or character 2-5 grams) + one logistic regression per emotion.

Protocol. The cedr task's dev split (752 training sentences held out with a fixed seed) chooses every recipe and
every decision threshold (`--threshold tuned`: the one with the best dev macro-F1); CEDR's test split gives the
figures only. `select` fine-tunes each recipe (features, full at the family's rate and at 5e-4, ulmfit) at each
label count with seed 0, with a floor of --min-steps optimizer steps, and keeps the best dev macro-F1 per row AND
per size (tfidf chooses its features and C the same way). `table` runs every row x size x seed with its choice:
3 seeds up to 1,000 labels, 1 above; "all" is every one of the 6,776 training sentences.

    python benchmarks/cedr_labels.py select --out runs/cedr --models runs/ru
    python benchmarks/cedr_labels.py table  --out runs/cedr --models runs/ru      # cedr.md, cedr.png

Each finished run's record is a JSON file in --out (select/, results/): an interrupted step reruns with the same
command and skips what is done. Records carry their CPU seconds; cedr.md adds them up with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from common import machine_info, mean_cell, once_json, plot_curves
from pretraining_pays import RECIPES, random_copy
from ulmfit_imdb import costed, ints, read_records

from ctxlm.checkpoint import is_checkpoint, is_resumable
from ctxlm.jobs import finetune_config
from ctxlm.transfer.data import TaskData, load_task
from ctxlm.transfer.finetune import finetune
from ctxlm.transfer.heads import label_sets
from ctxlm.transfer.metrics import compute_metrics, tune_threshold

ALL = "all"
TFIDF_SETTINGS = [f"{analyzer}-C={c:g}" for analyzer in ("word", "char") for c in (1.0, 3.0, 10.0, 30.0)]


def rows(models: Path, out: Path) -> dict[str, str | None]:
    """Every row whose model exists (tfidf always): name → what `ctxlm.load` reads (None for tfidf)."""
    found: dict[str, str | None] = {}
    for family in ("bert", "elmo"):
        checkpoint = models / family / "checkpoint"
        if is_checkpoint(checkpoint):
            found[family] = str(checkpoint)
            found[f"{family}-scratch"] = str(random_copy(checkpoint, out / f"{family}-scratch"))
    return found | {"tfidf": None}


def cedr(size: int | str, seed: int, test: bool) -> TaskData:
    return load_task("cedr", train_size=None if size == ALL else int(size), seed=seed, test=test)


# -- the classical reference --------------------------------------------------------------------------------------
def tfidf_run(data: TaskData, setting: str) -> dict:
    """TF-IDF + one L2-regularised logistic regression per label; the threshold with the best dev macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    analyzer, c = setting.split("-C=")
    features = (TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) if analyzer == "word" else
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    spec, n = data.spec, len(data.spec.labels)
    targets = np.zeros((len(data.train), n), dtype=int)
    for row, example in enumerate(data.train):
        targets[row, list(example.label)] = 1
    # a label that no training sentence has: scikit-learn's one-vs-rest then predicts it never (with a warning)
    classifier = make_pipeline(features, OneVsRestClassifier(LogisticRegression(C=float(c), max_iter=1000,
                                                                                solver="liblinear")))
    classifier.fit([e.texts[0] for e in data.train], targets)

    def probabilities(examples):
        return classifier.predict_proba([e.texts[0] for e in examples]).tolist()

    dev_probs, dev_labels = probabilities(data.dev), [e.label for e in data.dev]
    threshold = tune_threshold(spec, dev_probs, dev_labels)
    scores = {f"dev_{k}": v for k, v in compute_metrics(spec, label_sets(dev_probs, threshold), dev_labels).items()}
    if data.test:
        test_labels = [e.label for e in data.test]
        scores |= {f"test_{k}": v for k, v in
                   compute_metrics(spec, label_sets(probabilities(data.test), threshold), test_labels).items()}
    return scores | {"threshold": threshold}


def finetune_run(model: str, data: TaskData, run_dir: Path, recipe: str, seed: int, args) -> dict:
    config = finetune_config(model, "cedr", seed=seed, train_size=len(data.train), epochs=args.epochs,
                             min_steps=args.min_steps, evals_per_epoch=0, batch_size=args.batch_size,
                             max_length=args.max_length, threshold="tuned", **RECIPES[recipe])
    return finetune(config, run_dir, data=data, resume=is_resumable(run_dir / "checkpoint"))


def run_cell(model: str | None, data: TaskData, run_dir: Path, recipe: str, seed: int, args) -> dict:
    return tfidf_run(data, recipe) if model is None else finetune_run(model, data, run_dir, recipe, seed, args)


# -- select ---------------------------------------------------------------------------------------------------------
def select(args) -> None:
    out = Path(args.out)
    chosen_file = out / "chosen.json"
    chosen = json.loads(chosen_file.read_text()) if chosen_file.exists() else {}
    for name, model in rows(Path(args.models), out).items():
        for size in args.select_sizes.split(","):
            candidates = TFIDF_SETTINGS if model is None else args.recipes.split(",")
            scores = {recipe: select_score(out, name, model, size, recipe, args) for recipe in candidates}
            chosen.setdefault(name, {})[size] = max(scores, key=scores.get)
            print(f"{name}, {size} labels: " + ", ".join(f"{r} {100 * s:.1f}" for r, s in scores.items())
                  + f" → {chosen[name][size]}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    chosen_file.write_text(json.dumps(chosen, indent=1) + "\n")


def select_score(out: Path, name: str, model: str | None, size: str, recipe: str, args) -> float:
    """The dev macro-F1 of one candidate (a recipe, or tfidf's setting) at one size, computed once."""

    def score() -> dict:
        data = cedr(size, 0, test=False)  # the test file is never read while choosing
        metrics = run_cell(model, data, out / "select" / "runs" / f"{name}-{size}-{recipe}", recipe, 0, args)
        return {"row": name, "size": size, "recipe": recipe, "dev_macro_f1": metrics["dev_macro_f1"]}

    return once_json(out / "select" / f"{name}-{size}-{recipe}.json", costed(score))["dev_macro_f1"]


def recipe_for(choices: dict[str, str], size: str) -> str:
    """The choice at `size`, else at the largest selected size below it (ALL counts as the largest)."""
    order = sorted(choices, key=lambda s: float("inf") if s == ALL else int(s))
    below = [s for s in order if size == ALL or (s != ALL and int(s) <= int(size))]
    return choices[below[-1] if below else order[0]]


# -- table ----------------------------------------------------------------------------------------------------------
def table(args) -> None:
    out = Path(args.out)
    chosen = json.loads((out / "chosen.json").read_text())
    for name, model in rows(Path(args.models), out).items():
        if name not in chosen:
            raise SystemExit(f"row {name}: no recipe chosen yet (run select first)")
        for size in args.sizes.split(","):
            seeds = ints(args.seeds) if size != ALL and int(size) <= 1000 else ints(args.seeds)[:1]
            for seed in seeds:
                table_cell(out, name, model, size, seed, recipe_for(chosen[name], size), args)
    current = [r for r in read_records(out / "results")  # a later select may choose another recipe: older cells
               if r["row"] in chosen and r["recipe"] == recipe_for(chosen[r["row"]], r["size"])]  # stay out
    write_table(out, current, args.sizes.split(","))


def table_cell(out: Path, name: str, model: str | None, size: str, seed: int, recipe: str, args) -> dict:
    """One cell: `size` training sentences drawn with `seed`, the chosen recipe, dev and test metrics."""

    def cell() -> dict:
        data = cedr(size, seed, test=True)
        metrics = run_cell(model, data, out / "runs" / f"{name}-{recipe}-{size}-{seed}", recipe, seed, args)
        print(f"{name} ({recipe}), {len(data.train):,} labels, seed {seed}: test macro-F1 "
              f"{100 * metrics['test_macro_f1']:.1f}", flush=True)
        return {"row": name, "recipe": recipe, "size": size, "train": len(data.train), "seed": seed,
                **{k: v for k, v in metrics.items() if k.startswith(("dev_", "test_"))}}

    return once_json(out / "results" / f"{name}-{recipe}-{size}-{seed}.json", costed(cell))


def write_table(out: Path, records: list[dict], sizes: list[str]) -> None:
    names = list(dict.fromkeys(r["row"] for r in records))
    lines = ["CEDR test macro-F1 ×100 (mean ± std [seeds]), recipe and threshold chosen on dev", "",
             "| row | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
    curves = {}
    for name in names:
        cells, points = [], []
        for size in sizes:
            found = [r for r in records if r["row"] == name and r["size"] == size]
            values = [100 * r["test_macro_f1"] for r in found]
            cells.append(mean_cell(values) + (f" ({found[0]['recipe']})" if found else ""))
            if values:
                points.append((found[0]["train"], statistics.mean(values),
                               statistics.stdev(values) if len(values) > 1 else 0.0))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        curves[name] = points
    cpu = sum(r.get("cpu_seconds", 0) for r in records) / 3600
    lines += ["", f"{machine_info()['cpu']}; {cpu:.2f} CPU-hours of fine-tuning in these cells"]
    (out / "cedr.md").write_text("\n".join(lines) + "\n")
    plot_curves(curves, out / "cedr.png", xlabel="labelled training sentences", ylabel="CEDR test macro-F1",
                dashed=lambda name: name.endswith("scratch") or name == "tfidf")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    for step in ("select", "table"):
        p = steps.add_parser(step)
        p.add_argument("--out", default="runs/cedr")
        p.add_argument("--models", default="runs/ru", help="russian_models.py's --out")
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--min-steps", type=int, default=200, help="floor on optimizer steps (small label counts)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--max-length", type=int, default=128)
        p.add_argument("--recipes", default="features,full,full-5e-4,ulmfit")
        p.add_argument("--select-sizes", default="300,1000,3000")
        p.add_argument("--sizes", default=f"300,1000,3000,{ALL}")
        p.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    {"select": select, "table": table}[args.step](args)


if __name__ == "__main__":
    main()
