"""ULMFiT's IMDb experiment (Howard & Ruder 2018, Fig. 3) with ctxlm's own models at CPU scale: IMDb test accuracy
against the number of labelled training reviews, for one GPT-2 started four ways, MiniLM adapted to the reviews,
and the classical reference:

  scratch        the GPT-2 of the chosen shape, random weights (the general model's tokenizer);
  general        pretrained on WikiText-2 + the Project Gutenberg books (pretraining_pays.py's corpus; --general-from
                 reuses a run of it);
  general+imdb   general, then ULMFiT's stage 2: the causal LM on IMDb's training + unlabelled reviews (--data imdb);
  imdb-only      the same LM on the same reviews from random weights (with the from-scratch rate and warm-up);
  minilm+imdb    the packaged MiniLM after masked LM on the same reviews;
  tfidf          TF-IDF of 1-2 grams + logistic regression (scikit-learn), C chosen like a recipe.

Protocol. The imdb task's dev split (1,000 training reviews held out with a fixed seed, never trained on, never in
the LM text) chooses every recipe; the test split gives the figures only. `select` reads the training and dev
splits alone (the test file is never opened) and chooses, per row AND per label count, among `features-lr` (the
frozen backbone's concat-pooled vector of each review, computed once per row and kept in features/ROW.npz, then
scikit-learn's logistic regression with its C chosen on dev), `features` (a linear head trained on the frozen
backbone's features by the fine-tuning loop), `full` at the decoder's default rate and at 5e-4,
`ulmfit` (gradual unfreezing + discriminative + slanted rates at 2e-3) and `discriminative` (1e-3, /2.6 a layer
group), each fine-tuned on that many training reviews (seed 0) with a floor of --min-steps optimizer steps (100
labels in batches of 32 are 4 steps an epoch). `table` then fine-tunes every row at every size and seed with the
recipe chosen for that size (a size not selected takes the choice of the largest selected size below it) and
scores it on a fixed balanced subset of the test split: --test-reviews (2,000: 1,000 of each label, drawn with seed
0 from the 25,000, the same for every cell); --full-test scores the cells of that call on all 25,000 as well
(headline cells; the fine-tuned models are kept, so this costs inference only). 3 seeds up to 1,000 labels, 1
above; --all-rows (scratch and the row best on dev) also train on all 24,000 training reviews.

    python benchmarks/ulmfit_imdb.py speed  --out runs/imdb                     # tokens/s of a few shapes
    python benchmarks/ulmfit_imdb.py build  --out runs/imdb --layers 6 --dim 384 --heads 6
    python benchmarks/ulmfit_imdb.py select --out runs/imdb                     # chosen.json, selection.md
    python benchmarks/ulmfit_imdb.py table  --out runs/imdb                     # imdb.md, imdb.png
    python benchmarks/ulmfit_imdb.py table  --out runs/imdb --rows general+imdb,scratch,tfidf --sizes 100,1000 \\
        --full-test                                                            # headline cells, all 25,000
    python benchmarks/ulmfit_imdb.py neuron --out runs/imdb                     # neuron.md, neuron.png
    python benchmarks/ulmfit_imdb.py sst2   --out runs/imdb                     # sst2.md

Every step is resumable and skipped when done: models and fine-tuning runs live in --out (never committed), each
finished run's result is a small JSON file there (speed/, build/, select/results/, results/, results-full/,
neuron/, sst2/), so an interrupted step reruns with the same command and several `table` processes can share the
work. Each record carries the CPU seconds it cost; imdb.md adds them up with the CPU model. `make ulmfit-imdb` runs
the steps in order (IMDB_* variables shorten it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from common import machine_info, mean_cell, named_rows, once_json, plot_curves
from pretraining_pays import RECIPES as PAYS_RECIPES
from pretraining_pays import general_corpus, held_out_task, once, random_copy

import ctxlm
from ctxlm.checkpoint import is_checkpoint, is_resumable
from ctxlm.jobs import finetune_config
from ctxlm.paths import dataset_path
from ctxlm.precision import resolve_precision
from ctxlm.train import STATE_FILE
from ctxlm.transfer.data import Example, TaskData, load_task
from ctxlm.transfer.finetune import finetune

SIZES = "100,300,1000,3000,10000"
GPT_ROWS = ("scratch", "general", "general+imdb", "imdb-only")
ROWS = (*GPT_ROWS, "minilm+imdb", "tfidf")
# The recipes a row chooses from (pretraining_pays.py's, and discriminative rates alone); tfidf chooses its C.
RECIPES = {name: PAYS_RECIPES[name] for name in ("features", "full", "full-5e-4", "ulmfit")} | {
    "discriminative": dict(strategy="discriminative", lr=1e-3)}
# features-lr: the frozen backbone's vector of each review (read once per row, cached) + logistic regression whose C
# is chosen on dev: the cheap, classical way to read a frozen LM (the trial in the issue; Peters et al. 2019).
FEATURES_LR = "features-lr"
CANDIDATES = (*RECIPES, FEATURES_LR)
FEATURE_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
TFIDF_CS = (0.3, 1.0, 3.0, 10.0, 30.0)
TEST_SEED = 0
ALL = "all"  # the size of a run on every training review
TRAIN_REVIEWS = 24_000  # the imdb task's training split: IMDb's 25,000 less the 1,000 of dev


# -- what every step shares -------------------------------------------------------------------------------------
def costed(compute: Callable[[], dict]) -> Callable[[], dict]:
    """`compute` with the CPU seconds (this process's, every thread) and wall minutes it took added to its
    record: imdb.md sums them, so the measurement states what it cost."""

    def run() -> dict:
        cpu, wall = time.process_time(), time.perf_counter()
        record = compute()
        return record | {"cpu_seconds": round(time.process_time() - cpu, 1),
                         "minutes": round((time.perf_counter() - wall) / 60, 2)}

    return run


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def rows(out: Path) -> dict[str, str | None]:
    """Every row whose model exists in `out` (tfidf always): name → what `ctxlm.load` reads (None for tfidf)."""
    places = {"scratch": out / "scratch", **{name: out / name / "checkpoint" for name in ROWS[1:-1]}}
    found: dict[str, str | None] = {name: str(path) for name, path in places.items() if is_checkpoint(path)}
    return found | {"tfidf": None}


def pick_rows(out: Path, names: str | None) -> dict[str, str | None]:
    """`rows(out)`, or the ones named (comma-separated), in the order given; a missing model is an error."""
    return named_rows(rows(out), names, out)


def balanced_subset(examples: list[Example], count: int | None, seed: int = TEST_SEED) -> list[Example]:
    """`count` of `examples`, an equal number of each label drawn with `seed`, in file order: a fixed test set that
    a CPU can score after every cell (all of them when `count` is None or not smaller)."""
    if count is None or count >= len(examples):
        return examples
    rng = random.Random(seed)
    labels = sorted({e.label for e in examples})
    keep: set[int] = set()
    for label in labels:
        indices = [i for i, e in enumerate(examples) if e.label == label]
        keep.update(rng.sample(indices, min(len(indices), count // len(labels))))
    return [e for i, e in enumerate(examples) if i in keep]


def imdb(size: int | str, seed: int, test_reviews: int | None) -> TaskData:
    """The imdb task with `size` training reviews (`ALL`: every one) drawn with `seed`, dev whole, and the test
    split cut to `test_reviews` (`balanced_subset`; None: all of it); 0: no test split, its file never opened."""
    data = load_task("imdb", train_size=None if size == ALL else int(size), seed=seed, test=test_reviews != 0)
    if data.test is not None:
        data.test = balanced_subset(data.test, test_reviews)
    return data


def finetune_run(model: str, data: TaskData, run_dir: Path, recipe: str, seed: int, args) -> dict:
    """Fine-tune `model` on `data` with `recipe` and the measurement's settings (the --min-steps floor, dev once
    at the end); a run interrupted before resumes from its checkpoint. Returns its metrics."""
    config = finetune_config(model, "imdb", seed=seed, train_size=len(data.train), epochs=args.epochs,
                             min_steps=args.min_steps, evals_per_epoch=0, batch_size=args.batch_size,
                             max_length=args.max_length, precision=args.precision, **RECIPES[recipe])
    return finetune(config, run_dir, data=data, resume=is_resumable(run_dir / "checkpoint"))


def recipe_for(choices: dict[str, str], size: int | str) -> tuple[str, int]:
    """(recipe, the size it was chosen at) for `size` labels (`ALL`: the training split's 24,000): the choice at
    `size`, else at the largest selected size below it, else at the smallest selected."""
    count = TRAIN_REVIEWS if size == ALL else int(size)
    selected = sorted(int(s) for s in choices)
    at = max((s for s in selected if s <= count), default=selected[0])
    return choices[str(at)], at


def read_records(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


# -- the classical reference --------------------------------------------------------------------------------------
def tfidf_classifier(texts: list[str], labels: list[int], c: float):
    """TF-IDF of word 1- and 2-grams (sublinear term frequencies) + L2-regularised logistic regression: the
    bag-of-n-grams baseline IMDb papers report (Maas et al. 2011; Wang & Manning 2012 for bigrams)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(C=c, max_iter=1000, solver="liblinear"))
    return model.fit(texts, labels)


def accuracy_of(classifier, examples: list[Example]) -> float:
    predicted = classifier.predict([e.texts[0] for e in examples])
    return float(np.mean(predicted == np.array([e.label for e in examples])))


def tfidf_run(data: TaskData, c: float) -> dict:
    """A TF-IDF classifier trained on `data.train`: its dev (and test, where given) accuracy."""
    classifier = tfidf_classifier([e.texts[0] for e in data.train], [e.label for e in data.train], c)
    scores = {"dev_accuracy": accuracy_of(classifier, data.dev)}
    return scores | ({"test_accuracy": accuracy_of(classifier, data.test)} if data.test else {})


# -- features + logistic regression: each review read once per row --------------------------------------------------
class FeatureCache:
    """The frozen `model`'s vector of every review asked for: its top layer, ULMFiT's concat pooling ([last, max,
    mean], 3 × dim) over the whole review read in windows. Kept in features/ROW.npz (keys: a hash of the text), so a
    review is read once per row whichever step, size or seed asks for it, and an interrupted pass keeps what it
    read (saved every `chunk` reviews)."""

    def __init__(self, path: Path, model: str, precision: str = "fp32", chunk: int = 512) -> None:
        self.path, self.model, self.precision, self.chunk = path, model, precision, chunk
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as saved:
                self.vectors = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))

    def __call__(self, examples: list[Example]) -> np.ndarray:
        """(reviews, 3 × dim) float64, in the order of `examples`; the missing ones computed first, the longest
        first (batches of like lengths pad little)."""
        keys = [review_key(e.texts[0]) for e in examples]
        missing = {key: e.texts[0] for key, e in zip(keys, examples, strict=True) if key not in self.vectors}
        todo = sorted(missing, key=lambda key: -len(missing[key]))
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]
            print(f"features of {self.path.stem}: reviews {start + 1:,}-{start + len(part):,} of {len(todo):,}",
                  flush=True)
            vectors = ctxlm.embed([missing[key] for key in part], self.model, layers="last", pool="concat",
                                  long_text="windows", dtype=self.precision, batch_size=16)
            self.vectors.update(zip(part, vectors.numpy(), strict=True))
            self.save()
        return np.stack([self.vectors[key] for key in keys]).astype(np.float64)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.stem}.tmp.npz")
        np.savez(tmp, keys=np.array(list(self.vectors)), vectors=np.stack(list(self.vectors.values())))
        tmp.replace(self.path)


def review_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def feature_cache(out: Path, name: str, model: str, args) -> FeatureCache:
    return _feature_cache(out / "features" / f"{name}.npz", model, args.precision)


@cache
def _feature_cache(path: Path, model: str, precision: str) -> FeatureCache:
    """One FeatureCache per row and process: `table` asks for a row's vectors once per cell, and its file (74 MB
    at 24,000 reviews) is read once, not once a cell."""
    return FeatureCache(path, model, precision)


def features_lr_run(features: FeatureCache, data: TaskData) -> dict:
    """Standardised features + L2 logistic regression on `data.train`, C the best of FEATURE_CS on dev: its dev
    (and test, where given) accuracy and the C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def xy(examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
        return features(examples), np.array([e.label for e in examples])

    (x, y), (x_dev, y_dev) = xy(data.train), xy(data.dev)
    fitted = {c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)
              for c in FEATURE_CS}
    dev = {c: float(np.mean(model.predict(x_dev) == y_dev)) for c, model in fitted.items()}
    c = max(dev, key=dev.get)
    scores = {"dev_accuracy": dev[c], "c": c}
    if data.test:
        x_test, y_test = xy(data.test)
        scores["test_accuracy"] = float(np.mean(fitted[c].predict(x_test) == y_test))
    return scores


def row_run(out: Path, name: str, model: str | None, data: TaskData, run_dir: Path, recipe: str, seed: int,
            args) -> dict:
    """One candidate or cell of a row: tfidf (no model) with the C its recipe names ("C=3"), features-lr on the
    row's cached features, else fine-tuning with `recipe` in `run_dir`."""
    if model is None:
        return tfidf_run(data, float(recipe.removeprefix("C=")))
    if recipe == FEATURES_LR:
        return features_lr_run(feature_cache(out, name, model, args), data)
    return finetune_run(model, data, run_dir, recipe, seed, args)


# -- speed: tokens/s of a few shapes, to choose one ----------------------------------------------------------------
def speed(args) -> None:
    """Pretrain each shape for --steps (or --minutes) in each precision and tabulate the logged tokens/s."""
    out = Path(args.out) / "speed"
    corpus = Path(args.data) if args.data else general_corpus()
    precisions = ["fp32", "auto", *(["bf16"] if args.bf16 else [])]
    records = []
    for layers, dim in ((int(a), int(b)) for a, b in (shape.split("x") for shape in args.shapes.split(","))):
        for precision in precisions:
            name = f"{layers}x{dim}-{precision}"
            records.append(once_json(out / f"{name}.json", costed(partial(
                speed_run, out / name, corpus, layers, dim, precision, args))))
            print(f"{name}: {records[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    write_speed(out, records, args)


def speed_run(run: Path, corpus: Path, layers: int, dim: int, precision: str, args) -> dict:
    """One short pretraining of a shape (heads of 64 dimensions): its logged training rate (the first log window,
    which pays for warm-up, left out). The checkpoint is removed: only the rate is wanted."""
    import shutil

    from common import logged_rate

    result = ctxlm.pretrain(model="gpt2", data=corpus, out=run, layers=layers, dim=dim, heads=max(1, dim // 64),
                            vocab_size=args.vocab, block_size=args.block, batch_size=args.batch, steps=args.steps,
                            max_minutes=args.minutes, warmup=min(100, args.steps // 10), eval_every=args.steps,
                            save_every=args.steps, save_every_minutes=None, precision=precision,
                            tokenizer=speed_tokenizer(run.parent, corpus, args.vocab))
    ran = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu")
    shutil.rmtree(run / "checkpoint", ignore_errors=True)
    return {"layers": layers, "dim": dim, "block": args.block, "batch": args.batch, "precision": precision,
            "ran": "bf16" if ran is not None else "fp32", "tokens_per_s": logged_rate(run),
            "parameters": sum(p.numel() for p in result["model"].parameters())}


def speed_tokenizer(folder: Path, corpus: Path, vocab: int) -> Path:
    """One GPT-2 BPE for every shape (trained once on the corpus): the runs then differ in the model alone."""
    from ctxlm.textfiles import find_text_files
    from ctxlm.tokenizers import Tokenizer

    path = folder / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        Tokenizer.train(find_text_files(corpus), kind="gpt2", vocab_size=vocab).save(path)
    return path


def write_speed(out: Path, records: list[dict], args) -> None:
    lines = [f"Pretraining tokens/s, GPT-2, block {args.block}, batch {args.batch}, {args.steps} steps a run; "
             f"{machine_info()['cpu']}", "",
             "| shape | parameters | precision (ran) | tokens/s | tokens an hour |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['layers']}×{r['dim']} | {r['parameters'] / 1e6:.1f}M | {r['precision']} ({r['ran']}) | "
              f"{r['tokens_per_s']:,.0f} | {3600 * r['tokens_per_s'] / 1e6:.1f}M |" for r in records]
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# -- build: the models of the rows --------------------------------------------------------------------------------
def build(args) -> None:
    """general (or --general-from), scratch, general+imdb, imdb-only and minilm+imdb into --out; then each run's
    steps, tokens seen and last validation figure in build/ROW.json."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    general = out / "general"
    if args.general_from:
        link_run(general, Path(args.general_from))
        record_build(out, "general", general, reused=args.general_from)
    else:
        record_build(out, "general", general, train=partial(
            ctxlm.pretrain, model="gpt2", data=general_corpus(), out=general,
            valid=dataset_path("wikitext2", "valid.txt.gz"), layers=args.layers, dim=args.dim, heads=args.heads,
            vocab_size=args.vocab, block_size=args.block, batch_size=args.batch, lr=args.general_lr, warmup=100,
            steps=args.general_steps, max_minutes=args.general_minutes, save_every_minutes=args.save_every_minutes))
    scratch = random_copy(general / "checkpoint", out / "scratch")
    block = min(args.block, ctxlm.load(scratch).config.max_positions)  # a reused general may have fewer positions
    stage = dict(data="imdb", block_size=block, batch_size=args.batch, steps=args.imdb_steps,
                 max_minutes=args.imdb_minutes, save_every_minutes=args.save_every_minutes)
    starts = {"general+imdb": dict(init=str(general / "checkpoint"), lr=args.imdb_lr, warmup=20),  # stage 2
              "imdb-only": dict(init=str(scratch), lr=args.general_lr, warmup=100)}  # from random weights
    for name, start in starts.items():
        record_build(out, name, out / name, train=partial(ctxlm.pretrain, out=out / name, **stage, **start))
    if args.minilm:
        run = out / "minilm+imdb"
        record_build(out, "minilm+imdb", run, train=partial(
            ctxlm.pretrain, init="minilm", data="imdb", out=run, lr=5e-5, warmup=20, block_size=args.minilm_block,
            batch_size=args.minilm_batch, steps=args.minilm_steps, max_minutes=args.minilm_minutes,
            save_every_minutes=args.save_every_minutes))


def link_run(link: Path, target: Path) -> None:
    """`link` → `target`, an existing run reused as it is (it must hold a checkpoint)."""
    if not is_checkpoint(target / "checkpoint"):
        raise SystemExit(f"--general-from {target}: no checkpoint/ there (a ctxlm pretrain run folder)")
    if not link.exists():
        link.symlink_to(target.resolve(), target_is_directory=True)


def record_build(out: Path, name: str, run: Path, *, train=None, reused: str | None = None) -> dict:
    """Train `run` with `train` (once: a finished run is not trained again, an interrupted one resumes) and keep
    its summary in build/NAME.json."""

    def summary() -> dict:
        if train is not None:
            once(run, train)
        return {"row": name, "run": str(run), "reused": reused, **run_summary(run)}

    return once_json(out / "build" / f"{name}.json", costed(summary))


def run_summary(run: Path) -> dict:
    """A pretraining run's optimizer steps, tokens seen and last validation record, from its files."""
    from ctxlm.runlog import read_metrics

    valid = [r for r in read_metrics(run) if any(k.startswith("valid_") for k in r)]
    state = json.loads((run / "checkpoint" / STATE_FILE).read_text())
    return {"steps": state["step"], "tokens": tokens_seen(run), "valid": valid[-1] if valid else None}


def tokens_seen(run: Path) -> int:
    """Training tokens a pretraining run's steps read: steps (its checkpoint's trainer state) x micro-batches a step
    x processes x rows x tokens a row (data.json). A masked LM's rows are documents up to max_length tokens, so
    for it this counts positions, padding included: an upper bound."""
    state = json.loads((run / "checkpoint" / STATE_FILE).read_text())
    data = json.loads((run / "data.json").read_text())
    length = data.get("block_size") or data.get("max_length") or data.get("tgt_len")
    return (state["step"] * state["train_config"]["grad_accum"] * state.get("world_size", 1) * data["batch_size"]
            * length)


# -- select: a recipe per row and size, on dev --------------------------------------------------------------------
def select(args) -> None:
    """Every row x size x recipe fine-tuned on `size` training reviews (seed 0) and scored on dev; the best dev
    accuracy wins, per size. chosen.json: row → size → recipe; selection.md: every score."""
    out = Path(args.out)
    chosen_file = out / "chosen.json"
    chosen = json.loads(chosen_file.read_text()) if chosen_file.exists() else {}
    recipes = args.recipes.split(",") if args.recipes else list(CANDIDATES)
    if unknown := [r for r in recipes if r not in CANDIDATES]:
        raise SystemExit(f"--recipes: unknown {', '.join(unknown)} (choose from {', '.join(CANDIDATES)})")
    for name, model in pick_rows(out, args.rows).items():
        for size in ints(args.sizes):
            candidates = [f"C={c:g}" for c in TFIDF_CS] if model is None else recipes
            scores = {recipe: select_score(out, name, model, size, recipe, args) for recipe in candidates}
            chosen.setdefault(name, {})[str(size)] = max(scores, key=scores.get)
            print(f"{name}, {size} labels: " + ", ".join(f"{r} {100 * s:.1f}" for r, s in scores.items()) +
                  f" → {chosen[name][str(size)]}", flush=True)
    chosen_file.write_text(json.dumps(chosen, indent=1) + "\n")
    write_selection(out, read_records(out / "select" / "results"), chosen)


def select_score(out: Path, name: str, model: str | None, size: int, recipe: str, args) -> float:
    """The dev accuracy of one candidate (a recipe, or tfidf's C) at one size, computed once."""

    def score() -> dict:
        data = imdb(size, 0, test_reviews=0)  # training and dev reviews only: the test file is never opened
        metrics = row_run(out, name, model, data, out / "select" / "runs" / name / f"{size}-{recipe}", recipe, 0,
                          args)
        return {"row": name, "size": size, "recipe": recipe, "dev_accuracy": metrics["dev_accuracy"],
                "steps": metrics.get("steps"), "c": metrics.get("c")}

    return once_json(out / "select" / "results" / f"{name}-{size}-{recipe}.json", costed(score))["dev_accuracy"]


def write_selection(out: Path, records: list[dict], chosen: dict[str, dict[str, str]]) -> None:
    """selection.md: per row, a line per size with every candidate's dev accuracy and the choice."""
    lines = ["IMDb dev accuracy ×100 (1,000 held-out training reviews) of each candidate, fine-tuned on N training "
             "reviews (seed 0); [steps]; ✓ chosen", ""]
    for name in chosen:
        for size in sorted(chosen[name], key=int):
            found = [r for r in records if r["row"] == name and r["size"] == int(size)]
            cells = [f"{r['recipe']} {100 * r['dev_accuracy']:.1f}" + (f" [{r['steps']}]" if r.get("steps") else "")
                     + (" ✓" if r["recipe"] == chosen[name][size] else "") for r in found]
            lines.append(f"- {name}, {int(size):,} labels: " + "; ".join(cells))
    (out / "selection.md").write_text("\n".join(lines) + "\n")


# -- table: every row x size x seed with its chosen recipe, on the test subset ------------------------------------
def table(args) -> None:
    """Fine-tune (or fit, for tfidf) every cell; a finished cell's record in results/ is not run again. Then the
    every-review size for --all-rows, the full test split for --full-test, and imdb.md + imdb.png."""
    out = Path(args.out)
    chosen = json.loads((out / "chosen.json").read_text()) if (out / "chosen.json").exists() else {}
    picked = pick_rows(out, args.rows)
    cells = [(name, size, seed) for name in picked for size in ints(args.sizes) for seed in seeds_for(size, args)]
    for name, size, seed in cells:
        table_cell(out, name, picked[name], size, seed, chosen, args)
    for name in all_size_rows(out, args):
        cells.append((name, ALL, ints(args.few_seeds)[0]))
        table_cell(out, name, pick_rows(out, name)[name], ALL, cells[-1][2], chosen, args)
    if args.full_test:
        for name, size, seed in cells:
            full_test_cell(out, name, pick_rows(out, name)[name], size, seed, chosen, args)
    current = partial(is_current, chosen)
    write_table(out, list(filter(current, read_records(out / "results"))),
                list(filter(current, read_records(out / "results-full"))))


def is_current(chosen: dict, record: dict) -> bool:
    """Whether a cell's record used the recipe chosen now for its row and size (a later `select` may choose
    another: the older cells then stay on disk, out of the table)."""
    return record["row"] in chosen and record["recipe"] == recipe_for(chosen[record["row"]], record["requested"])[0]


def seeds_for(size: int | str, args) -> list[int]:
    """--seeds up to --many-seeds-up-to labels (where seeds disagree most), --few-seeds above."""
    return ints(args.seeds) if size != ALL and int(size) <= args.many_seeds_up_to else ints(args.few_seeds)


def cell_name(name: str, recipe: str, size: int | str, seed: int) -> str:
    return f"{name}-{recipe}-{size}-{seed}"


def table_cell(out: Path, name: str, model: str | None, size: int | str, seed: int, chosen: dict, args) -> dict:
    """One cell: `size` training reviews drawn with `seed`, the recipe chosen for that size, dev and test-subset
    accuracy. Its record is results/ROW-RECIPE-SIZE-SEED.json."""
    if name not in chosen:
        raise SystemExit(f"row {name}: no recipe chosen yet (run select first)")
    recipe, chosen_at = recipe_for(chosen[name], size)

    def run() -> dict:
        data = imdb(size, seed, args.test_reviews)
        metrics = row_run(out, name, model, data, out / "finetune" / cell_name(name, recipe, size, seed), recipe,
                          seed, args)
        print(f"{name} ({recipe}), {len(data.train):,} labels, seed {seed}: test {100 * metrics['test_accuracy']:.1f}",
              flush=True)
        return {"row": name, "recipe": recipe, "chosen_at": chosen_at, "size": len(data.train), "requested": size,
                "all": size == ALL, "seed": seed, "dev_accuracy": metrics["dev_accuracy"],
                "test_accuracy": metrics["test_accuracy"], "test_reviews": len(data.test),
                "steps": metrics.get("steps"), "c": metrics.get("c")}

    return once_json(out / "results" / f"{cell_name(name, recipe, size, seed)}.json", costed(run))


def all_size_rows(out: Path, args) -> list[str]:
    """The rows of --all-rows, "best" standing for the model row (not scratch, not tfidf) with the highest mean
    dev accuracy at the largest size it ran (dev, so that the choice reads no test review)."""
    names = [n for n in (args.all_rows or "").split(",") if n]
    if "best" not in names:
        return names
    records = [r for r in read_records(out / "results") if r["row"] not in ("scratch", "tfidf") and not r["all"]]
    if not records:
        print("--all-rows best: no model row has a result yet; left out", flush=True)
        return [n for n in names if n != "best"]
    largest = max(r["size"] for r in records)
    means = {row: statistics.mean(r["dev_accuracy"] for r in records if r["row"] == row and r["size"] == largest)
             for row in {r["row"] for r in records if r["size"] == largest}}
    best = max(means, key=means.get)
    return list(dict.fromkeys(best if n == "best" else n for n in names))


def full_test_cell(out: Path, name: str, model: str | None, size: int | str, seed: int, chosen: dict,
                   args) -> dict:
    """A finished cell scored on all 25,000 test reviews: the kept fine-tuned model (in fp32, as the run's own
    evaluations), or tfidf and features-lr fitted again (cheap, once the features are cached)."""
    recipe, _ = recipe_for(chosen[name], size)
    cell = json.loads((out / "results" / f"{cell_name(name, recipe, size, seed)}.json").read_text())

    def score() -> dict:
        run = out / "finetune" / cell_name(name, recipe, size, seed)
        if model is None or recipe == FEATURES_LR:  # fitted again (deterministic: the same C is chosen on dev)
            accuracy = row_run(out, name, model, imdb(size, seed, None), run, recipe, seed, args)["test_accuracy"]
        else:
            accuracy = ctxlm.evaluate(run, task="imdb", split="test", dtype="fp32")["accuracy"]
        return {key: cell[key] for key in ("row", "recipe", "size", "requested", "all", "seed")} | {
            "test_accuracy": accuracy, "test_reviews": "all"}

    return once_json(out / "results-full" / f"{cell_name(name, recipe, size, seed)}.json", costed(score))


def write_table(out: Path, records: list[dict], full: list[dict]) -> None:
    """imdb.md: test accuracy (mean ± std [seeds]) per row and size, the recipes behind them, the full-test cells,
    the pretraining runs' tokens, the CPU and the CPU time; imdb.png: the curves."""
    if not records:
        print("no cell has a result yet: nothing to tabulate", flush=True)
        return
    order = [name for name in ROWS if any(r["row"] == name for r in records)]
    sizes = sorted({r["size"] for r in records})
    test_reviews = sorted({r["test_reviews"] for r in records})
    lines = [f"IMDb test accuracy ×100 on {' / '.join(f'{n:,}' for n in test_reviews)} test reviews (balanced, drawn "
             f"with seed {TEST_SEED} from the 25,000; the same for every cell), mean ± std over the seeds run "
             "[seeds]; each cell's recipe chosen on the dev split (1,000 held-out training reviews) for its size", "",
             *grid(order, sizes, records, lambda rs: mean_cell([100 * r["test_accuracy"] for r in rs])), "",
             "Recipes (chosen on dev; \"@N\": chosen at N labels, the largest size selected below):", "",
             *grid(order, sizes, records, recipe_cell)]
    if full:
        lines += ["", "On all 25,000 test reviews (the cells scored so, `table --full-test`):", "",
                  *grid(order, sizes, full, lambda rs: mean_cell([100 * r["test_accuracy"] for r in rs]))]
    lines += ["", *pretraining_lines(out), "", *cost_lines(out)]
    (out / "imdb.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    curves = {name: [(size, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                     for size in sizes if (v := [100 * r["test_accuracy"] for r in records
                                                 if r["row"] == name and r["size"] == size])]
              for name in order}
    plot_curves(curves, out / "imdb.png", xlabel="labelled training reviews (log scale)",
                ylabel=f"IMDb test accuracy (%), {test_reviews[-1]:,} reviews", dashed=lambda name: name == "tfidf")


def grid(order: list[str], sizes: list[int], records: list[dict], cell: Callable[[list[dict]], str]) -> list[str]:
    """A markdown table, a line per row and a column per size, each cell made of the records there."""
    lines = ["| model | " + " | ".join(f"{s:,}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name in order:
        cells = [cell(found) if (found := [r for r in records if r["row"] == name and r["size"] == s]) else ""
                 for s in sizes]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def recipe_cell(records: list[dict]) -> str:
    return ", ".join(sorted({r["recipe"] + (f" @{r['chosen_at']:,}" if r["chosen_at"] != r["size"] else "")
                             for r in records}))


def pretraining_lines(out: Path) -> list[str]:
    """The build's runs: steps, tokens seen and last validation figure."""
    built = read_records(out / "build")
    if not built:
        return []
    lines = ["Pretraining runs (tokens seen = steps × batch × block; the masked LM's counts padded positions):", "",
             "| run | steps | tokens seen | last validation |", "|---|---:|---:|---|"]
    for r in built:
        valid = r["valid"] or {}
        figure = ", ".join(f"{k.removeprefix('valid_')} {v:.4g}" for k, v in valid.items()
                           if k in ("valid_perplexity", "valid_mlm_accuracy"))
        lines.append(f"| {r['row']}{' (reused)' if r['reused'] else ''} | {r['steps']:,} | {r['tokens'] / 1e6:.1f}M | "
                     f"{figure} (step {valid.get('step', '?')}) |")
    return lines


def cost_lines(out: Path) -> list[str]:
    """The machine and the CPU time of every step's records (process CPU seconds, all threads)."""
    info = machine_info()
    stages = {"speed": [out / "speed"], "build": [out / "build"], "select": [out / "select" / "results"],
              "table": [out / "results"], "full test": [out / "results-full"], "neuron": [out / "neuron"],
              "sst2": [out / "sst2" / "results", out / "sst2" / "select" / "results"]}
    hours = {stage: sum(r.get("cpu_seconds", 0) for folder in folders for r in read_records(folder)) / 3600
             for stage, folders in stages.items()}
    spent = ", ".join(f"{stage} {h:.1f}" for stage, h in hours.items() if h)
    return [f"CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs, {info['torch_threads']} torch threads), "
            f"torch {info['torch']}. CPU time {sum(hours.values()):.1f} h ({spent})."]


# -- neuron: the sentiment unit (Radford et al. 2017) -------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One hidden unit read as a classifier: positive where sign × (value − threshold) > 0."""

    index: int
    threshold: float
    sign: int
    accuracy: float  # on the examples it was found on

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self.sign * (features[:, self.index] - self.threshold) > 0).astype(int)


def best_thresholds(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every column of `features` (n, d) at once: (threshold, sign, accuracy) of the best single cut, either
    sign. A cut after the k smallest values (k = 0..n) calls them negative and the rest positive (sign +1), or the
    reverse (-1); only cuts between distinct values count, at the midpoint."""
    n = len(labels)
    order = np.argsort(features, axis=0, kind="stable")
    values = np.take_along_axis(features, order, axis=0)
    y = labels[order].astype(np.int64)
    zero = np.zeros((1, features.shape[1]), dtype=np.int64)
    negatives_below = np.concatenate([zero, np.cumsum(1 - y, axis=0)])
    positives_above = y.sum(0) - np.concatenate([zero, np.cumsum(y, axis=0)])
    up = negatives_below + positives_above  # correct calls with sign +1, for k = 0..n
    correct = np.maximum(up, n - up)
    ends = np.ones((1, features.shape[1]), dtype=bool)
    distinct = np.concatenate([ends, values[1:] > values[:-1], ends])  # a cut between two equal values is no cut
    k = np.where(distinct, correct, -1).argmax(0)
    columns = np.arange(features.shape[1])
    lower = np.where(k > 0, values[np.maximum(k - 1, 0), columns], values[0] - 1.0)
    upper = np.where(k < n, values[np.minimum(k, n - 1), columns], values[-1] + 1.0)
    sign = np.where(up[k, columns] >= n - up[k, columns], 1, -1)
    return (lower + upper) / 2, sign, correct[k, columns] / n


def find_unit(features: np.ndarray, labels: np.ndarray) -> Unit:
    """The unit whose single threshold best separates the labels (Radford et al.'s sentiment neuron), the lowest
    index among ties."""
    thresholds, signs, accuracies = best_thresholds(np.asarray(features, dtype=np.float64), np.asarray(labels))
    best = int(accuracies.argmax())
    return Unit(best, float(thresholds[best]), int(signs[best]), float(accuracies[best]))


def l1_sweep(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
             cs: list[float]) -> list[dict]:
    """L1-regularised logistic regression at each C on standardised features (scaled on the training rows): the
    units it uses (non-zero weights) and its test accuracy. Stronger regularisation (smaller C) uses fewer units,
    which shows how much of the sentiment a few units carry."""
    mean, std = train[0].mean(0), train[0].std(0) + 1e-8
    scaled = [(x - mean) / std for x in (train[0], test[0])]
    sweep = []
    for c in cs:
        model = l1_logistic(c).fit(scaled[0], train[1])
        sweep.append({"C": c, "units": int(np.count_nonzero(model.coef_)),
                      "test_accuracy": float(np.mean(model.predict(scaled[1]) == test[1]))})
    return sweep


def l1_logistic(c: float):
    """L1-regularised logistic regression (liblinear), spelled as the installed scikit-learn wants it: 1.8
    deprecated `penalty="l1"` for `l1_ratio=1`, which older versions ignore without `penalty="elasticnet"`."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    new = tuple(int(part) for part in sklearn.__version__.split(".")[:2]) >= (1, 8)
    return LogisticRegression(C=c, solver="liblinear", max_iter=2000, random_state=0,
                              **(dict(l1_ratio=1.0) if new else dict(penalty="l1")))


def neuron(args) -> None:
    """Find the unit on --labels training reviews (seed 0), score it and the L1 sweep on the test subset, trace it
    along one positive and one negative test review: neuron/KEY.json (computed once), neuron.md, neuron.png."""
    out = Path(args.out)
    model = pick_rows(out, args.row)[args.row]
    if model is None:
        raise SystemExit("--row: a model row (tfidf has no units)")
    key = f"{args.row}-layer{args.layer}-{args.pool}-{args.labels}-{'all' if args.full_test else args.test_reviews}"
    record = once_json(out / "neuron" / f"{key}.json", costed(partial(sentiment_unit, out, model, args)))
    write_neuron(out, args, record)


def sentiment_unit(out: Path, model: str, args) -> dict:
    """The unit, its accuracies, the L1 sweep and the two traces, as a JSON record."""
    lm = ctxlm.load(model)
    train = imdb(args.labels, 0, test_reviews=0).train  # finding the unit reads no test review
    test = imdb(ALL, 0, None if args.full_test else args.test_reviews).test
    x_train, x_test = (unit_features(out / "neuron", split, lm, examples, args)
                       for split, examples in (("train", train), ("test", test)))
    y_train, y_test = (np.array([e.label for e in examples]) for examples in (train, test))
    unit = find_unit(x_train, y_train)
    reviews = [first_fitting(test, label, lm) for label in (1, 0)]
    return {"row": args.row, "unit": asdict(unit), "train_reviews": len(train), "test_reviews": len(test),
            "test_accuracy": float(np.mean(unit.predict(x_test) == y_test)),
            "sweep": l1_sweep((x_train, y_train), (x_test, y_test), [float(c) for c in args.cs.split(",")]),
            "reviews": [{"label": r.label, "source": r.source, "text": r.texts[0],
                         "trace": unit_trace(lm, r.texts[0], args.layer, unit.index).tolist()} for r in reviews]}


def unit_features(folder: Path, split: str, lm, examples: list[Example], args) -> np.ndarray:
    """Each review's vector at --layer, pooled by --pool over its windows, cached in neuron/ (a pass over the
    reviews is the costly part)."""
    path = folder / f"{args.row}-{split}-{len(examples)}-layer{args.layer}-{args.pool}.pt"
    if not path.exists():
        vectors = ctxlm.embed([e.texts[0] for e in examples], lm, layers=args.layer, pool=args.pool,
                              long_text="windows", dtype="fp32", batch_size=16, progress=True)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(vectors, path)
    return torch.load(path).numpy().astype(np.float64)


def first_fitting(examples: list[Example], label: int, lm) -> Example:
    """The first review of `label` that fits the model's context in one window (its trace is then one pass)."""
    limit = lm.config.max_positions
    return next((e for e in examples if e.label == label and len(lm.tokenizer.encode(e.texts[0])) <= limit - 2),
                next(e for e in examples if e.label == label))


def unit_trace(lm, text: str, layer: int, index: int) -> np.ndarray:
    """The unit's value at every token of `text` (cut to the model's context): what it has read so far, for a
    decoder."""
    states = ctxlm.embed(text, lm, layers=layer, pool="none", dtype="fp32")
    return states[:, index].numpy()


def write_neuron(out: Path, args, record: dict) -> None:
    """neuron.md (the unit, its accuracies, the L1 sweep, the two reviews) and neuron.png (the unit along the two
    reviews; test accuracy against units used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit, sweep, reviews = Unit(**record["unit"]), record["sweep"], record["reviews"]
    lines = [f"Sentiment unit of {record['row']}, layer {args.layer}, {args.pool}-pooled over each review: unit "
             f"{unit.index}, positive where {'' if unit.sign > 0 else '-'}(value - {unit.threshold:.4g}) > 0.", "",
             f"- accuracy on the {record['train_reviews']:,} training reviews it was found on (seed 0): "
             f"{100 * unit.accuracy:.1f}",
             f"- test accuracy with that one threshold ({record['test_reviews']:,} test reviews): "
             f"{100 * record['test_accuracy']:.1f}", "",
             "L1-regularised logistic regression on every unit (standardised), test accuracy against units used:", "",
             "| C | units | test accuracy |", "|---:|---:|---:|",
             *(f"| {r['C']:g} | {r['units']} | {100 * r['test_accuracy']:.1f} |" for r in sweep), "",
             "The reviews of neuron.png (first 300 characters):", "",
             *(f"- {'positive' if r['label'] else 'negative'} ({r['source']}): {r['text'][:300]}" for r in reviews)]
    (out / "neuron.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for review in reviews:
        left.plot(review["trace"], label="positive review" if review["label"] else "negative review")
    left.axhline(unit.threshold, color="gray", linestyle=":", label="threshold")
    left.set_xlabel("token")
    left.set_ylabel(f"unit {unit.index}")
    left.legend(fontsize=8)
    right.plot([r["units"] for r in sweep], [100 * r["test_accuracy"] for r in sweep], marker="o", label="L1 sweep")
    right.plot([1], [100 * record["test_accuracy"]], marker="*", markersize=12, linestyle="",
               label=f"unit {unit.index} alone")
    right.set_xscale("symlog")
    right.set_xlabel("units used")
    right.set_ylabel("test accuracy (%)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "neuron.png", dpi=120)
    plt.close(fig)


# -- sst2: does adapting to IMDb carry over to SST-2? -------------------------------------------------------------
def sst2(args) -> None:
    """general+imdb against scratch on 1,000 SST-2 labels: a recipe chosen on held-out training labels
    (pretraining_pays.py's 80/20 split of the 1,000, seed 0), then --seeds runs scored on SST-2 dev."""
    out = Path(args.out)
    folder = out / "sst2"
    task = held_out_task(folder)
    settings = dict(epochs=args.epochs, min_steps=args.min_steps, evals_per_epoch=0, batch_size=args.batch_size,
                    precision=args.precision)
    recipes = args.recipes.split(",") if args.recipes else list(RECIPES)
    lines = ["SST-2 dev accuracy ×100 after fine-tuning on 1,000 training sentences (mean ± std [seeds]); the "
             "recipe chosen on held-out training labels (800 trained on, 200 scored)", "",
             "| model | held-out accuracy per recipe | chosen | SST-2 dev |", "|---|---|---|---:|"]
    for name, model in pick_rows(out, args.rows).items():
        scores = {recipe: sst2_run(folder / "select", name, recipe, 0, model=model, **task, **settings)
                  for recipe in recipes}
        recipe = max(scores, key=scores.get)
        results = [sst2_run(folder, name, recipe, seed, model=model, task="sst2", train_size=1000, **settings)
                   for seed in ints(args.seeds)]
        lines.append(f"| {name} | " + ", ".join(f"{r} {100 * s:.1f}" for r, s in scores.items()) +
                     f" | {recipe} | {mean_cell([100 * a for a in results])} |")
        print(lines[-1], flush=True)
    (out / "sst2.md").write_text("\n".join(lines) + "\n")


def sst2_run(folder: Path, name: str, recipe: str, seed: int, **options) -> float:
    """One SST-2 fine-tuning run (`options`: ctxlm.finetune's), computed once: its dev accuracy (the held-out
    labels' for a csv task)."""
    run = folder / "runs" / f"{name}-{recipe}-{seed}"

    def compute() -> dict:
        metrics = ctxlm.finetune(seed=seed, out=run, resume=is_resumable(run / "checkpoint"), **options,
                                 **RECIPES[recipe])
        return {"row": name, "recipe": recipe, "seed": seed, "accuracy": metrics["dev_accuracy"]}

    return once_json(folder / "results" / f"{name}-{recipe}-{seed}.json", costed(compute))["accuracy"]


# -- the command line ---------------------------------------------------------------------------------------------
def finetune_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning (every recipe)")
    group.add_argument("--epochs", type=float, help="[default: 3; 20 for features]")
    group.add_argument("--min-steps", type=int, default=200,
                       help="at least this many optimizer steps a run: 100 labels in batches of 32 are 4 steps an "
                            "epoch (see ctxlm finetune --help) [default: 200]")
    group.add_argument("--batch-size", type=int, default=32, help="[default: 32]")
    group.add_argument("--max-length", type=int, help="tokens a window (a review is read whole, in windows) "
                                                      "[default: the task's, 128, at most the model's context]")
    group.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                       help="training forward; evaluation stays fp32 [default: fp32]")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = top.add_subparsers(dest="step", required=True, metavar="STEP")
    every = argparse.ArgumentParser(add_help=False)
    every.add_argument("--out", default="runs/imdb", help="where models, runs and results go [default: runs/imdb]")

    def step(name: str, function, text: str) -> argparse.ArgumentParser:
        sub = steps.add_parser(name, parents=[every], help=text, description=text)
        sub.set_defaults(run=function)
        return sub

    s = step("speed", speed, "pretraining tokens/s of a few GPT-2 shapes in fp32 and --precision auto (bf16 with "
                             "--bf16): speed/speed.md, for choosing build's shape")
    s.add_argument("--shapes", default="4x256,6x384,8x512",
                   help="LAYERSxWIDTH,... (heads of 64) [default: %(default)s]")
    s.add_argument("--block", type=int, default=256, help="[default: 256]")
    s.add_argument("--batch", type=int, default=16, help="[default: 16]")
    s.add_argument("--vocab", type=int, default=8192, help="[default: 8192]")
    s.add_argument("--steps", type=int, default=30, help="steps a run (the rate: the mean of the logged rates but the "
                                                         "first, every 10 steps) [default: 30]")
    s.add_argument("--minutes", type=float, default=5.0, help="time budget a run [default: 5]")
    s.add_argument("--bf16", action="store_true", help="also force bf16 (emulated, slow, on a CPU without bf16 units)")
    s.add_argument("--data", help="text to train on [default: the general corpus, WikiText-2 + Gutenberg]")

    b = step("build", build, "the models of the rows (each run resumes when interrupted and is skipped once done)")
    b.add_argument("--layers", type=int, default=4, help="[default: 4]")
    b.add_argument("--dim", type=int, default=256, help="[default: 256]")
    b.add_argument("--heads", type=int, default=4, help="[default: 4]")
    b.add_argument("--vocab", type=int, default=8192, help="BPE tokens [default: 8192]")
    b.add_argument("--block", type=int, default=256, help="tokens a row [default: 256]")
    b.add_argument("--batch", type=int, default=16, help="rows a step [default: 16]")
    b.add_argument("--general-from", help="a pretraining run to use as general (e.g. runs/pays/gpt2-general): its "
                                          "shape then wins, the block capped at its context")
    b.add_argument("--general-steps", type=int, default=20000,
                   help="the cosine decays over these: set what fits the minutes (speed.md) [default: 20000]")
    b.add_argument("--general-minutes", type=float, default=60.0, help="[default: 60]")
    b.add_argument("--general-lr", type=float, default=2e-3, help="also imdb-only's [default: 2e-3]")
    b.add_argument("--imdb-steps", type=int, default=20000, help="general+imdb and imdb-only [default: 20000]")
    b.add_argument("--imdb-minutes", type=float, default=60.0, help="each of them [default: 60]")
    b.add_argument("--imdb-lr", type=float, default=1e-3, help="stage 2 (general+imdb) [default: 1e-3]")
    b.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=True, help="build minilm+imdb")
    b.add_argument("--minilm-steps", type=int, default=2000, help="[default: 2000]")
    b.add_argument("--minilm-minutes", type=float, default=30.0, help="[default: 30]")
    b.add_argument("--minilm-block", type=int, default=128, help="[default: 128]")
    b.add_argument("--minilm-batch", type=int, default=32, help="[default: 32]")
    b.add_argument("--save-every-minutes", type=float, default=10.0, help="checkpoint period [default: 10]")

    c = step("select", select, "a recipe per row and label count, chosen on dev: chosen.json, selection.md")
    c.add_argument("--rows", help="comma-separated [default: every row built, and tfidf]")
    c.add_argument("--sizes", default=SIZES, help="label counts [default: %(default)s]")
    c.add_argument("--recipes", help=f"candidates [default: {','.join(CANDIDATES)}]")
    finetune_options(c)

    t = step("table", table, "every row x size x seed with its chosen recipe, on the test subset: imdb.md, imdb.png")
    t.add_argument("--rows", help="comma-separated [default: every row built, and tfidf]")
    t.add_argument("--sizes", default=SIZES, help="label counts [default: %(default)s]")
    t.add_argument("--seeds", default="0,1,2", help="seeds up to --many-seeds-up-to labels [default: 0,1,2]")
    t.add_argument("--many-seeds-up-to", type=int, default=1000, help="[default: 1000]")
    t.add_argument("--few-seeds", default="0", help="seeds above it, and of the every-review size [default: 0]")
    t.add_argument("--all-rows", default="scratch,best",
                   help="rows also fine-tuned on all 24,000 training reviews; best: the model row with the best "
                        "dev accuracy at the largest size [default: scratch,best; '' for none]")
    t.add_argument("--test-reviews", type=int, default=2000, help="the fixed balanced test subset [default: 2000]")
    t.add_argument("--full-test", action="store_true", help="also score this call's cells on all 25,000 test reviews")
    finetune_options(t)

    n = step("neuron", neuron, "the sentiment unit of an IMDb-pretrained LM: neuron.md, neuron.png")
    n.add_argument("--row", default="general+imdb", help="[default: general+imdb]")
    n.add_argument("--labels", type=int, default=1000, help="training reviews to find the unit on [default: 1000]")
    n.add_argument("--layer", type=int, default=-1, help="0 = embeddings, -1 = top [default: -1]")
    n.add_argument("--pool", default="mean", choices=["mean", "last"],
                   help="over each review's tokens: mean, or its last token's state [default: mean]")
    n.add_argument("--cs", default="0.001,0.003,0.01,0.03,0.1,0.3,1", help="L1 strengths [default: %(default)s]")
    n.add_argument("--test-reviews", type=int, default=2000, help="[default: 2000]")
    n.add_argument("--full-test", action="store_true", help="all 25,000 test reviews")

    a = step("sst2", sst2, "general+imdb against scratch on 1,000 SST-2 labels: sst2.md")
    a.add_argument("--rows", default="general+imdb,scratch", help="[default: %(default)s]")
    a.add_argument("--seeds", default="0,1,2", help="[default: 0,1,2]")
    a.add_argument("--recipes", help=f"candidates [default: {','.join(RECIPES)}]")
    finetune_options(a)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
