"""Multi-label classification (a text → zero or more labels) as a task kind: its loss, metrics and threshold, the
cedr reader, csv --multi-label files, and multi-label models fine-tuned, evaluated and used for prediction."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from ctxlm.errors import UserError
from ctxlm.paths import data_root
from ctxlm.transfer import metrics as task_metrics
from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.data import Example, TaskData, TaskSpec, UserTaskOptions, load_task, task_texts
from ctxlm.transfer.finetune import finetune
from ctxlm.transfer.heads import task_loss
from ctxlm.transfer.inputs import TaskBatches, encode_examples, label_tensor
from ctxlm.transfer.metrics import compute_metrics, tune_threshold
from ctxlm.transfer.model import TaskModel
from ctxlm.transfer.predict import predict
from helpers import tiny

LABELS = ("animal", "red", "big")
ANIMALS, THINGS = ["cat", "dog", "bird", "horse"], ["house", "ball", "tree", "door"]
SPEC = TaskSpec("planted", "multi", LABELS, ("macro_f1", "micro_f1", "exact_match"))


def planted(n: int, seed: int = 0) -> list[Example]:
    """Sentences with a planted label set: an animal or a thing, "red" or not, "big" or not (none, one or all)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        has = [rng.random() < 0.5 for _ in LABELS]
        words = ["the", *(["big"] if has[2] else []), *(["red"] if has[1] else []),
                 rng.choice(ANIMALS if has[0] else THINGS), "sees", "the", rng.choice(THINGS), "."]
        examples.append(Example((" ".join(words),), tuple(i for i, h in enumerate(has) if h)))
    return examples


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory, corpus_dir) -> Path:
    return tiny("bert", corpus=corpus_dir, max_positions=48, save_to=tmp_path_factory.mktemp("models") / "bert")


def quick(model: Path, **options) -> FinetuneConfig:
    return FinetuneConfig(model=str(model), task="planted", epochs=options.pop("epochs", 8), batch_size=16,
                          lr=options.pop("lr", 5e-3), max_length=48, device="cpu", **options)


# ------------------------------------------------------------------------------------------- loss and head
def test_the_loss_is_the_mean_binary_cross_entropy_of_every_label():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, dtype=torch.float64)
    sets = [(), (0,), (1, 2), (0, 1, 2), (2,), ()]
    targets = label_tensor(sets, SPEC, 1)
    assert targets.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 0]]
    p = logits.sigmoid()
    manual = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert float(task_loss(logits, targets, "multi", False)) == pytest.approx(float(manual), rel=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "gpt", "bert", "elmo"])
def test_every_family_takes_a_multi_label_head(corpus_dir, family):
    """One logit per label on any backbone, and a finite loss whose gradient reaches the backbone."""
    model = TaskModel(tiny(family, corpus=corpus_dir), SPEC, max_length=32)
    examples = planted(8)
    encoded = encode_examples(model.tokenizer, SPEC, examples, decoder=model.decoder, max_length=32)
    batch = TaskBatches(encoded, [e.label for e in examples], SPEC, model.tokenizer.pad_id, 8).train_batch(0)
    logits = model(batch)
    assert tuple(logits.shape) == (8, 3)
    loss = task_loss(logits, batch["labels"], "multi", False)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0
                                        for p in model.lm.layer_groups()[-1])


# ------------------------------------------------------------------------------------------------ metrics
# hand-made gold and predicted label sets over three labels, some empty on either side
GOLD = [(0,), (0, 1), (), (2,), (1, 2), (), (0,), (1,)]
PREDICTED = [(0,), (0,), (), (1, 2), (1, 2), (0,), (), (1,)]


def test_micro_macro_and_per_label_f1_and_exact_match_are_scikit_learns():
    got = compute_metrics(SPEC, PREDICTED, GOLD)
    y_true = np.array([[int(i in s) for i in range(3)] for s in GOLD])
    y_pred = np.array([[int(i in s) for i in range(3)] for s in PREDICTED])
    per_label = sk.f1_score(y_true, y_pred, average=None, zero_division=0)
    assert got == pytest.approx({
        "macro_f1": sk.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "micro_f1": sk.f1_score(y_true, y_pred, average="micro", zero_division=0),
        "exact_match": 4 / 8,  # rows 1, 3, 5 and 8: the empty gold set predicted empty counts as right
        **{f"f1_{name}": f1 for name, f1 in zip(LABELS, per_label, strict=True)}})
    assert got["f1_animal"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2 (rows 1, 2), fp 1 (6), fn 1 (7)


def test_empty_label_sets_none_gold_and_none_predicted(corpus_dir):
    nothing = compute_metrics(SPEC, [(), ()], [(), ()])
    assert nothing["exact_match"] == 1.0 and nothing["macro_f1"] == nothing["micro_f1"] == 0.0  # no label at all
    assert label_tensor([()], SPEC, 1).tolist() == [[0.0, 0.0, 0.0]]
    model = TaskModel(tiny("bert", corpus=corpus_dir), SPEC, max_length=32)
    with torch.no_grad():
        model.head.linear.bias.fill_(-20.0)  # every probability near 0: no label reaches the threshold
    result = predict(model, [Example(("the cat",), None)], dtype="fp32")[0]
    assert result["labels"] == [] and list(result["probabilities"]) == list(LABELS)
    assert all(p < 0.5 for p in result["probabilities"].values())


def test_the_tuned_threshold_is_the_best_macro_f1_and_ties_go_nearest_one_half():
    probabilities = [(0.3, 0.9, 0.1), (0.1, 0.2, 0.1), (0.35, 0.6, 0.7), (0.12, 0.95, 0.05)]
    gold = [(0, 1), (), (0, 1, 2), (1,)]
    # labels 0 and 2 are right for any threshold in (0.12, 0.3] and (0.1, 0.7]: all three, at 0.15 ... 0.3
    assert tune_threshold(SPEC, probabilities, gold) == 0.3
    best = max(compute_metrics(SPEC, [tuple(i for i, p in enumerate(r) if p >= t) for r in probabilities],
                               gold)["macro_f1"] for t in task_metrics.THRESHOLDS)
    assert best == 1.0


# ------------------------------------------------------------------------------------------ learning, threshold
def test_a_tiny_model_learns_planted_label_sets(bert, tmp_path):
    """Dev is the training texts themselves here: macro-F1 > 0.8 on what it trained on."""
    train = planted(128)
    finetune(quick(bert), tmp_path, data=TaskData(SPEC, train, list(train)))
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["dev_macro_f1"] > 0.8, metrics
    assert metrics["dev_threshold"] == 0.5 and json.loads((tmp_path / "model/task.json").read_text())[
        "spec"]["threshold"] == 0.5


def test_the_tuned_threshold_is_chosen_on_dev_and_never_reads_test(bert, tmp_path, monkeypatch):
    """A frozen backbone (the head on cached features) too: the threshold lands in the saved spec."""
    seen = []
    tune = task_metrics.tune_threshold
    monkeypatch.setattr(task_metrics, "tune_threshold", lambda spec, p, labels: seen.append(list(labels))
                        or tune(spec, p, labels))
    examples = planted(96, seed=1)
    data = TaskData(SPEC, examples[:64], examples[64:80], examples[80:])
    finetune(quick(bert, strategy="features", epochs=4, threshold="tuned", evals_per_epoch=2), tmp_path, data=data)
    dev_labels = [e.label for e in examples[64:80]]
    assert seen and all(labels == dev_labels for labels in seen)  # every evaluation of dev, never test
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    saved = json.loads((tmp_path / "model/task.json").read_text())["spec"]["threshold"]
    assert saved == metrics["dev_threshold"] == metrics["test_threshold"]


def test_a_threshold_is_checked_and_only_for_multi_label_tasks(bert, tmp_path):
    with pytest.raises(UserError, match="between 0 and 1"):
        quick(bert, threshold="1.5")
    single = TaskData(TaskSpec("s", "single", ("0", "1"), ("accuracy",)), [Example(("a",), 0)] * 4,
                      [Example(("a",), 1)])
    with pytest.raises(UserError, match="for multi-label tasks"):
        finetune(quick(bert, threshold="tuned"), tmp_path, data=single)


# ------------------------------------------------------------------------------------------------------ cedr
CEDR_HEADER = "sentence\tlabels\tsource\n"


def fake_cedr(root: Path, rows: int = 30) -> None:
    sets = ["", "joy", "sadness", "surprise,fear", "anger", "joy,sadness,anger"]
    write(root / "cedr/train.tsv.gz",
          CEDR_HEADER + "".join(f"Предложение номер {i} .\t{sets[i % len(sets)]}\tlj\n" for i in range(rows)))
    write(root / "cedr/test.tsv", CEDR_HEADER + "Тест .\t\tlenta\nЕщё тест !\tfear,anger\ttwitter\n")


def test_the_cedr_reader_holds_out_a_seeded_tenth_of_train_as_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path))
    fake_cedr(tmp_path)
    data = load_task("cedr")
    assert data.spec == TaskSpec("cedr", "multi", ("joy", "sadness", "surprise", "fear", "anger"),
                                 ("macro_f1", "micro_f1", "exact_match"))
    assert (len(data.train), len(data.dev), len(data.test)) == (27, 3, 2)
    assert sorted(e.source for e in data.train + data.dev) == sorted(f"{tmp_path}/cedr/train.tsv.gz:{i}"
                                                                       for i in range(2, 32))
    assert load_task("cedr").dev == data.dev and load_task("cedr", seed=5).dev == data.dev  # fixed, not the seed's
    by_line = {int(e.source.rpartition(":")[2]): e.label for e in data.train + data.dev}
    assert by_line[2] == () and by_line[5] == (2, 3) and by_line[7] == (0, 1, 4)
    assert [e.label for e in data.test] == [(), (3, 4)] and data.test[1].texts == ("Ещё тест !",)
    assert load_task("cedr", train_size=10, seed=1).train == load_task("cedr", train_size=10, seed=1).train
    assert len(load_task("cedr", train_size=10).train) == 10
    assert {t for (t,) in task_texts("cedr")} == {e.texts[0] for e in data.train}  # pretraining text: no dev, no test


def test_cedr_rows_in_error_are_named_by_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path))
    fake_cedr(tmp_path)
    write(tmp_path / "cedr/test.tsv", CEDR_HEADER + "Тест .\t\tlenta\nБез метки\ttwitter\n")
    with pytest.raises(UserError, match=r"test\.tsv:3: expected 3 tab-separated fields"):
        load_task("cedr")
    write(tmp_path / "cedr/test.tsv", CEDR_HEADER + "Тест .\tjoy,love\tlenta\n")
    with pytest.raises(UserError, match=r"test\.tsv:2: label 'love' does not occur"):
        load_task("cedr")
    write(tmp_path / "cedr/test.tsv", CEDR_HEADER + "Тест .\tjoy,,fear\tlenta\n")
    with pytest.raises(UserError, match=r"test\.tsv:2: empty label name"):
        load_task("cedr")


def test_the_real_cedr_files():
    if not (data_root() / "cedr" / "train.tsv.gz").is_file():
        pytest.skip(f"no CEDR under {data_root()} (set CTXLM_DATA to the folder holding cedr/)")
    data = load_task("cedr")
    assert len(data.train) + len(data.dev) == 7528 and len(data.dev) == 752 and len(data.test) == 1882
    assert data.spec.labels == ("joy", "sadness", "surprise", "fear", "anger")
    counts = [sum(i in e.label for e in data.train + data.dev) for i in range(5)]
    assert counts == [1569, 1417, 607, 589, 411]  # PROVENANCE.md's label counts
    assert sum(not e.label for e in data.test) == 734


# -------------------------------------------------------------------------------------------- csv --multi-label
def test_csv_multi_label_reads_separated_labels_and_names_a_bad_row(tmp_path):
    rows = '"a happy, scared day",joy;fear\nnothing here,\nso sad,sadness\nangry and sad,anger ; sadness\nplain,\n'
    path = write(tmp_path / "emotions.csv", "text,tags\n" + rows * 2)
    options = UserTaskOptions(label_column="tags", multi_label=True, label_separator=";")
    data = load_task(f"csv:{path}", csv_options=options)
    assert data.spec.kind == "multi" and data.spec.labels == ("anger", "fear", "joy", "sadness")
    by_text = {e.texts[0]: e.label for e in data.train + data.dev}
    assert by_text == {"a happy, scared day": (1, 2), "nothing here": (), "so sad": (3,), "angry and sad": (0, 3),
                       "plain": ()}
    comma = write(tmp_path / "comma.tsv", "text\tlabel\nx\ta,b\ny\t\nz\tb\n")
    assert {e.label for e in load_task(f"csv:{comma}", csv_options=UserTaskOptions(multi_label=True)).train +
            load_task(f"csv:{comma}", csv_options=UserTaskOptions(multi_label=True)).dev} <= {(0, 1), (), (1,)}
    bad = write(tmp_path / "bad.csv", "text,tags\nfine,joy\nbroken,joy;;fear\n")
    with pytest.raises(UserError, match=r"bad\.csv:3: empty label name"):
        load_task(f"csv:{bad}", csv_options=options)
    jsonl = write(tmp_path / "e.jsonl", '{"text": "a", "tags": ["joy", "fear"]}\n{"text": "b", "tags": 3}\n')
    with pytest.raises(UserError, match=r"e\.jsonl:2: labels 3 should be"):
        load_task(f"csv:{jsonl}", csv_options=options)
    dev = write(tmp_path / "dev.csv", "text,tags\nok,joy\nnew,love\n")
    with pytest.raises(UserError, match=r"dev\.csv:3: label 'love' does not occur in the training data"):
        load_task(f"csv:{path}", csv_options=UserTaskOptions(label_column="tags", multi_label=True,
                                                            label_separator=";", dev_path=str(dev)))
    with pytest.raises(UserError, match="--multi-label"):
        load_task(f"csv:{path}", csv_options=UserTaskOptions(label_column="tags", multi_label=True,
                                                            regression=True))


@pytest.mark.fp32
def test_a_csv_multi_label_run_folder_evaluates_and_predicts_with_its_own_figures(bert, tmp_path, monkeypatch,
                                                                                  capsys):
    """`ctxlm finetune --multi-label --threshold tuned` on a user file; `ctxlm evaluate` on its folder gives the
    run's dev figures at the threshold saved with it, and `ctxlm predict` the labels that reach it."""
    from helpers import run_cli

    train = tmp_path / "planted.csv"
    rows = [f'{e.texts[0]},"{";".join(LABELS[i] for i in e.label)}"' for e in planted(120, seed=2)]
    train.write_text("text,tags\n" + "\n".join(rows) + "\n")
    user = ["--task", f"csv:{train}", "--label-column", "tags", "--multi-label", "--label-separator", ";"]
    code, out, err = run_cli(monkeypatch, capsys, "finetune", "--model", bert, *user, "--threshold", "tuned",
                             "--epochs", 6, "--lr", 5e-3, "--batch-size", 16, "--device", "cpu", "--out",
                             tmp_path / "run")
    assert code in (0, None), err
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())["metrics"]
    threshold = json.loads((tmp_path / "run/model/task.json").read_text())["spec"]["threshold"]
    assert metrics["dev_threshold"] == threshold and metrics["dev_macro_f1"] > 0.5, metrics

    code, out, err = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "run", *user, "--device", "cpu")
    assert code in (0, None), err
    shown = dict(line.split() for line in out.splitlines())
    for name in ("macro_f1", "micro_f1", "exact_match", "f1_animal", "f1_red", "f1_big", "threshold"):
        assert float(shown[name]) == pytest.approx(metrics[f"dev_{name}"], abs=1e-4), name

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("the big red cat sees the house .\nthe tree .\n"))
    code, out, err = run_cli(monkeypatch, capsys, "predict", tmp_path / "run", "--device", "cpu")
    assert code in (0, None), err
    for row in map(json.loads, out.splitlines()):
        assert list(row["probabilities"]) == sorted(LABELS)  # a user file's labels: sorted names
        assert row["labels"] == [label for label, p in row["probabilities"].items() if p >= threshold]
