"""SQuAD span extraction as a fine-tuning `Task` (`SquadTask`, registered by `ctxlm.qa` for `--task squad`), and
using a span model: `ctxlm finetune | evaluate | predict` for question answering.

Training follows BERT §4.2: every window of every training question is an example, its loss the mean of the
start and end cross-entropies, with [CLS] as the target of windows that do not hold the answer. Evaluation
runs the model over the windows of each question, picks the best span (see `spans.best_spans`) and scores it with
the official metric. The run folder is the one of `ctxlm finetune` for other tasks (model/, metrics.json,
metrics.jsonl, loss.png; checkpoint/ while training, for --resume): transfer's loop trains this task as any other.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ctxlm.errors import UserError
from ctxlm.paths import dataset_path
from ctxlm.progress import progress
from ctxlm.qa.model import SpanModel, span_loss
from ctxlm.qa.options import SquadOptions
from ctxlm.qa.spans import Span, Window, WindowBatches, best_spans, make_windows
from ctxlm.qa.squad import Question, read_squad, split_by_article, squad_metrics
from ctxlm.textfiles import check_json_unicode
from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.data import TaskData
from ctxlm.transfer.strategies import Strategy
from ctxlm.transfer.task import to_device

_SPLIT_SEED = 0  # the held-out articles do not change with the training seed, so runs with different seeds compare


def default_squad_file() -> Path:
    return dataset_path("squad_v1", "dev-v1.1.json.gz")


def squad_splits(options: SquadOptions, *, train_size: int | None = None, seed: int = 0) -> tuple[list[Question],
                                                                                                    list[Question]]:
    """(train, dev) questions: the given files, or the training file split by article (no passage shared)."""
    if options.dev_file and not options.train_file:
        raise UserError("--dev-file needs --train-file too (without both, the SQuAD dev file is split by article)")
    train = read_squad(options.train_file or default_squad_file(), allow_no_answer=options.no_answer)
    if options.dev_file:
        dev = read_squad(options.dev_file, allow_no_answer=options.no_answer)
    else:
        train, dev = split_by_article(train, options.holdout_articles, _SPLIT_SEED)
    if train_size is not None:
        if train_size < 1:
            raise UserError(f"train size {train_size}: expected a positive number of questions")
        if train_size < len(train):
            train = random.Random(seed).sample(train, train_size)
    return train, dev


@torch.inference_mode()
def window_logits(model: SpanModel, batches: WindowBatches, device: torch.device,
                  desc: str = "windows") -> tuple[list[list[float]], list[list[float]], float]:
    """Start and end logits of every window (in window order, each cut to its length) and the mean span loss."""
    was_training = model.training
    model.eval()
    starts: list[list[float] | None] = [None] * len(batches.windows)
    ends: list[list[float] | None] = [None] * len(batches.windows)
    total = 0.0
    for batch in progress(batches.eval_batches(), desc=desc, total=math.ceil(len(starts) / batches.batch_size),
                          leave=False):
        batch = to_device(batch, device)
        start_logits, end_logits = (logits.float() for logits in model(batch))  # bf16 under autocast inference
        total += float(span_loss(start_logits, end_logits, batch["starts"], batch["ends"])) * len(batch["index"])
        lengths = batch["mask"].sum(1).tolist()
        for row, (i, n) in enumerate(zip(batch["index"].tolist(), lengths, strict=True)):
            starts[i], ends[i] = start_logits[row, :n].tolist(), end_logits[row, :n].tolist()
    model.train(was_training)
    return starts, ends, total / len(starts)  # type: ignore[return-value]


def predict_spans(model: SpanModel, questions: list[Question], *, batch_size: int = 64,
                  windows: list[Window] | None = None, n_best: int = 20,
                  null_threshold: float = 0.0) -> tuple[list[list[Span]], float]:
    """Each question's n-best answers (best first) and the mean window loss (of the first gold answers)."""
    device = next(model.parameters()).device
    windows = windows if windows is not None else make_windows(model.tokenizer, questions, **model.window_options())
    batches = WindowBatches(windows, model.tokenizer.pad_id, batch_size)
    starts, ends, loss = window_logits(model, batches, device)
    spans = best_spans(questions, windows, starts, ends, n_best=n_best, max_answer_tokens=model.max_answer_tokens,
                       no_answer=model.no_answer, null_threshold=null_threshold)
    return spans, loss


def evaluate_squad(model: SpanModel, questions: list[Question], *, batch_size: int = 64,
                   windows: list[Window] | None = None, null_threshold: float = 0.0) -> dict[str, float]:
    """Official F1 and exact match of the model's best answers, and the mean window loss."""
    spans, loss = predict_spans(model, questions, batch_size=batch_size, windows=windows,
                                null_threshold=null_threshold)
    answers = {q.id: s[0].text for q, s in zip(questions, spans, strict=True)}
    metrics = squad_metrics(answers, questions)
    return {"f1": metrics["f1"], "exact_match": metrics["exact_match"], "loss": loss}


class SquadTask:
    """SQuAD span extraction (`--task squad`): a `SpanModel` trained on the windows of the training questions
    (`FinetuneConfig.task_options["squad"]`, a `SquadOptions`: the files, the held-out articles, the windowing),
    scored by the official F1 and exact match on the dev questions."""

    names: ClassVar[tuple[str, ...]] = ("squad",)
    model: ClassVar[type[SpanModel]] = SpanModel
    max_length: ClassVar[int] = 384  # BERT's windows
    name = "squad"
    main_metric = "f1"
    splits: tuple[str, ...] = ()  # SQuAD has no labelled test split here

    def __init__(self, config: FinetuneConfig, data: TaskData | None = None) -> None:
        options = config.task_options.get("squad") or SquadOptions()
        self.config, self.options = config, SquadOptions(**options) if isinstance(options, dict) else options

    def check(self, strategy: Strategy) -> None:
        if strategy.freeze_backbone:
            raise UserError("feature extraction caches one vector per example; a span head reads every token's "
                            "state (gigabytes for SQuAD): use 'full', 'discriminative', 'gradual', 'slanted' or "
                            "'l2sp'")
        if strategy.aux_lm_weight:
            raise UserError(f"strategy {strategy.name!r} adds a language-model loss, which needs a decoder")

    def read(self) -> None:
        self.train, self.dev = squad_splits(self.options, train_size=self.config.train_size, seed=self.config.seed)

    def build(self, lm: nn.Module, config: FinetuneConfig, strategy: Strategy) -> SpanModel:
        options = self.options
        return SpanModel(lm, max_length=config.max_length, doc_stride=options.doc_stride,
                         max_question_tokens=options.max_question_tokens, max_answer_tokens=options.max_answer_tokens,
                         no_answer=options.no_answer, dropout=config.dropout)

    def batches(self, model: SpanModel, config: FinetuneConfig, device: torch.device) -> WindowBatches:
        self.eval_batch_size = 2 * config.batch_size
        self.windows = {name: make_windows(model.tokenizer, questions, **model.window_options())
                        for name, questions in (("train", self.train), ("dev", self.dev))}
        return WindowBatches(self.windows["train"], model.tokenizer.pad_id, config.batch_size, seed=config.seed)

    def on_features(self, model: SpanModel, device: torch.device):
        raise UserError("a span head reads every token's state: it does not train on cached features")

    def loss(self, module: SpanModel, batch: dict[str, Tensor]) -> Tensor:
        return span_loss(*module(batch), batch["starts"], batch["ends"])

    def evaluate(self, module: SpanModel, split: str) -> dict[str, float]:
        return evaluate_squad(module, self.dev, batch_size=self.eval_batch_size, windows=self.windows["dev"],
                              null_threshold=self.options.null_threshold)

    def sizes(self) -> dict[str, int]:
        return {"train_questions": len(self.train), "train_windows": len(self.windows["train"]),
                "dev_questions": len(self.dev)}

    # -- a saved model -------------------------------------------------------------------------------------
    @classmethod
    def read_inputs(cls, model: SpanModel, lines: Iterable[str], source: str) -> list[tuple[str, str]]:
        return read_pairs(lines, source)

    @classmethod
    def predict(cls, model: SpanModel, inputs: list[tuple[str, str]], *, batch_size: int = 64, n_best: int = 1,
                **options) -> list[list[dict]]:
        """Each (question, passage) pair's `n_best` answers (see `answer_questions`)."""
        return answer_questions(model, inputs, n_best=n_best, batch_size=batch_size)

    @classmethod
    def score(cls, model: SpanModel, task: str | None, split: str = "dev", *, batch_size: int = 64,
              squad_file: str | None = None, holdout_articles: int = 8, **options) -> dict[str, Any]:
        """F1, exact match and loss on `squad_file`, whole, or on one side of finetune's split of the default
        file; and the number of "questions". `task` and other tasks' options are ignored."""
        questions = squad_split(squad_file, split, holdout_articles, model.no_answer)
        return evaluate_squad(model, questions, batch_size=batch_size) | {"questions": len(questions)}


def answer_questions(model: SpanModel, pairs: list[tuple[str, str]], *, n_best: int = 1,
                     batch_size: int = 64) -> list[list[dict]]:
    """Answers to (question, passage) pairs: per pair its `n_best` spans as {"answer", "start", "score",
    "probability"} (the probability is the softmax of the scores over the n-best list, as BERT reports it)."""
    questions = [Question(f"q{i}", q, passage, ()) for i, (q, passage) in enumerate(pairs)]
    if not questions:
        return []
    spans, _ = predict_spans(model, questions, batch_size=batch_size, n_best=max(n_best, 20))
    out = []
    for candidates in spans:
        scores = torch.tensor([s.score for s in candidates]).softmax(0).tolist()
        out.append([{"answer": s.text, "start": s.char_start, "score": round(s.score, 4),
                     "probability": round(p, 4)} for s, p in list(zip(candidates, scores, strict=True))[:n_best]])
    return out


def read_pairs(lines, source: str) -> list[tuple[str, str]]:
    """(question, passage) pairs for `ctxlm predict`: one JSON object {"question": ..., "context": ...} per line
    (str lines, e.g. a text file; blank lines are no pairs; a UTF-8 byte-order mark before the first is dropped)."""
    pairs = []
    for number, line in enumerate(lines, 1):
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pair = item["question"], item["context"]
        except json.JSONDecodeError as err:
            raise UserError(f'{source}:{number}: not valid JSON ({err.msg} at column {err.colno}); expected an object '
                            '{"question": "...", "context": "..."}') from None
        except (KeyError, TypeError):
            pair = None
        if pair is None or not all(isinstance(text, str) for text in pair):
            raise UserError(f'{source}:{number}: expected a JSON object {{"question": "...", "context": "..."}} '
                            "with two strings")
        check_json_unicode(pair, line, source, number)
        pairs.append(pair)
    return pairs


def squad_split(path: str | None, split: str, holdout_articles: int, no_answer: bool) -> list[Question]:
    """Questions to evaluate on: the whole of `path`, or one side of finetune's default split by article."""
    if path is not None:
        return read_squad(path, allow_no_answer=no_answer)
    if split == "test":
        raise UserError("SQuAD has no labelled test split here: use --split dev (the held-out articles) or "
                        "--squad-file FILE")
    train, dev = squad_splits(SquadOptions(holdout_articles=holdout_articles, no_answer=no_answer))
    return dev if split == "dev" else train
