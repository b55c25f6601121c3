"""ELMo's tokenizer: text → words, each word → its UTF-8 bytes as character ids, as the published biLM reads them.

ELMo has no closed vocabulary on its input side: the character CNN builds a vector for any word. A token id here
is therefore an index into an open word list that grows when an unseen word is encoded; the model turns ids into
character ids through `char_ids` (the tokenizer and the model share one `WordList`). The first `vocab_size` words
are the softmax vocabulary of the language model (most frequent first); a target outside it scores as <unk>.

Characters follow AllenNLP's ELMoCharacterMapper: a word is [begin-of-word, byte 1, ..., byte n, end-of-word]
padded to `max_characters` (bytes cut at max_characters - 2), every id + 1 so that 0 is the padding of an
absent token; the sentence markers <S> and </S> have their own marker characters.

The cut is by design and reaches only what the character CNN reads: a Cyrillic letter is two bytes, so the CNN
sees the first 24 letters of a longer Russian word (a cut may fall inside a letter, as in AllenNLP), while the id,
`decode`, `token_texts` and word alignment keep the whole word.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, pre_tokenizers
from torch import Tensor

from ctxlm.errors import UserError
from ctxlm.textfiles import read_documents, read_text
from ctxlm.tokenizers.protocol import Encoding, check_pairs

PAD, BOS, EOS, UNK = "<pad>", "<S>", "</S>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0-3
BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260
WORDS_FILE = "words.txt"
CONFIG_FILE = "char_tokenizer.json"
_MAX_CHARACTERS = 1024  # characters per word: the published ELMo reads 50; far more is a typo, and a huge table
# Words: "<unk>" (WikiText's unknown-word token), runs of letters/digits, or any other single visible character.
_SPLIT = pre_tokenizers.Split(Regex(r"<unk>|\w+|[^\w\s]"), behavior="removed", invert=True)


def word_characters(word: str, max_characters: int = 50) -> list[int]:
    """The `max_characters` character ids of one word (all 0 for the padding word)."""
    if word == PAD:
        return [0] * max_characters
    if word in (BOS, EOS):
        chars = [BOW_CHAR, BOS_CHAR if word == BOS else EOS_CHAR, EOW_CHAR]
    else:
        chars = [BOW_CHAR, *word.encode("utf-8", "ignore")[:max_characters - 2], EOW_CHAR]
    return [c + 1 for c in chars + [PAD_CHAR] * (max_characters - len(chars))]


class WordList:
    """Words ↔ ids, open to new words, with the (words, max_characters) character table the model reads."""

    def __init__(self, words: Sequence[str], max_characters: int = 50) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise UserError("word list: a word appears twice")
        self.max_characters = max_characters
        self._table = torch.empty(0, max_characters, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        found = self.index.get(word)
        if found is None:
            found = self.index[word] = len(self.words)
            self.words.append(word)
        return found

    def char_ids(self, ids: Tensor) -> Tensor:
        """(...) word ids → (..., max_characters) character ids, on the ids' device."""
        if len(self._table) < len(self.words):  # words were added since the table was last built
            new = [word_characters(w, self.max_characters) for w in self.words[len(self._table):]]
            self._table = torch.cat([self._table, torch.tensor(new, dtype=torch.long).view(-1, self.max_characters)])
        if ids.numel() and int(ids.max()) >= len(self._table):
            raise UserError(f"word id {int(ids.max())} is not in this tokenizer's {len(self._table)} words")
        if self._table.device != ids.device:
            self._table = self._table.to(ids.device)
        return self._table[ids]


class CharTokenizer:
    """Splits text into words ("<unk>", runs of letters and digits, single other characters) and numbers them.

    Sequences for a model are `<S> words </S>` (pairs: `<S> a </S> b </S>`); ELMo has no segment embeddings.
    """

    kind = "elmo"

    def __init__(self, words: Sequence[str], vocab_size: int | None = None, *, max_characters: int = 50) -> None:
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise UserError(f"an ELMo word list starts with {', '.join(SPECIALS)}")
        for name, value in (("vocab_size", vocab_size), ("max_characters", max_characters)):
            if (value is not None or name == "max_characters") and (isinstance(value, bool) or
                                                                     not isinstance(value, int)):
                raise UserError(f"{name}={value!r}: expected an integer")
        if not 3 <= max_characters <= _MAX_CHARACTERS:  # <S> is 3: begin-of-word, its marker, end-of-word
            raise UserError(f"max_characters={max_characters}: expected 3 to {_MAX_CHARACTERS}")
        self.words = WordList(words, max_characters)
        self.vocab_size = len(words) if vocab_size is None else vocab_size
        if not len(SPECIALS) <= self.vocab_size <= len(words):
            raise UserError(f"softmax vocabulary of {self.vocab_size} words: expected {len(SPECIALS)} to {len(words)}")

    pad_id, bos_id, eos_id, unk_id = range(4)
    start_id = cls_id = sep_id = mask_id = None
    lowercase = False
    word_prefix = ""  # words are split apart before they are looked up: no space marks a word boundary

    @property
    def special_ids(self) -> set[int]:
        return set(range(len(SPECIALS)))

    def __repr__(self) -> str:
        return f"CharTokenizer(elmo, {len(self.words):,} words, softmax over {self.vocab_size:,})"

    @classmethod
    def train(cls, files: Iterable[str | os.PathLike], vocab_size: int, *, min_count: int = 1,
              extra_files: Iterable[str | os.PathLike] = ()) -> CharTokenizer:
        """Words of `files` by frequency; the softmax keeps the `vocab_size` - 4 most frequent that occur at least
        `min_count` times. Every word of `files` and `extra_files` (e.g. the validation text) gets an id, so that
        encoding them later adds nothing."""
        counts: Counter[str] = Counter()
        for file in files:
            for line in read_documents(file):
                counts.update(split_words(line))
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        n_softmax = min(vocab_size - len(SPECIALS), sum(1 for w in ranked if counts[w] >= min_count))
        tokenizer = cls([*SPECIALS, *ranked], len(SPECIALS) + max(n_softmax, 0))
        for file in extra_files:
            for line in read_documents(file):
                tokenizer.encode(line)
        return tokenizer

    @classmethod
    def from_files(cls, directory: str | os.PathLike) -> CharTokenizer:
        """What `save` wrote: words.txt, one word per line in id order ("\\n" ends a line, a "\\r" before it is
        dropped, and so is a byte-order mark at the start), and char_tokenizer.json."""
        directory = Path(directory)
        words_path, config_path = directory / WORDS_FILE, directory / CONFIG_FILE
        for path in (words_path, config_path):
            if not path.is_file():
                raise UserError(f"{path}: missing (an ELMo tokenizer is {WORDS_FILE} + {CONFIG_FILE})")

        words = [w.removesuffix("\r") for w in read_text(words_path).split("\n")]
        if words and words[-1] == "":
            words.pop()
        try:
            config = json.loads(config_path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{config_path}: not valid JSON ({err})") from None
        if not (isinstance(config, dict) and {"vocab_size", "max_characters"} <= config.keys()):
            raise UserError(f'{config_path}: expected {{"vocab_size": int, "max_characters": int}}')
        first: dict[str, int] = {}
        for i, word in enumerate(words):
            if first.setdefault(word, i) != i:
                raise UserError(f"{words_path}:{i + 1}: the word {word!r} appears twice (first on line "
                                f"{first[word] + 1})")
        try:
            return cls(words, config["vocab_size"], max_characters=config["max_characters"])
        except UserError as err:
            raise UserError(f"{directory}: {err}") from None

    def save(self, directory: str | os.PathLike) -> None:
        """words.txt (one word per line, in id order) and char_tokenizer.json. A word with a line break (given to
        `encode_words`) cannot be written one per line: that is a UserError, before anything is written."""
        directory = Path(directory)
        broken = next((i for i, w in enumerate(self.words.words) if "\n" in w or "\r" in w), None)
        if broken is not None:
            raise UserError(f"{directory / WORDS_FILE}: cannot save word {broken} {self.words.words[broken]!r}: it "
                            "holds a line break, and the file has one word per line")
        text = "".join(w + "\n" for w in self.words.words)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:  # half of a surrogate pair, e.g. from a JSON "\\ud800"
            raise UserError(f"{directory / WORDS_FILE}: cannot save {text[err.start:err.end]!r}, not Unicode "
                            "text") from None
        (directory / WORDS_FILE).write_bytes(data)
        (directory / CONFIG_FILE).write_text(json.dumps(
            {"kind": self.kind, "vocab_size": self.vocab_size, "max_characters": self.words.max_characters}) + "\n")

    def char_ids(self, ids: Tensor) -> Tensor:
        return self.words.char_ids(ids)

    def softmax_targets(self, ids: Tensor) -> Tensor:
        """Word ids → softmax classes: words outside the softmax vocabulary become <unk>, padding -100."""
        targets = torch.where(ids < self.vocab_size, ids, self.unk_id)
        return targets.masked_fill(ids == self.pad_id, -100)

    def encode(self, text: str) -> list[int]:
        """The words of `text`, without sentence markers."""
        return [self.words.id(w) for w in split_words(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return " ".join(self.words.words[i] for i in ids if not (skip_special_tokens and i in self.special_ids))

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """Each token's word, markers included ("<S>"): ELMo's tokens are whole words."""
        return [self.words.words[int(i)] for i in ids]

    # Model inputs by role (TokenizerProtocol): `<S> a </S>` or `<S> a </S> b </S>`, cut to `max_length` tokens one
    # word at a time from the end of the longer text (from the first on ties). Segment ids 0 then 1, as BERT's;
    # ELMo itself reads none.

    def encode_text(self, text: str, max_length: int | None = None) -> Encoding:
        return self._assemble(_SPLIT.pre_tokenize_str(text), None, max_length)

    def encode_text_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        return [self.encode_text(text, max_length) for text in texts]

    def encode_pair(self, a: str, b: str, max_length: int | None = None) -> Encoding:
        return self._assemble(_SPLIT.pre_tokenize_str(a), _SPLIT.pre_tokenize_str(b), max_length)

    def encode_pair_batch(self, firsts: Sequence[str], seconds: Sequence[str],
                          max_length: int | None = None) -> list[Encoding]:
        firsts, seconds = check_pairs(firsts, seconds, "encode_pair_batch")
        return [self.encode_pair(a, b, max_length) for a, b in zip(firsts, seconds, strict=True)]

    def encode_choices(self, context: str, choices: Sequence[str], max_length: int | None = None) -> list[Encoding]:
        return [self.encode_pair(context, choice, max_length) for choice in choices]

    def encode_words(self, words: Sequence[str], max_length: int | None = None) -> Encoding:
        """Given words, one token each: `<S> w1 ... wn </S>`."""
        return self._assemble([(w, (0, len(w))) for w in words], None, max_length)

    def encode_words_batch(self, sentences: Sequence[Sequence[str]], max_length: int | None = None) -> list[Encoding]:
        return [self.encode_words(words, max_length) for words in sentences]

    def _assemble(self, a: list, b: list | None, max_length: int | None) -> Encoding:
        if max_length is not None:
            budget = max(max_length - (2 if b is None else 3), 0)
            while len(a) + (len(b) if b else 0) > budget:
                if b and len(b) > len(a):
                    b = b[:-1]
                else:
                    a = a[:-1]
        ids, segments, word_ids, offsets = [self.bos_id], [0], [None], [(0, 0)]
        for segment, words in enumerate([a] if b is None else [a, b]):
            for j, (word, span) in enumerate(words):
                ids.append(self.words.id(word))
                segments.append(segment)
                word_ids.append(j)
                offsets.append(span)
            ids.append(self.eos_id)
            segments.append(segment)
            word_ids.append(None)
            offsets.append((0, 0))
        return Encoding(ids, segments, word_ids, offsets)


def split_words(text: str) -> list[str]:
    return [word for word, _ in _SPLIT.pre_tokenize_str(text)]
