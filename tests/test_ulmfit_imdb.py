"""benchmarks/ulmfit_imdb.py (ULMFiT's IMDb experiment) on a tiny IMDb folder in the real files' format: `select`
never opens the test file, chooses per row and per label count, floors the steps of small sizes; the TF-IDF
reference learns 1-2 grams; the sentiment-unit finder recovers a planted unit; the L1 sweep uses more units as C
grows; the table writer's cells come from the result files. No figure of the real measurement is asserted."""

import gzip
import json
import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest

import ctxlm
from helpers import tiny, write_corpus
from tolerances import assert_fp_close

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WORDS = ["the", "film", "plot", "actor", "scene", "story", "music", "ending", "was", "and", "a", "long"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as top-level modules
    import ulmfit_imdb

    return ulmfit_imdb


def review(rng: random.Random, label: int) -> str:
    """About 30 tokens of filler and the label in two words: a window or two of a 32-position model."""
    return " ".join(rng.choice(WORDS) for _ in range(18)) + (" , great wonderful ." if label else " , awful dull .")


def write_imdb(root: Path, per_label: int = 30, test_per_label: int | None = 10) -> dict[str, list[str]]:
    """An IMDb folder as PROVENANCE.md describes it (train/test TSV with `id rating label sentence`, negative then
    positive; unsup one review a line). test_per_label None: a test file that fails to parse if read."""
    rng = random.Random(0)
    folder = root / "imdb"
    folder.mkdir(parents=True)
    texts = {}
    for split, n in (("train", per_label), ("test", test_per_label)):
        if n is None:
            (folder / "test.tsv.gz").write_bytes(gzip.compress(b"id\trating\nbroken\t1\n"))
            continue
        rows = [(label, i, review(rng, label)) for label in (0, 1) for i in range(n)]
        texts[split] = [text for _, _, text in rows]
        lines = "".join(f"{'pos' if label else 'neg'}_{i}\t{8 if label else 2}\t{label}\t{text}\n"
                        for label, i, text in rows)
        (folder / f"{split}.tsv.gz").write_bytes(gzip.compress(f"id\trating\tlabel\tsentence\n{lines}".encode()))
    (folder / "unsup.txt.gz").write_bytes(gzip.compress("".join(f"{review(rng, 1)}\n" for _ in range(6)).encode()))
    return texts


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def save_row(out: Path, name: str, corpus_dir: Path) -> Path:
    """A tiny GPT-2 (32 positions) saved where `build` puts the row's model: scratch is a model folder, the others
    pretraining runs."""
    folder = out / name if name == "scratch" else out / name / "checkpoint"
    return tiny("gpt2", corpus=corpus_dir, max_positions=32, save_to=folder)


def run(bench, *args) -> None:
    bench.main([str(a) for a in args])


# -- select ------------------------------------------------------------------------------------------------------
def test_select_never_opens_the_test_file_and_floors_the_steps_of_small_sizes(bench, data_root, tmp_path,
                                                                               monkeypatch, corpus_dir):
    import ctxlm.transfer.data as data

    write_imdb(data_root, per_label=30, test_per_label=None)  # 54 training reviews, 6 dev; a broken test file
    asked, path_of = [], data.dataset_path
    monkeypatch.setattr(data, "dataset_path", lambda *parts: asked.append(parts) or path_of(*parts))
    out = tmp_path / "out"
    save_row(out, "general+imdb", corpus_dir)
    run(bench, "select", "--out", out, "--rows", "general+imdb,tfidf", "--sizes", "12,48", "--recipes",
        "features,full-5e-4", "--epochs", 4, "--min-steps", 20, "--batch-size", 8)
    assert asked and all(parts[-1] != "test.tsv.gz" for parts in asked), asked
    chosen = json.loads((out / "chosen.json").read_text())
    assert set(chosen) == {"general+imdb", "tfidf"} and all(set(sizes) == {"12", "48"} for sizes in chosen.values())
    results = {(r["row"], r["size"], r["recipe"]): r for r in bench.read_records(out / "select" / "results")}
    assert len(results) == 2 * 2 + 2 * len(bench.TFIDF_CS)
    # 12 labels in batches of 8: 2 steps an epoch, 8 in 4 epochs, floored to 20; 48 labels: 24 steps, no floor
    assert {r["steps"] for (row, size, _), r in results.items() if row != "tfidf" and size == 12} == {20}
    assert {r["steps"] for (row, size, _), r in results.items() if row != "tfidf" and size == 48} == {24}
    for row, sizes in chosen.items():  # each choice is the best dev accuracy at its size
        for size, recipe in sizes.items():
            scores = [r["dev_accuracy"] for (n, s, _), r in results.items() if (n, s) == (row, int(size))]
            assert results[(row, int(size), recipe)]["dev_accuracy"] == max(scores)
    assert "general+imdb, 48 labels:" in (out / "selection.md").read_text()


def test_the_choice_is_per_label_count_and_a_size_not_selected_takes_the_one_below(bench, data_root, tmp_path,
                                                                                   monkeypatch, corpus_dir):
    write_imdb(data_root, test_per_label=None)
    out = tmp_path / "out"
    save_row(out, "scratch", corpus_dir)
    dev = {(100, "features"): 0.7, (100, "ulmfit"): 0.6, (1000, "features"): 0.75, (1000, "ulmfit"): 0.8}
    monkeypatch.setattr(bench, "finetune_run", lambda model, data, run_dir, recipe, seed, args: {
        "dev_accuracy": dev[(int(run_dir.name.split("-")[0]), recipe)], "steps": 1})
    run(bench, "select", "--out", out, "--rows", "scratch", "--sizes", "100,1000", "--recipes", "features,ulmfit")
    choices = json.loads((out / "chosen.json").read_text())["scratch"]
    assert choices == {"100": "features", "1000": "ulmfit"}
    assert [bench.recipe_for(choices, size) for size in (50, 300, 3000, bench.ALL)] == [
        ("features", 100), ("features", 100), ("ulmfit", 1000), ("ulmfit", 1000)]


def test_features_lr_reads_each_review_once_per_row_and_chooses_c_on_dev(bench, data_root, tmp_path, monkeypatch,
                                                                         corpus_dir):
    texts = write_imdb(data_root, per_label=30, test_per_label=10)
    out = tmp_path / "out"
    model = save_row(out, "imdb-only", corpus_dir)
    read, embed = [], ctxlm.embed
    monkeypatch.setattr(ctxlm, "embed", lambda batch, *a, **k: read.extend(batch) or embed(batch, *a, **k))
    run(bench, "select", "--out", out, "--rows", "imdb-only", "--sizes", "12,24", "--recipes", "features-lr")
    assert not set(read) & set(texts["test"])  # select reads no test review
    run(bench, "table", "--out", out, "--rows", "imdb-only", "--sizes", "12,24", "--seeds", "0,1", "--all-rows", "",
        "--test-reviews", 8)
    assert len(read) == len(set(read))  # every review read once for the row, whichever step, size or seed asked
    cells = bench.read_records(out / "results")
    assert len(cells) == 4 and all(r["recipe"] == "features-lr" and r["c"] in bench.FEATURE_CS for r in cells)
    # a cell's C is the one whose classifier scores best on dev, among all of FEATURE_CS
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cache = bench.FeatureCache(out / "features" / "imdb-only.npz", str(model))
    data = bench.imdb(24, 1, 8)
    x, y = cache(data.train), [e.label for e in data.train]
    dev = [float(np.mean(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)
                         .predict(cache(data.dev)) == [e.label for e in data.dev])) for c in bench.FEATURE_CS]
    (cell,) = [r for r in cells if r["size"] == 24 and r["seed"] == 1]
    assert cell["dev_accuracy"] == max(dev) == dev[bench.FEATURE_CS.index(cell["c"])]
    # the cached vector is the review's concat-pooled top layer over all of its windows, as ctxlm.embed gives it
    review = data.dev[0].texts[0]
    expected = embed(review, model, layers="last", pool="concat", long_text="windows", dtype="fp32").numpy()
    config = ctxlm.load(model).config  # a batch of others' padding sums in another order: rounding apart
    assert_fp_close(cache([data.dev[0]])[0], expected, terms=config.dim, depth=config.n_layers)


# -- the classical reference ---------------------------------------------------------------------------------------
def test_tfidf_reads_word_pairs(bench):
    """Both classes hold the same words; only their order (the bigrams "not good", "not bad") tells them apart,
    so a unigram model would stay at chance."""
    from ctxlm.transfer.data import Example, TaskData, TaskSpec

    rng = random.Random(1)

    def example(label: int) -> Example:
        filler = " ".join(rng.choice(WORDS) for _ in range(6))
        return Example((f"{filler} good , not bad" if label else f"{filler} bad , not good",), label)

    spec = TaskSpec("toy", "single", ("0", "1"), ("accuracy",))
    data = TaskData(spec, [example(i % 2) for i in range(40)], [example(i % 2) for i in range(20)],
                    [example(i % 2) for i in range(40)])
    scores = bench.tfidf_run(data, c=10.0)
    assert scores["dev_accuracy"] == scores["test_accuracy"] == 1.0


# -- the sentiment unit --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sign", "offset"), [(1, 3.0), (-1, -2.0)])
def test_the_unit_finder_recovers_a_planted_unit_its_sign_and_threshold(bench, sign, offset):
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 2, n)
        features = rng.normal(size=(n, 24))
        features[:, 7] = offset + sign * (2 * labels - 1) + 0.4 * rng.normal(size=n)  # unit 7 = label + noise
        return features, labels

    features, labels = draw(400)
    unit = bench.find_unit(features, labels)
    assert (unit.index, unit.sign) == (7, sign) and abs(unit.threshold - offset) < 0.4 and unit.accuracy > 0.95
    test_features, test_labels = draw(400)
    assert np.mean(unit.predict(test_features) == test_labels) > 0.95
    noise_only = bench.find_unit(np.delete(features, 7, axis=1), labels)
    assert noise_only.accuracy < 0.65  # no other unit carries the label


def test_the_best_threshold_is_the_midpoint_of_the_best_cut_of_either_sign(bench):
    labels = np.array([0, 0, 1, 1])
    values = np.array([[1.0, 4.0, 2.0], [2.0, 3.0, 1.0], [3.0, 2.0, 3.0], [4.0, 1.0, 2.0]])
    thresholds, signs, accuracies = bench.best_thresholds(values, labels)
    assert list(thresholds[:2]) == [2.5, 2.5] and list(signs[:2]) == [1, -1] and list(accuracies[:2]) == [1, 1]
    # column 2 would separate the labels only by cutting between its two 2.0s (a negative and a positive): no
    # threshold does that, so 3 of 4 is the best, at a cut between distinct values
    assert accuracies[2] == 0.75 and thresholds[2] in (1.5, 2.5)
    unit = bench.Unit(2, float(thresholds[2]), int(signs[2]), 0.75)
    assert np.mean(unit.predict(values) == labels) == 0.75


def test_the_l1_sweep_uses_more_units_as_c_grows(bench):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    features = rng.normal(size=(600, 30))
    features[:, :6] += np.outer(2 * labels - 1, [1.5, 1.0, 0.7, 0.5, 0.3, 0.2])  # six units of falling strength
    train, test = (features[:400], labels[:400]), (features[400:], labels[400:])
    sweep = bench.l1_sweep(train, test, [0.003, 0.01, 0.03, 0.1, 1.0])
    units = [r["units"] for r in sweep]
    assert units == sorted(units) and units[0] < units[-1], units
    assert sweep[-1]["test_accuracy"] > 0.85


# -- table ---------------------------------------------------------------------------------------------------------
def test_the_table_writer_gives_mean_std_and_seed_counts_from_the_result_files(bench, tmp_path):
    out = tmp_path / "out"
    rng = random.Random(0)
    records = [{"row": row, "recipe": "ulmfit", "chosen_at": size, "size": size, "requested": size, "all": False,
                "seed": seed, "dev_accuracy": 0.5, "test_accuracy": rng.uniform(0.5, 0.9), "test_reviews": 2000,
                "steps": 200, "cpu_seconds": 900.0}
               for row in ("scratch", "general+imdb") for size, seeds in ((100, 3), (1000, 1)) for seed in range(seeds)]
    for r in records:
        path = out / "results" / f"{r['row']}-{r['recipe']}-{r['size']}-{r['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    bench.write_table(out, bench.read_records(out / "results"), [])
    text = (out / "imdb.md").read_text()
    for row in ("scratch", "general+imdb"):
        many = [100 * r["test_accuracy"] for r in records if r["row"] == row and r["size"] == 100]
        one = [100 * r["test_accuracy"] for r in records if r["row"] == row and r["size"] == 1000]
        cells = f"| {row} | {statistics.mean(many):.1f} ± {statistics.stdev(many):.1f} [3] | {one[0]:.1f} [1] |"
        assert cells in text, text
    assert f"CPU time {len(records) * 900 / 3600:.1f} h" in text and (out / "imdb.png").stat().st_size > 0


def test_tokens_seen_is_steps_times_the_batch_shape(bench, tmp_path):
    for data, length in (({"block_size": 16, "batch_size": 4}, 16), ({"max_length": 24, "batch_size": 4}, 24)):
        (tmp_path / "checkpoint").mkdir(exist_ok=True)
        (tmp_path / "checkpoint" / "trainer_state.json").write_text(json.dumps(
            {"step": 7, "train_config": {"grad_accum": 2}, "world_size": 3}))
        (tmp_path / "data.json").write_text(json.dumps(data))
        assert bench.tokens_seen(tmp_path) == 7 * 2 * 3 * 4 * length


@pytest.mark.default_precision  # the pretraining jobs' samples run at --precision auto; no bound depends on it
def test_build_makes_every_row_and_records_its_tokens(bench, data_root, tmp_path):
    """A tiny build: the general model on a WikiText-2 + Gutenberg stand-in, scratch as its random copy, stage 2
    and imdb-only on the reviews, MiniLM + masked LM; build/ROW.json holds steps and tokens seen."""
    write_imdb(data_root, per_label=20, test_per_label=4)
    lines = (write_corpus(tmp_path / "corpus") / "train.txt").read_text()
    for name in ("train.txt.gz", "valid.txt.gz"):
        (data_root / "wikitext2").mkdir(exist_ok=True)
        (data_root / "wikitext2" / name).write_bytes(gzip.compress(lines.encode()))
    (data_root / "gutenberg").mkdir()
    (data_root / "gutenberg" / "book.txt").write_text(f"licence\n*** START OF THE BOOK ***\n{lines}End of the book\n")
    out = tmp_path / "out"
    run(bench, "build", "--out", out, "--layers", 1, "--dim", 32, "--heads", 2, "--vocab", 300, "--block", 16,
        "--batch", 2, "--general-steps", 4, "--imdb-steps", 3, "--minilm-steps", 2, "--minilm-block", 32,
        "--minilm-batch", 2)
    assert set(bench.rows(out)) == {*bench.ROWS}
    built = {r["row"]: r for r in bench.read_records(out / "build")}
    tokens_a_step = {row: (r["steps"], r["tokens"] // r["steps"]) for row, r in built.items()}
    assert tokens_a_step == {"general": (4, 2 * 16), "general+imdb": (3, 2 * 16), "imdb-only": (3, 2 * 16),
                             "minilm+imdb": (2, 2 * 32)}
    general, scratch = (ctxlm.load(bench.rows(out)[row]).state_dict() for row in ("general", "scratch"))
    assert general.keys() == scratch.keys() and any((general[k] != scratch[k]).any() for k in general)
    assert json.loads((out / "general+imdb" / "init.json").read_text())  # stage 2 continued a checkpoint


@pytest.mark.filterwarnings("ignore:.*longer than max_length")  # the traced reviews are cut at the context
def test_table_full_test_and_neuron_end_to_end(bench, data_root, tmp_path, corpus_dir):
    texts = write_imdb(data_root, per_label=30, test_per_label=10)
    out = tmp_path / "out"
    save_row(out, "general+imdb", corpus_dir)
    (out / "chosen.json").write_text(json.dumps({"general+imdb": {"12": "full-5e-4"}, "tfidf": {"12": "C=1"}}))
    run(bench, "table", "--out", out, "--rows", "general+imdb,tfidf", "--sizes", 12, "--seeds", 0, "--all-rows", "",
        "--test-reviews", 8, "--full-test", "--min-steps", 6, "--batch-size", 8, "--epochs", 1)
    cells = {r["row"]: r for r in bench.read_records(out / "results")}
    assert set(cells) == {"general+imdb", "tfidf"}
    assert all(r["test_reviews"] == 8 and r["size"] == 12 and 0 <= r["test_accuracy"] <= 1 for r in cells.values())
    assert cells["general+imdb"]["steps"] == 6 and cells["general+imdb"]["cpu_seconds"] > 0
    full = {r["row"]: r for r in bench.read_records(out / "results-full")}
    assert set(full) == set(cells) and all(0 <= r["test_accuracy"] <= 1 for r in full.values())
    assert "On all 25,000 test reviews" in (out / "imdb.md").read_text()

    run(bench, "neuron", "--out", out, "--labels", 20, "--test-reviews", 8, "--cs", "0.1,10")
    (record,) = bench.read_records(out / "neuron")
    width = ctxlm.load(out / "general+imdb" / "checkpoint").config.dim
    assert 0 <= record["unit"]["index"] < width and record["train_reviews"] == 20 and record["test_reviews"] == 8
    assert [r["label"] for r in record["reviews"]] == [1, 0] and all(r["text"] in texts["test"]
                                                                    for r in record["reviews"])
    assert all(len(r["trace"]) > 0 and all(map(math.isfinite, r["trace"])) for r in record["reviews"])
    assert (out / "neuron.png").stat().st_size > 0 and "units" in (out / "neuron.md").read_text()


def test_sst2_chooses_on_held_out_training_labels_then_scores_each_seed_on_dev(bench, data_root, tmp_path,
                                                                              corpus_dir):
    rng = random.Random(2)
    rows = "".join(f"{review(rng, i % 2)}\t{i % 2}\n" for i in range(60))
    (data_root / "sst2").mkdir(parents=True)
    (data_root / "sst2" / "train.tsv.gz").write_bytes(gzip.compress(f"sentence\tlabel\n{rows}".encode()))
    (data_root / "sst2" / "dev.tsv").write_text("sentence\tlabel\n" + "".join(
        f"{review(rng, i % 2)}\t{i % 2}\n" for i in range(10)))
    out = tmp_path / "out"
    for row in ("general+imdb", "scratch"):
        save_row(out, row, corpus_dir)
    run(bench, "sst2", "--out", out, "--seeds", "0,1", "--recipes", "features,full-5e-4", "--min-steps", 5,
        "--epochs", 1, "--batch-size", 16)
    held_out = bench.read_records(out / "sst2" / "select" / "results")
    assert {(r["row"], r["recipe"]) for r in held_out} == {(row, recipe) for row in ("general+imdb", "scratch")
                                                           for recipe in ("features", "full-5e-4")}
    results = bench.read_records(out / "sst2" / "results")
    for row in ("general+imdb", "scratch"):
        scores = {r["recipe"]: r["accuracy"] for r in held_out if r["row"] == row}
        assert {(r["recipe"], r["seed"]) for r in results if r["row"] == row} == {
            (max(scores, key=scores.get), seed) for seed in (0, 1)}
    dev = json.loads(next((out / "sst2" / "runs").glob("scratch-*-1/metrics.json")).read_text())["metrics"]
    assert dev["task"] == "sst2" and dev["train_examples"] == 60 and dev["steps"] == 5
    assert "| scratch |" in (out / "sst2.md").read_text()


@pytest.mark.default_precision  # speed runs --precision auto beside fp32
def test_speed_tabulates_a_rate_per_shape_and_precision(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus")
    run(bench, "speed", "--out", tmp_path / "out", "--shapes", "1x32,2x64", "--block", 16, "--batch", 2, "--vocab",
        300, "--steps", 20, "--data", corpus / "train.txt")
    records = bench.read_records(tmp_path / "out" / "speed")
    assert {(r["layers"], r["dim"], r["precision"]) for r in records} == {
        (layers, dim, precision) for layers, dim in ((1, 32), (2, 64)) for precision in ("fp32", "auto")}
    assert all(r["tokens_per_s"] > 0 and r["ran"] in ("fp32", "bf16") for r in records)
    assert records[0]["parameters"] != records[-1]["parameters"]
    assert (tmp_path / "out" / "speed" / "speed.md").read_text().count("| 2×64 |") == 2
