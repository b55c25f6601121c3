"""Training a sub-word vocabulary (BPE for "gpt", "gpt2" and "roberta", WordPiece for "bert", Unigram for
"sentencepiece") on Hugging Face `tokenizers`, repeatably: the same corpus gives the same tokenizer, ids included. See
`Tokenizer.train`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer as Backend

from ctxlm.errors import UserError
from ctxlm.textfiles import decode_line
from ctxlm.tokenizers.published import (
    SENTENCEPIECE,
    SENTENCEPIECE_SPECIALS,
    TASK_TOKENS,
    kind_spec,
    pipeline_options,
    set_bert_post_processor,
    set_roberta_post_processor,
    set_template,
    with_pad,
)

_BATCH_LINES = 1000  # lines handed to the Rust trainer per call: amortises the Python -> Rust crossing
_SCRIPT_LINES = 2000  # lines read to tell a corpus's script (`latin_script`)
_LATIN_SHARE = 0.9  # of the letters, for a corpus to count as Latin-script


def train_backend(files: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str], kind: str,
                  vocab_size: int, *, min_frequency: int, show_progress: bool,
                  lowercase: bool | None, strip_accents: bool | None) -> tuple[Backend, dict[str, str]]:
    """The trained backend and its special tokens' roles (see `Tokenizer.train`)."""
    spec = kind_spec(kind, "Tokenizer.train")
    options = pipeline_options(kind, lowercase, strip_accents, "Tokenizer.train")
    specials = {**spec.specials, **(TASK_TOKENS if spec.task_tokens else {})}
    smallest = spec.alphabet + len(specials) + 1
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise UserError(f"vocab_size={vocab_size!r} is too small for a {kind} tokenizer; expected an "
                        f"integer >= {smallest} ({spec.alphabet} base symbols + {len(specials)} special "
                        "tokens + at least one merge)")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise UserError(f"min_frequency={min_frequency!r}: expected an integer >= 1")

    def train_once(registered: list[str]) -> Backend:
        backend = spec.pipeline(spec.model(**spec.model_options), **options)
        special_tokens = [spec.special_token(role, token) for role, token in specials.items()]
        trainer = spec.trainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                               special_tokens=[*special_tokens, *registered])
        # Everything goes through the iterator path so that gzip and UTF-8 errors name the file and line.
        backend.train_from_iterator(_batches(_training_texts(files)), trainer)
        return backend

    backend = train_once([])
    affixed = {"gpt": lambda c: c + "</w>", "bert": lambda c: "##" + c}.get(kind)
    if affixed is not None and not isinstance(files, Iterator):
        # HF's trainers number each character's "##" / "</w>" form in randomly seeded hash-map order and break
        # ties between equally frequent merges by those numbers, so the same corpus gave different
        # vocabularies from run to run (huggingface/tokenizers#1794). Given up front, in sorted order, those
        # forms have fixed numbers, and a second pass over the corpus makes the same merges every time.
        alphabet = sorted(t for t in backend.get_vocab() if len(t) == 1 and t not in specials.values())
        registered = [affixed(c) for c in alphabet]
        backend = _not_special(train_once(registered), registered)
    made = backend.get_vocab_size(with_added_tokens=True)
    # "gpt" keeps every character seen (and its "</w>" twin) whatever the budget, "bert" too (and "##" twins)
    if made > vocab_size:
        raise UserError(f"vocab_size={vocab_size} is smaller than the {made} base symbols and special "
                        f"tokens this corpus needs for a {kind} tokenizer; ask for more")
    backend = _canonical_numbering(backend)
    if kind == "bert":
        set_bert_post_processor(backend)
    elif kind == "roberta":
        set_roberta_post_processor(backend)
    elif kind == SENTENCEPIECE:  # ALBERT's layout, which HF's AlbertTokenizer writes too
        cls, sep = SENTENCEPIECE_SPECIALS["cls"], SENTENCEPIECE_SPECIALS["sep"]
        set_template(backend, f"{cls}:0 $A:0 {sep}:0", f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1", [cls, sep])
    return backend, with_pad(specials, spec)


def latin_script(files: str | os.PathLike | Sequence[str | os.PathLike]) -> bool:
    """Whether the letters of the training files' first lines are (at least 90 %) Latin: the text for which an
    uncased vocabulary is the published models' default. `ctxlm pretrain` lower-cases such text unless told, and
    keeps the case and accents of any other (Russian "Ёлка" and "йод" stay as they are)."""
    letters = latin = 0
    for text in itertools.islice(_training_texts(files), _SCRIPT_LINES):
        for ch in text:
            if ch.isalpha():
                letters += 1
                latin += unicodedata.name(ch, "").startswith("LATIN")
    return latin >= _LATIN_SHARE * letters


def _not_special(backend: Backend, tokens: list[str]) -> Backend:
    """The tokenizer with `tokens` kept in its vocabulary as ordinary symbols, no longer special tokens."""
    data = json.loads(backend.to_str())
    unmark = set(tokens)
    data["added_tokens"] = [token for token in data["added_tokens"] if token["content"] not in unmark]
    return Backend.from_str(json.dumps(data))


def _canonical_numbering(backend: Backend) -> Backend:
    """The trained tokenizer with its symbols numbered the same way for the same corpus.

    The trainers number the initial alphabet in hash-map order, which Rust seeds at random: the same corpus gave
    differently numbered vocabularies from run to run (gpt and bert kinds; gpt2's byte alphabet is fixed). Here
    the single-character symbols (with their "</w>" or "##" forms) take their block of numbers in sorted order;
    BPE's merged symbols keep the merges' order; WordPiece, which matches by membership alone, numbers its merged
    symbols sorted too. (The merges themselves are made repeatable in `train_backend`.)"""
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    special = {token["content"] for token in data["added_tokens"]}
    if data["model"]["type"] == "Unigram":
        # A list of [piece, log probability], ordered by probability. UnigramTrainer's EM sums in hash-map order,
        # so the same corpus gives the same pieces with log probabilities that differ in the fourth decimal, and a
        # different order. The special tokens lead (their ids are set); the other pieces are numbered by their
        # text, which the model never reads (it segments by the probabilities alone): the same pieces, the same ids.
        head = [entry for entry in vocab if entry[0] in special]
        data["model"]["vocab"] = head + sorted((e for e in vocab if e[0] not in special), key=lambda e: e[0])
        return Backend.from_str(json.dumps(data))

    def base(token: str) -> str:
        return token.removeprefix("##").removesuffix("</w>")

    alphabet = [token for token in vocab if token not in special and len(base(token)) == 1]
    blocks = [alphabet]
    if data["model"]["type"] == "WordPiece":
        blocks.append([token for token in vocab if token not in special and len(base(token)) > 1])
    for block in blocks:
        for token, number in zip(sorted(block), sorted(vocab[token] for token in block), strict=True):
            vocab[token] = number
    return Backend.from_str(json.dumps(data))



def _training_texts(files: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str]) -> Iterator[str]:
    """Texts to train on. A list/tuple is paths (never texts: a sentence mistaken for a missing file must fail
    loudly, not train on file names); a str or path alone is one path; any other iterable yields texts."""
    if isinstance(files, str | os.PathLike):
        files = [files]
    if not isinstance(files, list | tuple):
        return _checked_texts(files)
    paths = [Path(f) for f in files]
    for path in paths:  # all checked now, not minutes into training
        if not path.is_file():
            raise UserError(f"{path}: no such training file (to train on in-memory text, pass an iterator "
                            "such as iter(lines))")
    return itertools.chain.from_iterable(_file_lines(path) for path in paths)


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"training text #{i} is a {type(text).__name__}; expected str")
        yield text


def _file_lines(path: Path) -> Iterator[str]:
    """The lines of a training file, with their endings; a byte-order mark at the start is no text."""
    # Decoding line by line from bytes lets a UTF-8 error name the exact line.
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for line_no, raw in enumerate(fh, 1):
                yield decode_line(raw, path, line_no)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a truncated .gz ends in EOFError
        raise UserError(f"{path}: cannot read ({err})") from None


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == _BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch
