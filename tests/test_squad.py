"""Question answering by span extraction: the SQuAD reader, windows, n-best search, metric, training and CLI."""

import gzip
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ctxlm
from ctxlm.config import BertConfig
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.paths import data_root
from ctxlm.qa.finetune import answer_questions, evaluate_squad, squad_splits
from ctxlm.qa.model import SpanHead, SpanModel
from ctxlm.qa.options import SquadOptions
from ctxlm.qa.spans import Window, WindowBatches, answer_tokens, best_spans, make_windows, window_spans
from ctxlm.qa.squad import (
    Question,
    exact_match,
    normalize_answer,
    read_squad,
    split_by_article,
    squad_metrics,
    token_f1,
)
from ctxlm.tokenizers import Tokenizer
from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.finetune import finetune
from ctxlm.transfer.model import load_finetuned
from helpers import animal_articles, qa

SQUAD_DEV = data_root() / "squad_v1" / "dev-v1.1.json.gz"
needs_squad = pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f"SQuAD v1.1 dev not found at {SQUAD_DEV} "
                                 "(set CTXLM_DATA to the folder holding squad_v1/)")


def squad_file(path, articles: list[dict]) -> str:
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return str(path)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return ctxlm.load("minilm").tokenizer


@pytest.fixture(scope="module")
def dev_questions():
    return read_squad(SQUAD_DEV) if SQUAD_DEV.is_file() else None


# -- the official metric --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, normal", [
    ("The Cat!", "cat"), ("  an   apple, a pear  ", "apple pear"), ("Theatre", "theatre"),
    ("Denver Broncos.", "denver broncos"), ("A-B", "ab"), ("", ""),
])
def test_normalisation_is_the_official_one(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_and_f1_on_hand_written_cases():
    assert exact_match("the Denver Broncos", "Denver Broncos!") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    # "denver broncos" vs "broncos": precision 1/2, recall 1 → F1 2/3
    assert token_f1("Denver Broncos", "Broncos") == pytest.approx(2 / 3)
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)  # words count with multiplicity: 2 in common
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0 and token_f1("the", "cat") == 0.0
    questions = [Question("1", "q", "c", (("Denver Broncos", 0), ("Broncos", 7))),
                 Question("2", "q", "c", (("1990", 0),)), Question("3", "q", "c", ())]
    scores = squad_metrics({"1": "Broncos", "2": "in 1991", "3": ""}, questions)
    # q1: best gold is "Broncos" (EM 1, F1 1); q2: F1 0; q3 (no answer) answered "": 1
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(2 / 3)
    assert squad_metrics({}, questions) == {"exact_match": 0.0, "f1": 0.0}  # unanswered questions score 0


# -- the reader ------------------------------------------------------------------------------------------------
def test_reader_checks_answers_against_the_passage(tmp_path):
    context = "The cat sat on the mat."
    good = squad_file(tmp_path / "good.json", [{"title": "T", "paragraphs": [
        {"context": context, "qas": [qa("a", "Where?", context, "the mat")]}]}])
    (question,) = read_squad(good)
    assert question.answers == (("the mat", 15),) and question.title == "T"
    bad = squad_file(tmp_path / "bad.json", [{"title": "T", "paragraphs": [
        {"context": context, "qas": [qa("a", "Where?", context, "the mat", start=3)]}]}])
    with pytest.raises(UserError, match=r"bad.json: article 'T', paragraph 0: question 'a': answer 'the mat'"):
        read_squad(bad)


def test_reader_v2_no_answer_needs_the_flag_and_gz_works(tmp_path):
    context = "The cat sat on the mat."
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        qa("a", "Where?", context, "the mat"),
        {"id": "b", "question": "Why?", "answers": [], "is_impossible": True}]}]}]}
    path = tmp_path / "v2.json.gz"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(UserError, match="question 'b' has no answer"):
        read_squad(path)
    questions = read_squad(path, allow_no_answer=True)
    assert questions[1].answers == () and questions[1].answer_texts == [""]


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"), ('{"data": 3}', "expected a SQuAD file"), ('{"data": []}', "no questions"),
    ('{"data": [{"title": "T", "paragraphs": [{"context": "c"}]}]}', "expected 'context' and 'qas'"),
])
def test_reader_errors_say_what_was_expected(tmp_path, content, fragment):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        read_squad(path)


def test_split_by_article_shares_no_passage():
    questions = [Question(f"{t}{i}", "q", f"passage {t}", (("p", 0),), title=t) for t in "abcdefghij"
                 for i in range(3)]
    train, held = split_by_article(questions, 3, seed=0)
    assert len(held) == 9 and len(train) == 21
    assert not {q.context for q in train} & {q.context for q in held}
    assert split_by_article(questions, 3, seed=0) == (train, held)
    with pytest.raises(UserError, match="cannot hold out 10 of 10"):
        split_by_article(questions, 10)


# -- windows -----------------------------------------------------------------------------------------------
@needs_squad
@pytest.mark.parametrize("max_length, stride", [(384, 128), (96, 24)])
def test_windowing_keeps_every_answer_recoverable(minilm_tokenizer, dev_questions, max_length, stride):
    """Over all 10,570 SQuAD dev questions: the first answer lies whole in some window, and its token span maps
    back to the same characters, except where an annotator cut a word inside a token ("gold" of "golden"): then
    the smallest span of whole tokens around it comes back. Every passage token has one max-context window."""
    windows = make_windows(minilm_tokenizer, dev_questions, max_length=max_length, doc_stride=stride)
    by_question = {}
    for w in windows:
        by_question.setdefault(w.question, []).append(w)
        assert len(w.ids) <= max_length
    assert len(by_question) == len(dev_questions)
    if max_length < 384:
        assert len(windows) > 2 * len(dev_questions)  # the short windows did cut the passages
    inside_a_token = set()
    for index, q in enumerate(dev_questions):
        text, char_start = q.answers[0]
        labelled = [w for w in by_question[index] if w.start > 0]
        assert labelled, f"{q.id}: no window holds the answer {text!r}"
        for w in labelled:
            first, last = w.start - w.passage_start, w.end - w.passage_start
            recovered = q.context[w.offsets[first][0]:w.offsets[last][1]]
            if recovered != text:
                inside_a_token.add(q.id)
                assert w.offsets[first][0] <= char_start and char_start + len(text) <= w.offsets[last][1], q.id
        covered = {}
        for w in by_question[index]:  # windows of one question cover the passage, each token "owned" once
            for offset, best in zip(w.offsets, w.max_context, strict=True):
                covered[offset] = covered.get(offset, 0) + best
        assert set(covered.values()) == {1}
    assert len(inside_a_token) < 0.005 * len(dev_questions)


def test_answer_tokens_maps_characters_to_the_covering_tokens():
    offsets = [(0, 3), (4, 7), (7, 9), (10, 15)]  # "The cat's house"-like pieces
    assert answer_tokens(offsets, 4, 9) == (1, 2)
    assert answer_tokens(offsets, 5, 8) == (1, 2)  # inside tokens: the covering ones
    assert answer_tokens(offsets, 10, 15) == (3, 3)
    assert answer_tokens(offsets, 16, 18) is None


def test_window_batches_bucket_by_length_and_replay_exactly():
    windows = [Window(i, list(range(5 + (i * 37) % 300)), [0] * (5 + (i * 37) % 300), 1, [(0, 1)], [True])
               for i in range(500)]
    batches = WindowBatches(windows, 0, batch_size=8, seed=3, pool=10)
    seen = [batches.train_batch(i)["index"].tolist() for i in range(batches.per_epoch)]
    assert sorted(sum(seen, [])) == list(range(500))  # an epoch is a permutation
    padded = sum(batches.train_batch(i)["ids"].numel() for i in range(batches.per_epoch))
    assert padded < 0.75 * sum(8 * 304 for _ in range(batches.per_epoch))  # much less padding than the longest
    again = WindowBatches(windows, 0, batch_size=8, seed=3, pool=10)
    assert again.train_batch(batches.per_epoch + 5)["index"].tolist() == \
        batches.train_batch(batches.per_epoch + 5)["index"].tolist()
    assert batches.train_batch(0)["index"].tolist() != batches.train_batch(batches.per_epoch)["index"].tolist()


# -- the n-best search ---------------------------------------------------------------------------------------
def toy_window(n_passage: int, first: int = 3, best=None) -> Window:
    offsets = [(2 * i, 2 * i + 1) for i in range(n_passage)]
    return Window(0, [0] * (first + n_passage + 1), [0] * (first + n_passage + 1), first, offsets,
                  best if best is not None else [True] * n_passage)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), max_answer=st.integers(1, 8), seed=st.integers(0, 10_000),
       best_bits=st.integers(0, 2**30))
def test_n_best_spans_are_always_valid(n, max_answer, seed, best_bits):
    best = [bool(best_bits >> i & 1) for i in range(n)]
    window = toy_window(n, best=best)
    context = "".join(chr(97 + i % 26) + " " for i in range(n))
    rng = random.Random(seed)
    length = len(window.ids)
    starts = [rng.gauss(0, 3) for _ in range(length)]
    ends = [rng.gauss(0, 3) for _ in range(length)]
    spans = window_spans(window, starts, ends, context, n_best=5, max_answer_tokens=max_answer)
    for span in spans:
        s = next(i for i, o in enumerate(window.offsets) if o[0] == span.char_start)
        e = next(i for i, o in enumerate(window.offsets) if o[1] == span.char_end)
        assert s <= e < s + max_answer and best[s]  # never end < start, never too long, max-context starts
        assert 0 <= span.char_start < span.char_end <= len(context)
        assert span.text == context[span.char_start:span.char_end]
        assert span.score == pytest.approx(starts[3 + s] + ends[3 + e])
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)


def test_n_best_skips_the_best_invalid_pair_and_looks_outside_the_question():
    window = toy_window(4)
    context = "a b c d "
    starts = [50.0, 40.0, 40.0, 0.0, 0.0, 9.0, 1.0, 0.0]  # positions 0-2: [CLS] and the question: never answers
    ends = [50.0, 40.0, 40.0, 8.0, 0.0, 0.0, 2.0, 0.0]  # best end (passage 0) comes before the best start (2)
    (best,) = best_spans([Question("q", "?", context, ())], [window], [starts], [ends])
    assert (best[0].text, best[0].score) == ("c d", 11.0)  # passage start 2 (9) → end 3 (2)
    assert all(span.text for span in best)


def test_no_answer_competes_only_when_asked():
    window = toy_window(3)
    starts, ends = [5.0, 0, 0, 1.0, 0, 0, 0], [5.0, 0, 0, 1.0, 0, 0, 0]
    question = Question("q", "?", "a b c ", ())
    assert best_spans([question], [window], [starts], [ends])[0][0].text == "a"
    assert best_spans([question], [window], [starts], [ends], no_answer=True)[0][0].text == ""
    assert best_spans([question], [window], [starts], [ends], no_answer=True, null_threshold=9.0)[0][0].text == "a"


def test_span_head_allows_only_passage_tokens_and_cls():
    head = SpanHead(8)
    passage = torch.tensor([[False, False, True, True, False]])
    start, end = head(torch.randn(1, 5, 8), passage)
    for logits in (start, end):
        assert torch.isfinite(logits[0, [0, 2, 3]]).all() and torch.isinf(logits[0, [1, 4]]).all()


# -- training, evaluation and the command line ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, corpus_dir):
    tokenizer = Tokenizer.train([corpus_dir / "train.txt"], kind="bert", vocab_size=200)
    torch.manual_seed(0)
    model = build_model(BertConfig(vocab_size=tokenizer.vocab_size, max_positions=64, dim=32, n_layers=2,
                                   n_heads=2))
    model.tokenizer = tokenizer
    return ctxlm.save(model, tmp_path_factory.mktemp("qa") / "bert")


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("squad-run")
    train = squad_file(folder / "train.json", animal_articles(8, 12))
    config = FinetuneConfig(model=str(tiny_bert), task="squad", epochs=12, batch_size=16, lr=3e-3, max_length=32,
                            device="cpu",
                            task_options={"squad": SquadOptions(train_file=train, holdout_articles=2, doc_stride=8)})
    return finetune(config, folder / "run"), folder


@pytest.mark.fp32
def test_span_model_learns_and_its_folder_answers_like_the_run(trained):
    result, folder = trained
    records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "valid_loss" not in r]
    assert losses[-1] < 0.5 * losses[0]
    assert result["dev_f1"] > 0.8 and result["dev_exact_match"] > 0.8, result
    assert result["train_windows"] > result["train_questions"]  # max_length 32: passages were windowed
    model = load_finetuned(folder / "run")
    assert isinstance(model, SpanModel) and model.max_length == 32 and model.doc_stride == 8
    _, dev = squad_splits(SquadOptions(train_file=str(folder / "train.json"), holdout_articles=2))
    assert evaluate_squad(model, dev)["f1"] == pytest.approx(result["dev_f1"])
    (answers,) = answer_questions(model, [("which animal is here ?", "the ball sees a bird sees the tree .")],
                                  n_best=3)
    assert answers[0]["answer"] == "bird" and answers[0]["probability"] > answers[1]["probability"]
    from ctxlm.transfer.model import TaskModel
    from ctxlm.transfer.predict import evaluate, predict, read_inputs

    config = json.loads((folder / "run" / "model" / "task.json").read_text())
    assert config["spec"]["kind"] == "span" and config["doc_stride"] == 8  # the folder format of earlier versions
    assert json.loads((folder / "run" / "metrics.json").read_text())["config"]["squad"]["doc_stride"] == 8
    with pytest.raises(UserError, match="a question-answering model; load it with load_finetuned"):
        TaskModel.load(folder / "run")
    # the one evaluate and predict of transfer/ go to the task that made the model
    assert evaluate(model, squad_file=str(folder / "train.json"))["questions"] == 8 * 12
    (answers,) = predict(model, read_inputs(model, ['{"question": "which animal ?", "context": "a dog sees"}'], "<t>"),
                         n_best=2)
    assert len(answers) == 2


def test_only_encoders_take_a_span_head(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="needs a BERT-family encoder.*ctxlm zeroshot"):
        SpanModel(ctxlm.load(tiny_model_dir))
    config = FinetuneConfig(model=str(tiny_model_dir), task="squad", strategy="features",
                            task_options={"squad": SquadOptions(train_file="unused")})
    with pytest.raises(UserError, match="feature extraction"):
        finetune(config, tmp_path)


@pytest.mark.default_precision
def test_cli_evaluates_and_answers_from_the_command_line(trained, monkeypatch, capsys):
    from helpers import assert_user_error, run_cli

    _, folder = trained
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", folder / "run", "--squad-file", folder / "train.json")
    assert code in (0, None), err
    assert "exact_match" in out and "questions" in out
    code, out, err = run_cli(monkeypatch, capsys, "predict", folder / "run", "--question", "which animal is here ?",
                             "--context", "the door sees a dog .")
    assert code in (0, None), err
    assert json.loads(out)["answer"] == "dog"
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO('{"question": "which animal ?", "context": "a cat"}\n'
                                                              "not json\n"))
    assert_user_error(run_cli(monkeypatch, capsys, "predict", folder / "run"), "<stdin>:2", "question")
    assert_user_error(run_cli(monkeypatch, capsys, "predict", folder / "run", "--question", "who?"), "--context")


def test_compare_runs_squad_strategies(tiny_bert, trained, tmp_path):
    from ctxlm.transfer.compare import compare

    _, folder = trained
    base = FinetuneConfig(model=str(tiny_bert), task="squad", epochs=1, batch_size=16, lr=3e-3, max_length=32,
                          device="cpu", task_options={"squad": SquadOptions(train_file=str(folder / "train.json"),
                                                                            holdout_articles=2)})
    summary = compare(base, [str(tiny_bert)], ["full", "discriminative"], [0], tmp_path, say=lambda _: None)
    assert [row["strategy"] for row in summary] == ["full", "discriminative"]
    assert json.loads((tmp_path / "compare.json").read_text())["metric"] == "dev_f1"
