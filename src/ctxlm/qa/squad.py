"""SQuAD-format data and its official metrics.

The reader takes the SQuAD JSON (v1.1, or v2.0 with "no answer" questions when asked), checks that every answer
is the passage's characters at `answer_start` (a file that breaks this would train on the wrong span), and
returns one `Question` per question. `split_by_article` holds out whole articles, so that no passage of the
evaluation questions was seen in training (SQuAD's own train/dev split is by article too).

The metrics follow the official evaluation script (v1.1, and v2.0 for empty answers): answers are normalised
(lower case, punctuation and the articles a/an/the removed, whitespace collapsed), then exact match and token F1
are taken against each gold answer and the best counts. Both are fractions in [0, 1], like ctxlm's other
metrics; SQuAD papers print them times 100.
"""

from __future__ import annotations

import collections
import json
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctxlm.errors import UserError
from ctxlm.textfiles import check_json_unicode, read_text


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character start in context); () for a v2 "no answer" question
    title: str = ""  # the article's, for splits by article

    @property
    def answer_texts(self) -> list[str]:
        """The gold answers as the metric reads them: [""] where the question has no answer (SQuAD v2)."""
        return [text for text, _ in self.answers] or [""]


def read_squad(path: str | Path, *, allow_no_answer: bool = False) -> list[Question]:
    """Every question of a SQuAD JSON file (.json or .json.gz), in file order.

    `allow_no_answer`: accept SQuAD v2 questions marked "is_impossible" (they get no answers); without it such
    a question is an error, since a v1 model cannot say "no answer".
    """
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UserError(f'{path}: expected a SQuAD file, {{"version": ..., "data": [articles]}}')
    check_json_unicode(data, text, path)
    data = data["data"]
    questions: list[Question] = []
    seen: set[str] = set()
    for a, article in enumerate(data):
        title = article.get("title", f"article {a}") if isinstance(article, dict) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: data[{a}] has no 'paragraphs' list")
        if not isinstance(title, str):  # split_by_article groups questions by it
            raise UserError(f"{path}: data[{a}] has a 'title' that is not a string: {title!r}")
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: article {title!r}, paragraph {p}"
            try:
                context, qas = paragraph["context"], paragraph["qas"]
            except (KeyError, TypeError):
                raise UserError(f"{where}: expected 'context' and 'qas'") from None
            if not (isinstance(context, str) and isinstance(qas, list)):
                raise UserError(f"{where}: expected 'context' to be a string and 'qas' a list of questions")
            for qa in qas:
                questions.append(_question(qa, context, title, where, allow_no_answer))
                if questions[-1].id in seen:
                    raise UserError(f"{where}: question id {questions[-1].id!r} appears twice")
                seen.add(questions[-1].id)
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


def _question(qa: dict, context: str, title: str, where: str, allow_no_answer: bool) -> Question:
    try:
        qid, text = str(qa["id"]), qa["question"]
        raw = qa.get("answers") or []
        answers = tuple((answer["text"], int(answer["answer_start"])) for answer in raw)
        if not (isinstance(text, str) and isinstance(raw, list) and all(isinstance(a, str) for a, _ in answers)):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise UserError(f"{where}: a question needs 'id', 'question' (a string) and a list of answers with 'text' "
                        "(a string) and 'answer_start' (an integer)") from None
    if qa.get("is_impossible"):
        if not allow_no_answer:
            raise UserError(f"{where}: question {qid!r} has no answer (SQuAD v2); pass --allow-no-answer "
                            "(squad_v2=True) to train a model that can say so")
        return Question(qid, text, context, (), title)
    if not answers:
        raise UserError(f"{where}: question {qid!r} has no answers")
    for answer, start in answers:
        if not answer:
            raise UserError(f"{where}: question {qid!r} has an empty answer text")
        if not 0 <= start <= len(context) - len(answer):
            raise UserError(f"{where}: question {qid!r}: answer {answer!r} at character {start} does not fit in the "
                            f"context's {len(context)} characters")
        if context[start:start + len(answer)] != answer:
            raise UserError(f"{where}: question {qid!r}: answer {answer!r} is not the context's text at "
                            f"character {start} (found {context[start:start + len(answer)]!r})")
    return Question(qid, text, context, answers, title)


def split_by_article(questions: Sequence[Question], holdout: int, seed: int = 0) -> tuple[list[Question],
                                                                                           list[Question]]:
    """(train, held out): the questions of `holdout` whole articles, picked by a seeded shuffle, are held out."""
    titles = list(dict.fromkeys(q.title for q in questions))
    if not 0 < holdout < len(titles):
        raise UserError(f"cannot hold out {holdout} of {len(titles)} articles: expected 1 to {len(titles) - 1}")
    held = set(random.Random(seed).sample(titles, holdout))
    return [q for q in questions if q.title not in held], [q for q in questions if q.title in held]


# ------------------------------------------------------------------------------------------ the official metric

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: the official script's `normalize_answer`."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 over the normalised answers' words (counted with multiplicity). An empty answer on either side (SQuAD
    v2's "no answer") scores 1 only when both are empty."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: Iterable[str]) -> float:
    return max(metric(prediction, gold) for gold in golds)


def squad_metrics(predictions: Mapping[str, str], questions: Sequence[Question]) -> dict[str, float]:
    """Exact match and F1 (fractions), each the mean over questions of the best score against any gold answer.
    A question without a prediction scores 0, as in the official script."""
    if not questions:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for q in questions:
        if q.id in predictions:
            em += best_over_golds(exact_match, predictions[q.id], q.answer_texts)
            f1 += best_over_golds(token_f1, predictions[q.id], q.answer_texts)
    return {"exact_match": em / len(questions), "f1": f1 / len(questions)}
