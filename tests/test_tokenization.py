"""Tokenizer: training, save/load, GPT §3.3 input formats, user errors, and parity with transformers.

transformers 5 no longer ships the pure-Python ("slow") GPT / GPT-2 tokenisers: `GPT2Tokenizer` is the same
Rust-backed class as `GPT2TokenizerFast`, and `OpenAIGPTTokenizer` too. So besides comparing with them, the
parity tests run small pure-Python re-implementations of the published algorithms: OpenAI's GPT-2
`encoder.py` (regex split, byte-to-unicode map, rank-ordered merges) and HF's former slow
`OpenAIGPTTokenizer` without ftfy/spaCy (BERT `BasicTokenizer`, lower-cased, then BPE with "</w>").
"""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, trainers

from ctxlm.errors import UserError
from ctxlm.tokenizers import EOS, TASK_TOKENS, UNK, Tokenizer
from ctxlm.tokenizers.protocol import longest_first

WORDS = [
    "the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from",
    "it", "he", "she", "they", "we", "you", "this", "that", "model", "language", "learning",
    "transformer", "attention", "network", "data", "text", "word", "token", "sentence", "paper",
    "result", "river", "bank", "money", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat",
    "sat", "mat", "running", "runner", "ran", "happily", "unhappiness", "reading", "readers", "London",
    "Paris", "Alice", "Bob", "GPT", "café", "naïve",
]

SENTENCES = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "HELLO World, it's 3:45pm -- don't stop; we'll see (really?) #tag @user 100% $3.50...",
    "Multiple   spaces\tand\ttabs\nand\n\nnew lines   ",
    "Unicode: café, naïve, Ünïcödé, 日本語, Ελληνικά, emoji 🙂👍, “curly quotes”, em—dash",
    "  leading spaces and trailing  ",
    "",
]


def _corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """English-like lines: sentences of corpus words with capitals, digits, punctuation, contractions."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            extra = rng.choice(["don't", "it's", "we'll", str(rng.randint(0, 999))])
            words.insert(rng.randrange(len(words)), extra)
        text = " ".join(words)
        lines.append(text[0].upper() + text[1:] + rng.choice([".", "!", "?", ", too.", "..."]) + "\n")
    return lines


CORPUS = _corpus()


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.train(iter(CORPUS), "gpt2", 400)


@pytest.fixture(scope="module")
def gpt() -> Tokenizer:
    return Tokenizer.train(iter(CORPUS), "gpt", 300)


def _published(directory: Path, kind: str) -> Path:
    """vocab.json + merges.txt as OpenAI published them: special tokens (<|endoftext|>, or <unk> for GPT) but
    no task tokens. Trained with raw `tokenizers`, independently of ctxlm.tokenizers."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    if kind == "gpt2":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        backend = Backend(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[UNK], end_of_word_suffix="</w>",
                                      show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    backend.model.save(str(directory))  # writes vocab.json and merges.txt (with a "#version" header)
    return directory


def _read_vocab_merges(directory: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return vocab, {pair: rank for rank, pair in enumerate(merges)}


# ---- training ----------------------------------------------------------------------------------------


def test_trained_vocabulary_size_and_special_tokens(gpt2: Tokenizer, gpt: Tokenizer) -> None:
    assert gpt2.vocab_size == 400 == len(gpt2.backend.get_vocab(with_added_tokens=True))
    assert gpt.vocab_size == 300 == len(gpt.backend.get_vocab(with_added_tokens=True))
    # The trainer puts the special tokens first, in the documented order.
    assert [gpt2.eos_id, gpt2.start_id, gpt2.delimiter_id, gpt2.extract_id] == [0, 1, 2, 3]
    assert [gpt.unk_id, gpt.eos_id, gpt.start_id, gpt.delimiter_id, gpt.extract_id] == [0, 1, 2, 3, 4]
    assert gpt2.pad_id == gpt2.eos_id and gpt2.unk_id is None
    assert gpt.pad_id == gpt.unk_id


def test_small_corpus_gives_at_most_the_vocab_size() -> None:
    tok = Tokenizer.train(iter(CORPUS[:50]), "gpt2", 5000)
    assert 260 < tok.vocab_size < 5000


@pytest.mark.parametrize(("kind", "size"), [("gpt2", 259), ("gpt", 5), ("gpt", 20), ("bert", 20), ("wordpiece", 1000)])
def test_impossible_vocab_size_or_unknown_kind(kind: str, size: int) -> None:
    with pytest.raises(UserError, match="vocab_size|kind"):
        Tokenizer.train(iter(CORPUS), kind, size)


def test_training_from_txt_and_gz_files_equals_in_memory(tmp_path: Path, gpt2: Tokenizer) -> None:
    half = len(CORPUS) // 2
    (tmp_path / "a.txt").write_text("".join(CORPUS[:half]), encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(CORPUS[half:]))
    from_files = Tokenizer.train([tmp_path / "a.txt", str(tmp_path / "b.txt.gz")], "gpt2", 400)
    assert from_files.backend.get_vocab() == gpt2.backend.get_vocab()
    assert from_files.encode(SENTENCES[0]) == gpt2.encode(SENTENCES[0])


def test_training_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"fine line\ncaf\xe9\n")
    with pytest.raises(UserError, match=r"latin1\.txt:2: not valid UTF-8"):
        Tokenizer.train([bad], "gpt2", 300)
    broken_gz = tmp_path / "broken.txt.gz"
    broken_gz.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"broken\.txt\.gz"):
        Tokenizer.train([broken_gz], "gpt2", 300)
    # A list is a list of paths: a sentence is not silently trained on as a file name.
    with pytest.raises(UserError, match="no such training file.*iterator"):
        Tokenizer.train(["the cat sat on the mat"], "gpt2", 300)
    with pytest.raises(UserError, match="expected str"):
        Tokenizer.train(iter([b"bytes"]), "gpt2", 300)


# ---- encoding and decoding ---------------------------------------------------------------------------


def test_gpt2_round_trip_is_exact(gpt2: Tokenizer) -> None:
    for text in [*SENTENCES, "\x00\x01 control \r\n bytes \ufffd", CORPUS[7]]:
        assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt_round_trip_is_lower_cased_and_space_separated(gpt: Tokenizer) -> None:
    assert gpt.decode(gpt.encode("The Cat sat, on the MAT!")) == "the cat sat , on the mat !"
    text = CORPUS[3]
    normalized = gpt.backend.normalizer.normalize_str(text)
    words = [w for w, _ in gpt.backend.pre_tokenizer.pre_tokenize_str(normalized)]
    assert gpt.decode(gpt.encode(text)) == " ".join(words)
    assert gpt.encode("Naïve") == gpt.encode("naive")  # accents stripped, as HF openai-gpt


def test_special_tokens_decode_and_batch(gpt2: Tokenizer) -> None:
    ids = gpt2.encode_for_lm("the cat")
    assert ids == [*gpt2.encode("the cat"), gpt2.eos_id]
    assert gpt2.decode(ids) == "the cat"
    assert gpt2.decode(ids, skip_special_tokens=False) == "the cat" + EOS
    assert gpt2.encode_batch(SENTENCES) == [gpt2.encode(s) for s in SENTENCES]
    with pytest.raises(UserError, match="outside the vocabulary"):
        gpt2.decode([1, gpt2.vocab_size])


def test_task_formats_are_exact(gpt: Tokenizer, gpt2: Tokenizer) -> None:
    for tok in (gpt, gpt2):
        s, d, x = tok.start_id, tok.delimiter_id, tok.extract_id
        a, b, c = "The cat sat on the mat.", "A dog ran.", "It was the river bank"
        assert tok.encode_text(a).ids == [s, *tok.encode(a), x]
        assert tok.encode_pair(a, b).ids == [s, *tok.encode(a), d, *tok.encode(b), x]
        assert [e.ids for e in tok.encode_choices(c, [a, b])] == [[s, *tok.encode(c), d, *tok.encode(a), x],
                                                                  [s, *tok.encode(c), d, *tok.encode(b), x]]
        assert tok.encode_text(a).segments is None  # GPT has no segment embeddings
        # Task tokens written in the text stay whole, as the special tokens they are.
        assert tok.encode(TASK_TOKENS["delimiter"]) == [d]


def test_truncation_keeps_special_tokens(gpt2: Tokenizer) -> None:
    s, d, x = gpt2.start_id, gpt2.delimiter_id, gpt2.extract_id
    long, short = gpt2.encode(CORPUS[0] * 3), gpt2.encode("a dog")
    assert gpt2.encode_text(CORPUS[0] * 3, max_length=10).ids == [s, *long[:8], x]
    pair = gpt2.encode_pair(CORPUS[0] * 3, "a dog", max_length=12).ids
    assert pair == [s, *long[:12 - 3 - len(short)], d, *short, x]
    for row in (e.ids for e in gpt2.encode_choices(CORPUS[0] * 3, ["a dog", CORPUS[1] * 5], max_length=16)):
        assert len(row) == 16 and row[0] == s and row[-1] == x and row.count(d) == 1
    with pytest.raises(UserError, match="max_length"):
        gpt2.encode_pair("a", "b", max_length=2)


def test_longest_first_matches_one_token_at_a_time() -> None:
    for a_len in range(12):
        for b_len in range(12):
            for budget in range(a_len + b_len):
                a, b = a_len, b_len
                while a + b > budget:  # HF's "longest_first": drop from the longer part, from b on ties
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert longest_first(a_len, b_len, budget) == (a, b)


def test_gpt_tagging_input_is_start_then_each_words_pieces(gpt: Tokenizer, gpt2: Tokenizer) -> None:
    """`encode_words` for a decoder: <|start|>, then each word's pieces as inside running text (after a space for
    byte-level BPE), <unk> (else <|start|>) for a word without any. max_length drops words from the end: a shorter
    word after one that does not fit must not take its place (its label would land on the wrong word)."""
    words = ["The", "cat", "", "sat", "unhappiness", "!"]
    for tok in (gpt, gpt2):
        space = " " if tok.kind == "gpt2" else ""
        stand_in = tok.unk_id if tok.unk_id is not None else tok.start_id
        pieces = [tok.encode((space if j else "") + w) or [stand_in] for j, w in enumerate(words)]
        enc = tok.encode_words(words)
        assert enc.ids == [tok.start_id, *[i for piece in pieces for i in piece]] and enc.segments is None
        assert enc.word_ids == [None, *[j for j, piece in enumerate(pieces) for _ in piece]]
        assert len(enc.word_starts()) == len(words)
        assert tok.encode_words_batch([words, ["a"]]) == [enc, tok.encode_words(["a"])]
        for max_length in range(1, len(enc) + 1):
            ids, kept = [tok.start_id], []
            for j, piece in enumerate(pieces):
                if len(ids) + len(piece) > max_length:
                    break
                ids += piece
                kept.append(j)
            cut = tok.encode_words(words, max_length=max_length)
            assert cut.ids == ids and [cut.word_ids[i] for i in cut.word_starts()] == kept == list(range(len(kept)))
        long_then_short = tok.encode_words(["a", "unhappiness" * 4, "b"], max_length=4)
        assert [long_then_short.word_ids[i] for i in long_then_short.word_starts()] == [0]


@pytest.mark.filterwarnings("ignore:.*their last words are not tagged")
@pytest.mark.parametrize("kind", ["gpt", "gpt2", "bert"])
def test_transfer_inputs_keep_each_familys_layout(kind: str, gpt: Tokenizer, gpt2: Tokenizer) -> None:
    """`transfer.inputs.encode_examples` asks the tokenizer for roles; the ids are those of each family's layout
    (BERT: [CLS] a [SEP] b [SEP] with segments; GPT §3.3 for a decoder, an unordered pair read both ways)."""
    from ctxlm.transfer.data import Example, TaskSpec
    from ctxlm.transfer.inputs import encode_examples

    tok = {"gpt": gpt, "gpt2": gpt2}.get(kind) or Tokenizer.train(iter(CORPUS), "bert", 300)
    decoder = kind != "bert"
    first, middle, last = ((tok.start_id, tok.delimiter_id, tok.extract_id) if decoder else
                           (tok.cls_id, tok.sep_id, tok.sep_id))

    def pair(a: str, b: str, max_length: int) -> list[int]:
        a_ids, b_ids = tok.encode(a), tok.encode(b)
        n, m = longest_first(len(a_ids), len(b_ids), max_length - 3) if len(a_ids) + len(b_ids) > max_length - 3 \
            else (len(a_ids), len(b_ids))
        return [first, *a_ids[:n], middle, *b_ids[:m], last]

    def encode(task: str, texts: tuple[str, ...], max_length: int, order_matters: bool = True) -> object:
        spec = TaskSpec("t", task, ("x", "y"), ("accuracy",), order_matters=order_matters)
        return encode_examples(tok, spec, [Example(texts, 0)], decoder=decoder, max_length=max_length)[0]

    a, b, c = CORPUS[0].strip(), CORPUS[1].strip() * 2, "The river bank"
    for max_length in (6, 12, 64):
        for order_matters in (True, False):
            single = encode("single", (a,), max_length, order_matters)
            assert single.sequences == [[first, *tok.encode(a)[:max_length - 2], last]]
            assert (single.segments is None) == decoder
            both = decoder and not order_matters
            assert encode("pair", (a, b), max_length, order_matters).sequences == \
                [pair(a, b, max_length), *([pair(b, a, max_length)] * both)]
            choices = encode("choice", (c, a, b), max_length, order_matters)
            assert choices.sequences == [pair(c, a, max_length), pair(c, b, max_length)] and choices.slots == [0, 1]
        words = a.split()
        tagged = encode("tag", tuple(words), max_length)
        assert tagged.sequences == [tok.encode_words(words, max_length).ids]
        assert tagged.word_positions == tok.encode_words(words, max_length).word_starts()
        if not decoder:
            encodings = [tok.encode(w) or [tok.unk_id] for w in words]
            assert tok.encode_words(words).ids == [first, *[i for e in encodings for i in e], last]


def test_every_family_implements_the_role_protocol(gpt2: Tokenizer) -> None:
    from ctxlm.tokenizers import CharTokenizer, TokenizerProtocol, WordTokenizer
    from ctxlm.tokenizers.characters import SPECIALS

    elmo = CharTokenizer(list(SPECIALS))
    xl = WordTokenizer(["<eos>", "<unk>", "the", "cat"])
    for tok in (gpt2, elmo, xl):
        assert isinstance(tok, TokenizerProtocol)
    assert [e.ids for e in elmo.encode_choices("the cat", ["a", "b c"])] == \
        [e.ids for e in elmo.encode_pair_batch(["the cat"] * 2, ["a", "b c"])]
    assert elmo.encode_words(["the", "cat"]).word_starts() == [1, 2]
    enc = xl.encode_text("the  dog cat", max_length=2)
    assert (enc.ids, enc.segments, enc.word_ids, enc.offsets) == ([2, 1], None, [0, 1], [(0, 3), (5, 8)])
    assert xl.encode_words_batch([["cat", "the"]]) == [xl.encode_words(["cat", "the"])]
    assert xl.encode_words(["cat", "the"]).ids == [3, 2]
    with pytest.raises(UserError, match="no special tokens to join two texts"):
        xl.encode_choices("the", ["cat"])


# ---- saving, loading, published files ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt", "gpt2"])
def test_save_load_round_trip(tmp_path: Path, kind: str, gpt: Tokenizer, gpt2: Tokenizer) -> None:
    tok = gpt if kind == "gpt" else gpt2
    tok.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["kind"] == kind
    loaded = Tokenizer.from_files(tmp_path / "tok")
    assert (loaded.kind, loaded.vocab_size) == (kind, tok.vocab_size)
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.encode_batch(SENTENCES) == tok.encode_batch(SENTENCES)
    assert loaded.encode_pair("a b", "c") == tok.encode_pair("a b", "c")
    with pytest.raises(UserError, match="kind"):
        Tokenizer.from_files(tmp_path / "tok", kind="gpt2" if kind == "gpt" else "gpt")


def test_bare_tokenizer_json_kind_is_inferred(tmp_path: Path, gpt: Tokenizer, gpt2: Tokenizer) -> None:
    for name, tok in [("gpt", gpt), ("gpt2", gpt2)]:
        (tmp_path / name).mkdir()
        tok.backend.save(str(tmp_path / name / "tokenizer.json"))  # as HF ships it: no tokenizer_config.json
        loaded = Tokenizer.from_files(tmp_path / name)
        assert loaded.kind == name and loaded.special_tokens == tok.special_tokens
        assert loaded.encode(SENTENCES[1]) == tok.encode(SENTENCES[1])


@pytest.mark.parametrize("kind", ["gpt", "gpt2"])
def test_published_files_lack_task_tokens_until_added(tmp_path: Path, kind: str) -> None:
    tok = Tokenizer.from_files(_published(tmp_path, kind))  # kind inferred from the "</w>" suffix
    assert tok.kind == kind
    assert tok.eos_id == (None if kind == "gpt" else 0)
    assert tok.pad_id == 0  # <unk> for gpt, <|endoftext|> for gpt2: both id 0 in these files
    for call in (lambda: tok.encode_text("a"), lambda: tok.encode_pair("a", "b"),
                 lambda: tok.encode_choices("a", ["b"])):
        with pytest.raises(UserError, match=r"add_task_tokens\(\).*resize the model's token embeddings"):
            call()
    size = tok.vocab_size
    assert tok.add_task_tokens() == 3 and tok.vocab_size == size + 3
    assert tok.add_task_tokens() == 0 and tok.vocab_size == size + 3
    assert tok.encode_pair("a", "b").ids == [size, *tok.encode("a"), size + 1, *tok.encode("b"), size + 2]
    tok.save(tmp_path / "tuned")
    assert Tokenizer.from_files(tmp_path / "tuned").encode_pair("a", "b") == tok.encode_pair("a", "b")


def test_published_gpt_without_unk_maps_unknown_to_id_0(tmp_path: Path) -> None:
    directory = _published(tmp_path, "gpt")
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    del vocab[UNK]  # OpenAI's own 2018 code mapped unknown symbols to id 0 (encoder.get(t, 0))
    vocab = {t: i - 1 for t, i in vocab.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = Tokenizer.from_files(directory)
    assert tok.unk_id is None and tok.encode("日")[0] == 0


def test_from_files_errors_name_the_file(tmp_path: Path, gpt2: Tokenizer) -> None:
    with pytest.raises(UserError, match="no tokenizer.json"):
        Tokenizer.from_files(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        Tokenizer.from_files(tmp_path / "absent")
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserError, match=r"tokenizer\.json"):
        Tokenizer.from_files(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match=r"tokenizer\.json: not a valid tokenizers JSON"):
        Tokenizer.from_files(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(UserError, match=r"tokenizer\.json:1: not valid UTF-8"):
        Tokenizer.from_files(tmp_path)
    (tmp_path / "tokenizer.json").unlink()

    published = _published(tmp_path / "pub", "gpt2")
    merges = (published / "merges.txt").read_bytes()
    (published / "merges.txt").unlink()
    with pytest.raises(UserError, match=r"merges\.txt: missing"):
        Tokenizer.from_files(published)
    (published / "merges.txt").write_bytes(merges + b"\xc3\x28 x\n")
    with pytest.raises(UserError, match=r"merges\.txt:\d+: not valid UTF-8"):
        Tokenizer.from_files(published)
    (published / "merges.txt").write_bytes(merges + b"onlyone\n")
    with pytest.raises(UserError, match=r"merges\.txt:\d+: expected two symbols"):
        Tokenizer.from_files(published)
    (published / "merges.txt").write_bytes(merges + "zzq\u00a7 x\n".encode())
    with pytest.raises(UserError, match=r"merges\.txt: does not fit"):
        Tokenizer.from_files(published)
    (published / "merges.txt").write_bytes(merges)
    (published / "vocab.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"vocab\.json: expected a JSON object"):
        Tokenizer.from_files(published)

    gpt2.save(tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer_config.json").write_text('{"kind": "t5"}')
    with pytest.raises(UserError, match=r"tokenizer_config\.json.*unknown tokenizer kind"):
        Tokenizer.from_files(tmp_path / "saved")
    config = {"kind": "gpt2", "special_tokens": {"eos": "<x>"}}
    (tmp_path / "saved" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"tokenizer_config\.json: special tokens \['<x>'\]"):
        Tokenizer.from_files(tmp_path / "saved")


# ---- parity with transformers and with the published algorithms --------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (OpenAI encoder.py)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the lowest-ranked adjacent pair everywhere, until no pair has a rank (OpenAI encoder.py)."""
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:], strict=False), key=lambda pair: ranks.get(pair, math.inf))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if tuple(symbols[i:i + 2]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _reference_gpt2(directory: Path, text: str) -> list[int]:
    import regex

    vocab, ranks = _read_vocab_merges(directory)
    byte_map = _bytes_to_unicode()
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    return [vocab[t] for piece in pattern.findall(text)
            for t in _bpe([byte_map[b] for b in piece.encode("utf-8")], ranks)]


def _reference_gpt(directory: Path, text: str) -> list[int]:
    """HF's former slow OpenAIGPTTokenizer, in its no-ftfy/spaCy mode (BERT BasicTokenizer)."""
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

    vocab, ranks = _read_vocab_merges(directory)
    return [vocab.get(t, vocab[UNK]) for word in BasicTokenizer(do_lower_case=True).tokenize(text)
            for t in _bpe([*word[:-1], word[-1] + "</w>"], ranks)]


def test_gpt2_parity_with_transformers_and_encoder_py(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    directory = _published(tmp_path, "gpt2")
    ours = Tokenizer.from_files(directory, kind="gpt2")
    references = [transformers.GPT2TokenizerFast.from_pretrained(str(directory)),
                  transformers.GPT2Tokenizer.from_pretrained(str(directory))]
    for text in [*SENTENCES, *CORPUS[:20]]:
        ids = ours.encode(text)
        assert ids == _reference_gpt2(directory, text), text
        for hf in references:
            assert ids == hf.encode(text, add_special_tokens=False), (type(hf).__name__, text)
        assert ours.decode(ids) == references[0].decode(ids) == text
    # HF's own tokenizer.json (and its tokenizer_config.json, which is not ours and is ignored) loads too.
    references[0].save_pretrained(str(tmp_path / "hf"))
    from_hf = Tokenizer.from_files(tmp_path / "hf")
    assert from_hf.kind == "gpt2" and from_hf.eos_id == ours.eos_id
    assert from_hf.encode_batch(SENTENCES) == ours.encode_batch(SENTENCES)


def test_gpt_parity_with_transformers_and_slow_algorithm(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    directory = _published(tmp_path, "gpt")
    ours = Tokenizer.from_files(directory)
    hf = transformers.OpenAIGPTTokenizer.from_pretrained(str(directory))
    for text in [*SENTENCES, *CORPUS[:20]]:
        ids = ours.encode(text)
        # Unknown characters (日, 🙂, ...) become <unk> in all three.
        assert ids == _reference_gpt(directory, text), text
        assert ids == hf.encode(text, add_special_tokens=False), text
    hf.save_pretrained(str(tmp_path / "hf"))
    from_hf = Tokenizer.from_files(tmp_path / "hf")
    assert from_hf.kind == "gpt" and from_hf.unk_id == ours.unk_id
    assert from_hf.encode_batch(SENTENCES) == ours.encode_batch(SENTENCES)
