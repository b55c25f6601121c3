"""`ctxlm pretrain --data task:NAME | csv:PATH`: a task's training texts as a corpus, never its labels, never the
dev text that fine-tuning scores on."""

import gzip
import json
import random

import pytest

from ctxlm.errors import UserError
from ctxlm.jobs import task_corpus
from ctxlm.transfer.data import UserTaskOptions, load_task
from helpers import assert_user_error
from helpers import run_cli as ctxlm

pytestmark = pytest.mark.fp32  # pretraining on task text; the sample at the end of a run is incidental

WORDS = ["the", "film", "is", "a", "warm", "dull", "story", "of", "two", "friends", "with", "no", "plot", "and",
         "great", "acting", "music", "ending", "slow", "funny"]


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + f" {seed}x{i} ." for i in range(count)]


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    """$CTXLM_DATA with sst2 (gzipped train, as GLUE ships it) and rte in GLUE's layout; a fresh $CTXLM_CACHE."""
    root = tmp_path / "data"
    monkeypatch.setenv("CTXLM_DATA", str(root))
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    (root / "sst2").mkdir(parents=True)
    train, dev = sentences(120, 1), sentences(10, 2)
    rows = "".join(f"{s} \t{i % 2}\n" for i, s in enumerate(train))
    (root / "sst2" / "train.tsv.gz").write_bytes(gzip.compress(f"sentence\tlabel\n{rows}".encode()))
    (root / "sst2" / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t1\n" for s in dev))
    (root / "rte").mkdir()
    header = "index\tsentence1\tsentence2\tlabel\n"
    labels = ["entailment", "not_entailment"]
    (root / "rte" / "train.tsv").write_text(header + "".join(
        f"{i}\tpremise {i} is long .\thypothesis {i} .\t{labels[i % 2]}\n" for i in range(40)))
    (root / "rte" / "dev.tsv").write_text(header + "0\tdev premise .\tdev hypothesis .\tentailment\n")
    return {"root": root, "sst2_train": train, "sst2_dev": dev}


def paragraphs(path) -> list[list[str]]:
    return [p.split("\n") for p in path.read_text().strip("\n").split("\n\n")]


def test_a_task_corpus_is_its_training_texts_in_order_without_labels_or_dev(tasks):
    path = task_corpus("task:sst2")
    assert path.parent.name == "task-text" and path.name.startswith("sst2-")
    assert paragraphs(path) == [[s] for s in tasks["sst2_train"]]  # one example per paragraph, in file order
    text = path.read_text()
    assert not any(s in text for s in tasks["sst2_dev"]) and "\t" not in text
    rte = task_corpus("task:rte")  # a pair task: both texts, one per line, the example a paragraph
    assert paragraphs(rte) == [[f"premise {i} is long .", f"hypothesis {i} ."] for i in range(40)]
    assert "entailment" not in rte.read_text() and "dev" not in rte.read_text()


def test_the_dev_file_is_never_read_and_the_same_text_is_the_same_file(tasks):
    first = task_corpus("task:sst2")
    stamp = first.stat().st_mtime_ns
    (tasks["root"] / "sst2" / "dev.tsv").unlink()
    assert task_corpus("task:sst2") == first and first.stat().st_mtime_ns == stamp  # not rewritten: tokens reused
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind
    assert task_corpus("wikitext2") == "wikitext2" and task_corpus(first) == first  # other data as given


def test_a_user_file_column_without_the_rows_finetune_holds_out(tasks, tmp_path):
    reviews = sentences(50, 3)
    path = tmp_path / "reviews.csv"
    path.write_text("id,review,stars\n" + "".join(f'{i},"{r}",zzstar{i % 3}\n' for i, r in enumerate(reviews)))
    corpus = task_corpus(f"csv:{path}", text_column="review")
    finetune = load_task(f"csv:{path}", csv_options=UserTaskOptions(text_column="review", label_column="stars"))
    dev = {e.texts[0] for e in finetune.dev}
    assert len(dev) == 5
    assert paragraphs(corpus) == [[r] for r in reviews if r not in dev]  # finetune's training rows, in file order
    assert "zzstar" not in corpus.read_text()  # the labels never appear
    assert corpus.name.startswith("csv-reviews.csv-")


def test_a_user_file_needs_no_label_column_and_reads_pairs_and_multiline_texts(tasks, tmp_path):
    path = tmp_path / "pairs.jsonl"
    records = [{"q": f"question {i}", "a": f"answer {i}\nsecond line"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = paragraphs(task_corpus(f"csv:{path}", text_column="q", pair_column="a"))
    numbers = [int(p[0].removeprefix("question ")) for p in corpus]
    assert len(numbers) == 18 and numbers == sorted(numbers)  # 2 held out as dev, the rest in file order
    assert corpus == [[f"question {i}", f"answer {i} second line"] for i in numbers]  # a line break: a space


def test_bad_task_data_says_why_in_one_line(tasks, tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="unknown task 'wikitext2': expected one of sst2, mrpc"):
        task_corpus("task:wikitext2")  # a data set, not a task
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"r.jsonl:2: no field 'text'"):
        task_corpus(f"csv:{path}")
    (tmp_path / "r.csv").write_text("body,label\nhello,1\n")
    with pytest.raises(UserError, match=r"r.csv: no column 'review' \(columns: body, label\)"):
        task_corpus(f"csv:{tmp_path / 'r.csv'}", text_column="review")
    with pytest.raises(UserError, match="apply to --data csv:PATH only"):
        task_corpus("task:sst2", text_column="sentence")
    result = ctxlm(monkeypatch, capsys, "pretrain", "--data", "task:nope", "--out", tmp_path / "run")
    assert_user_error(result, "unknown task 'nope'", "sst2, mrpc, stsb, rte")


TINY = ["--steps", 3, "--block-size", 16, "--batch-size", 2, "--layers", 1, "--dim", 32, "--heads", 2,
        "--eval-every", 3, "--save-every", 3]


def test_pretrain_gpt2_on_a_task_end_to_end(tasks, tmp_path, monkeypatch, capsys):
    code, out, err = ctxlm(monkeypatch, capsys, "pretrain", "--model", "gpt2", "--data", "task:sst2",
                           "--out", tmp_path / "run", "--vocab-size", 300, *TINY)
    assert code == 0, err
    assert "task:sst2: the texts of 120 training examples" in out and "step 3: validation loss" in out


def test_pretrain_bert_on_a_pair_task_makes_each_example_a_document(tasks, tmp_path, monkeypatch, capsys):
    code, out, err = ctxlm(monkeypatch, capsys, "pretrain", "--model", "bert", "--data", "task:rte",
                           "--out", tmp_path / "run", "--vocab-size", 200, *TINY)
    assert code == 0, err
    assert "from 38 documents" in out and "next-sentence accuracy" in out  # 40 examples, 2 held out to validate


@pytest.fixture
def imdb(tasks):
    """A tiny IMDb folder in the real files' formats: 20 training reviews (10 of each label), 6 test reviews and 12
    unlabelled ones, two sentences each; one training and one unlabelled review repeat a test review."""
    folder = tasks["root"] / "imdb"
    folder.mkdir()
    reviews = {split: [f"{split} review {i} {s} . It ends here ." for i, s in enumerate(sentences(n, seed))]
               for split, n, seed in (("train", 20, 4), ("test", 6, 5), ("unsup", 12, 6))}
    reviews["unsup"][3] = reviews["train"][7] = reviews["test"][2]  # as IMDb repeats some of its reviews
    for split in ("train", "test"):
        rows = "".join(f"id_{i}\t7\t{i % 2}\t{r}\n" for i, r in enumerate(reviews[split]))
        (folder / f"{split}.tsv.gz").write_bytes(gzip.compress(f"id\trating\tlabel\tsentence\n{rows}".encode()))
    (folder / "unsup.txt.gz").write_bytes(gzip.compress("".join(f"{r}\n" for r in reviews["unsup"]).encode()))
    return reviews


def test_the_imdb_corpus_is_training_and_unlabelled_reviews_never_a_test_review(imdb):
    folder = task_corpus("imdb")
    train, valid = (paragraphs(folder / name) for name in ("train.txt", "valid.txt"))
    dev = [e.texts[0] for e in load_task("imdb").dev]
    test = set(imdb["test"])
    assert len(dev) == 2 and valid == [[r] for r in dev if r not in test]  # the task's dev reviews, one a paragraph
    assert train == [[r] for r in imdb["train"] + imdb["unsup"] if r not in dev and r not in test]
    text = (folder / "train.txt").read_text() + (folder / "valid.txt").read_text()
    assert not any(r in text for r in imdb["test"]) and "test review" not in text
    stamp = (folder / "train.txt").stat().st_mtime_ns
    assert task_corpus("imdb") == folder and (folder / "train.txt").stat().st_mtime_ns == stamp  # written once


def test_pretrain_bert_on_imdb_reads_each_review_as_a_document(imdb, tmp_path, monkeypatch, capsys):
    code, out, err = ctxlm(monkeypatch, capsys, "pretrain", "--model", "bert", "--data", "imdb",
                           "--out", tmp_path / "run", "--vocab-size", 200, *TINY)
    assert code == 0, err
    texts = len(paragraphs(next((tmp_path / "cache" / "task-text").glob("imdb-*")) / "train.txt"))
    assert f"imdb: {texts} texts to train on, 2 held out for validation" in out
    assert f"from {texts} documents" in out and "next-sentence accuracy" in out  # one review, one document
    shape = json.loads((tmp_path / "run" / "data.json").read_text())  # the batch shape, as the other objectives
    assert (shape["max_length"], shape["batch_size"]) == (16, 2) and shape["train"].endswith("train.txt")
