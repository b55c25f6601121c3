"""Texts longer than a model's context: cut to fit, or read whole in windows whose vectors are pooled into one.

The one place for every job that reads a text as one vector: `ctxlm.embed`, a single-text Task's batches, and
predict / evaluate (which batch as the Task does). Each encodes the whole text once, as one model input of its
family, asks `windows` which positions of that encoding each model input keeps, runs its backbone on those
inputs, and pools their vectors per text with `pool_windows` (or `combine_windows`). A text that fits is one
input, its encoding unchanged, and its vector is the plain pooling's, bit for bit.

`LongText`, parsed from "NAME" or "NAME:key=value":

- "truncate" (the default): the first tokens that fit, the special tokens around the text kept;
- "head-tail": the first `head` tokens of the text and as many of its last as fit (Sun et al. 2019, "How to
  Fine-Tune BERT for Text Classification?" §5.3.1: of BERT's 512, the first 128 and the last 382 read IMDb best);
- "windows": every token, in consecutive windows of the context, each framed as a text alone ([CLS] ... [SEP]
  for BERT, <|start|> ... <|extract|> for GPT); `stride` tokens of text between the starts of two windows
  (default: a whole window, so every token is in exactly one; less overlaps them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ctxlm.errors import UserError
from ctxlm.nn.pooling import pool

LONG_TEXTS = ("truncate", "head-tail", "windows")
SUN_HEAD, SUN_ROOM = 128, 510  # Sun et al.: the first 128 of the 510 text tokens that fit in 512 with [CLS], [SEP]


@dataclass(frozen=True)
class LongText:
    """How a text longer than a model input is read (see the module docstring)."""

    how: str = "truncate"
    stride: int | None = None  # windows: tokens of text between two windows' starts; None: a whole window
    head: int | None = None  # head-tail: tokens kept from the start; None: 128 of every 510 that fit, as Sun et al.

    @classmethod
    def parse(cls, value: str | LongText | None) -> LongText:
        """"truncate", "head-tail", "windows", with options: "windows:stride=64", "head-tail:head=64"; None is
        "truncate"."""
        if value is None or isinstance(value, LongText):
            return value or cls()
        name, _, options = str(value).partition(":")
        expected = f"expected one of {', '.join(LONG_TEXTS)}, e.g. 'windows:stride=64' or 'head-tail:head=128'"
        if name not in LONG_TEXTS:
            raise UserError(f"long text {value!r}: {expected}")
        allowed = {"windows": "stride", "head-tail": "head"}.get(name)
        values: dict[str, int] = {}
        for option in filter(None, options.split(",")):
            key, _, number = option.partition("=")
            if key != allowed or not number.isdigit() or (key == "stride" and int(number) == 0):
                takes = f"{allowed}=N (tokens)" if allowed else "no options"
                raise UserError(f"long text {value!r}: {name} takes {takes}; {expected}")
            values[key] = int(number)
        return cls(name, **values)

    def __str__(self) -> str:
        """The form `parse` reads back (task.json keeps it)."""
        options = {"stride": self.stride, "head": self.head}
        return ":".join([self.how, *(f"{k}={v}" for k, v in options.items() if v is not None)])


TRUNCATE = LongText()


@dataclass(frozen=True)
class Frame:
    """How many special tokens open and close one text's encoding: 1 and 1 for BERT ([CLS], [SEP]), GPT
    (<|start|>, <|extract|>) and ELMo (<S>, </S>); 0 and 0 for bare token ids. Every window repeats them."""

    prefix: int = 0
    suffix: int = 0

    @classmethod
    def of(cls, tokenizer) -> Frame:
        """The frame of `tokenizer.encode_text`, found by encoding, not by family: the encoding of an empty text
        is the frame alone, and it opens a one-word text's encoding up to where the word begins."""
        empty, text = tokenizer.encode_text("").ids, tokenizer.encode_text("a").ids
        prefix = next((i for i, (x, y) in enumerate(zip(empty, text, strict=False)) if x != y), len(empty))
        return cls(prefix, len(empty) - prefix)


def windows(length: int, max_length: int, frame: Frame, long_text: LongText) -> list[list[int]]:
    """The positions of a text's encoding (`length` tokens, framed by `frame`) that each model input of at most
    `max_length` tokens keeps, in order: one input for a text that fits (all its positions), for "truncate" and
    for "head-tail"; one per window for "windows". Every input keeps the frame."""
    if length <= max_length:
        return [list(range(length))]
    room = max_length - frame.prefix - frame.suffix  # text tokens per input
    opening, closing = list(range(frame.prefix)), list(range(length - frame.suffix, length))
    text = range(frame.prefix, length - frame.suffix)
    if long_text.how == "truncate":
        return [opening + list(text[:max(room, 0)]) + closing]
    if room < 1:
        raise UserError(f"max_length={max_length} leaves no room for text beside the {frame.prefix + frame.suffix} "
                        f"special tokens of each input")
    if long_text.how == "head-tail":
        head = min(room, round(room * SUN_HEAD / SUN_ROOM) if long_text.head is None else long_text.head)
        return [opening + list(text[:head]) + list(text[len(text) - (room - head):]) + closing]
    stride = min(long_text.stride or room, room)  # a longer stride would leave tokens out
    starts = range(0, max(len(text) - room, 0) + stride, stride)  # the last window reaches the end of the text
    return [opening + list(text[start:start + room]) + closing for start in starts]


def pool_windows(states: Tensor, mask: Tensor, text: Tensor, how: str) -> Tensor:
    """(inputs, time, dim) states of model inputs → one pooled vector per text, `text[i]` numbering the text
    whose window input i is (texts 0, 1, ... in order, each one's windows in order). See `combine_windows`."""
    return combine_windows(pool(states, mask, how), mask.sum(1), text, how)


def combine_windows(vectors: Tensor, tokens: Tensor, text: Tensor, how: str) -> Tensor:
    """The pooled vectors of windows (inputs, features), each from `tokens[i]` tokens, → one per text (texts,
    features). A text of one window keeps its window's vector as it is. A text of several:

    - "mean": the mean of its windows' means weighted by their token counts (every token of every window
      counted once, its special tokens included, as the mean of a text that fits counts its own);
    - "cls": the windows' first-token vectors, weighted alike;
    - "last": the last window's last token (the decoder state that has read the end of the text);
    - "concat" ([last, max, mean], features = 3 × dim): the last window's last token, the maximum over every
      token of every window, the weighted mean (ULMFiT's concat pooling, over the whole text).

    Differentiable: fine-tuning sends the gradient to every window of a text.
    """
    texts = int(text[-1]) + 1 if len(text) else 0
    if texts == len(text):  # one window each: the plain path
        return vectors
    weights = tokens.to(vectors.dtype).unsqueeze(-1)
    mean = (vectors.new_zeros(texts, vectors.shape[-1]).index_add(0, text, vectors * weights)
            / vectors.new_zeros(texts, 1).index_add(0, text, weights))
    order = torch.arange(len(text), device=text.device)
    last_window = torch.zeros(texts, dtype=torch.long, device=text.device).scatter_reduce(0, text, order, "amax")
    last = vectors[last_window]
    if how in ("mean", "cls"):
        combined = mean
    elif how == "last":
        combined = last
    elif how == "concat":
        dim = vectors.shape[-1] // 3
        highest = vectors.new_full((texts, dim), float("-inf")).scatter_reduce(
            0, text.unsqueeze(-1).expand(-1, dim), vectors[:, dim:2 * dim], "amax")
        combined = torch.cat([last[:, :dim], highest, mean[:, 2 * dim:]], dim=-1)
    else:
        raise ValueError(f"pooling must be one of cls, mean, last, concat; got {how!r}")
    alone = torch.bincount(text, minlength=texts) == 1
    return torch.where(alone.unsqueeze(-1), last, combined)
