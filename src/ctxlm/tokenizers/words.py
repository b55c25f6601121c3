"""Transformer-XL's tokenizer: one token per whitespace-separated word, a closed vocabulary, <unk> and <eos>.

This is the paper's WikiText setup: the text comes already split into words (WikiText spaces out punctuation and
writes "1 @,@ 000" for "1,000"), each line ends with <eos>, a word outside the vocabulary becomes <unk>
(WikiText-103 has no unknown words left, its rare ones already read "<unk>"). The vocabulary is ordered by
frequency after the special tokens, which the adaptive softmax's cutoffs rely on. There is no padding token:
padding uses <eos>, and masks keep it out of attention and loss.

Saved as `word_vocab.txt` (one word per line, in id order) + `word_tokenizer.json` (kind, special words,
casing). A published `vocab.txt` in the Hugging Face Transformer-XL layout (the same one word per line, as
`TransfoXLTokenizer(vocab_file=...)` reads it) or a `vocab.json` (a list of words or {word: id}) loads with
`from_vocab_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ctxlm.errors import UserError
from ctxlm.textfiles import check_json_unicode, read_documents, read_text
from ctxlm.tokenizers.protocol import Encoding, length_budget

EOS, UNK = "<eos>", "<unk>"
VOCAB_FILE = "word_vocab.txt"
CONFIG_FILE = "word_tokenizer.json"


class WordTokenizer:
    """Words ↔ ids over a fixed vocabulary (see the module docstring)."""

    kind = "transformer-xl"
    start_id = cls_id = sep_id = mask_id = None
    word_prefix = ""  # words are whatever whitespace separates

    def __init__(self, words: Sequence[str], *, eos: str = EOS, unk: str = UNK, lowercase: bool = False,
                 source: str = "word list", lines: Sequence[int] | None = None) -> None:
        """`source` names where the words come from in errors; `lines`, the line of `source` each word is on."""
        self.words = list(words)
        self.index: dict[str, int] = {}

        def at(i: int) -> str:
            return f"{source}: entry {i}" if lines is None else f"{source}:{lines[i]}"

        for i, word in enumerate(self.words):
            if not isinstance(word, str) or not word or word.split() != [word]:
                raise UserError(f"{at(i)}: {word!r} is not one word without spaces")
            if self.index.setdefault(word, i) != i:
                first = self.index[word]
                where = f"entry {first}" if lines is None else f"line {lines[first]}"
                raise UserError(f"{at(i)}: {word!r} appears twice (ids {first} and {i}; first at {where})")
        for role, word in (("end-of-line", eos), ("unknown-word", unk)):
            if word not in self.index:
                raise UserError(f"{source}: no {role} token {word!r} in the vocabulary")
        self.eos, self.unk, self.lowercase = eos, unk, lowercase

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def eos_id(self) -> int:
        return self.index[self.eos]

    @property
    def unk_id(self) -> int:
        return self.index[self.unk]

    @property
    def pad_id(self) -> int:
        """Padding is masked out of attention and loss; the vocabulary has no pad word, so <eos> stands in."""
        return self.eos_id

    @property
    def special_ids(self) -> set[int]:
        return {self.eos_id}  # <unk> is an ordinary word of WikiText's text, and a target like any other

    def __repr__(self) -> str:
        return f"WordTokenizer({self.vocab_size:,} words, eos={self.eos!r}, unk={self.unk!r})"

    # ---- building ------------------------------------------------------------------------------------

    @classmethod
    def train(cls, files: str | os.PathLike | Iterable[str | os.PathLike], vocab_size: int | None = None,
              min_count: int = 1, *, lowercase: bool = False) -> WordTokenizer:
        """<eos>, <unk>, then the words of `files` (text files or folders of them, .gz too) by decreasing count,
        those seen at least `min_count` times, at most `vocab_size` entries in all (None: every such word)."""
        if vocab_size is not None and vocab_size < 2:
            raise UserError(f"WordTokenizer.train: vocab_size={vocab_size}; it needs at least 2 (<eos>, <unk>)")
        if min_count < 1:
            raise UserError(f"WordTokenizer.train: min_count={min_count}; expected 1 or more")
        counts: Counter[str] = Counter()
        for file in [files] if isinstance(files, str | os.PathLike) else files:
            for text in read_documents(file):
                counts.update((text.lower() if lowercase else text).split())
        for special in (EOS, UNK):
            counts.pop(special, None)
        ranked = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        limit = None if vocab_size is None else vocab_size - 2
        return cls([EOS, UNK, *ranked[:limit]], lowercase=lowercase)

    @classmethod
    def from_files(cls, directory: str | os.PathLike) -> WordTokenizer:
        """The tokenizer `save` wrote in `directory`."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{config_path}: missing (a Transformer-XL tokenizer is {VOCAB_FILE} + "
                            f"{CONFIG_FILE})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{config_path}: not valid JSON ({err})") from None
        if not isinstance(config, dict) or config.get("kind") != cls.kind:
            raise UserError(f"{config_path}: expected an object with \"kind\": \"{cls.kind}\"")
        words = _read_lines(directory / VOCAB_FILE)
        return cls(words, eos=config.get("eos", EOS), unk=config.get("unk", UNK),
                   lowercase=bool(config.get("lowercase", False)), source=str(directory / VOCAB_FILE),
                   lines=range(1, len(words) + 1))

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, *, lowercase: bool = False) -> WordTokenizer:
        """A published vocabulary: a vocab.txt (one word per line, its first field, as the reference code reads
        it) or a vocab.json (a list of words in id order, or {word: id} with ids 0..n-1)."""
        path = Path(path)
        if path.suffix != ".json":
            kept = [(number, line.split()[0]) for number, line in enumerate(_read_lines(path), 1) if line.split()]
            return cls([word for _, word in kept], lowercase=lowercase, source=str(path),
                       lines=[number for number, _ in kept])
        text = "\n".join(_read_lines(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None

        check_json_unicode(data, text, path)
        if isinstance(data, dict):
            if sorted(data.values()) != list(range(len(data))):
                raise UserError(f"{path}: the ids of a {{word: id}} vocabulary must be 0 to {len(data) - 1}, once each")
            data = sorted(data, key=data.get)
        if not isinstance(data, list) or not all(isinstance(w, str) for w in data):
            raise UserError(f"{path}: expected a list of words or a {{word: id}} object")
        return cls(data, lowercase=lowercase, source=str(path))

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        (directory / VOCAB_FILE).write_text("".join(w + "\n" for w in self.words), encoding="utf-8")
        config = {"kind": self.kind, "eos": self.eos, "unk": self.unk, "lowercase": self.lowercase}
        (directory / CONFIG_FILE).write_text(json.dumps(config) + "\n", encoding="utf-8")

    def fingerprint(self) -> str:
        """Identifies the ids this tokenizer gives (for caches of tokenised corpora)."""
        digest = hashlib.sha256("\n".join(self.words).encode())
        digest.update(f"\n#eos={self.eos}#unk={self.unk}#lowercase={self.lowercase}".encode())
        return digest.hexdigest()[:16]

    # ---- encoding ------------------------------------------------------------------------------------

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """The ids of the words of `text`; `add_eos`: <eos> after every line, blank lines included (the paper's
        corpus encoding), so that line breaks stay visible to the model."""
        if not isinstance(text, str):
            raise UserError(f"encode: got a {type(text).__name__}; expected str")
        if self.lowercase:
            text = text.lower()
        get, unk = self.index.get, self.unk_id
        if not add_eos:
            return [get(w, unk) for w in text.split()]
        lines = text.split("\n")  # a final newline ends the last line, it does not start an empty one
        ids: list[int] = []
        for line in lines[:-1] if lines[-1] == "" else lines:
            ids += [get(w, unk) for w in line.split()]
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, add_eos: bool = False) -> list[list[int]]:
        return [self.encode(t, add_eos=add_eos) for t in texts]

    def encode_for_lm(self, text: str) -> list[int]:
        """Ids of a document for language-model training: <eos> after every line."""
        return self.encode(text, add_eos=True)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Words joined by spaces; <eos> is dropped, or with skip_special_tokens=False kept as the word "<eos>"."""
        eos = self.eos_id
        return " ".join(self.words[i] for i in self._known(ids, "decode") if not (skip_special_tokens and i == eos))

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """Each token's word as the vocabulary holds it, "<eos>" included."""
        return [self.words[i] for i in self._known(ids, "token_texts")]

    def _known(self, ids: Iterable[int], caller: str) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"{caller}: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    # Model inputs by role (TokenizerProtocol). Transformer-XL reads running text and its vocabulary has no special
    # tokens to frame an input with: a text or a list of words is encoded as it is, one id per word, the first
    # `max_length` words kept; pairs and choices need a separator it lacks.

    def encode_text(self, text: str, max_length: int | None = None) -> Encoding:
        """The words of `text`, as `encode` gives them, with their character offsets."""
        if not isinstance(text, str):
            raise UserError(f"encode_text: got a {type(text).__name__}; expected str")
        return self._words([(m.group(), m.span()) for m in re.finditer(r"\S+", text)], max_length)

    def encode_text_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        return [self.encode_text(text, max_length) for text in texts]

    def encode_words(self, words: Sequence[str], max_length: int | None = None) -> Encoding:
        """One id per given word (<unk> for a word outside the vocabulary, or one with spaces in it)."""
        return self._words([(w, (0, len(w))) for w in words], max_length)

    def encode_words_batch(self, sentences: Sequence[Sequence[str]], max_length: int | None = None) -> list[Encoding]:
        return [self.encode_words(words, max_length) for words in sentences]

    def encode_pair(self, a: str, b: str, max_length: int | None = None) -> Encoding:
        raise UserError("encode_pair: a Transformer-XL word vocabulary has no special tokens to join two texts with")

    def encode_pair_batch(self, firsts: Sequence[str], seconds: Sequence[str],
                          max_length: int | None = None) -> list[Encoding]:
        return [self.encode_pair(a, b, max_length) for a, b in zip(firsts, seconds, strict=True)]

    def encode_choices(self, context: str, choices: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        return [self.encode_pair(context, choice, max_length) for choice in choices]

    def _words(self, words: list[tuple[str, tuple[int, int]]], max_length: int | None) -> Encoding:
        words = words[:length_budget(max_length, 0)]
        get, unk = self.index.get, self.unk_id
        ids = [get(w.lower() if self.lowercase else w, unk) for w, _ in words]
        return Encoding(ids, None, list(range(len(ids))), [span for _, span in words])


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file, split on "\\n" alone (so numbers agree with editors; a "\\r\\n" ending loses
    its "\\r"), a byte-order mark at the start dropped; line n is item n - 1."""
    lines = [line.removesuffix("\r") for line in read_text(path).split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines
