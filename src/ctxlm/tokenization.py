"""Sub-word tokenisers for the GPT family, on Hugging Face `tokenizers` (Rust, parallel batches).

Two kinds today; the per-kind recipe lives in `_KINDS`, so WordPiece ("bert") slots in as one more entry:

- "gpt"  (Radford et al. 2018): lower-cased, BERT-style split on whitespace and punctuation, then BPE whose
  word-final symbols carry a "</w>" suffix. Same pipeline as HF's `openai-gpt` tokenizer.json. The original
  code used ftfy + spaCy before BPE; HF (and we) replace that with BERT's basic tokeniser, so rare inputs
  (contractions, odd unicode) can split differently from the 2018 release.
- "gpt2" (Radford et al. 2019): byte-level BPE, lossless, no unknown token. Same pipeline as HF's `gpt2`.

Special tokens have *roles* ("eos", "unk", "pad", "start", "delimiter", "extract"), saved by `save` in
tokenizer_config.json beside tokenizer.json so that `from_files` gets them back. The three task tokens are
the GPT paper's §3.3 input transformations for fine-tuning; published vocabularies lack them, see
`add_task_tokens`.

Text that contains a special token's literal string (e.g. "<|endoftext|>") encodes to that special token, as
in HF. Batched encoding runs on Rust threads: if you fork afterwards (DataLoader workers) `tokenizers` turns
its parallelism off in the children and warns; set TOKENIZERS_PARALLELISM=false to silence it.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from ctxlm.errors import UserError

EOS, UNK = "<|endoftext|>", "<unk>"
TASK_TOKENS = {"start": "<|start|>", "delimiter": "<|delimiter|>", "extract": "<|extract|>"}
_BATCH_LINES = 1000  # lines handed to the Rust trainer per call: amortises the Python -> Rust crossing


@dataclass(frozen=True)
class _Kind:
    """How to build one tokeniser family: its pipeline around a model, its BPE settings and trainer."""

    pipeline: Callable[[models.Model], Backend]
    bpe_options: dict
    trainer: Callable[..., trainers.Trainer]
    specials: dict[str, str]  # role -> token, trained into the vocabulary ahead of the task tokens
    pad_from: str  # the role whose token pads batches when there is no "pad" token
    alphabet: int  # symbols every vocabulary of this kind holds, whatever the corpus


def _gpt_pipeline(model: models.Model) -> Backend:
    backend = Backend(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)  # also strips accents, as HF openai-gpt
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    return backend


def _gpt2_pipeline(model: models.Model) -> Backend:
    backend = Backend(model)
    # No prefix space: GPT-2 was trained so that "Hello" at the start of a text differs from " Hello".
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


_KINDS: dict[str, _Kind] = {
    "gpt": _Kind(_gpt_pipeline, {"unk_token": UNK, "end_of_word_suffix": "</w>"},
                 lambda **kw: trainers.BpeTrainer(end_of_word_suffix="</w>", **kw),
                 {"unk": UNK, "eos": EOS}, pad_from="unk", alphabet=0),
    "gpt2": _Kind(_gpt2_pipeline, {},
                  # Every byte is in the alphabet, so no text is ever out of vocabulary.
                  lambda **kw: trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   **kw),
                  {"eos": EOS}, pad_from="eos", alphabet=256),
}


def _kind_spec(kind: str | None, where: str) -> _Kind:
    if kind not in _KINDS:
        raise UserError(f"{where}: unknown tokenizer kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return _KINDS[kind]


class Tokenizer:
    """A trained BPE tokeniser of kind "gpt" or "gpt2", with the special tokens' roles.

    `backend` is the `tokenizers.Tokenizer` doing the work; use it directly for offsets or other extras.
    """

    def __init__(self, backend: Backend, kind: str, special_tokens: dict[str, str] | None = None) -> None:
        _kind_spec(kind, "Tokenizer")
        self.backend, self.kind = backend, kind
        # Truncation or padding stored in a loaded tokenizer.json would silently cut or pad every encode.
        backend.no_truncation()
        backend.no_padding()
        self.special_tokens: dict[str, str] = dict(special_tokens or _default_roles(backend, kind))
        self._refresh()

    def _refresh(self) -> None:
        # max id + 1 is what an embedding table must hold; equal to the token count in GPT/GPT-2 vocabularies.
        self.vocab_size: int = max(self.backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def pad_id(self) -> int:
        """Filler for padded positions. These are masked out of attention and loss, so any id works; GPT-2
        uses <|endoftext|> (as HF does, it has no pad token), GPT <unk>; 0 if the vocabulary has neither."""
        pad = self._role_id("pad")
        return 0 if pad is None else pad

    @property
    def start_id(self) -> int | None:
        return self._role_id("start")

    @property
    def delimiter_id(self) -> int | None:
        return self._role_id("delimiter")

    @property
    def extract_id(self) -> int | None:
        return self._role_id("extract")

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={self.special_tokens})")

    # ---- building ------------------------------------------------------------------------------------

    @classmethod
    def train(cls, files: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str], kind: str,
              vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False) -> Tokenizer:
        """Learn a BPE vocabulary of at most `vocab_size` tokens (special tokens included).

        `files`: a path or a list/tuple of paths (.txt, or .txt.gz) read as UTF-8, or any other iterable
        (e.g. a generator, `iter(lines)`) of text strings. The vocabulary starts with the special tokens:
        gpt2: <|endoftext|> and the three task tokens; gpt: <unk>, <|endoftext|> and the three task tokens.
        A corpus too small to supply enough merges gives a smaller vocabulary.
        """
        spec = _kind_spec(kind, "Tokenizer.train")
        specials = {**spec.specials, **TASK_TOKENS}
        smallest = spec.alphabet + len(specials) + 1
        if not isinstance(vocab_size, int) or vocab_size < smallest:
            raise UserError(f"vocab_size={vocab_size!r} is too small for a {kind} tokenizer; expected an "
                            f"integer >= {smallest} ({spec.alphabet} base symbols + {len(specials)} special "
                            "tokens + at least one merge)")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise UserError(f"min_frequency={min_frequency!r}: expected an integer >= 1")
        backend = spec.pipeline(models.BPE(**spec.bpe_options))
        trainer = spec.trainer(vocab_size=vocab_size, min_frequency=min_frequency,
                               show_progress=show_progress, special_tokens=list(specials.values()))
        texts = _training_texts(files)
        # Everything goes through the iterator path so that gzip and UTF-8 errors name the file and line.
        backend.train_from_iterator(_batches(texts), trainer)
        made = backend.get_vocab_size(with_added_tokens=True)
        if made > vocab_size:  # "gpt" keeps every character seen (and its "</w>" twin) whatever the budget
            raise UserError(f"vocab_size={vocab_size} is smaller than the {made} base symbols and special "
                            f"tokens this corpus needs for a {kind} tokenizer; ask for more")
        return cls(backend, kind, _with_pad(specials, spec))

    @classmethod
    def from_files(cls, directory: str | os.PathLike, kind: str | None = None) -> Tokenizer:
        """Load tokenizer.json (ours or HF's; our tokenizer_config.json restores kind and roles), or else the
        published vocab.json + merges.txt pair. `kind` is inferred when not given ("</w>" suffix => gpt)."""
        directory = Path(directory)
        if kind is not None:
            _kind_spec(kind, "Tokenizer.from_files")
        if not directory.is_dir():
            raise UserError(f"{directory}: not a directory; expected a folder with tokenizer.json or "
                            "vocab.json + merges.txt")
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        roles = None
        # HF writes a tokenizer_config.json too, without our "kind": then it is not ours to read.
        if isinstance(config, dict) and "kind" in config:
            saved_kind, roles = config["kind"], config.get("special_tokens", {})
            _kind_spec(saved_kind, f"{config_path}: 'kind'")
            if kind is not None and kind != saved_kind:
                raise UserError(f"{config_path}: tokenizer kind is {saved_kind!r} but {kind!r} was asked for")
            if not (isinstance(roles, dict) and all(isinstance(t, str) for t in roles.values())):
                raise UserError(f"{config_path}: 'special_tokens' must map roles to token strings")
            kind = saved_kind
        if (directory / "tokenizer.json").is_file():
            path = directory / "tokenizer.json"
            try:
                backend = Backend.from_str(_read_text(path))
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001 - the Rust parser's errors all mean "this file is bad"
                raise UserError(f"{path}: not a valid tokenizers JSON file ({err})") from None
            kind = _check_kind(kind, _infer_kind(backend), path)
        elif (directory / "vocab.json").is_file() or (directory / "merges.txt").is_file():
            backend, kind = _from_vocab_merges(directory, kind)
        else:
            raise UserError(f"{directory}: no tokenizer.json, nor vocab.json + merges.txt")
        if roles is not None:
            missing = sorted(t for t in roles.values() if backend.token_to_id(t) is None)
            if missing:
                raise UserError(f"{config_path}: special tokens {missing} are not in the vocabulary")
        if kind == "gpt":
            _ensure_unk(backend)
        return cls(backend, kind, roles)

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json (loadable by HF `PreTrainedTokenizerFast` too) and tokenizer_config.json."""
        directory = Path(directory)
        config = {"kind": self.kind, "special_tokens": self.special_tokens}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.backend.save(str(directory / "tokenizer.json"))
            (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                             encoding="utf-8")
        except Exception as err:  # noqa: BLE001 - OSError from Python, a plain Exception from Rust
            raise UserError(f"{directory}: cannot write the tokenizer files ({err})") from None

    def add_task_tokens(self) -> int:
        """Add whichever of <|start|>, <|delimiter|>, <|extract|> are missing; return how many new ids that
        made. A model must then grow its token embeddings to `vocab_size` (new rows are untrained)."""
        before = self.vocab_size
        missing = {role: t for role, t in TASK_TOKENS.items() if self._role_id(role) is None}
        self.backend.add_special_tokens(list(missing.values()))
        self.special_tokens.update(missing)
        self._refresh()
        return self.vocab_size - before

    # ---- encoding ------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once, on parallel Rust threads."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list, or a 1-D tensor). "gpt" gives lower-cased words joined by single spaces."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"decode: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode_for_lm(self, text: str) -> list[int]:
        """Ids of one document for language-model pretraining: the text then <|endoftext|>, so that
        concatenated documents are separated (GPT-2 practice). A vocabulary without it (published GPT)
        gets the text alone."""
        ids = self.encode(text)
        return ids if self.eos_id is None else [*ids, self.eos_id]

    # GPT §3.3: structured inputs become one token sequence, and the head reads the state at <|extract|>.
    # `max_length` bounds the whole sequence: the text parts lose their ends (the longer part first),
    # the special tokens always stay.

    def encode_single(self, text: str, max_length: int | None = None) -> list[int]:
        """[start] text [extract], e.g. for classification."""
        start, _, extract = self._task_ids("encode_single")
        ids = self.encode(text)
        return [start, *ids[:_budget(max_length, 2)], extract]

    def encode_pair(self, a: str, b: str, max_length: int | None = None) -> list[int]:
        """[start] a [delimiter] b [extract], e.g. for entailment or similarity."""
        self._task_ids("encode_pair")
        a_ids, b_ids = self.encode_batch([a, b])
        return self._pair(a_ids, b_ids, max_length)

    def encode_choices(self, context: str, choices: Sequence[str],
                       max_length: int | None = None) -> list[list[int]]:
        """One [start] context [delimiter] choice [extract] per choice, e.g. for multiple-choice QA."""
        self._task_ids("encode_choices")
        context_ids, *choice_ids = self.encode_batch([context, *choices])
        return [self._pair(context_ids, ids, max_length) for ids in choice_ids]

    def _pair(self, a: list[int], b: list[int], max_length: int | None) -> list[int]:
        start, delimiter, extract = self._task_ids("encode_pair")
        budget = _budget(max_length, 3)
        if budget is not None and len(a) + len(b) > budget:
            a_len, b_len = _longest_first(len(a), len(b), budget)
            a, b = a[:a_len], b[:b_len]
        return [start, *a, delimiter, *b, extract]

    def _task_ids(self, caller: str) -> tuple[int, int, int]:
        ids = (self.start_id, self.delimiter_id, self.extract_id)
        if None in ids:
            raise UserError(f"{caller}: this {self.kind} vocabulary has no task tokens "
                            f"{', '.join(TASK_TOKENS.values())}; call tokenizer.add_task_tokens() and "
                            "resize the model's token embeddings to tokenizer.vocab_size before fine-tuning")
        return ids  # type: ignore[return-value]  # None was ruled out just above


def _budget(max_length: int | None, n_special: int) -> int | None:
    """Room left for text once the `n_special` special tokens are placed; None means unbounded."""
    if max_length is None:
        return None
    if not isinstance(max_length, int) or max_length < n_special:
        raise UserError(f"max_length={max_length!r}: expected an integer >= {n_special}, the number of "
                        "special tokens in the sequence")
    return max_length - n_special


def _longest_first(a_len: int, b_len: int, budget: int) -> tuple[int, int]:
    """Lengths after removing one token at a time from the longer part (from b on ties, as HF's
    "longest_first") until a_len + b_len <= budget, in closed form."""
    a = min(a_len, max(budget - b_len, (budget + 1) // 2))
    return a, min(b_len, budget - a)


def _default_roles(backend: Backend, kind: str) -> dict[str, str]:
    """Roles of a vocabulary that came without our tokenizer_config.json: the standard strings it holds.
    They are registered as special tokens, which keeps them whole inside text and lets decode skip them."""
    spec = _KINDS[kind]
    known = {**spec.specials, **TASK_TOKENS}
    roles = {role: t for role, t in known.items() if backend.token_to_id(t) is not None}
    backend.add_special_tokens(list(roles.values()))
    return _with_pad(roles, spec)


def _with_pad(roles: dict[str, str], spec: _Kind) -> dict[str, str]:
    if "pad" not in roles and spec.pad_from in roles:
        roles = {**roles, "pad": roles[spec.pad_from]}
    return roles


def _infer_kind(backend: Backend) -> str | None:
    model = backend.model
    if isinstance(model, models.BPE):
        if model.end_of_word_suffix == "</w>":
            return "gpt"
        if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel) or isinstance(backend.decoder,
                                                                                      decoders.ByteLevel):
            return "gpt2"
    return None


def _check_kind(asked: str | None, found: str | None, path: Path) -> str:
    """The kind to use: the one asked for (or saved) must agree with what the file holds."""
    if asked is not None and found is not None and asked != found:
        raise UserError(f"{path}: holds a {found} tokenizer, but kind {asked!r} was asked for")
    kind = asked or found
    if kind is None:
        raise UserError(f"{path}: cannot tell which tokenizer kind this is; pass kind= "
                        f"(one of {', '.join(_KINDS)})")
    return kind


def _ensure_unk(backend: Backend) -> None:
    """GPT's published vocabulary may lack <unk>; the Rust BPE would then fail on any unseen character. The
    original OpenAI code mapped unknown symbols to id 0 (`encoder.get(t, 0)`), so we do the same."""
    model = backend.model
    if isinstance(model, models.BPE) and model.unk_token and backend.token_to_id(model.unk_token) is None:
        model.unk_token = backend.id_to_token(0)


def _from_vocab_merges(directory: Path, kind: str | None) -> tuple[Backend, str]:
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise UserError(f"{path}: missing; vocab.json and merges.txt go together")
    vocab = _read_json(vocab_path)
    if not (isinstance(vocab, dict) and all(isinstance(i, int) for i in vocab.values())):
        raise UserError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
    merges = []
    for line_no, line in enumerate(_read_text(merges_path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line or (line_no == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise UserError(f"{merges_path}:{line_no}: expected two symbols separated by one space, "
                            f"got {line!r}")
        merges.append((pair[0], pair[1]))
    # GPT's word-final symbols end in "</w>"; GPT-2 has no such suffix.
    ends_in_w = any(b.endswith("</w>") for _, b in merges) or any(t.endswith("</w>") for t in vocab)
    kind = _check_kind(kind, "gpt" if ends_in_w else "gpt2", merges_path)
    spec = _KINDS[kind]
    try:
        model = models.BPE(vocab=vocab, merges=merges, **spec.bpe_options)
    except Exception as err:  # noqa: BLE001 - e.g. a merge whose symbols are not in the vocabulary
        raise UserError(f"{merges_path}: does not fit {vocab_path} ({err})") from None
    return spec.pipeline(model), kind


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


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
    # Decoding line by line from bytes lets a UTF-8 error name the exact line.
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for line_no, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{path}:{line_no}: not UTF-8 text") from None
                yield line
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
