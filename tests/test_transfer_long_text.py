"""Fine-tuning on whole long texts: a single-text task's windows, their pooled features, the gradient through
every window, and `ctxlm finetune --task imdb` end to end (evaluate and predict read texts as training did)."""

import gzip
import json
import math
import random

import pytest
import torch

import ctxlm
from ctxlm.errors import UserError
from ctxlm.nn.long_text import LongText
from ctxlm.transfer.data import Example, TaskSpec
from ctxlm.transfer.inputs import collate, encode_examples
from ctxlm.transfer.model import TaskModel
from helpers import metrics_records, run_cli, tiny
from tolerances import assert_fp_close

SPEC = TaskSpec("t", "single", ("0", "1"), ("accuracy",))
LONG = "the cat sees the house . " * 6 + "a small bird finds an open door ."
SHORT = ["the dog likes the tree .", "my sister watches a red ball ."]


@pytest.fixture(scope="module")
def lms(corpus_dir):
    """A tiny BERT and a tiny GPT-2 (16 positions), random weights, tokenizers trained on the test corpus."""
    return {family: tiny(family, corpus=corpus_dir).eval() for family in ("bert", "gpt2")}


def features(model: TaskModel, texts: list[str]) -> torch.Tensor:
    encoded = encode_examples(model.tokenizer, SPEC, [Example((t,), 0) for t in texts], decoder=model.decoder,
                              max_length=model.max_length, long_text=model.long_text)
    batch = collate(encoded, [0] * len(texts), SPEC, model.tokenizer.pad_id)
    return model.features(batch)[0][:, 0]  # (texts, features): the one slot


def test_a_long_text_is_windows_in_one_slot_and_a_short_one_is_unchanged(lms):
    tokenizer = lms["bert"].tokenizer
    examples = [Example((LONG,), 1), Example((SHORT[0],), 0)]
    windowed = encode_examples(tokenizer, SPEC, examples, decoder=False, max_length=16, long_text=LongText("windows"))
    cut = encode_examples(tokenizer, SPEC, examples, decoder=False, max_length=16)
    whole = tokenizer.encode_text(LONG).ids
    sequences = windowed[0].sequences
    assert len(sequences) == math.ceil((len(whole) - 2) / 14) > 2 and windowed[0].slots == [0] * len(sequences)
    assert all(s[0] == whole[0] and s[-1] == whole[-1] and len(s) <= 16 for s in sequences)  # [CLS] ... [SEP]
    assert [i for s in sequences for i in s[1:-1]] == whole[1:-1]  # every token once, in order
    assert windowed[1] == cut[1]  # a text that fits: as it always was
    assert cut[0].sequences == [whole[:15] + whole[-1:]]


@pytest.mark.parametrize("family, pooling", [("bert", "mean"), ("bert", "cls"), ("gpt2", "last"),
                                             ("gpt2", "concat")])
def test_features_of_texts_that_fit_are_the_plain_path_and_a_long_texts_pool_its_windows(lms, family, pooling):
    lm = lms[family]
    windowed = TaskModel(lm, SPEC, pooling=pooling, max_length=16, long_text="windows").eval()
    plain = TaskModel(lm, SPEC, pooling=pooling, max_length=16).eval()
    assert windowed.max_length == 16 and windowed.head.linear.in_features == 32 * (3 if pooling == "concat" else 1)
    with torch.no_grad():
        assert torch.equal(features(windowed, SHORT), features(plain, SHORT))  # fp32, bit for bit
        got = features(windowed, [SHORT[0], LONG])[1]
        ids = lm.tokenizer.encode_text(LONG).ids
        windows = [[ids[0], *ids[1:-1][k:k + 14], ids[-1]] for k in range(0, len(ids) - 2, 14)]
        states = [lm.backbone(torch.tensor([w])).last[0] for w in windows]
    counts = [len(w) for w in windows]
    mean = sum(s.mean(0) * n for s, n in zip(states, counts, strict=True)) / sum(counts)
    expected = {"mean": mean, "cls": sum(s[0] * n for s, n in zip(states, counts, strict=True)) / sum(counts),
                "last": states[-1][-1],
                "concat": torch.cat([states[-1][-1], torch.cat(states).max(0).values, mean])}[pooling]
    assert_fp_close(got, expected, terms=len(ids), depth=4)  # a padded batch against windows run alone, then sums


def test_the_gradient_reaches_every_window(lms):
    lm = lms["bert"]
    model = TaskModel(lm, SPEC, max_length=16, long_text="windows").train()
    ids = lm.tokenizer.encode_text(LONG).ids
    windows = [ids[1:-1][k:k + 14] for k in range(0, len(ids) - 2, 14)]
    only_last = set(windows[-1]) - {i for w in windows[:-1] for i in w}  # "bird", "open", "door" ...
    assert only_last
    encoded = encode_examples(lm.tokenizer, SPEC, [Example((LONG,), 1)], decoder=False, max_length=16,
                              long_text=model.long_text)
    batch = collate(encoded, [1], SPEC, lm.tokenizer.pad_id)
    torch.nn.functional.cross_entropy(model(batch), batch["labels"]).backward()
    grads = lm.backbone.embed.tokens.weight.grad
    assert all(grads[i].abs().sum() > 0 for i in only_last) and all(grads[i].abs().sum() > 0 for i in windows[0])
    lm.zero_grad(set_to_none=True)


def test_long_text_options_a_task_cannot_take(lms):
    with pytest.raises(UserError, match="inputs of a pair task are cut"):
        TaskModel(lms["bert"], TaskSpec("p", "pair", ("0", "1"), ("accuracy",)), long_text="windows")
    with pytest.raises(UserError, match="expected one of truncate, head-tail, windows"):
        ctxlm.finetune(model="x", task="imdb", out="never", long_text="all")


def write_imdb(root, rng: random.Random) -> None:
    """A tiny IMDb: long reviews (about 50 tokens, 3-4 windows of a 16-position BERT), the label in a word of
    their last sentence."""
    words = ["the cat", "a dog", "the old man", "sees", "follows", "the house", "a red ball", "the quiet town"]

    def review(label: int) -> str:
        body = " ".join(rng.choice(words) for _ in range(18))
        return f"{body} . in the end it {'finds' if label else 'remembers'} the tall tree ."

    folder = root / "imdb"
    folder.mkdir(parents=True)
    for split, n in (("train", 40), ("test", 8)):
        rows = "".join(f"{'pos' if i % 2 else 'neg'}_{i}\t{8 if i % 2 else 2}\t{i % 2}\t{review(i % 2)}\n"
                       for i in range(n))
        (folder / f"{split}.tsv.gz").write_bytes(gzip.compress(f"id\trating\tlabel\tsentence\n{rows}".encode()))


def test_finetune_imdb_reads_whole_reviews_and_evaluate_and_predict_read_them_alike(
        lms, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path / "data"))
    write_imdb(tmp_path / "data", random.Random(0))
    backbone = ctxlm.save(lms["bert"], tmp_path / "bert")
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "finetune", "--model", backbone, "--task", "imdb", "--epochs", 1,
                             "--batch-size", 4, "--lr", "1e-3", "--out", run)
    assert code == 0, err
    losses = [r["loss"] for r in metrics_records(run) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    task = json.loads((run / "model" / "task.json").read_text())
    assert task["long_text"] == "windows" and task["max_length"] == 16  # the model's context: 16 positions
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["dev_loss"]) and "test_accuracy" in metrics
    # a saved model evaluates as the run did: the same windows, through the same code
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", run, "--split", "test", "--precision", "fp32")
    assert code == 0, err
    printed = dict(line.split() for line in out.splitlines())
    assert printed["accuracy"] == f"{metrics['test_accuracy']:.4f}" and printed["loss"] == f"{metrics['test_loss']:.4f}"
    review = gzip.decompress((tmp_path / "data" / "imdb" / "test.tsv.gz").read_bytes()).decode()
    (prediction,) = ctxlm.predict(run, [review.split("\n")[1].split("\t")[3]], dtype="fp32")
    assert prediction["label"] in ("0", "1") and 0.5 <= prediction["probability"] <= 1
