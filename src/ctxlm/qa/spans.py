"""SQuAD pre- and post-processing for span extraction (BERT §4.2, as in the paper's run_squad.py).

Pre-processing: each question becomes one or more *windows* `[CLS] question [SEP] passage piece [SEP]` (the
tokenizer's pair template: RoBERTa's `<s> question </s></s> passage piece </s>`). A passage
longer than the room left by the question is cut into overlapping pieces that start `doc_stride` tokens apart,
so that every passage token appears in some window with context on both sides. Each token keeps its character
offsets in the passage, so a predicted token span maps back to the passage's exact characters. For training, the
first gold answer is located in each window by those offsets; a window that does not hold the whole answer
(or a SQuAD v2 question without one) points at [CLS] (position 0), as in BERT.

Post-processing (`best_spans`): for each window, the `n_best` highest start and end logits over passage tokens
form candidate spans; a span is kept when end ≥ start, it is at most `max_answer_tokens` long and its start token
has its most central context in this window (BERT's "max context" rule: a token seen by two windows is judged
by the one where it is farthest from a window edge). The highest start + end logit over all windows of a
question wins. With `no_answer=True` (SQuAD v2) the question's [CLS] score, start[0] + end[0] at its lowest over
the windows, competes with the best span: "" is answered when it wins by more than `null_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ctxlm.qa.squad import Question
from ctxlm.tokenizers import Tokenizer
from ctxlm.transfer.inputs import TaskBatches


@dataclass(frozen=True)
class Window:
    question: int  # index into the question list
    ids: list[int]
    segments: list[int]
    passage_start: int  # position of the window's first passage token (after [CLS] question [SEP])
    offsets: list[tuple[int, int]]  # character (start, end) in the passage of each passage token of the window
    max_context: list[bool]  # per passage token: is this the window where the token has its most context?
    start: int = 0  # gold answer's first and last token positions; 0 ([CLS]) when the window lacks the answer
    end: int = 0


def answer_tokens(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """(first, last) index of the tokens that cover passage characters [char_start, char_end): the first token
    ending after the answer starts, and the last token starting before it ends. None when no token does."""
    first = next((i for i, (_, end) in enumerate(offsets) if end > char_start), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < char_end), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def _piece_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """Start of each window piece: every `stride` tokens until a piece reaches the end of the passage."""
    starts = [0]
    while starts[-1] + room < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


def _max_context(starts: list[int], room: int, n_tokens: int) -> list[list[bool]]:
    """For each piece and each of its tokens, whether this piece gives the token the most context: the score
    min(left, right) + 0.01 * piece length, highest over the pieces that hold the token (BERT's rule)."""
    best: list[tuple[float, int]] = [(-1.0, 0)] * n_tokens
    for k, start in enumerate(starts):
        length = min(room, n_tokens - start)
        for i in range(start, start + length):
            score = min(i - start, start + length - 1 - i) + 0.01 * length
            if score > best[i][0]:
                best[i] = (score, k)
    return [[best[i][1] == k for i in range(start, min(start + room, n_tokens))] for k, start in enumerate(starts)]


def make_windows(tokenizer: Tokenizer, questions: Sequence[Question], *, max_length: int = 384,
                 doc_stride: int = 128, max_question_tokens: int = 64, labelled: bool = True) -> list[Window]:
    """The windows of every question, in question order (see the module docstring).

    `labelled`: locate each question's first answer in its windows (for training and the training loss)."""
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ValueError("span extraction reads [CLS] question [SEP] passage [SEP]: it needs a BERT-family tokenizer")
    first, middle, last = tokenizer.pair_specials()
    contexts = list(dict.fromkeys(q.context for q in questions))
    encoded = tokenizer.encode_plain_batch(contexts)
    passages = {c: (e.ids, [_trimmed(c, span) for span in e.offsets]) for c, e in zip(contexts, encoded, strict=True)}
    question_ids = tokenizer.encode_batch([q.question for q in questions])
    windows = []
    for index, (q, q_ids) in enumerate(zip(questions, question_ids, strict=True)):
        q_ids = q_ids[:max_question_tokens]
        room = max_length - len(q_ids) - len(first) - len(middle) - len(last)
        if room < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the passage after a "
                             f"{len(q_ids)}-token question")
        p_ids, p_offsets = passages[q.context]
        gold = None
        if labelled and q.answers:
            text, char_start = q.answers[0]
            gold = answer_tokens(p_offsets, char_start, char_start + len(text))
        starts = _piece_starts(len(p_ids), room, min(doc_stride, room))
        contexts_best = _max_context(starts, room, len(p_ids))
        head = [*first, *q_ids, *middle]
        for start, best in zip(starts, contexts_best, strict=True):
            piece = p_ids[start:start + room]
            window_start = window_end = 0
            if gold is not None and start <= gold[0] and gold[1] < start + len(piece):
                window_start, window_end = (len(head) + g - start for g in gold)
            windows.append(Window(index, [*head, *piece, *last], [0] * len(head) + [1] * (len(piece) + len(last)),
                                  len(head), p_offsets[start:start + len(piece)], best, window_start, window_end))
    return windows


def _trimmed(text: str, span: tuple[int, int]) -> tuple[int, int]:
    """A token's character span without the whitespace a byte-level token carries before its word (GPT-2's and
    RoBERTa's "Ġbird" spans " bird"): an answer is the word, not its space."""
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    return start, end


def collate_windows(windows: Sequence[Window], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ids, mask, segments; `passage` marks passage tokens; `starts`/`ends` are the gold positions."""
    length = max(len(w.ids) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    segments = torch.zeros((len(windows), length), dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.bool)
    passage = torch.zeros((len(windows), length), dtype=torch.bool)
    for row, w in enumerate(windows):
        ids[row, :len(w.ids)] = torch.tensor(w.ids)
        segments[row, :len(w.ids)] = torch.tensor(w.segments)
        mask[row, :len(w.ids)] = True
        passage[row, w.passage_start:w.passage_start + len(w.offsets)] = True
    return {"ids": ids, "segments": segments, "mask": mask, "passage": passage,
            "starts": torch.tensor([w.start for w in windows]), "ends": torch.tensor([w.end for w in windows])}


class WindowBatches(TaskBatches):
    """`TaskBatches` of windows, always grouped by length: windows run from a few dozen tokens to `max_length`,
    and random batches would pad them all to the longest (twice the compute on SQuAD). The order stays random and
    training batch i a pure function of (seed, i), so a resumed run sees the batches of an uninterrupted one."""

    def __init__(self, windows: Sequence[Window], pad_id: int, batch_size: int, seed: int = 0,
                 pool: int = 50) -> None:
        super().__init__(windows, None, None, pad_id, batch_size, seed, group_by_length=True, pool=pool)

    @property
    def windows(self) -> list[Window]:
        return self.encoded

    def _length(self, i: int) -> int:
        return len(self.encoded[i].ids)

    def _batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        batch = collate_windows([self.encoded[i] for i in indices], self.pad_id)
        batch["index"] = torch.tensor(list(indices))
        return batch


@dataclass(frozen=True)
class Span:
    text: str
    score: float  # start + end logit
    char_start: int  # in the passage; -1 for "no answer"
    char_end: int


def window_spans(window: Window, start_logits: Sequence[float], end_logits: Sequence[float], context: str, *,
                 n_best: int = 20, max_answer_tokens: int = 30) -> list[Span]:
    """The valid candidate spans of one window (see the module docstring), best first. The logits are the
    window's own, over all its positions; only passage positions are considered."""
    first, n = window.passage_start, len(window.offsets)
    starts = torch.tensor(start_logits[first:first + n]).topk(min(n_best, n)).indices.tolist()
    ends = torch.tensor(end_logits[first:first + n]).topk(min(n_best, n)).indices.tolist()
    spans = []
    for s in starts:
        if not window.max_context[s]:
            continue
        for e in ends:
            if s <= e < s + max_answer_tokens:
                char_start, char_end = window.offsets[s][0], window.offsets[e][1]
                spans.append(Span(context[char_start:char_end], start_logits[first + s] + end_logits[first + e],
                                  char_start, char_end))
    return sorted(spans, key=lambda span: -span.score)[:n_best]


def best_spans(questions: Sequence[Question], windows: Sequence[Window], start_logits: Sequence[Sequence[float]],
               end_logits: Sequence[Sequence[float]], *, n_best: int = 20, max_answer_tokens: int = 30,
               no_answer: bool = False, null_threshold: float = 0.0) -> list[list[Span]]:
    """Per question, its n-best spans over all its windows, best first ("no answer", text "", first when it
    wins under `no_answer`). `start_logits[k]` / `end_logits[k]` belong to `windows[k]`."""
    candidates: list[list[Span]] = [[] for _ in questions]
    null: list[float] = [math.inf] * len(questions)
    for window, starts, ends in zip(windows, start_logits, end_logits, strict=True):
        q = window.question
        candidates[q] += window_spans(window, starts, ends, questions[q].context, n_best=n_best,
                                      max_answer_tokens=max_answer_tokens)
        null[q] = min(null[q], starts[0] + ends[0])
    out = []
    for spans, null_score in zip(candidates, null, strict=True):
        spans = sorted(spans, key=lambda span: -span.score)[:n_best]
        if no_answer and (not spans or null_score - spans[0].score > null_threshold):
            spans = [Span("", null_score, -1, -1), *spans][:n_best]
        out.append(spans or [Span("", -math.inf, -1, -1)])
    return out
