"""What every tokenizer offers: one protocol whose methods are named by the role of the input they build.

A family decides how each role looks as a model input; the caller (fine-tuning, embeddings, QA) asks for the
role and never for the family:

- `encode_text(text)`: BERT `[CLS] text [SEP]`; GPT, GPT-2 (§3.3) `<|start|> text <|extract|>`; ELMo `<S> text </S>`.
- `encode_pair(a, b)`: BERT `[CLS] a [SEP] b [SEP]`; GPT `<|start|> a <|delimiter|> b <|extract|>`; ELMo
  `<S> a </S> b </S>`.
- `encode_choices(context, choices)`: one pair (context, choice) per choice.
- `encode_words(words)`: BERT `[CLS] pieces [SEP]`; GPT `<|start|> pieces` (a decoder's state sees only its
  left); ELMo `<S> words </S>`.

Transformer-XL's word vocabulary has no special tokens to build a pair with: `WordTokenizer` encodes a text and
words as they are, and refuses pairs and choices.

Each returns an `Encoding` (ids, segment ids where the family has segment embeddings, the word of each token,
character offsets); the `*_batch` forms encode many inputs at once (on Rust threads for the sub-word kinds).
`encode` / `encode_batch` give the plain ids of a text, with no special tokens (language modelling).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ctxlm.errors import UserError


@dataclass(frozen=True)
class Encoding:
    """One model input, position by position.

    - `ids`: token ids, special tokens included (e.g. `[CLS] A [SEP] B [SEP]`).
    - `segments`: 0 for the first text and its special tokens, 1 for the second (BERT's token type ids); None for
      a family without segment embeddings (GPT, GPT-2).
    - `word_ids`: index of the word each token came from, counted within its own text (A or B) from 0; None for
      special tokens. Words are the pre-tokeniser's (BERT's split on whitespace and punctuation: "don't" is three
      words "don", "'", "t"), or for `encode_words` the caller's words.
    - `offsets`: (start, end) character offsets of each token in the original text it came from (A or B), accents
      and case included; (0, 0) for special tokens. For `encode_words`, offsets within the word.
    """

    ids: list[int]
    segments: list[int] | None
    word_ids: list[int | None]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)

    def word_starts(self) -> list[int]:
        """Positions of each word's first token, in order: where a word-level label (e.g. a CoNLL tag) goes."""
        return [i for i, w in enumerate(self.word_ids) if w is not None and (i == 0 or self.word_ids[i - 1] != w)]


@runtime_checkable
class TokenizerProtocol(Protocol):
    """The methods every tokenizer family implements (`Tokenizer`, `CharTokenizer`, `WordTokenizer`).

    `max_length` bounds a whole input, special tokens included (None: no limit); text beyond it is cut from the
    end, the longer of two texts first. The `*_batch` forms equal their one-input forms applied to each input.
    """

    kind: str
    vocab_size: int

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def special_ids(self) -> set[int]: ...

    @property
    def word_prefix(self) -> str:
        """What goes before a word inside running text for it to encode as it does there (" " for GPT-2)."""

    def encode(self, text: str) -> list[int]:
        """Plain token ids of `text`, no special tokens added."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """Each token as text a person can read, one per id, special tokens included: what a page, an endpoint or
        the command line shows for a token (a byte-level entry such as GPT-2's "Ġare" reads " are"). The raw
        vocabulary entries stay the ids' business of the tokenizer's own vocabulary."""

    def encode_text(self, text: str, max_length: int | None = None) -> Encoding:
        """One text as a task input (classification)."""

    def encode_text_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[Encoding]: ...

    def encode_pair(self, a: str, b: str, max_length: int | None = None) -> Encoding:
        """Two texts as one input, `a` first (entailment, similarity)."""

    def encode_pair_batch(self, firsts: Sequence[str], seconds: Sequence[str],
                          max_length: int | None = None) -> list[Encoding]: ...

    def encode_choices(self, context: str, choices: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        """One (context, choice) pair per choice (multiple choice)."""

    def encode_words(self, words: Sequence[str], max_length: int | None = None) -> Encoding:
        """Text already split into words (tagging): every token's `word_ids` entry names its word, and a word-level
        label goes on the word's first token (`Encoding.word_starts()`)."""

    def encode_words_batch(self, sentences: Sequence[Sequence[str]],
                           max_length: int | None = None) -> list[Encoding]: ...


def length_budget(max_length: int | None, n_special: int) -> int | None:
    """Room left for text once the `n_special` special tokens are placed; None means unbounded."""
    if max_length is None:
        return None
    if not isinstance(max_length, int) or max_length < n_special:
        raise UserError(f"max_length={max_length!r}: expected an integer >= {n_special}, the number of "
                        "special tokens in the sequence")
    return max_length - n_special


def longest_first(a_len: int, b_len: int, budget: int) -> tuple[int, int]:
    """Lengths after removing one token at a time from the longer part (from b on ties, as HF's
    "longest_first") until a_len + b_len <= budget, in closed form."""
    a = min(a_len, max(budget - b_len, (budget + 1) // 2))
    return a, min(b_len, budget - a)


def as_list(values: object, name: str, caller: str) -> list:
    """`values` as a list; a lone string (a common slip for a list of strings) is a UserError."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise UserError(f"{caller}: {name} is a {type(values).__name__}; expected a list of strings")
    return list(values)


def str_list(values: object, name: str, caller: str) -> list[str]:
    """`values` as a list of strings, or a UserError naming the first item that is not one."""
    values = as_list(values, name, caller)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise UserError(f"{caller}: {name}[{i}] is a {type(value).__name__}; expected str")
    return values


def check_pairs(firsts: object, seconds: object, caller: str) -> tuple[list[str], list[str]]:
    """The two texts of each pair, as lists of strings of the same length."""
    firsts, seconds = str_list(firsts, "firsts", caller), str_list(seconds, "seconds", caller)
    if len(seconds) != len(firsts):
        raise UserError(f"{caller}: {len(firsts)} first texts but {len(seconds)} second texts; expected one each")
    return firsts, seconds
