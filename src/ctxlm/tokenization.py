"""Sub-word tokenisers for the GPT and BERT families, on Hugging Face `tokenizers` (Rust, parallel batches).

Three kinds; the per-kind recipe lives in `_KINDS`:

- "gpt"  (Radford et al. 2018): lower-cased, BERT-style split on whitespace and punctuation, then BPE whose
  word-final symbols carry a "</w>" suffix. Same pipeline as HF's `openai-gpt` tokenizer.json. The original
  code used ftfy + spaCy before BPE; HF (and we) replace that with BERT's basic tokeniser, so rare inputs
  (contractions, odd unicode) can split differently from the 2018 release.
- "gpt2" (Radford et al. 2019): byte-level BPE, lossless, no unknown token. Same pipeline as HF's `gpt2`.
- "bert" (Devlin et al. 2019): BERT's basic tokeniser (clean-up, optional lower-casing with accent stripping,
  one token per CJK character, split on whitespace and punctuation), then WordPiece with "##" continuation
  pieces and [UNK] for words it cannot spell (or longer than 100 characters). Same pipeline as HF's
  `bert-base-uncased` tokenizer.json, and loads a published vocab.txt too. BERT inputs are built by
  `encode_bert` / `encode_words`, which return an `Encoding` (ids, segments, word ids, character offsets).

Special tokens have *roles* ("eos", "unk", "pad", "start", "delimiter", "extract"; for BERT "pad", "unk",
"cls", "sep", "mask"), saved by `save` in
tokenizer_config.json beside tokenizer.json so that `from_files` gets them back. The three task tokens are
the GPT paper's §3.3 input transformations for fine-tuning; published vocabularies lack them, see
`add_task_tokens`. BERT needs none: [CLS] and [SEP] are in every BERT vocabulary.

Text that contains a special token's literal string (e.g. "<|endoftext|>", "[MASK]") encodes to that special
token, as in HF. Batched encoding runs on Rust threads: if you fork afterwards (DataLoader workers) `tokenizers` turns
its parallelism off in the children and warns; set TOKENIZERS_PARALLELISM=false to silence it.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Encoding as BackendEncoding
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from ctxlm.errors import UserError
from ctxlm.textfiles import decode_line, read_text

EOS, UNK = "<|endoftext|>", "<unk>"
TASK_TOKENS = {"start": "<|start|>", "delimiter": "<|delimiter|>", "extract": "<|extract|>"}
# In BERT's vocabulary order: [PAD] is id 0 in every published BERT vocab.txt, and in the ones we train.
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
BERT_MAX_WORD_CHARS = 100  # a longer word becomes one [UNK], as in BERT's WordpieceTokenizer
_BATCH_LINES = 1000  # lines handed to the Rust trainer per call: amortises the Python -> Rust crossing


@dataclass(frozen=True)
class Encoding:
    """One model input built by `Tokenizer.encode_bert` / `encode_words`, position by position.

    - `ids`: token ids, `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`.
    - `segments`: 0 for `[CLS] A [SEP]`, 1 for `B [SEP]` (BERT's token type ids).
    - `word_ids`: index of the word each token came from, counted within its own text (A or B) from 0; None
      for [CLS] and [SEP]. Words are the pre-tokeniser's (whitespace and punctuation split: "don't" is three
      words "don", "'", "t"), or for `encode_words` the caller's words.
    - `offsets`: (start, end) character offsets of each token in the original text it came from (A or B),
      accents and case included; (0, 0) for [CLS] and [SEP]. For `encode_words`, offsets within the word.
    """

    ids: list[int]
    segments: list[int]
    word_ids: list[int | None]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)

    def word_starts(self) -> list[int]:
        """Positions of each word's first token, in order: where a word-level label (e.g. a CoNLL tag) goes."""
        return [i for i, w in enumerate(self.word_ids) if w is not None and (i == 0 or self.word_ids[i - 1] != w)]


@dataclass(frozen=True)
class _Kind:
    """How to build one tokeniser family: its pipeline around a model, its model settings and trainer."""

    pipeline: Callable[..., Backend]  # (model, **options) -> backend; only "bert" takes options (lowercase...)
    model: Callable[..., models.Model]  # models.BPE or models.WordPiece
    model_options: dict
    trainer: Callable[..., trainers.Trainer]
    specials: dict[str, str]  # role -> token, trained into the vocabulary first, in this order
    pad_from: str  # the role whose token pads batches when there is no "pad" token
    alphabet: int  # symbols every vocabulary of this kind holds, whatever the corpus
    task_tokens: bool = True  # GPT §3.3 tokens trained in after the specials


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


def _bert_pipeline(model: models.Model, lowercase: bool = True, strip_accents: bool | None = None,
                   chinese_chars: bool = True) -> Backend:
    """BERT's BasicTokenizer then WordPiece. `strip_accents=None` strips them exactly when lower-casing."""
    backend = Backend(model)
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                    strip_accents=strip_accents, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return backend


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
    symbols sorted too. (The merges themselves are made repeatable in `Tokenizer.train`.)"""
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    special = {token["content"] for token in data["added_tokens"]}

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


def _set_bert_post_processor(backend: Backend) -> None:
    """[CLS] A [SEP] (B [SEP]), for HF loading our tokenizer.json; our own encode_* add them by hand."""
    cls, sep = BERT_SPECIALS["cls"], BERT_SPECIALS["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])


_KINDS: dict[str, _Kind] = {
    "gpt": _Kind(_gpt_pipeline, models.BPE, {"unk_token": UNK, "end_of_word_suffix": "</w>"},
                 lambda **kw: trainers.BpeTrainer(end_of_word_suffix="</w>", **kw),
                 {"unk": UNK, "eos": EOS}, pad_from="unk", alphabet=0),
    "gpt2": _Kind(_gpt2_pipeline, models.BPE, {},
                  # Every byte is in the alphabet, so no text is ever out of vocabulary.
                  lambda **kw: trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                   **kw),
                  {"eos": EOS}, pad_from="eos", alphabet=256),
    "bert": _Kind(_bert_pipeline, models.WordPiece,
                  {"unk_token": BERT_SPECIALS["unk"], "max_input_chars_per_word": BERT_MAX_WORD_CHARS},
                  lambda **kw: trainers.WordPieceTrainer(continuing_subword_prefix="##", **kw),
                  BERT_SPECIALS, pad_from="pad", alphabet=0, task_tokens=False),
}


def _kind_spec(kind: str | None, where: str) -> _Kind:
    if kind not in _KINDS:
        raise UserError(f"{where}: unknown tokenizer kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return _KINDS[kind]


class Tokenizer:
    """A trained tokeniser of kind "gpt" or "gpt2" (BPE) or "bert" (WordPiece), with the special tokens' roles.

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
        """Filler for padded positions. These are masked out of attention and loss, so any id works; BERT has
        [PAD] (id 0 in published vocabularies), GPT-2 uses <|endoftext|> (as HF does, it has no pad token),
        GPT <unk>; 0 if the vocabulary has none of these."""
        pad = self._role_id("pad")
        return 0 if pad is None else pad

    @property
    def cls_id(self) -> int | None:
        """BERT's [CLS], first in every `encode_bert` input; None for GPT kinds."""
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        """BERT's [SEP], closing each segment."""
        return self._role_id("sep")

    @property
    def mask_id(self) -> int | None:
        """BERT's [MASK], the masked-language-model's stand-in for a hidden token."""
        return self._role_id("mask")

    @property
    def special_ids(self) -> set[int]:
        """Ids of all special tokens ([PAD] [UNK] [CLS] [SEP] [MASK] for BERT; <|endoftext|>, <unk> and the
        task tokens for GPT): positions that masking code must neither choose nor use as replacements."""
        return {i for role in self.special_tokens if (i := self._role_id(role)) is not None}

    @property
    def lowercase(self) -> bool | None:
        """Whether text is lower-cased (and, unless configured otherwise, accent-stripped) before splitting:
        always for "gpt", never for "gpt2", as the vocabulary was made for "bert"; None if unknown."""
        if self.kind == "gpt2":
            return False
        return _normalizer_lowercase(self.backend)

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
              vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False,
              lowercase: bool | None = None) -> Tokenizer:
        """Learn a BPE (gpt, gpt2) or WordPiece (bert) vocabulary of at most `vocab_size` tokens (special
        tokens included).

        `files`: a path or a list/tuple of paths (.txt, or .txt.gz) read as UTF-8, or any other iterable
        (e.g. a generator, `iter(lines)`) of text strings. The vocabulary starts with the special tokens:
        gpt2: <|endoftext|> and the three task tokens; gpt: <unk>, <|endoftext|> and the three task tokens;
        bert: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4). A corpus too small to supply enough merges gives a
        smaller vocabulary. The same files give the same tokenizer (gpt and bert read them twice for that; a
        one-shot iterator of texts is read once, and its gpt or bert vocabulary may then vary between runs).
        `lowercase` (bert only, default True): lower-case and strip accents first, as "uncased" BERT; False keeps
        case and accents, as "cased" BERT.
        """
        spec = _kind_spec(kind, "Tokenizer.train")
        options = _pipeline_options(kind, lowercase, "Tokenizer.train")
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
            trainer = spec.trainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                                   special_tokens=[*specials.values(), *registered])
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
            _set_bert_post_processor(backend)
        return cls(backend, kind, _with_pad(specials, spec))

    @classmethod
    def from_files(cls, directory: str | os.PathLike, kind: str | None = None, *,
                   lowercase: bool | None = None) -> Tokenizer:
        """Load tokenizer.json (ours or HF's; our tokenizer_config.json restores kind and roles), or else the
        published vocab.json + merges.txt pair (GPT, GPT-2), or else a published BERT vocab.txt. `kind` is
        inferred when not given ("</w>" suffix => gpt, WordPiece or vocab.txt => bert).

        BERT's casing: a tokenizer.json holds it. A bare vocab.txt takes it from the tokenizer_config.json
        beside it ("do_lower_case", "strip_accents", "tokenize_chinese_chars", as HF writes them), else from
        `lowercase` (default True: uncased). A `lowercase` that contradicts the files is a UserError. Any
        truncation or padding stored in tokenizer.json is switched off: `encode_bert` adds [CLS]/[SEP] and
        truncates itself.
        """
        directory = Path(directory)
        if kind is not None:
            _kind_spec(kind, "Tokenizer.from_files")
        if lowercase is not None and not isinstance(lowercase, bool):
            raise UserError(f"Tokenizer.from_files: lowercase={lowercase!r}; expected True, False or None")
        if not directory.is_dir():
            raise UserError(f"{directory}: not a directory; expected a folder with tokenizer.json, "
                            "vocab.json + merges.txt, or vocab.txt")
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        roles = None
        kind_how = "was asked for"
        # HF writes a tokenizer_config.json too, without our "kind": then it is not ours to read.
        if isinstance(config, dict) and "kind" in config:
            saved_kind, roles = config["kind"], config.get("special_tokens", {})
            _kind_spec(saved_kind, f"{config_path}: 'kind'")
            if kind is not None and kind != saved_kind:
                raise UserError(f"{config_path}: tokenizer kind is {saved_kind!r} but {kind!r} was asked for")
            if not (isinstance(roles, dict) and all(isinstance(t, str) for t in roles.values())):
                raise UserError(f"{config_path}: 'special_tokens' must map roles to token strings")
            if kind is None:
                kind_how = f"is written in {config_path}"
            kind = saved_kind
        if (directory / "tokenizer.json").is_file():
            path = directory / "tokenizer.json"
            try:
                backend = Backend.from_str(read_text(path))
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001 - the Rust parser's errors all mean "this file is bad"
                raise UserError(f"{path}: not a valid tokenizers JSON file ({err})") from None
            kind = _check_kind(kind, _infer_kind(backend), path, kind_how)
            if kind == "bert":
                _check_lowercase(backend, lowercase, path, "was asked for")
                if roles is not None:  # our own config: its flag must agree with the file it sits beside
                    _check_lowercase(backend, _config_flag(config, "lowercase", config_path), path,
                                     f"is written in {config_path}")
        elif (directory / "vocab.json").is_file() or (directory / "merges.txt").is_file():
            path = directory / "merges.txt"
            backend, kind = _from_vocab_merges(directory, kind)
        elif (directory / "vocab.txt").is_file():
            path = directory / "vocab.txt"
            kind = _check_kind(kind, "bert", path, kind_how)
            backend = _from_vocab_txt(path, _vocab_txt_options(config, config_path, lowercase))
        else:
            raise UserError(f"{directory}: no tokenizer.json, nor vocab.json + merges.txt, nor vocab.txt")
        if lowercase is not None and kind != "bert":
            raise UserError(f"Tokenizer.from_files: lowercase= applies to bert tokenizers only; {path} holds a "
                            f"{kind} tokenizer")
        if roles is not None:
            missing = sorted(t for t in roles.values() if backend.token_to_id(t) is None)
            if missing:
                raise UserError(f"{config_path}: special tokens {missing} are not in the vocabulary")
            lacking = [role for role in BERT_SPECIALS if role not in roles] if kind == "bert" else []
            if lacking:
                raise UserError(f"{config_path}: 'special_tokens' lacks the roles {lacking} a bert tokenizer needs")
        elif kind == "bert":
            _require_bert_specials(backend, path)
        if kind == "gpt":
            _ensure_unk(backend)
        return cls(backend, kind, roles)

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json (loadable by HF `PreTrainedTokenizerFast` too) and tokenizer_config.json."""
        directory = Path(directory)
        config: dict[str, object] = {"kind": self.kind, "special_tokens": self.special_tokens}
        if self.kind == "bert":
            config["lowercase"] = self.lowercase
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

    # BERT inputs: [CLS] A [SEP] (B [SEP]). `max_length` bounds the whole sequence, special tokens included;
    # text beyond it is cut "longest first": one token at a time from the end of the longer of A and B, from
    # B when they are equally long (BERT's `_truncate_seq_pair`; HF's slow tokenisers did the same, while the
    # Rust `tokenizers` truncation that transformers 5 uses can keep one token more of B instead of A when the
    # two are cut to equal length). [SEP] always stays.

    def encode_bert(self, text: str, text_pair: str | None = None, max_length: int | None = 512) -> Encoding:
        """`[CLS] text [SEP]`, or `[CLS] text [SEP] text_pair [SEP]`, at most `max_length` tokens (None: no
        limit), with segments, word ids and character offsets (see `Encoding`)."""
        for name, value in (("text", text), ("text_pair", text_pair)):
            if not (isinstance(value, str) or (name == "text_pair" and value is None)):
                raise UserError(f"encode_bert: {name} is a {type(value).__name__}; expected str")
        return self._encode_bert([text], None if text_pair is None else [text_pair], max_length, "encode_bert")[0]

    def encode_bert_batch(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                          max_length: int | None = 512) -> list[Encoding]:
        """`encode_bert` for many texts (and as many pairs) at once, on parallel Rust threads."""
        return self._encode_bert(texts, text_pairs, max_length, "encode_bert_batch")

    def encode_words(self, words: Sequence[str], max_length: int | None = 512) -> Encoding:
        """`[CLS] words [SEP]` for text already split into words, e.g. a CoNLL sentence for tagging.

        Each word is normalised and split on its own (so "don't" gives several tokens) and `word_ids` gives its
        index in `words` for every token it produced: a word-level label goes on the word's first token
        (`Encoding.word_starts()`), the other tokens are usually ignored in the loss. A word that yields no
        token at all (empty, whitespace, or control characters that BERT's clean-up deletes) becomes one [UNK]
        so that no word is dropped silently; only truncation to `max_length` drops words, from the end.
        Offsets are character offsets within each word.
        """
        return self._encode_words([words], max_length, "encode_words")[0]

    def encode_words_batch(self, sentences: Sequence[Sequence[str]], max_length: int | None = 512) -> list[Encoding]:
        """`encode_words` for many sentences at once, on parallel Rust threads."""
        return self._encode_words(sentences, max_length, "encode_words_batch")

    def _encode_bert(self, texts: Sequence[str], text_pairs: Sequence[str] | None, max_length: int | None,
                     caller: str) -> list[Encoding]:
        cls, sep = self._bert_ids(caller)
        firsts = _str_list(texts, "texts", caller)
        budget = _budget(max_length, 2 if text_pairs is None else 3)
        if text_pairs is None:
            encoded = self.backend.encode_batch(firsts, add_special_tokens=False)
            return [_assemble(cls, sep, _piece(a), None, budget) for a in encoded]
        seconds = _str_list(text_pairs, "text_pairs", caller)
        if len(seconds) != len(firsts):
            raise UserError(f"{caller}: {len(firsts)} texts but {len(seconds)} text_pairs; expected one each")
        encoded = self.backend.encode_batch(firsts + seconds, add_special_tokens=False)
        n = len(firsts)
        return [_assemble(cls, sep, _piece(a), _piece(b), budget)
                for a, b in zip(encoded[:n], encoded[n:], strict=True)]

    def _encode_words(self, sentences: Sequence[Sequence[str]], max_length: int | None,
                      caller: str) -> list[Encoding]:
        cls, sep = self._bert_ids(caller)
        unk = self.unk_id
        if unk is None:
            raise UserError(f"{caller}: this vocabulary has no [UNK] token")
        budget = _budget(max_length, 2)
        checked = [_str_list(words, "words" if caller == "encode_words" else f"sentences[{i}]", caller)
                   for i, words in enumerate(_list(sentences, "sentences", caller))]
        encoded = self.backend.encode_batch(checked, is_pretokenized=True, add_special_tokens=False)
        return [_assemble(cls, sep, _every_word(e, words, unk), None, budget)
                for e, words in zip(encoded, checked, strict=True)]

    def _bert_ids(self, caller: str) -> tuple[int, int]:
        if self.kind != "bert":
            raise UserError(f"{caller}: needs a bert tokenizer, this one is {self.kind} (GPT inputs are built by "
                            "encode_single, encode_pair and encode_choices)")
        cls, sep = self.cls_id, self.sep_id
        if cls is None or sep is None:
            raise UserError(f"{caller}: this vocabulary has no {BERT_SPECIALS['cls']} or {BERT_SPECIALS['sep']}")
        return cls, sep


_Piece = tuple[list[int], list[int | None], list[tuple[int, int]]]  # one text's ids, word ids, offsets


def _piece(encoding: BackendEncoding) -> _Piece:
    return encoding.ids, encoding.word_ids, encoding.offsets


def _assemble(cls: int, sep: int, a: _Piece, b: _Piece | None, budget: int | None) -> Encoding:
    """[CLS] a [SEP] (b [SEP]), the texts cut longest-first to `budget` tokens in all (None: uncut)."""
    a_ids, a_words, a_offsets = a
    if b is None:
        n = len(a_ids) if budget is None else min(len(a_ids), budget)
        return Encoding([cls, *a_ids[:n], sep], [0] * (n + 2), [None, *a_words[:n], None],
                        [(0, 0), *a_offsets[:n], (0, 0)])
    b_ids, b_words, b_offsets = b
    n, m = len(a_ids), len(b_ids)
    if budget is not None and n + m > budget:
        n, m = _longest_first(n, m, budget)
    return Encoding([cls, *a_ids[:n], sep, *b_ids[:m], sep], [0] * (n + 2) + [1] * (m + 1),
                    [None, *a_words[:n], None, *b_words[:m], None],
                    [(0, 0), *a_offsets[:n], (0, 0), *b_offsets[:m], (0, 0)])


def _every_word(encoding: BackendEncoding, words: list[str], unk: int) -> _Piece:
    """The tokens of pre-split `words`, with one [UNK] standing in for each word that produced none."""
    ids, word_ids, offsets = _piece(encoding)
    if len(set(word_ids)) == len(words):
        return ids, word_ids, offsets
    out_ids: list[int] = []
    out_words: list[int | None] = []
    out_offsets: list[tuple[int, int]] = []
    j = 0
    for w, word in enumerate(words):
        if j == len(ids) or word_ids[j] != w:
            out_ids.append(unk)
            out_words.append(w)
            out_offsets.append((0, len(word)))
        while j < len(ids) and word_ids[j] == w:
            out_ids.append(ids[j])
            out_words.append(w)
            out_offsets.append(offsets[j])
            j += 1
    return out_ids, out_words, out_offsets


def _list(values: object, name: str, caller: str) -> list:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise UserError(f"{caller}: {name} is a {type(values).__name__}; expected a list of strings")
    return list(values)


def _str_list(values: object, name: str, caller: str) -> list[str]:
    values = _list(values, name, caller)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise UserError(f"{caller}: {name}[{i}] is a {type(value).__name__}; expected str")
    return values


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


def _pipeline_options(kind: str, lowercase: bool | None, where: str) -> dict:
    if kind != "bert":
        if lowercase is not None:
            raise UserError(f"{where}: lowercase= applies to bert tokenizers only ({kind} has a fixed casing)")
        return {}
    if lowercase is not None and not isinstance(lowercase, bool):
        raise UserError(f"{where}: lowercase={lowercase!r}; expected True, False or None")
    return {"lowercase": True if lowercase is None else lowercase}


def _normalizer_lowercase(backend: Backend) -> bool | None:
    normalizer = backend.normalizer
    return normalizer.lowercase if isinstance(normalizer, normalizers.BertNormalizer) else None


def _check_lowercase(backend: Backend, wanted: bool | None, path: Path, how: str) -> None:
    actual = _normalizer_lowercase(backend)
    if wanted is not None and actual is not None and wanted != actual:
        raise UserError(f"{path}: its normaliser has lowercase={actual}, but lowercase={wanted} {how}")


def _config_flag(config: object, key: str, config_path: Path) -> bool | None:
    value = config.get(key) if isinstance(config, dict) else None
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{config_path}: {key!r} is {value!r}; expected true, false or null")
    return value


def _vocab_txt_options(config: object, config_path: Path, asked: bool | None) -> dict:
    """Normaliser settings for a bare vocab.txt, from tokenizer_config.json (ours: "lowercase"; HF's:
    "do_lower_case", "strip_accents", "tokenize_chinese_chars"), else `asked`, else uncased."""
    options: dict[str, bool] = {}
    for key, option in (("lowercase", "lowercase"), ("do_lower_case", "lowercase"),
                        ("strip_accents", "strip_accents"), ("tokenize_chinese_chars", "chinese_chars")):
        value = _config_flag(config, key, config_path)
        if value is not None:
            if option in options and options[option] != value:
                raise UserError(f"{config_path}: contradicts itself on {option}")
            options[option] = value
    if asked is not None and options.get("lowercase", asked) != asked:
        raise UserError(f"{config_path}: says the vocabulary is {'un' if options['lowercase'] else ''}cased, "
                        f"but lowercase={asked} was asked for")
    options.setdefault("lowercase", True if asked is None else asked)
    return options


def _require_bert_specials(backend: Backend, path: Path) -> None:
    missing = [t for t in BERT_SPECIALS.values() if backend.token_to_id(t) is None]
    if missing:
        raise UserError(f"{path}: lacks the special tokens {' '.join(missing)}; a BERT vocabulary needs all of "
                        f"{' '.join(BERT_SPECIALS.values())}")


def _from_vocab_txt(path: Path, options: dict) -> Backend:
    """A published BERT vocab.txt: one token per line, its id the line number from 0 (as HF `load_vocab`). A token
    on several lines keeps the last line's id, as in HF, and a warning counts such lines (their ids go unused)."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    repeated = []  # (token, its earlier line)
    for i, line in enumerate(lines):
        token = line.removesuffix("\r")
        if token in vocab:
            repeated.append((token, vocab[token] + 1))
        vocab[token] = i
    if repeated:
        token, first = repeated[0]
        warnings.warn(f"{path}: {len(repeated)} line(s) repeat an earlier token (the first: {token!r} of line {first}, "
                      f"again on line {vocab[token] + 1}); each such token gets the id of its last line, as in "
                      "Hugging Face, and the earlier ids are never produced", stacklevel=3)
    spec = _KINDS["bert"]
    try:
        backend = spec.pipeline(spec.model(vocab=vocab, **spec.model_options), **options)
    except Exception as err:  # noqa: BLE001 - the Rust model's errors all mean "this file is bad"
        raise UserError(f"{path}: not a usable WordPiece vocabulary ({err})") from None
    _require_bert_specials(backend, path)
    _set_bert_post_processor(backend)
    return backend


def _infer_kind(backend: Backend) -> str | None:
    model = backend.model
    if isinstance(model, models.WordPiece):
        return "bert"
    if isinstance(model, models.BPE):
        if model.end_of_word_suffix == "</w>":
            return "gpt"
        if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel) or isinstance(backend.decoder,
                                                                                      decoders.ByteLevel):
            return "gpt2"
    return None


def _check_kind(asked: str | None, found: str | None, path: Path, how: str = "was asked for") -> str:
    """The kind to use: the one asked for (or saved) must agree with what the file holds."""
    if asked is not None and found is not None and asked != found:
        raise UserError(f"{path}: holds a {found} tokenizer, but kind {asked!r} {how}")
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
    for line_no, line in enumerate(read_text(merges_path).split("\n"), 1):
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
        model = spec.model(vocab=vocab, merges=merges, **spec.model_options)
    except Exception as err:  # noqa: BLE001 - e.g. a merge whose symbols are not in the vocabulary
        raise UserError(f"{merges_path}: does not fit {vocab_path} ({err})") from None
    return spec.pipeline(model), kind


def _read_json(path: Path) -> object:
    try:
        return json.loads(read_text(path))
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
