"""Zero-shot reading comprehension with a decoder, as GPT-2 does it (Radford et al., 2019, §3.5), and a baseline.

The model reads a prompt — the document, for a conversation the earlier turns with their gold answers
("Q: ... A: ..." lines, as CoQA gives them), then "Q: <question>\\nA:" — and its greedy continuation, up to the
first line break or `max_answer_tokens`, is the answer. No weights change; the answers are scored with the
official SQuAD metric (`ctxlm.qa.squad.squad_metrics`), exact match and F1.

CoQA-style over SQuAD: SQuAD has no conversations, so the questions of one paragraph, in file order, stand in for
one: each question sees the earlier ones with their first gold answer. A real CoQA file
({"data": [{"story", "questions", "answers"}]}) is read as it is.

The paper notes that GPT-2 often answers with heuristics such as a name from the passage for a "who" question.
`heuristic_answer` is that idea as a baseline, with no model at all: guess the answer's type from the question
(a name, a date, a number, a place, a yes/no), collect the passage's spans of that type, and pick the one whose
surrounding words share most words with the question (a sliding window, as in MCTest's baseline).
"""

from __future__ import annotations

import bisect
import json
import random
import re
import string
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctxlm.errors import UserError
from ctxlm.generate import generate_ids, has_memory
from ctxlm.paths import dataset_path
from ctxlm.progress import progress as progress_of
from ctxlm.qa.squad import Question, read_squad, squad_metrics
from ctxlm.textfiles import JsonLinesOutput, check_json_unicode, read_text

DEFAULT_TEMPLATE = "{document}\n\n{history}Q: {question}\nA:"
PLACEHOLDERS = ("document", "history", "question")
TASKS = ("squad", "coqa-style")
# Questions go through in chunks of this many batches, in file order, each chunk sorted by length (little padding):
# answers are written out chunk by chunk, and a resumed run, whose chunks fall where an uninterrupted run's did,
# batches every question as that run did.
CHUNK_BATCHES = 16

Turn = tuple[str, str]  # an earlier (question, gold answer) of the same conversation


# ------------------------------------------------------------------------------------------------------ prompts

def check_template(template: str, *, history: bool = False) -> str:
    """`template` if its placeholders are {document}, {history} and {question} (this one required); with
    `history` (a conversation), {history} too, or the earlier turns would silently go missing."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise UserError(f"prompt template {template!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    known = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    for field in fields:
        if field not in PLACEHOLDERS:
            raise UserError(f"prompt template {template!r}: unknown placeholder {{{field}}}; expected {known}")
    if "question" not in fields:
        raise UserError(f"prompt template {template!r} has no {{question}}")
    if history and "history" not in fields:
        raise UserError(f"prompt template {template!r} has no {{history}}, where a conversation's earlier turns go "
                        "(--task coqa-style)")
    return template


def render_history(turns: Sequence[Turn]) -> str:
    return "".join(f"Q: {question}\nA: {answer}\n" for question, answer in turns)


def build_prompt(template: str, document: str, question: str, history: Sequence[Turn] = ()) -> str:
    return template.format(document=document, history=render_history(history), question=question)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt. Transformer-XL's word tokenizer drops line breaks unless asked for <eos> at each
    line's end (its corpus encoding); the prompt's last line is unfinished, so it gets none."""
    if getattr(tokenizer, "kind", None) != "transformer-xl":
        return tokenizer.encode(text)
    ids = tokenizer.encode(text, add_eos=True)
    return ids if text.endswith("\n") or not ids else ids[:-1]


def fit_prompt(tokenizer, template: str, document: str, question: str, history: Sequence[Turn],
               limit: int) -> tuple[list[int], bool]:
    """(ids of the prompt, whether it was cut) with at most `limit` tokens.

    The question always stays whole, and the conversation too as long as it fits (its oldest turns go first
    when it does not). What has to give is the document, and it keeps its start, cut at a token: SQuAD and CoQA
    answers are spread over the whole passage, so no end is a better bet than another, and a start keeps the
    text readable from its first sentence.
    """
    ids = encode(tokenizer, build_prompt(template, document, question, history))
    if len(ids) <= limit:
        return ids, False
    history = list(history)
    while True:
        bare = encode(tokenizer, build_prompt(template, "", question, history))
        if len(bare) <= limit or not history:
            break
        history.pop(0)
    if len(bare) > limit:
        shown = question if len(question) <= 60 else question[:57] + "..."
        raise UserError(f"question {shown!r} alone takes {len(bare)} prompt tokens, more than the {limit} that the "
                        "model's context leaves after the answer's tokens (fewer --max-answer-tokens leave more)")
    document_ids = encode(tokenizer, document)
    keep = limit - len(bare)
    while keep > 0:  # decoding the cut and encoding it again inside the prompt can shift a token or two
        ids = encode(tokenizer, build_prompt(template, tokenizer.decode(document_ids[:keep]), question, history))
        if len(ids) <= limit:
            return ids, True
        keep -= len(ids) - limit
    return bare, True


# ----------------------------------------------------------------------------------------------------- decoding

@dataclass
class ZeroShotResult:
    predictions: dict[str, str]  # question id → the model's answer
    truncated: list[str]  # ids of the questions whose prompt was cut to fit the model's context


def check_decoder(model: nn.Module):
    """The model's tokenizer, if the model can generate text; a UserError saying what to do instead if not."""
    kind = getattr(getattr(model, "config", None), "model_type", "unknown")
    if kind == "bert":
        raise UserError("zero-shot answering generates the answer, which needs a decoder (gpt, gpt2, "
                        "transformer-xl); this is a BERT encoder: fine-tune it to extract answer spans with "
                        "`ctxlm finetune --model ... --task squad`")
    if not (hasattr(model, "new_cache") or has_memory(model)):
        raise UserError(f"zero-shot answering needs a decoder that generates text (gpt, gpt2, transformer-xl); "
                        f"this is a {kind} model")
    if getattr(model, "tokenizer", None) is None:
        raise UserError("this model has no tokenizer; load it with ctxlm.load")
    return model.tokenizer


def zero_shot(model: nn.Module, questions: Sequence[Question], *, template: str = DEFAULT_TEMPLATE,
              history: Mapping[str, Sequence[Turn]] | None = None, max_answer_tokens: int = 24,
              batch_size: int = 16, progress: bool = False, dtype: str | torch.dtype | None = "auto",
              done: int = 0, on_answers: Callable[[list[Question], list[str], list[bool]], None] | None = None,
              ) -> ZeroShotResult:
    """Each question's greedy answer: the continuation of its prompt up to the first line break (or end of
    text, or `max_answer_tokens`), stripped.

    `history`: question id → the earlier turns of its conversation (coqa-style; None: none). Prompts longer than
    the model's context minus `max_answer_tokens` are cut as `fit_prompt` says, with a warning. Prompts go
    through in batches of similar length (less padding), with the KV cache of `ctxlm.generate_ids`, in the
    precision `dtype` picks ("auto": bf16 autocast where the device has bf16 units, else fp32; see
    `ctxlm.precision`).

    The questions go through in chunks of CHUNK_BATCHES batches, in file order; after each chunk
    `on_answers(questions, answers, truncated)` gets its questions, their answers and whether their prompts were
    cut, in file order (e.g. to write them out as they come). `done`: the first `done` questions were answered
    before (a resumed run): they are neither returned nor passed on, and the other answers are those of a run
    over all the questions.
    """
    tokenizer = check_decoder(model)
    check_template(template, history=history is not None)
    if max_answer_tokens < 1 or batch_size < 1:
        raise UserError(f"max_answer_tokens={max_answer_tokens}, batch_size={batch_size}: expected 1 or more")
    limit = model.config.max_positions - max_answer_tokens
    if limit < 1:
        raise UserError(f"max_answer_tokens={max_answer_tokens} leaves no room for a prompt in the model's "
                        f"context of {model.config.max_positions} positions")
    if not has_memory(model) and "\n" not in tokenizer.decode(encode(tokenizer, "a\nb")):
        warnings.warn("this tokenizer drops line breaks (GPT's BPE): the prompt's lines run together and an "
                      "answer ends only at the end of text or max_answer_tokens", stacklevel=2)
    prompts, truncated = [], []
    for q in questions:
        ids, cut = fit_prompt(tokenizer, template, q.context, q.question, (history or {}).get(q.id, ()), limit)
        prompts.append(ids)
        if cut:
            truncated.append(q.id)
    if truncated:
        warnings.warn(f"{len(truncated)} of {len(prompts)} prompts were longer than the model's context of "
                      f"{model.config.max_positions} tokens less {max_answer_tokens} for the answer: their "
                      "documents were cut, keeping the start", stacklevel=2)

    answers: dict[int, str] = {}
    size, cut = CHUNK_BATCHES * batch_size, set(truncated)
    with progress_of(desc="zero-shot", total=len(prompts), initial=done, unit="question",
                     disable=not progress) as bar:
        for first in range(done - done % size, len(prompts), size):  # the chunk holding question `done` on
            order = sorted(range(first, min(first + size, len(prompts))), key=lambda i: len(prompts[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                out = generate_ids(model, [prompts[i] for i in rows], max_new_tokens=max_answer_tokens,
                                   eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, dtype=dtype)
                for i, tokens in zip(rows, out.tokens, strict=True):
                    answers[i] = tokenizer.decode(tokens).split("\n")[0].strip()
                bar.update(sum(i >= done for i in rows))
            if on_answers is not None:
                new = range(max(first, done), first + len(order))
                on_answers([questions[i] for i in new], [answers[i] for i in new],
                           [questions[i].id in cut for i in new])
    return ZeroShotResult({questions[i].id: answers[i] for i in range(done, len(prompts))}, truncated)


# ----------------------------------------------------------------------------------------- the heuristic baseline

_WORD = re.compile(r"\w+(?:['’.,]\w+)*")  # keeps 1,000 / 3.5 / U.S / O'Brien whole
def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS = _word_set("""a an the of in on at to for from by with as and or but is are was were be been being
has have had do does did it its this that these those he she they his her their them him we you i what which who
whom whose when where why how many much during after before since while also into about than then there not
no yes if so such other some any each all most more one s""")
_CONNECTORS = _word_set("of the de du da del der van von la le al")  # inside names: Bank of England
_PLACE_WORDS = _word_set("in at near from to across into")
_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
          r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE = re.compile(rf"\b(?:{_MONTH} {_DAY},? \d{{3,4}}|{_DAY} {_MONTH},? \d{{3,4}}|{_MONTH},? \d{{4}}|"
                   rf"{_MONTH} {_DAY}|\d{{3,4}}s|\d{{1,2}}(?:st|nd|rd|th) century|1\d\d\d|20\d\d)\b")
_YEAR = re.compile(r"1\d\d\d|20\d\d")
_NUMBER = re.compile(r"\b(?:\d[\d,]*(?:\.\d+)?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
                     r"twenty|thirty|forty|fifty|hundred|dozen)\b(?: (?:hundred|thousand|million|billion|trillion)\b)?"
                     r"(?: ?%| percent\b)?", re.IGNORECASE)
_TYPES = [  # the first pattern that matches the lower-cased question decides its answer type
    ("number", re.compile(r"\bhow (?:many|much|long|old|far|large|big|tall|high)\b|"
                          r"\bwhat (?:percentage|percent|number|amount)\b|\bnumber of\b")),
    ("date", re.compile(r"\bwhen\b|\b(?:what|which|in what) (?:year|decade|century|date|day|month|period)\b")),
    ("name", re.compile(r"\b(?:who|whom|whose)\b|\b(?:what|which) (?:person|man|woman|people)\b")),
    ("place", re.compile(r"\bwhere\b|\b(?:what|which) (?:city|country|state|place|region|continent|location|"
                         r"town|river|nation)\b")),
    # "which team", "what stadium": most often a named thing
    ("name", re.compile(r"^(?:which|what) (?!(?:is|was|are|were|do|does|did|has|have|had|can|could|would|will)\b)"
                        r"\w+")),
    ("yes/no", re.compile(r"^(?:is|are|was|were|did|does|do|can|could|has|have|had|will|would|should)\b(?!.* or )")),
]
WINDOW = 10  # words each side of a candidate that count as its surroundings


def question_type(question: str) -> str:
    """number, date, name, place, yes/no or other: the kind of answer the question's wording asks for."""
    q = question.lower().strip()
    return next((kind for kind, pattern in _TYPES if pattern.search(q)), "other")


def _stem(word: str) -> str:
    """A crude stem, so that "founded" meets "founding": lower case without a plural or verb ending."""
    word = word.lower()
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)]
    return word


def heuristic_answer(question: str, context: str) -> str:
    """An answer from answer-type heuristics and a sliding window, no model (see the module docstring).

    Candidates by type: numbers (with million / percent) for how many / how much; dates and years for when / what
    year; runs of capitalised words (names may hold "of", "de", ...) for who, where and "which / what <noun>",
    where preferring those after in / at / from; "yes" for a yes/no question; otherwise runs of up to four
    content words. Words of the question are trimmed from a candidate's ends (the answer is rarely what the
    question already says). The candidate with most of the question's content words in its surroundings
    (`_Passage.overlap`) wins, the earliest on a tie; without candidates of the type, the "other" rule, then the
    passage's first three words.
    """
    kind = question_type(question)
    if kind == "yes/no":
        return "yes"  # CoQA's most frequent answer to such questions; SQuAD has almost none
    passage = _Passage(context, question)
    if not passage.words:
        return context.strip()
    candidates = passage.candidates(kind) or passage.candidates("other")
    if not candidates:
        return passage.text((0, min(3, len(passage.words))))
    return passage.text(max(candidates, key=lambda span: (passage.overlap(span), -span[0])))


Span = tuple[int, int]  # [first, last) word indices


class _Passage:
    """The passage's words (with character offsets) as seen from one question."""

    def __init__(self, context: str, question: str) -> None:
        self.context = context
        self.words = list(_WORD.finditer(context))
        self.lower = [w.group().lower() for w in self.words]
        self.stems = [_stem(w) for w in self.lower]
        self.starts = [w.start() for w in self.words]
        self.asked = {w.group().lower() for w in _WORD.finditer(question)}
        self.skip = _STOPWORDS | self.asked  # words that neither start nor end an answer
        self.keywords = {_stem(w) for w in self.asked - _STOPWORDS}

    def text(self, span: Span) -> str:
        return self.context[self.words[span[0]].start():self.words[span[1] - 1].end()]

    def overlap(self, span: Span) -> float:
        """The question's content words among the WINDOW words either side of `span`: each counts 1, and up to
        1/2 more the nearer it is (1 / (1 + distance in words)), so that closeness breaks ties."""
        first, last = span
        nearest: dict[str, int] = {}
        for i in [*range(max(0, first - WINDOW), first), *range(last, min(len(self.words), last + WINDOW))]:
            if self.stems[i] in self.keywords:
                distance = first - i if i < first else i - last + 1
                nearest[self.stems[i]] = min(distance, nearest.get(self.stems[i], distance))
        return sum(1 + 1 / (1 + distance) for distance in nearest.values())

    def candidates(self, kind: str) -> list[Span]:
        if kind in ("date", "number"):
            spans = [self._words_of(m) for m in (_DATE if kind == "date" else _NUMBER).finditer(self.context)]
            spans = [s for s in spans if s[0] < s[1] and not self.asked.issuperset(self.lower[s[0]:s[1]])]
            if kind == "number":  # a year is seldom the answer to how many, but better than nothing
                spans = [s for s in spans if not _YEAR.fullmatch(self.lower[s[0]])] or spans
            return spans
        if kind in ("name", "place"):
            spans = [s for s in map(self._trim, self._capitalised_runs()) if s]
            if kind == "place":
                spans = [s for s in spans if s[0] and self.lower[s[0] - 1] in _PLACE_WORDS] or spans
            return spans
        return [s for s in map(self._trim, self._content_runs()) if s]

    def _words_of(self, match: re.Match) -> Span:
        return bisect.bisect_left(self.starts, match.start()), bisect.bisect_left(self.starts, match.end())

    def _trim(self, span: Span) -> Span | None:
        first, last = span
        while first < last and self.lower[first] in self.skip:
            first += 1
        while last > first and self.lower[last - 1] in self.skip:
            last -= 1
        return (first, last) if first < last else None

    def _joined(self, i: int) -> bool:
        """Whether word i follows word i - 1 with only spaces or a hyphen between (Saint-Denis, six-time): other
        punctuation ends a phrase."""
        return i > 0 and self.context[self.words[i - 1].end():self.words[i].start()].strip() in ("", "-")

    def _runs(self, goes_on) -> list[Span]:
        """Maximal runs of joined words, each started by a word for which `goes_on(i, None)` holds and continued
        while `goes_on(i, first)` does."""
        runs, first = [], None
        for i in range(len(self.words) + 1):
            if first is not None and (i == len(self.words) or not self._joined(i) or not goes_on(i, first)):
                runs.append((first, i))
                first = None
            if first is None and i < len(self.words) and goes_on(i, None):
                first = i
        return runs

    def _capitalised_runs(self) -> list[Span]:
        """Capitalised words, numbers after them (Super Bowl 50), connectors between them (Bank of England)."""
        words = [w.group() for w in self.words]

        def goes_on(i: int, first: int | None) -> bool:
            if words[i][:1].isupper():
                return True
            if first is None:
                return False
            return words[i][:1].isdigit() or (words[i] in _CONNECTORS and i + 1 < len(words)
                                              and words[i + 1][:1].isupper() and self._joined(i + 1))
        return self._runs(goes_on)

    def _content_runs(self) -> list[Span]:
        """Up to four words in a row that are neither stop words nor the question's."""
        return self._runs(lambda i, first: self.lower[i] not in self.skip and (first is None or i - first < 4))


# ---------------------------------------------------------------------------------------------------------- data

def read_questions(path: str | Path) -> list[Question]:
    """Every question of a SQuAD file, or of a CoQA file (told apart by CoQA's "story"), in file order."""
    path = Path(path)
    data = _json_data(path)
    if data and isinstance(data[0], dict) and "story" in data[0]:
        return _coqa_questions(path, data)
    return read_squad(path)


def read_coqa(path: str | Path) -> list[Question]:
    """CoQA's conversations as questions in turn order: id "<story id>_<turn>", the story as context and title
    (so that `conversation_histories` groups a story's turns), the free-form answer as the only gold answer."""
    path = Path(path)
    return _coqa_questions(path, _json_data(path))


def _json_data(path: Path) -> list:
    text = read_text(path)
    try:
        data = json.loads(text)["data"]
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (KeyError, TypeError):
        data = None
    if not isinstance(data, list):
        raise UserError(f'{path}: expected SQuAD or CoQA JSON, {{"data": [...]}}')
    check_json_unicode(data, text, path)
    return data


def _coqa_questions(path: Path, data: list) -> list[Question]:
    questions = []
    stories: set[str] = set()
    for s, story in enumerate(data):
        where = f"{path}: data[{s}]"
        try:
            text, asked, answered = story["story"], story["questions"], story["answers"]
            answers, turns = _turns(answered, "answers", where), _turns(asked, "questions", where)
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise UserError(f'{where}: a CoQA story needs "story" (a string), and "questions" and "answers" lists of '
                            '{"input_text": string, "turn_id": integer}') from None
        story_id = str(story.get("id", s))
        if story_id in stories:  # its questions' ids would collide with the first one's
            raise UserError(f"{where}: story id {story_id!r} appears twice")
        stories.add(story_id)
        for turn, question in sorted(turns.items()):
            if turn not in answers:
                raise UserError(f"{where} (story {story_id!r}): question turn {turn} has no answer")
            # CoQA's answers are free text, not spans of the story: -1 stands for "no position"
            questions.append(Question(f"{story_id}_{turn}", question, text, ((answers[turn], -1),), story_id))
        unasked = sorted(set(answers) - set(turns))
        if unasked:  # else that answer would be dropped without a word
            raise UserError(f"{where} (story {story_id!r}): answer turn {unasked[0]} has no question")
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


def _turns(entries: list, name: str, where: str) -> dict[int, str]:
    """turn_id -> input_text of a CoQA story's "questions" or "answers" (`name`); TypeError etc. if malformed."""
    if not isinstance(entries, list):
        raise TypeError
    found: dict[int, str] = {}
    for entry in entries:
        turn, text = int(entry["turn_id"]), entry["input_text"]
        if not isinstance(text, str):
            raise TypeError
        if turn in found:
            raise UserError(f"{where}: two {name} for turn {turn}")
        found[turn] = text
    return found


def conversation_histories(questions: Sequence[Question]) -> dict[str, tuple[Turn, ...]]:
    """Question id → the earlier questions on the same passage (consecutive in the file) with their first gold
    answer: a CoQA story's turns, or, coqa-style, a SQuAD paragraph's questions in file order."""
    histories: dict[str, tuple[Turn, ...]] = {}
    turns: list[Turn] = []
    passage = None
    for q in questions:
        if (q.title, q.context) != passage:
            turns, passage = [], (q.title, q.context)
        histories[q.id] = tuple(turns)
        turns.append((q.question, q.answer_texts[0]))
    return histories


def sample_questions(questions: Sequence[Question], limit: int | None, seed: int = 0) -> list[Question]:
    """`limit` questions drawn by a seeded sample, in file order (all for None or a limit past the count): the
    first N of SQuAD dev would be a handful of articles, a sample covers the whole file."""
    if limit is None or limit >= len(questions):
        return list(questions)
    if limit < 1:
        raise UserError(f"limit {limit}: expected a positive number of questions")
    return [questions[i] for i in sorted(random.Random(seed).sample(range(len(questions)), limit))]


def load_questions(task: str, data: str | Path | None = None, *, limit: int | None = None,
                   seed: int = 0) -> tuple[list[Question], dict[str, tuple[Turn, ...]] | None]:
    """(questions, conversation histories or None for "squad") from `data`, by default SQuAD v1.1 dev under
    $CTXLM_DATA. The histories come from the whole file, so that a sampled question keeps all its earlier turns."""
    if task not in TASKS:
        raise UserError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    questions = read_questions(data if data is not None else dataset_path("squad_v1", "dev-v1.1.json.gz"))
    histories = conversation_histories(questions) if task == "coqa-style" else None
    return sample_questions(questions, limit, seed), histories


# ---------------------------------------------------------------------------------------------- model vs baseline

@dataclass
class Evaluation:
    questions: list[Question]
    model_answers: dict[str, str]
    heuristic_answers: dict[str, str]
    truncated: list[str]

    @property
    def model_metrics(self) -> dict[str, float]:
        return squad_metrics(self.model_answers, self.questions)

    @property
    def heuristic_metrics(self) -> dict[str, float]:
        return squad_metrics(self.heuristic_answers, self.questions)

    def records(self) -> list[dict]:
        """One JSON-ready record per question: what was asked, the gold answers and both predictions."""
        cut = set(self.truncated)
        return [answer_record(q, self.model_answers[q.id], self.heuristic_answers[q.id], q.id in cut)
                for q in self.questions]


def answer_record(question: Question, model_answer: str, heuristic: str, truncated: bool) -> dict:
    return {"id": question.id, "question": question.question, "gold": question.answer_texts, "model": model_answer,
            "heuristic": heuristic, "truncated": truncated}


def evaluate(model: nn.Module, questions: Sequence[Question], *,
             history: Mapping[str, Sequence[Turn]] | None = None, out: str | Path | None = None,
             resume: bool = False, **options) -> Evaluation:
    """`zero_shot` (`options`: template, max_answer_tokens, batch_size, progress, dtype) and `heuristic_answer` on the
    same questions, for scoring side by side.

    `out`: a JSON-lines file that gets each question's record (as `Evaluation.records` makes them) as its chunk of
    answers comes, flushed to disk. `resume`: the file is that of an interrupted run over the same questions:
    its complete records are kept (a last line cut short is dropped), their answers are not asked again, and the
    file goes on after them as an uninterrupted run would have written it."""
    questions = list(questions)
    heuristic = {q.id: heuristic_answer(q.question, q.context) for q in questions}
    if out is None:
        result = zero_shot(model, questions, history=history, **options)
        return Evaluation(questions, result.predictions, heuristic, result.truncated)
    with JsonLinesOutput(out, resume=resume) as output:
        earlier = answers_so_far(output.done, questions, out)

        def write(asked: list[Question], answers: list[str], cut: list[bool]) -> None:
            output.write([answer_record(q, a, heuristic[q.id], c) for q, a, c in zip(asked, answers, cut, strict=True)])

        result = zero_shot(model, questions, history=history, done=len(earlier), on_answers=write, **options)
    return Evaluation(questions, earlier | result.predictions, heuristic, result.truncated)


def answers_so_far(records: list[dict], questions: list[Question], path: str | Path) -> dict[str, str]:
    """The model's answers in the records an interrupted run wrote, which must be those of the first questions."""
    if len(records) > len(questions):
        raise UserError(f"{path}: holds {len(records)} answers, more than the {len(questions)} questions of this "
                        "run; --resume continues the same questions: name another --out, or drop --resume")
    for number, (record, question) in enumerate(zip(records, questions[:len(records)], strict=True), 1):
        if record.get("id") != question.id or not isinstance(record.get("model"), str):
            raise UserError(f"{path}:{number}: not the answer to question {number} of this run ({question.id!r}); "
                            "--resume continues the same questions (--task, --data, --limit, --seed): name "
                            "another --out, or drop --resume")
    return {r["id"]: r["model"] for r in records}
