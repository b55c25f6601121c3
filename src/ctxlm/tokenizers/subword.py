"""Sub-word tokenisers for the GPT and BERT families, on Hugging Face `tokenizers` (Rust, parallel batches).

One class, `Tokenizer`, for five kinds ("gpt", "gpt2", "bert", "roberta", "sentencepiece"; their pipelines are in
`published.py`). It implements `TokenizerProtocol`; the kind decides how each role becomes a model input:

- "bert" (Devlin et al. 2019 §3): `[CLS] a [SEP] (b [SEP])` with segment ids 0 then 1; a tagged sentence is
  `[CLS] pieces [SEP]`, its words split by the tokeniser one by one (`is_pretokenized`).
- "roberta" (Liu et al. 2019, as the published tokenizer): `<s> a </s>`, `<s> a </s></s> b </s>`, no segment ids
  (one token type); a tagged sentence is `<s> pieces </s>`, each word after the first read after a space, as
  inside running text (byte-level BPE marks a word by the space before it).
- "gpt", "gpt2" (Radford et al. 2018 §3.3): `<|start|> text <|extract|>`, `<|start|> a <|delimiter|> b
  <|extract|>`, no segment ids; a tagged sentence is `<|start|> pieces` with no closing token (a decoder's state
  has seen only the words to its left). The three task tokens are not in published vocabularies, see
  `add_task_tokens`.
- "sentencepiece" (ALBERT, DeBERTa-v2/v3, XLNet): the layout its tokenizer.json's template records (ALBERT's
  `[CLS] a [SEP] (b [SEP])` for one we train; XLNet's `a <sep> (b <sep>) <cls>`, the <cls> in segment 2), with
  its segment ids; a tagged sentence is the one-text layout around its words' pieces, as for bert.

Truncation to `max_length` (special tokens included) cuts text "longest first": one token at a time from the end of
the longer of a and b, from b when they are equally long (BERT's `_truncate_seq_pair`; HF's slow tokenisers did the
same, while the Rust `tokenizers` truncation that transformers 5 uses can keep one token more of b instead of a when
the two are cut to equal length). The special tokens always stay.

Special tokens have *roles* ("eos", "unk", "pad", "start", "delimiter", "extract"; for BERT "pad", "unk", "cls",
"sep", "mask"), saved by `save` in tokenizer_config.json beside tokenizer.json so that `from_files` gets them
back. Text that contains a special token's literal string (e.g. "<|endoftext|>", "[MASK]") encodes to that special
token, as in HF. Batched encoding runs on Rust threads: if you fork afterwards (DataLoader workers) `tokenizers`
turns its parallelism off in the children and warns; set TOKENIZERS_PARALLELISM=false to silence it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Encoding as BackendEncoding
from tokenizers import Tokenizer as Backend

from ctxlm.errors import UserError
from ctxlm.tokenizers.protocol import Encoding, as_list, check_pairs, length_budget, longest_first, str_list
from ctxlm.tokenizers.published import (
    BERT_SPECIALS,
    BYTE_LEVEL_KINDS,
    NORMALISED_KINDS,
    ROBERTA_SPECIALS,
    SENTENCEPIECE,
    TASK_TOKENS,
    WORD_START,
    byte_level_text,
    default_roles,
    kind_spec,
    load_backend,
    normalizer_lowercase,
    normalizer_strip_accents,
    template_of,
)
from ctxlm.tokenizers.training import train_backend


class Tokenizer:
    """A trained tokeniser of kind "gpt", "gpt2" or "roberta" (BPE), "bert" (WordPiece) or "sentencepiece"
    (Unigram), with the special tokens' roles.

    `backend` is the `tokenizers.Tokenizer` doing the work; use it directly for offsets or other extras.
    """

    def __init__(self, backend: Backend, kind: str, special_tokens: dict[str, str] | None = None) -> None:
        kind_spec(kind, "Tokenizer")
        self.backend, self.kind = backend, kind
        # Truncation or padding stored in a loaded tokenizer.json would silently cut or pad every encode.
        backend.no_truncation()
        backend.no_padding()
        self.special_tokens: dict[str, str] = dict(special_tokens or default_roles(backend, kind))
        # read once: parsing tokenizer.json's template means serialising the whole vocabulary
        self._layouts = template_of(backend) if kind == SENTENCEPIECE else None
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
        """BERT's [CLS], first in every input of a bert tokenizer; None for GPT kinds."""
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
        """Whether text is lower-cased before splitting: never for "gpt2" and "roberta"; for "gpt" and "bert" as the
        normaliser saved with the vocabulary says (the published ones: always for "gpt", as made for "bert"); None
        if unknown."""
        if self.kind in BYTE_LEVEL_KINDS:
            return False
        return normalizer_lowercase(self.backend)

    @property
    def strip_accents(self) -> bool | None:
        """Whether accents are stripped after Unicode decomposition ("й" → "и", "ё" → "е", "é" → "e"): never for
        "gpt2" and "roberta"; for "gpt" and "bert" as the normaliser says (BERT's rule when unset: exactly when
        lower-casing); None if unknown."""
        if self.kind in BYTE_LEVEL_KINDS:
            return False
        return normalizer_strip_accents(self.backend)

    @property
    def start_id(self) -> int | None:
        return self._role_id("start")

    @property
    def delimiter_id(self) -> int | None:
        return self._role_id("delimiter")

    @property
    def extract_id(self) -> int | None:
        return self._role_id("extract")

    def is_continuation(self, token: str) -> bool:
        """Whether a vocabulary entry continues a word rather than starting one (whole-word masking): bert's "##"
        pieces; a sentencepiece entry without the "▁" that marks a word's first piece; a byte-level entry (gpt2,
        roberta) that does not start with a space, as fairseq's whole-word masking for RoBERTa (special tokens
        excepted). False for "gpt"."""
        if self.kind == "bert":
            return token.startswith("##")
        if self.kind == SENTENCEPIECE:
            return not token.startswith(WORD_START) and token not in self.special_tokens.values()
        if self.kind in BYTE_LEVEL_KINDS:
            return not byte_level_text(token).startswith(" ") and token not in self.special_tokens.values()
        return False

    @property
    def word_prefix(self) -> str:
        """What goes before a word inside running text for it to split as it does there: a space for "gpt2"
        (byte-level BPE marks a word boundary by the space before the word), nothing where the pre-tokeniser
        drops whitespace anyway ("gpt", "bert")."""
        return " " if self.kind in BYTE_LEVEL_KINDS else ""

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={self.special_tokens})")

    # ---- building ------------------------------------------------------------------------------------

    @classmethod
    def train(cls, files: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str], kind: str,
              vocab_size: int, *, min_frequency: int = 2, show_progress: bool = False,
              lowercase: bool | None = None, strip_accents: bool | None = None) -> Tokenizer:
        """Learn a BPE (gpt, gpt2, roberta), WordPiece (bert) or Unigram (sentencepiece) vocabulary of at most
        `vocab_size` tokens (special tokens included).

        `files`: a path or a list/tuple of paths (.txt, or .txt.gz) read as UTF-8, or any other iterable
        (e.g. a generator, `iter(lines)`) of text strings. The vocabulary starts with the special tokens:
        gpt2: <|endoftext|> and the three task tokens; gpt: <unk>, <|endoftext|> and the three task tokens;
        bert: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4); roberta: <s> <pad> </s> <unk> <mask> (ids 0-4);
        sentencepiece: <pad> <unk> [CLS] [SEP] [MASK] (ids 0-4, as ALBERT; Unigram training has no
        `min_frequency`). A corpus too small to supply enough merges gives a smaller vocabulary. The same files give
        the same tokenizer (gpt and bert read them twice for that; a one-shot iterator of texts is read once, and
        its gpt or bert vocabulary may then vary between runs).
        `lowercase` (gpt, bert, sentencepiece; default True): lower-case first, as "uncased" BERT and the 2018 GPT
        and the published ALBERT; False keeps case, as "cased" BERT. `strip_accents` (the same kinds; default: as
        `lowercase`): strip accents after Unicode
        decomposition, which also turns Russian "й" into "и" and "ё" into "е": a cased vocabulary keeps them unless
        asked. Both are saved with the tokenizer (the normaliser in tokenizer.json, and tokenizer_config.json).
        """
        backend, roles = train_backend(files, kind, vocab_size, min_frequency=min_frequency,
                                       show_progress=show_progress, lowercase=lowercase, strip_accents=strip_accents)
        return cls(backend, kind, roles)

    @classmethod
    def from_files(cls, directory: str | os.PathLike, kind: str | None = None, *,
                   lowercase: bool | None = None) -> Tokenizer:
        """Load tokenizer.json (ours or HF's; our tokenizer_config.json restores kind and roles), or else the
        published vocab.json + merges.txt pair (GPT, GPT-2), or else a published BERT vocab.txt. `kind` is
        inferred when not given ("</w>" suffix => gpt, WordPiece or vocab.txt => bert, byte-level BPE with <s> and
        <mask> => roberta, other byte-level BPE => gpt2, Unigram => sentencepiece, whose roles a published folder's
        tokenizer_config.json or special_tokens_map.json names, and whose input layout its tokenizer.json's
        template gives).

        BERT's casing: a tokenizer.json holds it. A bare vocab.txt takes it from the tokenizer_config.json
        beside it ("do_lower_case", "strip_accents", "tokenize_chinese_chars", as HF writes them), else from
        `lowercase` (default True: uncased). A `lowercase` that contradicts the files is a UserError. Any
        truncation or padding stored in tokenizer.json is switched off: the `encode_*` methods add the special
        tokens and truncate themselves.
        """
        backend, kind, roles = load_backend(Path(directory), kind, lowercase)
        return cls(backend, kind, roles)

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json (loadable by HF `PreTrainedTokenizerFast` too) and tokenizer_config.json."""
        directory = Path(directory)
        config: dict[str, object] = {"kind": self.kind, "special_tokens": self.special_tokens}
        if self.kind in NORMALISED_KINDS:
            config.update(lowercase=self.lowercase, strip_accents=self.strip_accents)
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
        """Text of `ids` (a list, or a 1-D tensor). "gpt" gives its words joined by single spaces (lower-cased
        unless the vocabulary keeps case)."""
        return self.backend.decode(self._known(ids, "decode"), skip_special_tokens=skip_special_tokens)

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """Each token as a person reads it (see `TokenizerProtocol.token_texts`): "gpt2"'s byte-level entries as the
        text their bytes spell ("Ġare" → " are", Cyrillic as Cyrillic, a byte that is only part of a character as
        "\\xd0"); "gpt"'s and "bert"'s entries as they are (BERT's "##" marks a piece inside a word)."""
        entries = [self.backend.id_to_token(i) or "" for i in self._known(ids, "token_texts")]
        if self.kind == SENTENCEPIECE:  # "▁castle" reads " castle", as it stands in the text
            return [entry.replace(WORD_START, " ") for entry in entries]
        return [byte_level_text(entry) for entry in entries] if self.kind in BYTE_LEVEL_KINDS else entries

    def _known(self, ids: Iterable[int], caller: str) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"{caller}: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def encode_for_lm(self, text: str) -> list[int]:
        """Ids of one document for language-model pretraining: the text then <|endoftext|>, so that
        concatenated documents are separated (GPT-2 practice). A vocabulary without it (published GPT)
        gets the text alone."""
        ids = self.encode(text)
        return ids if self.eos_id is None else [*ids, self.eos_id]

    def encode_plain_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """The tokens of each text alone, no special tokens, with word ids and character offsets (e.g. to cut a
        passage into windows and map a predicted span back to its characters)."""
        encoded = self.backend.encode_batch(str_list(texts, "texts", "encode_plain_batch"), add_special_tokens=False)
        return [Encoding(e.ids, None, e.word_ids, e.offsets) for e in encoded]

    # ---- model inputs by role (see TokenizerProtocol and the module docstring) -----------------------------

    def encode_text(self, text: str, max_length: int | None = None) -> Encoding:
        """`[CLS] text [SEP]` (bert) or `<|start|> text <|extract|>` (gpt, gpt2), at most `max_length` tokens."""
        return self._encode_texts([_str(text, "text", "encode_text")], max_length, "encode_text")[0]

    def encode_text_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        """`encode_text` for many texts at once, on parallel Rust threads."""
        return self._encode_texts(str_list(texts, "texts", "encode_text_batch"), max_length, "encode_text_batch")

    def encode_pair(self, a: str, b: str, max_length: int | None = None) -> Encoding:
        """`[CLS] a [SEP] b [SEP]` with segments 0 then 1 (bert), or `<|start|> a <|delimiter|> b <|extract|>`
        (gpt, gpt2), at most `max_length` tokens."""
        a, b = _str(a, "a", "encode_pair"), _str(b, "b", "encode_pair")
        return self._encode_pairs([a], [b], max_length, "encode_pair")[0]

    def encode_pair_batch(self, firsts: Sequence[str], seconds: Sequence[str],
                          max_length: int | None = None) -> list[Encoding]:
        """`encode_pair(firsts[i], seconds[i])` for every i at once, on parallel Rust threads."""
        firsts, seconds = check_pairs(firsts, seconds, "encode_pair_batch")
        return self._encode_pairs(firsts, seconds, max_length, "encode_pair_batch")

    def encode_choices(self, context: str, choices: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        """`encode_pair(context, choice)` for each choice, the context tokenised once."""
        context = _str(context, "context", "encode_choices")
        choices = str_list(choices, "choices", "encode_choices")
        frame = self._frame("encode_choices")
        budget = length_budget(max_length, frame.specials(pair=True))
        first, *rest = self.backend.encode_batch([context, *choices], add_special_tokens=False)
        return [_assemble(frame, _piece(first), _piece(e), budget) for e in rest]

    def encode_words(self, words: Sequence[str], max_length: int | None = None) -> Encoding:
        """A sentence already split into words, e.g. a CoNLL sentence for tagging: each word is normalised and
        split on its own (so "don't" gives several tokens) and `word_ids` gives its index in `words` for every
        token it produced: a word-level label goes on the word's first token (`Encoding.word_starts()`), the
        other tokens are usually ignored in the loss. Offsets are character offsets within each word.

        bert: `[CLS] pieces [SEP]`; a word that yields no token at all (empty, whitespace, or control characters
        that BERT's clean-up deletes) becomes one [UNK], so that no word is dropped silently; only truncation to
        `max_length` drops words, from the end.
        gpt, gpt2: `<|start|> pieces` (<|endoftext|> where there is no <|start|>), each word after the first
        encoded after a space for "gpt2" as inside running text; a word without tokens gets <unk> (or the start
        token where there is none). Truncation to `max_length` drops words from the end, as for bert: the first
        word whose pieces do not fit and every word after it (a later, shorter word must not take its place, or
        each word's label would land on another word).
        """
        return self._encode_words([words], max_length, "encode_words")[0]

    def encode_words_batch(self, sentences: Sequence[Sequence[str]],
                           max_length: int | None = None) -> list[Encoding]:
        """`encode_words` for many sentences at once, on parallel Rust threads."""
        return self._encode_words(sentences, max_length, "encode_words_batch")

    def _encode_texts(self, texts: list[str], max_length: int | None, caller: str) -> list[Encoding]:
        frame = self._frame(caller)
        budget = length_budget(max_length, frame.specials(pair=False))
        encoded = self.backend.encode_batch(texts, add_special_tokens=False)
        return [_assemble(frame, _piece(a), None, budget) for a in encoded]

    def _encode_pairs(self, firsts: list[str], seconds: list[str], max_length: int | None,
                      caller: str) -> list[Encoding]:
        frame = self._frame(caller)
        budget = length_budget(max_length, frame.specials(pair=True))
        encoded = self.backend.encode_batch(firsts + seconds, add_special_tokens=False)
        n = len(firsts)
        return [_assemble(frame, _piece(a), _piece(b), budget) for a, b in zip(encoded[:n], encoded[n:], strict=True)]

    def _encode_words(self, sentences: Sequence[Sequence[str]], max_length: int | None,
                      caller: str) -> list[Encoding]:
        checked = [str_list(words, "words" if caller == "encode_words" else f"sentences[{i}]", caller)
                   for i, words in enumerate(as_list(sentences, "sentences", caller))]
        if self.kind == "roberta":  # each word after a space, as inside running text
            first, _, last = self._frame(caller).around(pair=False)
            return self._encode_words_one_by_one(checked, max_length, caller, first, last, stand_in=self.unk_id)
        if self.kind in ("gpt", "gpt2"):
            return self._encode_words_left_to_right(checked, max_length, caller)
        frame = self._frame(caller)
        unk = self.unk_id
        if unk is None:
            raise UserError(f"{caller}: this vocabulary has no unknown token ([UNK], <unk>)")
        budget = length_budget(max_length, frame.specials(pair=False))
        encoded = self.backend.encode_batch(checked, is_pretokenized=True, add_special_tokens=False)
        return [_assemble(frame, _every_word(e, words, unk), None, budget)
                for e, words in zip(encoded, checked, strict=True)]

    def _encode_words_left_to_right(self, sentences: list[list[str]], max_length: int | None,
                                    caller: str) -> list[Encoding]:
        """GPT's tagging input `<|start|> pieces` (see `encode_words`)."""
        start = self.start_id if self.start_id is not None else self.eos_id
        if start is None:
            raise UserError(f"{caller}: this {self.kind} vocabulary has neither {TASK_TOKENS['start']} nor an "
                            "end-of-text token to open a sentence with; call tokenizer.add_task_tokens()")
        stand_in = self.unk_id if self.unk_id is not None else start
        return self._encode_words_one_by_one(sentences, max_length, caller, (start,), (), stand_in)

    def _encode_words_one_by_one(self, sentences: list[list[str]], max_length: int | None, caller: str,
                                 opening: tuple[int, ...], closing: tuple[int, ...], stand_in: int) -> list[Encoding]:
        """`opening pieces closing`, each word encoded on its own after `word_prefix` (but the first, as at the
        start of a text), a word without tokens as `stand_in`; truncation drops words from the end."""
        length_budget(max_length, len(opening) + len(closing))  # checks max_length: room for the specials at least
        room = None if max_length is None else max_length - len(closing)
        prefix = self.word_prefix
        flat = [(prefix if j else "") + word for words in sentences for j, word in enumerate(words)]
        pieces = iter(self.backend.encode_batch(flat, add_special_tokens=False))
        out = []
        for words in sentences:
            ids, word_ids, offsets = list(opening), [None] * len(opening), [(0, 0)] * len(opening)
            for j, word in enumerate(words):
                piece = next(pieces)
                shift = len(prefix) if j else 0
                piece_ids = piece.ids or [stand_in]
                piece_offsets = ([(max(s - shift, 0), max(e - shift, 0)) for s, e in piece.offsets] if piece.ids
                                 else [(0, len(word))])
                if room is not None and len(ids) + len(piece_ids) > room:
                    for _ in words[j + 1:]:  # the sentence ends here: the pieces of its other words go unused
                        next(pieces)
                    break
                ids += piece_ids
                word_ids += [j] * len(piece_ids)
                offsets += piece_offsets
            n = len(closing)
            out.append(Encoding(ids + list(closing), None, word_ids + [None] * n, offsets + [(0, 0)] * n))
        return out

    def pair_specials(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The special tokens of a pair input (before a, between a and b, after b): bert ([CLS],), ([SEP],),
        ([SEP],); roberta (<s>,), (</s>, </s>), (</s>,); gpt, gpt2 the task tokens. For callers that assemble a
        pair from pieces themselves (SQuAD's windows of a long passage)."""
        return self._frame("pair_specials").around(pair=True)

    def _frame(self, caller: str) -> _Frame:
        """The layout of this kind's inputs: where the special tokens go around the texts."""
        if self.kind == SENTENCEPIECE:
            return self._template_frame(caller)
        if self.kind == "bert":
            return self._cls_sep_frame(caller)
        if self.kind == "roberta":  # `<s> a </s></s> b </s>`: two separators between the texts, no segments
            cls, sep = self.cls_id, self.sep_id
            if cls is None or sep is None:
                raise UserError(f"{caller}: this vocabulary has no {ROBERTA_SPECIALS['cls']} or "
                                f"{ROBERTA_SPECIALS['sep']}")
            return _Frame(((cls, 0), (_A, 0), (sep, 0)),
                          ((cls, 0), (_A, 0), (sep, 0), (sep, 0), (_B, 0), (sep, 0)), segments=False)
        ids = (self.start_id, self.delimiter_id, self.extract_id)
        if None in ids:
            raise UserError(f"{caller}: this {self.kind} vocabulary has no task tokens "
                            f"{', '.join(TASK_TOKENS.values())}; call tokenizer.add_task_tokens() and "
                            "resize the model's token embeddings to tokenizer.vocab_size before fine-tuning")
        start, delimiter, extract = ids
        return _Frame(((start, 0), (_A, 0), (extract, 0)),
                      ((start, 0), (_A, 0), (delimiter, 0), (_B, 0), (extract, 0)), segments=False)

    def _cls_sep_frame(self, caller: str) -> _Frame:
        """BERT's `[CLS] a [SEP] (b [SEP])`, segments 0 then 1, with the cls and sep roles' tokens."""
        cls, sep = self.cls_id, self.sep_id
        if cls is None or sep is None:
            raise UserError(f"{caller}: this vocabulary has no cls or sep token ({BERT_SPECIALS['cls']}, "
                            f"{BERT_SPECIALS['sep']})")
        return _Frame(((cls, 0), (_A, 0), (sep, 0)), ((cls, 0), (_A, 0), (sep, 0), (_B, 1), (sep, 1)), segments=True)

    def _template_frame(self, caller: str) -> _Frame:
        """The layout recorded in tokenizer.json's template (see the module docstring), else BERT's from the cls
        and sep roles."""
        layouts = self._layouts
        if layouts is None:
            return self._cls_sep_frame(caller)

        def ids(layout: list[tuple[str, int]]) -> tuple[tuple[int | str, int], ...]:
            out = []
            for what, segment in layout:
                token_id = what if what in (_A, _B) else self.backend.token_to_id(what)
                if token_id is None:
                    raise UserError(f"{caller}: the tokenizer's template names {what!r}, which is not in its "
                                    "vocabulary")
                out.append((token_id, segment))
            return tuple(out)

        return _Frame(ids(layouts["single"]), ids(layouts["pair"]), segments=True)


_A, _B = "A", "B"  # the places of the first and second text in a layout


@dataclass(frozen=True)
class _Frame:
    """One kind's input layouts, for one text and for two: per position a special token's id or the place of a
    text (_A, _B), with its segment id (`segments`: whether the kind has segment ids, BERT's token type ids)."""

    single: tuple[tuple[int | str, int], ...]
    pair: tuple[tuple[int | str, int], ...]
    segments: bool

    def specials(self, pair: bool) -> int:
        """How many special tokens an input of one text (or of two) holds."""
        return sum(what not in (_A, _B) for what, _ in (self.pair if pair else self.single))

    def around(self, *, pair: bool) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The special tokens before the first text, between the texts (none for one text) and after the last
        (XLNet's `a <sep> b <sep> <cls>`: none before, <sep> between, <sep> <cls> after)."""
        layout = self.pair if pair else self.single
        places = [k for k, (what, _) in enumerate(layout) if what in (_A, _B)]
        ids = [what for what, _ in layout]
        first, last = tuple(ids[:places[0]]), tuple(ids[places[-1] + 1:])
        return first, tuple(ids[places[0] + 1:places[-1]]) if pair else (), last


_Piece = tuple[list[int], list[int | None], list[tuple[int, int]]]  # one text's ids, word ids, offsets


def _piece(encoding: BackendEncoding) -> _Piece:
    return encoding.ids, encoding.word_ids, encoding.offsets


def _assemble(frame: _Frame, a: _Piece, b: _Piece | None, budget: int | None) -> Encoding:
    """The texts in the frame's layout (`first a last`, `first a middle b last`, or XLNet's `a sep b sep cls`),
    cut longest-first to `budget` tokens in all (None: uncut)."""
    n, m = len(a[0]), 0 if b is None else len(b[0])
    if budget is not None and n + m > budget:
        n, m = (min(n, budget), 0) if b is None else longest_first(n, m, budget)
    texts = {_A: (a, n), _B: (b, m)}
    ids: list[int] = []
    segments: list[int] = []
    word_ids: list[int | None] = []
    offsets: list[tuple[int, int]] = []
    for what, segment in frame.single if b is None else frame.pair:
        if what in texts:
            (text_ids, text_words, text_offsets), keep = texts[what]
            ids += text_ids[:keep]
            word_ids += text_words[:keep]
            offsets += text_offsets[:keep]
            segments += [segment] * keep
        else:
            ids.append(what)
            word_ids.append(None)
            offsets.append((0, 0))
            segments.append(segment)
    return Encoding(ids, segments if frame.segments else None, word_ids, offsets)


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


def _str(value: object, name: str, caller: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{caller}: {name} is a {type(value).__name__}; expected str")
    return value
