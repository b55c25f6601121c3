"""Property-based input fuzzing (hypothesis) of the tokenizers and of every data reader.

Inputs: any unicode (control characters, NUL, combining marks, emoji, RTL, U+2028), very long lines, empty files,
a UTF-8 byte-order mark, CRLF line ends, gzip, bytes that are not UTF-8 (latin-1, UTF-16/32 with their BOM), lone
surrogates spelled by JSON escapes, and JSON documents mutated at random. The property is the same everywhere:
either the exact result (round trips, every row with its line number) or a `UserError` whose message names the file
and the line where the file was wrong, and what was expected; never another exception, never a row dropped without
a word. Each test is checked against a small model of the format written here, so that it can fail.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import math
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxlm.cli.embed import read_texts
from ctxlm.errors import UserError
from ctxlm.pretrain.corpus import TokenizedCorpus
from ctxlm.qa.finetune import read_pairs
from ctxlm.qa.squad import read_squad
from ctxlm.qa.zeroshot import read_coqa, read_questions
from ctxlm.textfiles import read_documents
from ctxlm.tokenizers import BERT_SPECIALS, Tokenizer, WordTokenizer
from ctxlm.tokenizers.characters import (
    BOW_CHAR,
    EOW_CHAR,
    PAD_CHAR,
    SPECIALS,
    CharTokenizer,
    split_words,
    word_characters,
)
from ctxlm.tokenizers.training import _file_lines
from ctxlm.transfer.data import (
    Example,
    UserTaskOptions,
    _choice_questions,
    _conll,
    _Glue,
    _read_copa,
    _user_examples,
    load_task,
)

# The readers' warnings are asserted where they matter (inside catch_warnings); elsewhere they are expected noise.
pytestmark = [pytest.mark.filterwarnings("ignore:.*files, empty or whitespace only:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*repeat an earlier token:UserWarning")]

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=50)  # the tests that train a tokenizer or build a cache per example

# ---------------------------------------------------------------------------------------------------- strategies

texts = st.text(max_size=60)  # every code point but lone surrogates: NUL, controls, U+2028, combining marks, emoji
# One line of a text file: no "\n", and no "\r" at its end (that would read as a CRLF ending).
lines = st.text(max_size=30).map(lambda s: s.replace("\n", "").rstrip("\r"))
endings = st.sampled_from(["\n", "\r\n"])
surrogates = st.integers(0xD800, 0xDFFF).map(chr)


def text_without(characters: str, **size) -> st.SearchStrategy[str]:
    """Any text but `characters`, and no lone surrogates (which st.characters() gives unless told a codec)."""
    return st.text(st.characters(codec="utf-8", exclude_characters=characters), **size)


with_surrogate = st.tuples(st.text(max_size=5), surrogates, st.text(max_size=5)).map("".join)
# Words of scripts that an ASCII-trained vocabulary cannot spell, which lower-casing and accent stripping keep so.
greek_or_cyrillic = st.text(st.characters(min_codepoint=0x3B1, max_codepoint=0x3C9) |
                            st.characters(min_codepoint=0x430, max_codepoint=0x44F), min_size=1, max_size=8)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20), texts,
                         st.floats(allow_nan=True, allow_infinity=True))  # NaN, Infinity: Python's json reads them
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["data", "text", "label", "id", "question", "context", "answers", "story"]) | texts, inner,
    max_size=3), max_leaves=8)


def fresh(tmp_path: Path) -> Path:
    """A new folder per hypothesis example (tmp_path is one per test)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def encoded(text: str, bom: bool = False, gz: bool = False) -> bytes:
    data = ("\ufeff" if bom else "").encode() + text.encode()
    return gzip.compress(data, mtime=0) if gz else data


def unbom(text: str, bom: bool) -> str:
    """`text` as read back from a file that starts with it (after a BOM if `bom`): one BOM at the start is dropped."""
    return text if bom else text.removeprefix("\ufeff")


def first_bad_utf8(data: bytes) -> tuple[int, int, int] | None:
    """(line, column, byte) of the first byte that is not UTF-8, lines split on b"\\n" alone, or None."""
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            return number, err.start + 1, line[err.start]
    return None


@st.composite
def corrupted(draw, text: str) -> bytes:
    """`text` as UTF-8 with one byte that cannot start or continue UTF-8 there (latin-1 "é" or a stray 0xFF)."""
    data = text.encode()
    cut = draw(st.integers(0, len(text)))
    bad = draw(st.sampled_from(["é".encode("latin-1"), b"\xff", b"\xc3(", b"\x80"]))
    return text[:cut].encode() + bad + text[cut:].encode() if data else bad


def has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False


def nodes(value, path=()):
    """(container, key) of every node below `value`, for mutations."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield value, key
        yield from nodes(child, (*path, key))


@st.composite
def mutated(draw, template):
    """`template` with one to three nodes replaced by random JSON or deleted."""
    doc = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, 3))):
        found = list(nodes(doc))
        if not found:
            break
        parent, key = draw(st.sampled_from(found))
        if draw(st.booleans()):
            parent[key] = draw(json_values)
        else:
            del parent[key]
    return doc


def write_json(path: Path, value, *, bom: bool = False) -> Path:
    path.write_bytes(encoded(json.dumps(value), bom))  # ensure_ascii: a surrogate is written as its \u escape
    return path


def user_error(call, path: Path | str) -> UserError | None:
    """Run `call`: None if it returns, the UserError if it raises one that names `path` (anything else fails)."""
    try:
        call()
    except UserError as err:
        assert str(path) in str(err), f"the message does not name {path}: {err}"
        return err
    return None


# ---------------------------------------------------------------------------------------------------- tokenizers

ASCII_CORPUS = [f"{w} the model reads {w}, and the {w}s read it: {i} times!\n"
                for i, w in enumerate(["river", "bank", "money", "fox", "dog", "cat", "word", "token", "data"] * 20)]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.train(iter(ASCII_CORPUS), "gpt2", 320)


@pytest.fixture(scope="module")
def gpt() -> Tokenizer:
    return Tokenizer.train(iter(ASCII_CORPUS), "gpt", 200)


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    return Tokenizer.train(iter(ASCII_CORPUS), "bert", 200)


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["<|endoftext|>", "a<|start|>b", "\r\n\x00\ufeff", "\u2028"]))
def test_byte_level_bpe_decodes_what_it_encodes(gpt2, text):
    ids = gpt2.encode(text)
    assert all(0 <= i < gpt2.vocab_size for i in ids)
    assert gpt2.decode(ids, skip_special_tokens=False) == text  # lossless, special tokens' strings included
    assert gpt2.encode_batch([text, text]) == [ids, ids]


@FUZZ
@given(text=texts, words=st.lists(greek_or_cyrillic, min_size=1, max_size=5))
def test_gpt_bpe_maps_what_it_cannot_spell_to_unk(gpt, text, words):
    ids = gpt.encode(text)
    assert all(0 <= i < gpt.vocab_size for i in ids)
    gpt.decode(ids)
    unknown = gpt.encode(" ".join(words))
    assert unknown and set(unknown) == {gpt.unk_id}


@FUZZ
@given(text=texts, pair=st.none() | texts, max_length=st.none() | st.integers(3, 12))
def test_wordpiece_encodes_any_text_within_bounds(bert, text, pair, max_length):
    enc = (bert.encode_text(text, max_length) if pair is None else
           bert.encode_pair(text, pair, max_length))
    assert all(0 <= i < bert.vocab_size for i in enc.ids)
    assert enc.ids[0] == bert.cls_id and enc.ids[-1] == bert.sep_id
    assert max_length is None or len(enc) <= max_length
    assert len(enc.ids) == len(enc.segments) == len(enc.word_ids) == len(enc.offsets)
    first_sep = enc.ids.index(bert.sep_id)
    for i, (start, end) in enumerate(enc.offsets):
        source = text if i <= first_sep else pair
        assert 0 <= start <= end <= len(source)
    bert.decode(enc.ids)


@FUZZ
@given(words=st.lists(greek_or_cyrillic, min_size=1, max_size=6))
def test_wordpiece_words_it_cannot_spell_are_one_unk_each(bert, words):
    enc = bert.encode_text(" ".join(words), max_length=None)
    assert enc.ids == [bert.cls_id, *[bert.unk_id] * len(words), bert.sep_id]
    assert enc.word_ids[1:-1] == list(range(len(words)))


@FUZZ
@given(words=st.lists(st.text(max_size=12), min_size=1, max_size=8))
def test_encode_words_drops_no_word(bert, words):
    """Empty words, whitespace, control characters that BERT's clean-up deletes: each still gets a token."""
    enc = bert.encode_words(words, max_length=None)
    assert sorted({w for w in enc.word_ids if w is not None}) == list(range(len(words)))
    assert len(enc.word_starts()) == len(words)
    assert all(0 <= i < bert.vocab_size for i in enc.ids)


@FEW
@given(rows=st.lists(lines, min_size=1, max_size=12), ending=endings, bom=st.booleans(), gz=st.booleans(),
       kind=st.sampled_from(["gpt2", "gpt", "bert"]))
def test_training_on_any_text_file(tmp_path, rows, ending, bom, gz, kind):
    path = fresh(tmp_path) / ("train.txt.gz" if gz else "train.txt")
    text = "".join(row + ending for row in rows)
    path.write_bytes(encoded(text, bom, gz))
    expected = [row + ending for row in rows]
    expected[0] = unbom(expected[0], bom)
    assert list(_file_lines(path)) == expected  # the BOM is no text, CRLF stays
    tokenizer = Tokenizer.train([path], kind, 2000, min_frequency=1)
    for row in rows:
        ids = tokenizer.encode(row)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        if kind == "gpt2":
            assert tokenizer.decode(ids, skip_special_tokens=False) == row


@FUZZ
@given(data=st.data(), rows=st.lists(lines, min_size=1, max_size=8), ending=endings)
def test_training_file_that_is_not_utf8_names_its_line(tmp_path, data, rows, ending):
    path = fresh(tmp_path) / "train.txt"
    raw = data.draw(corrupted(ending.join(rows)))
    path.write_bytes(raw)
    line, column, byte = first_bad_utf8(raw)
    with pytest.raises(UserError, match=rf"train\.txt:{line}: not valid UTF-8 \(byte 0x{byte:02x} at column "
                                        rf"{column}\)"):
        Tokenizer.train([path], "gpt2", 300)


@FUZZ
@given(tokens=st.lists(text_without("\n\r\ufeff", max_size=6), max_size=12),
       data=st.data(), bom=st.booleans(), ending=endings)
def test_bert_vocab_txt_of_any_lines(tmp_path, tokens, data, bom, ending):
    """A vocab.txt is one token per line, its id the line number from 0; a repeated token keeps its last line's
    id, as in HF, and the warning counts the repeated lines; a missing special token is a UserError."""
    specials = data.draw(st.lists(st.sampled_from(list(BERT_SPECIALS.values())), unique=True))
    vocab = data.draw(st.permutations([*tokens, *specials]))
    folder = fresh(tmp_path)
    (folder / "vocab.txt").write_bytes(encoded("".join(t + ending for t in vocab), bom))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = user_error(lambda: Tokenizer.from_files(folder), folder / "vocab.txt")
    if set(specials) != set(BERT_SPECIALS.values()):
        assert err is not None and "lacks the special tokens" in str(err)
        return
    assert err is None
    tokenizer = Tokenizer.from_files(folder)
    last = {token: i for i, token in enumerate(vocab)}
    assert all(tokenizer.backend.token_to_id(t) == i for t, i in last.items())
    repeats = len(vocab) - len(last)
    said = [str(w.message) for w in caught if "repeat an earlier token" in str(w.message)]
    assert len(said) == (1 if repeats else 0)
    if repeats:
        assert f"vocab.txt: {repeats} line(s) repeat" in said[0]
    text = data.draw(texts)
    assert all(0 <= i < tokenizer.vocab_size for i in tokenizer.encode_text(text, max_length=None).ids)


# ---------------------------------------------------------------------------------------------------- ELMo characters


@FUZZ
@given(word=st.text(max_size=80) | with_surrogate, max_characters=st.integers(3, 60))
def test_elmo_character_ids_of_any_word(word, max_characters):
    chars = word_characters(word, max_characters)
    assert len(chars) == max_characters and all(1 <= c <= PAD_CHAR + 1 for c in chars)
    if word in SPECIALS:
        return
    body = list(word.encode("utf-8", "ignore")[:max_characters - 2])  # AllenNLP's cut, even inside a character
    assert chars[:len(body) + 2] == [BOW_CHAR + 1, *[b + 1 for b in body], EOW_CHAR + 1]
    assert chars[len(body) + 2:] == [PAD_CHAR + 1] * (max_characters - len(body) - 2)


@FUZZ
@given(text=st.text(max_size=120))
def test_elmo_words_of_any_text(text):
    tokenizer = CharTokenizer(list(SPECIALS))
    words = split_words(text)
    assert all(w and not any(c in w for c in " \t\n\r\u2028\u3000") for w in words)
    ids = tokenizer.encode(text)
    assert [tokenizer.words.words[i] for i in ids] == words
    char_ids = tokenizer.char_ids(torch.tensor(ids, dtype=torch.long))
    assert char_ids.shape == (len(words), 50)
    enc = tokenizer.encode_text(text, max_length=7)
    assert len(enc) <= 7 and enc.ids[0] == tokenizer.bos_id and enc.ids[-1] == tokenizer.eos_id


@FUZZ
@given(words=st.lists(st.text(max_size=10), max_size=6), bom=st.booleans(), crlf=st.booleans())
def test_elmo_word_list_saves_and_loads_any_words(tmp_path, words, bom, crlf):
    """Words given by the caller grow the open word list; saving keeps them all, or refuses a word with a line break
    before writing anything."""
    tokenizer = CharTokenizer(list(SPECIALS))
    tokenizer.encode_words_batch([words])
    folder = fresh(tmp_path)
    if any("\n" in w or "\r" in w for w in words):
        with pytest.raises(UserError, match="holds a line break"):
            tokenizer.save(folder)
        assert not (folder / "words.txt").exists()
        return
    tokenizer.save(folder)
    if bom or crlf:  # as an editor may write the file back
        text = (folder / "words.txt").read_text(encoding="utf-8")
        (folder / "words.txt").write_bytes(encoded(text.replace("\n", "\r\n") if crlf else text, bom))
    assert CharTokenizer.from_files(folder).words.words == tokenizer.words.words


@FUZZ
@given(config=json_values | st.fixed_dictionaries({"vocab_size": st.integers(-1, 12) | json_scalars,
                                                  "max_characters": st.integers(0, 60) | json_scalars}),
       words=st.lists(lines, max_size=6))
def test_elmo_tokenizer_files_of_any_content(tmp_path, config, words):
    folder = fresh(tmp_path)
    (folder / "words.txt").write_text("".join(w + "\n" for w in [*SPECIALS, *words]), encoding="utf-8")
    write_json(folder / "char_tokenizer.json", config)
    err = user_error(lambda: CharTokenizer.from_files(folder), folder)
    if err is None:
        loaded = CharTokenizer.from_files(folder)
        assert loaded.words.words == [*SPECIALS, *words]
        shape = loaded.char_ids(torch.arange(len(loaded.words))).shape
        assert shape == (len(loaded.words), loaded.words.max_characters)
    elif len(set(words) | set(SPECIALS)) < len(words) + len(SPECIALS):
        assert "appears twice" in str(err) or "char_tokenizer.json" in str(err)


# ------------------------------------------------------------------------------------------------ Transformer-XL words


def vocab_lines(draw) -> list[str]:
    words = draw(st.lists(text_without("\n\r\ufeff", max_size=6), max_size=8))
    return draw(st.permutations([*words, *draw(st.lists(st.sampled_from(["<eos>", "<unk>", "", "  "]), max_size=4))]))


@FUZZ
@given(data=st.data(), bom=st.booleans(), ending=endings)
def test_word_vocab_txt_errors_name_the_line(tmp_path, data, bom, ending):
    """vocab.txt: the first field of every non-blank line; a repeated word names both lines."""
    rows = vocab_lines(data.draw)
    path = fresh(tmp_path) / "vocab.txt"
    path.write_bytes(encoded("".join(r + ending for r in rows), bom))
    kept = [(n, r.split()[0]) for n, r in enumerate(rows, 1) if r.split()]
    err = user_error(lambda: WordTokenizer.from_vocab_file(path), path)
    seen: dict[str, int] = {}
    for number, word in kept:
        if word in seen:
            assert err is not None and f"vocab.txt:{number}: {word!r} appears twice" in str(err)
            assert f"first at line {seen[word]}" in str(err)
            return
        seen[word] = number
    if "<eos>" not in seen or "<unk>" not in seen:
        assert err is not None and "token" in str(err) and "in the vocabulary" in str(err)
        return
    assert err is None
    tokenizer = WordTokenizer.from_vocab_file(path)
    assert tokenizer.words == [w for _, w in kept]
    text = data.draw(texts)
    assert tokenizer.decode(tokenizer.encode(text)) == " ".join(w if w in seen else "<unk>" for w in text.split()
                                                                if w != "<eos>")


@FUZZ
@given(data=st.data(), bom=st.booleans(), ending=endings)
def test_saved_word_vocab_errors_name_the_line(tmp_path, data, bom, ending):
    """word_vocab.txt: line n is id n - 1, exactly one word per line."""
    rows = vocab_lines(data.draw)
    folder = fresh(tmp_path)
    (folder / "word_vocab.txt").write_bytes(encoded("".join(r + ending for r in rows), bom))
    (folder / "word_tokenizer.json").write_text('{"kind": "transformer-xl"}')
    err = user_error(lambda: WordTokenizer.from_files(folder), folder / "word_vocab.txt")
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        if not row or row.split() != [row]:
            assert err is not None and f"word_vocab.txt:{number}: {row!r} is not one word" in str(err)
            return
        if row in seen:
            assert err is not None and f"word_vocab.txt:{number}: {row!r} appears twice" in str(err)
            return
        seen.add(row)
    assert (err is None) == ({"<eos>", "<unk>"} <= seen)
    if err is None:
        assert WordTokenizer.from_files(folder).words == rows


@FUZZ
@given(data=st.data(), name=st.sampled_from(["vocab.txt", "word_vocab.txt", "words.txt"]))
def test_word_lists_not_utf8_name_line_and_column(tmp_path, data, name):
    """Transformer-XL's vocab.txt and word_vocab.txt, ELMo's words.txt."""
    folder = fresh(tmp_path)
    raw = data.draw(corrupted("<eos>\n<unk>\n" + "\n".join(data.draw(st.lists(lines, max_size=4)))))
    (folder / name).write_bytes(raw)
    (folder / "word_tokenizer.json").write_text('{"kind": "transformer-xl"}')
    (folder / "char_tokenizer.json").write_text('{"vocab_size": 4, "max_characters": 50}')
    line, column, byte = first_bad_utf8(raw)
    load = {"vocab.txt": lambda: WordTokenizer.from_vocab_file(folder / name),
            "word_vocab.txt": lambda: WordTokenizer.from_files(folder),
            "words.txt": lambda: CharTokenizer.from_files(folder)}[name]
    with pytest.raises(UserError, match=rf"{name}:{line}: not valid UTF-8 \(byte 0x{byte:02x} at column {column}\)"):
        load()


# -------------------------------------------------------------------------------------------------- pretraining corpus

files = st.lists(st.tuples(st.text(max_size=80) | st.sampled_from(["", " \n\t\r\n", "\n\n"]), st.booleans(),
                           st.booleans()), min_size=1, max_size=5)


@FUZZ
@given(corpus=files)
def test_read_documents_gives_each_file_exactly_and_counts_blank_ones(tmp_path, corpus):
    """Each file with text comes back whole (CRLF, NUL past the sniffed head, U+2028 and all), its BOM dropped;
    blank files are counted and reported; a NUL in the first 8 KiB is a binary file."""
    folder = fresh(tmp_path)
    expected, blank, binary = [], [], None
    for i, (text, bom, gz) in enumerate(corpus):
        path = folder / f"{i:02d}.txt{'.gz' if gz else ''}"
        path.write_bytes(encoded(text, bom, gz))
        content = (("\ufeff" if bom else "") + text).removeprefix("\ufeff")
        if binary is None and b"\0" in encoded(text, bom)[:8192]:
            binary = path
        (expected if content.strip() else blank).append(content if content.strip() else path)
    documents = read_documents(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = user_error(lambda: list(documents), folder)
    if binary is not None:
        assert err is not None and re.search(rf"{binary.name}: looks like a binary file", str(err))
        return
    if not expected:
        assert err is not None and f"no text, all {len(corpus)} file(s) are empty or whitespace" in str(err)
        return
    assert err is None and list(documents) == expected and documents.blank_files == blank
    said = [str(w.message) for w in caught]
    assert said == ([f"{folder}: skipped {len(blank)} of {len(corpus)} files, empty or whitespace only: "
                     f"{', '.join(p.name for p in blank[:3])}{', ...' if len(blank) > 3 else ''}"] if blank else [])


@FUZZ
@given(data=st.data(), text=text_without("\x00", max_size=60), gz=st.booleans(),
       bom=st.booleans())
def test_read_documents_not_utf8_names_line_and_column(tmp_path, data, text, gz, bom):
    path = fresh(tmp_path) / f"doc.txt{'.gz' if gz else ''}"
    raw = ("\ufeff".encode() if bom else b"") + data.draw(corrupted(text))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    line, column, byte = first_bad_utf8(raw)
    with pytest.raises(UserError, match=rf"{re.escape(path.name)}:{line}: not valid UTF-8 \(byte 0x{byte:02x} at "
                                        rf"column {column}\)"):
        list(read_documents(path))


@FUZZ
@given(text=st.text(max_size=40).filter(lambda t: not t.startswith("\x00")),
       codec=st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
def test_utf16_and_utf32_files_are_named_as_such(tmp_path, text, codec):
    """With a BOM (which Windows writes) the error says which encoding it is; without, it is not UTF-8 or binary."""
    folder = fresh(tmp_path)
    bom = {"utf-16-le": "\ufeff".encode("utf-16-le"), "utf-16-be": "\ufeff".encode("utf-16-be")}.get(codec, b"")
    raw = bom + text.encode(codec)
    for name, read in [("doc.txt", lambda p: list(read_documents(p))),
                       ("task.csv", lambda p: _user_examples(p, UserTaskOptions())),
                       ("texts.txt", lambda p: read_texts(str(p), "lines"))]:
        path = folder / name
        path.write_bytes(raw)
        err = user_error(lambda: read(path), path)  # noqa: B023 - called at once
        assert err is not None
        assert f"it is {codec[:6].upper()} text, by its byte-order mark" in str(err)


@FEW
@given(corpus=files, chunk=st.sampled_from([1, 7, 1 << 16]))
def test_token_cache_is_every_nonblank_file_in_order_and_counts_the_blank_ones(tmp_path, corpus, chunk):
    folder = fresh(tmp_path)
    expected, blank = [], 0
    for i, (text, bom, gz) in enumerate(corpus):
        text = text.replace("\x00", "")
        (folder / f"{i:02d}.txt{'.gz' if gz else ''}").write_bytes(encoded(text, bom, gz))
        text = unbom(text, bom)
        if text.strip():
            expected += [ord(c) % 251 for c in text] + [255]
        else:
            blank += 1

    def build():
        return TokenizedCorpus.build(folder, lambda batch: [[ord(c) % 251 for c in t] for t in batch], 256,
                                     folder / "cache", fingerprint="ord", end_of_document=[255], chunk_chars=chunk,
                                     show_progress=False)

    if not expected:
        with pytest.raises(UserError, match="no text, all"):
            build()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = build()
    assert np.array_equal(built.ids, expected) and built.meta["blank_files"] == blank
    assert [str(w.message) for w in caught] == ([f"{folder}: skipped {blank} of {len(corpus)} files, empty or "
                                                 "whitespace only"] if blank else [])


# ---------------------------------------------------------------------------------------------------- task files

labels = st.one_of(st.text(max_size=4), st.sampled_from(["pos", "neg", " 1 ", ""]))


@FUZZ
@given(rows=st.lists(st.tuples(texts, texts, labels), min_size=1, max_size=8), ending=endings, bom=st.booleans(),
       gz=st.booleans())
def test_user_csv_gives_every_row_back(tmp_path, rows, ending, bom, gz):
    """Quotes, commas, line breaks and NUL inside fields; the label's surrounding space is dropped; a row without a
    label is an error at its line."""
    out = io.StringIO()
    # Python 3.11's writer leaves a lone "\r" unquoted unless it is in the line terminator: quote all fields then.
    writer = csv.writer(out, lineterminator=ending, quoting=csv.QUOTE_MINIMAL if ending == "\r\n" else csv.QUOTE_ALL)
    writer.writerows([("text", "other", "label"), *rows])
    path = fresh(tmp_path) / f"task.csv{'.gz' if gz else ''}"
    path.write_bytes(encoded(out.getvalue(), bom, gz))
    options = UserTaskOptions(text_pair_column="other")
    missing = next((i for i, (_, _, label) in enumerate(rows) if not label.strip()), None)
    single_lines = not any(c in "".join(a + b + c for a, b, c in rows) for c in "\r\n")
    if missing is not None:
        where = rf":{missing + 2}" if single_lines else r":\d+"
        with pytest.raises(UserError, match=rf"{re.escape(path.name)}{where}: no label in 'label'"):
            _user_examples(path, options)
        return
    examples = _user_examples(path, options)
    assert [(e.texts, e.label) for e in examples] == [((a, b), label.strip()) for a, b, label in rows]
    if single_lines:
        assert [e.source for e in examples] == [f"{path}:{i + 2}" for i in range(len(rows))]


@FUZZ
@given(rows=st.lists(st.tuples(text_without("\t\n\r", max_size=30),
                               labels.map(lambda s: re.sub(r"[\t\n\r]", "", s))),
                     min_size=1, max_size=8), blanks=st.lists(st.integers(0, 8), max_size=3), ending=endings)
def test_user_tsv_rows_and_line_numbers(tmp_path, rows, blanks, ending):
    """Tabs alone split fields (quotes are text); blank lines are no rows and keep the line numbers right."""
    body = [f"{text}\t{label}" for text, label in rows]
    for at in sorted(blanks, reverse=True):
        body.insert(min(at, len(body)), "")
    path = fresh(tmp_path) / "task.tsv"
    path.write_bytes(encoded("".join(line + ending for line in ["text\tlabel", *body])))
    numbered = [(n, line) for n, line in enumerate(body, 2) if line]
    bad = next(((n, line) for n, line in numbered if not line.split("\t")[1].strip()), None)
    err = user_error(lambda: _user_examples(path, UserTaskOptions()), path)
    if bad is not None:
        assert err is not None and f"task.tsv:{bad[0]}: no label in 'label'" in str(err)
        return
    assert err is None
    examples = _user_examples(path, UserTaskOptions())
    assert examples == [Example((line.split("\t")[0],), line.split("\t")[1].strip(), f"{path}:{n}")
                        for n, line in numbered]


@FUZZ
@given(header=st.lists(st.sampled_from(["text", "label", "other", "id", " text"]), min_size=1, max_size=5),
       pair=st.booleans(), delimiter=st.sampled_from([",", "\t"]))
def test_user_file_columns_missing_or_repeated(tmp_path, header, pair, delimiter):
    path = fresh(tmp_path) / ("task.csv" if delimiter == "," else "task.tsv")
    path.write_text(delimiter.join(header) + "\n" + delimiter.join(f"v{i}" for i in range(len(header))) + "\n")
    wanted = ["text", *(["other"] if pair else []), "label"]
    err = user_error(lambda: _user_examples(path, UserTaskOptions(text_pair_column="other" if pair else None)), path)
    wrong = next((c for c in wanted if header.count(c) != 1), None)  # checked in this order
    if wrong is None:
        assert err is None
    else:
        assert err is not None
        assert (f"no column {wrong!r}" if wrong not in header else f"names column {wrong!r} ") in str(err)


@FUZZ
@given(train=st.lists(st.sampled_from(["pos", "neg", "1", "10"]), min_size=1, max_size=5),
       dev=st.lists(st.sampled_from(["pos", "neg", "neutral", "1", "10", "2"]), min_size=1, max_size=5))
def test_dev_label_unseen_in_training_names_its_line(tmp_path, train, dev):
    folder = fresh(tmp_path)
    for name, labels_ in (("train.csv", train), ("dev.csv", dev)):
        (folder / name).write_text("text,label\n" + "".join(f"t{i},{label}\n" for i, label in enumerate(labels_)))
    options = UserTaskOptions(dev_path=str(folder / "dev.csv"))
    unseen = next((i for i, label in enumerate(dev) if label not in train), None)
    if unseen is not None:
        with pytest.raises(UserError, match=rf"dev\.csv:{unseen + 2}: label {dev[unseen]!r} does not occur in the "
                                            "training data"):
            load_task(f"csv:{folder / 'train.csv'}", csv_options=options)
        return
    data = load_task(f"csv:{folder / 'train.csv'}", csv_options=options)
    assert [data.spec.labels[e.label] for e in data.dev] == dev


def test_user_csv_field_longer_than_csv_default_limit(tmp_path):
    long = "word " * 40_000  # 200 000 characters on one line: the csv module's default limit is 131 072
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long}",a\nshort,b\n', encoding="utf-8")
    examples = _user_examples(path, UserTaskOptions())
    assert [len(e.texts[0]) for e in examples] == [len(long), 5]


record_values = st.fixed_dictionaries({"text": texts | with_surrogate, "label": st.one_of(
    labels, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))})


def record_error(record: dict) -> str | None:
    """What the reader must say about the label of one record, or None: a model of `_user_examples`."""
    label = record["label"]
    if label is None or str(label).strip() == "":
        return "no label in 'label'"
    if not isinstance(label, str | int | float):
        return "should be a string or a number"
    return None


@FUZZ
@given(records=st.lists(record_values | json_values, min_size=1, max_size=6), ascii=st.booleans(), bom=st.booleans(),
       blank=st.sampled_from(["", "  ", "\t"]), ending=endings, as_array=st.booleans())
def test_user_jsonl_and_json_array_records(tmp_path, records, ascii, bom, blank, ending, as_array):
    path = fresh(tmp_path) / "task.jsonl"

    def dump(r):
        return json.dumps(r, ensure_ascii=ascii or has_surrogate(r))

    if as_array:  # one element per line, after a line with "["
        body = ["[", *[dump(r) + ("," if i < len(records) - 1 else "") for i, r in enumerate(records)], "]"]
        first = 2
    else:
        body = [line for r in records for line in (dump(r), blank)]
        first = 1
    path.write_bytes(encoded(ending.join(body) + ending, bom))
    err = user_error(lambda: _user_examples(path, UserTaskOptions()), path)
    if not as_array and isinstance(records[0], list):  # JSON lines that start with "[" read as one JSON array
        assert err is not None
        return
    for i, record in enumerate(records):
        line = first + i * (1 if as_array else 2)
        if has_surrogate(record):
            problem = "half of a UTF-16 surrogate pair"
        elif not isinstance(record, dict):
            problem = "expected a JSON object"
        elif not {"text", "label"} <= record.keys():
            problem = "no field"
        elif not isinstance(record["text"], str):
            problem = "should be strings"
        else:
            problem = record_error(record)
        if problem is not None:
            assert err is not None and f"task.jsonl:{line}: " in str(err) and problem in str(err), (err, problem)
            return
    assert err is None
    examples = _user_examples(path, UserTaskOptions())
    assert [(e.texts, e.label, e.source) for e in examples] == [
        ((r["text"],), str(r["label"]).strip(), f"{path}:{first + i * (1 if as_array else 2)}")
        for i, r in enumerate(records)]


@FUZZ
@given(first=st.lists(st.fixed_dictionaries({"text": texts, "label": st.just("a")}), min_size=1, max_size=3),
       second=st.lists(st.fixed_dictionaries({"text": texts, "label": st.just("b")}), max_size=3))
def test_json_array_followed_by_more_text_is_an_error(tmp_path, first, second):
    """Two arrays in one file: the second one's examples must not vanish."""
    path = fresh(tmp_path) / "task.json"
    path.write_text(json.dumps(first) + "\n" + (json.dumps(second) if second else "  \n"), encoding="utf-8")
    if not second:
        assert len(_user_examples(path, UserTaskOptions())) == len(first)
        return
    with pytest.raises(UserError, match=r"task\.json:2: text after the end of the JSON array"):
        _user_examples(path, UserTaskOptions())


@FUZZ
@given(scores=st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(["nan", "inf", "-Infinity",
                                                                                          "3.5", "x"]),
                       min_size=2, max_size=6))
def test_regression_scores_must_be_finite_numbers(tmp_path, scores):
    path = fresh(tmp_path) / "scores.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{s}\n" for i, s in enumerate(scores)), encoding="utf-8")

    def finite(s) -> bool:
        try:
            return math.isfinite(float(s))
        except ValueError:
            return False

    options = UserTaskOptions(regression=True, dev_path=str(path))
    bad = next((i for i, s in enumerate(scores) if not finite(s)), None)
    if bad is None:
        data = load_task(f"csv:{path}", csv_options=options)
        assert [e.label for e in data.dev] == [float(s) for s in scores]
    else:
        with pytest.raises(UserError, match=rf"scores\.csv:{bad + 2}: label .* is not a number"):
            load_task(f"csv:{path}", csv_options=options)


@FUZZ
@given(rows=st.lists(st.lists(text_without("\t\n\r", max_size=8), min_size=1,
                              max_size=4) | st.just([]), min_size=1, max_size=8))
def test_glue_tsv_field_counts_and_line_numbers(tmp_path, rows):
    """A GLUE file: a header, then rows of exactly two tab-separated fields; whitespace-only lines are blank."""
    path = fresh(tmp_path) / "train.tsv"
    body = ["\t".join(fields) for fields in rows]
    path.write_bytes(encoded("sentence\tlabel\n" + "\n".join(body) + "\n"))
    numbered = [(n, line) for n, line in enumerate(body, 2) if line.strip()]
    err = user_error(lambda: _Glue(2, (0,), 1).read(path), path)
    bad = next(((n, line) for n, line in numbered if len(line.split("\t")) != 2), None)
    if bad is not None:
        assert err is not None and f"train.tsv:{bad[0]}: expected 2 tab-separated fields, got" in str(err)
    elif not numbered:
        assert err is not None and "no examples" in str(err)
    else:
        assert err is None
        got = _Glue(2, (0,), 1).read(path)
        assert [(e.texts[0], e.label, e.source) for e in got] == [
            (line.split("\t")[0].strip(), line.split("\t")[1].strip(), f"{path}:{n}") for n, line in numbered]


@FUZZ
@given(sentences=st.lists(st.lists(st.lists(st.text(st.characters(categories=["L", "N", "P"]), min_size=1,
                                                    max_size=5), min_size=3, max_size=5), min_size=1, max_size=4),
                          min_size=1, max_size=4), ending=endings)
def test_conll_columns_and_line_numbers(tmp_path, sentences, ending):
    path = fresh(tmp_path) / "valid.txt"
    text_lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        text_lines += [" ".join(token) for token in sentence] + [""]
    path.write_bytes(encoded(ending.join(text_lines)))
    err = user_error(lambda: _conll(path), path)
    bad = next((n for n, line in enumerate(text_lines, 1) if line and len(line.split()) != 4), None)
    if bad is not None:
        assert err is not None and f"valid.txt:{bad}: expected 4 space-separated columns" in str(err)
        return
    assert err is None
    assert [(e.texts, e.label) for e in _conll(path)] == [
        (tuple(t[0] for t in s), tuple(t[3] for t in s)) for s in sentences]


ARC = {"question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"}
COPA = {"id": 401, "premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.",
        "question": "cause", "label": 0}


@FUZZ
@given(data=st.data(), as_array=st.booleans())
def test_choice_question_files_mutated(tmp_path, data, as_array):
    items = [data.draw(mutated(ARC)) if data.draw(st.booleans()) else ARC for _ in range(data.draw(st.integers(1, 3)))]
    path = fresh(tmp_path) / ("q.json" if as_array else "q.jsonl")
    path.write_text(json.dumps(items) if as_array else "".join(json.dumps(i) + "\n" for i in items))
    err = user_error(lambda: _choice_questions(path), path)
    if err is None:
        for example in _choice_questions(path):
            assert all(isinstance(t, str) for t in example.texts) and 0 <= example.label < len(example.texts) - 1


@FUZZ
@given(data=st.data())
def test_copa_file_mutated(tmp_path, data, monkeypatch):
    root = fresh(tmp_path)
    monkeypatch.setenv("CTXLM_DATA", str(root))
    (root / "copa").mkdir()
    items = [COPA, {**COPA, "id": 1}, data.draw(mutated(COPA))]
    path = root / "copa" / "copa_dev.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    err = user_error(_read_copa, path)
    if err is None:
        train, dev, _ = _read_copa()
        for example in train + dev:
            assert all(isinstance(t, str) for t in example.texts) and example.label in (0, 1)


# -------------------------------------------------------------------------------------------------- question answering


@st.composite
def squad_files(draw):
    """A valid SQuAD file of random text (answers at their true offsets) and the questions it holds."""
    articles, questions = [], []
    for a in range(draw(st.integers(1, 3))):
        paragraphs = []
        for p in range(draw(st.integers(1, 2))):
            context = draw(st.text(min_size=1, max_size=50) | with_surrogate.map(lambda s: "x" + s))
            qas = []
            for q in range(draw(st.integers(0, 2))):
                start = draw(st.integers(0, len(context) - 1))
                end = draw(st.integers(start + 1, len(context)))
                qid = f"{a}-{p}-{q}"
                qas.append({"id": qid, "question": draw(texts), "answers": [{"text": context[start:end],
                                                                              "answer_start": start}]})
                questions.append((qid, context, context[start:end], start))
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"t{a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": articles}, questions


@FUZZ
@given(squad=squad_files(), bom=st.booleans(), gz=st.booleans())
def test_squad_gives_every_question_or_names_the_surrogate(tmp_path, squad, bom, gz):
    doc, expected = squad
    path = fresh(tmp_path) / f"squad.json{'.gz' if gz else ''}"
    path.write_bytes(encoded(json.dumps(doc), bom, gz))
    err = user_error(lambda: read_squad(path), path)
    if has_surrogate(doc):
        assert err is not None and "half of a UTF-16 surrogate pair" in str(err)
    elif not expected:
        assert err is not None and "no questions" in str(err)
    else:
        assert err is None
        got = read_squad(path)
        assert [(q.id, q.context, *q.answers[0]) for q in got] == expected
        assert read_questions(path) == got


@FUZZ
@given(data=st.data())
def test_squad_mutated_is_read_or_refused(tmp_path, data):
    template = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Ada wrote it.", "qas": [
        {"id": "q1", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]},
        {"id": "q2", "question": "What?", "answers": [{"text": "it", "answer_start": 10}], "is_impossible": False}]}]}]}
    path = write_json(fresh(tmp_path) / "squad.json", data.draw(mutated(template)))
    allow = data.draw(st.booleans())
    err = user_error(lambda: read_squad(path, allow_no_answer=allow), path)
    user_error(lambda: read_questions(path), path)
    if err is None:
        for q in read_squad(path, allow_no_answer=allow):
            assert all(isinstance(field, str) for field in (q.title, q.question, q.context, q.id))
            assert all(isinstance(t, str) and t and q.context[s:s + len(t)] == t and s >= 0 for t, s in q.answers)


COQA = {"version": "1.0", "data": [{"id": "s1", "story": "Ada wrote a book.", "questions": [
    {"turn_id": 1, "input_text": "Who wrote?"}, {"turn_id": 2, "input_text": "What?"}], "answers": [
    {"turn_id": 1, "input_text": "Ada"}, {"turn_id": 2, "input_text": "a book"}]}]}


@FUZZ
@given(data=st.data())
def test_coqa_mutated_is_read_or_refused(tmp_path, data):
    doc = data.draw(mutated(COQA))
    path = write_json(fresh(tmp_path) / "coqa.json", doc, bom=data.draw(st.booleans()))
    err = user_error(lambda: read_coqa(path), path)
    user_error(lambda: read_questions(path), path)
    if err is None:
        got = read_coqa(path)
        assert len({q.id for q in got}) == len(got)  # a repeated turn or story would make two questions one
        for q in got:
            assert isinstance(q.question, str) and isinstance(q.context, str) and isinstance(q.answers[0][0], str)
        stories = doc["data"]
        assert len(got) == sum(len(s["questions"]) for s in stories)  # no question, and no answer, left out
        assert len(got) == sum(len(s["answers"]) for s in stories)


@FUZZ
@given(items=st.lists(st.one_of(st.fixed_dictionaries({"question": texts, "context": texts}), json_values,
                                st.just(""), st.just("  "), lines.map(lambda s: "#" + s)), min_size=1, max_size=6),
       bom=st.booleans())
def test_read_pairs_of_any_lines(items, bom):
    rows = [i if isinstance(i, str) and (not i.strip() or i.startswith("#")) else json.dumps(i) for i in items]
    text = "".join(r + "\n" for r in rows)
    stream = io.StringIO(("\ufeff" if bom else "") + text)
    expected, bad = [], None
    for number, (item, row) in enumerate(zip(items, rows, strict=True), 1):
        if not row.strip():
            continue
        if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str) \
                and not has_surrogate([item["question"], item["context"]]):
            expected.append((item["question"], item["context"]))
        else:
            bad = number
            break
    err = user_error(lambda: read_pairs(stream, "pairs.jsonl"), "pairs.jsonl")
    if bad is not None:
        assert err is not None and str(err).startswith(f"pairs.jsonl:{bad}: ")
    else:
        assert err is None
        assert read_pairs(io.StringIO(("\ufeff" if bom else "") + text), "pairs.jsonl") == expected


# ---------------------------------------------------------------------------------------------------- texts to embed


@FUZZ
@given(rows=st.lists(lines, max_size=8), ending=endings, final=st.booleans(), bom=st.booleans())
def test_embed_reads_every_line_as_a_text(tmp_path, rows, ending, final, bom):
    """Row i is line i: blank lines too; the line ending alone is removed (U+2028, NUL, a "\\r" inside stay)."""
    path = fresh(tmp_path) / "texts.txt"
    text = ending.join(rows) + (ending if final and rows else "")
    path.write_bytes(encoded(text, bom))
    expected = [piece.removesuffix("\r") for piece in unbom(text, bom).split("\n")]
    if expected and expected[-1] == "":
        expected.pop()
    err = user_error(lambda: read_texts(str(path), None), path)
    if not expected:
        assert err is not None and "no texts to embed" in str(err)
    else:
        assert err is None and read_texts(str(path), None) == expected


@FUZZ
@given(data=st.data(), rows=st.lists(lines, min_size=1, max_size=5), fmt=st.sampled_from(["lines", "jsonl"]))
def test_embed_input_not_utf8_names_line_and_column(tmp_path, data, rows, fmt):
    if fmt == "jsonl":
        rows = [json.dumps({"text": r}, ensure_ascii=False) for r in rows]
    raw = data.draw(corrupted("\n".join(rows)))
    path = fresh(tmp_path) / "texts.txt"
    path.write_bytes(raw)
    line, column, byte = first_bad_utf8(raw)
    with pytest.raises(UserError, match=rf"texts\.txt:{line}: not valid UTF-8 \(byte 0x{byte:02x} at column "
                                        rf"{column}\)"):
        read_texts(str(path), fmt)


@FUZZ
@given(items=st.lists(st.fixed_dictionaries({"text": texts | with_surrogate}) | json_values | st.just(""),
                      min_size=1, max_size=6), bom=st.booleans())
def test_embed_jsonl_texts(tmp_path, items, bom):
    path = fresh(tmp_path) / "texts.jsonl"
    rows = ["" if item == "" else json.dumps(item) for item in items]
    path.write_bytes(encoded("".join(r + "\n" for r in rows), bom))
    expected, problem = [], None
    for number, (item, row) in enumerate(zip(items, rows, strict=True), 1):
        if not row:
            continue
        if not (isinstance(item, dict) and isinstance(item.get("text"), str)):
            problem = (number, 'expected a JSON object with a "text" string')
            break
        if has_surrogate(item["text"]):
            problem = (number, "half of a UTF-16 surrogate pair")
            break
        expected.append(item["text"])
    err = user_error(lambda: read_texts(str(path), None), path)
    if problem is not None:
        assert err is not None and f"texts.jsonl:{problem[0]}: " in str(err) and problem[1] in str(err)
    elif not expected:
        assert err is not None and "no texts to embed" in str(err)
    else:
        assert err is None and read_texts(str(path), None) == expected


def test_surrogate_pairs_are_no_false_alarm(tmp_path):
    """An emoji written by json.dumps is two \\u escapes, high then low: a character, not an error."""
    path = tmp_path / "texts.jsonl"
    path.write_text(json.dumps({"text": "smile \U0001f642"}) + "\n", encoding="utf-8")
    assert "\\ud83d\\ude42" in path.read_text()
    assert read_texts(str(path), None) == ["smile \U0001f642"]
