"""The "sentencepiece" tokenizer kind (Unigram + "▁" word marks) against `transformers`' AlbertTokenizer and
XLNetTokenizer built locally from the pieces of a tiny trained vocabulary: the same ids for single texts, pairs and
pre-split words; XLNet's layout (<cls> last, in segment 2) read from its tokenizer.json; Russian kept as written
when the settings keep case and accents."""

import json

import pytest

from ctxlm.errors import UserError
from ctxlm.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

RUSSIAN = "Ворота замка закрыты на замок"
CORPUS = ["The gate of the castle is closed with a lock.", "Ворота замка закрыты на замок.", "Ёлка, йод и ёж.",
          "A quick brown fox jumps over the lazy dog!", "Café crème: a naïve ``quoted'' text.",
          "the cat sees the house .", "my sister remembers the quiet town ."]
TEXTS = [RUSSIAN, "The castle's gate [MASK] is closed.", "Ёлка и йод ``hi''", "Café CRÈME", "  spaced   out  ", ""]
PAIRS = [("Ворота замка", "закрыты на замок"), ("The gate", "of the castle is closed with a lock"), ("", "ёж")]


def pieces(tokenizer: Tokenizer) -> list[tuple[str, float]]:
    return [tuple(entry) for entry in json.loads(tokenizer.backend.to_str())["model"]["vocab"]]


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def pair(request):
    """(ours, AlbertTokenizer): uncased with accents stripped (ALBERT's published setting), or cased with accents."""
    lower = request.param
    ours = Tokenizer.train(iter(CORPUS * 20), "sentencepiece", 150, lowercase=lower)
    return ours, transformers.AlbertTokenizer(vocab=pieces(ours), do_lower_case=lower, keep_accents=not lower)


def test_ids_equal_albert_tokenizer(pair):
    ours, ref = pair
    assert ours.special_tokens == {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    assert [ours.backend.token_to_id(t) for t in ours.special_tokens.values()] == [0, 1, 2, 3, 4]  # ALBERT's ids
    for text in TEXTS:
        got = ours.encode_text(text)
        assert got.ids == ref(text)["input_ids"], text
        assert got.segments == [0] * len(got.ids)
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    for a, b in PAIRS:
        got, want = ours.encode_pair(a, b), ref(a, b, return_token_type_ids=True)
        assert (got.ids, got.segments) == (want["input_ids"], want["token_type_ids"]), (a, b)
    words = RUSSIAN.split()
    assert ours.encode_words(words).ids == ref(words, is_split_into_words=True)["input_ids"]


def test_settings_are_kept_and_russian_round_trips(pair, tmp_path):
    ours, _ = pair
    lower = ours.lowercase
    assert ours.strip_accents is lower  # accents go exactly when case goes, unless asked otherwise
    for text in (RUSSIAN, "Ёлка и йод"):
        expected = text.lower() if lower else text
        if lower:  # NFKD + accent stripping: й → и, ё → е
            expected = expected.replace("й", "и").replace("ё", "е")
        assert ours.decode(ours.encode(text)) == expected
    ours.save(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert (saved["kind"], saved["lowercase"], saved["strip_accents"]) == ("sentencepiece", lower, lower)
    back = Tokenizer.from_files(tmp_path / "tok")
    assert (back.kind, back.lowercase, back.strip_accents) == ("sentencepiece", lower, lower)
    assert back.special_tokens == ours.special_tokens
    assert [back.encode_pair(a, b) for a, b in PAIRS] == [ours.encode_pair(a, b) for a, b in PAIRS]


def test_cased_keeps_case_and_accents_apart():
    cased = Tokenizer.train(iter(CORPUS * 20), "sentencepiece", 150, lowercase=False, strip_accents=False)
    assert cased.encode("Ёлка") != cased.encode("ёлка") and cased.encode("йод") != cased.encode("иод")
    assert cased.token_texts(cased.encode("Ворота замка"))[0].startswith(" ")  # "▁" reads as the space it marks


def test_training_is_repeatable_and_marks_word_starts():
    a = Tokenizer.train(iter(CORPUS * 20), "sentencepiece", 150)
    b = Tokenizer.train(iter(CORPUS * 20), "sentencepiece", 150)
    # the same pieces with the same ids (the trainer's log probabilities may differ in the fourth decimal)
    assert a.backend.get_vocab() == b.backend.get_vocab()
    assert a.encode_batch(CORPUS) == b.encode_batch(CORPUS)
    vocab = a.backend.get_vocab()
    starts = [t for t in vocab if t.startswith("▁")]
    inside = [t for t in vocab if not t.startswith("▁") and t not in a.special_tokens.values()]
    assert starts and inside
    assert not any(a.is_continuation(t) for t in [*starts, *a.special_tokens.values()])
    assert all(a.is_continuation(t) for t in inside)


def test_a_published_folder_loads_with_its_own_layout_xlnet(tmp_path):
    """XLNet's `A <sep> B <sep> <cls>`: the <cls> last, in segment 2, as its tokenizer.json's template says."""
    ours = Tokenizer.train(iter(CORPUS * 20), "sentencepiece", 150)
    specials = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
    vocab = [(t, 0.0) for t in specials] + [p for p in pieces(ours) if p[0] not in ours.special_tokens.values()]
    ref = transformers.XLNetTokenizer(vocab=vocab)
    ref.save_pretrained(tmp_path / "xlnet")
    loaded = Tokenizer.from_files(tmp_path / "xlnet")
    assert loaded.kind == "sentencepiece"
    assert {role: loaded.special_tokens[role] for role in ("cls", "sep", "mask", "pad", "unk")} == {
        "cls": "<cls>", "sep": "<sep>", "mask": "<mask>", "pad": "<pad>", "unk": "<unk>"}
    for a, b in PAIRS:
        got, want = loaded.encode_pair(a, b), ref(a, b, return_token_type_ids=True)
        assert (got.ids, got.segments) == (want["input_ids"], want["token_type_ids"]), (a, b)
        assert got.ids[-1] == loaded.cls_id and got.segments[-1] == 2
    text = TEXTS[1]
    assert loaded.encode_text(text).ids == ref(text)["input_ids"]
    cut = loaded.encode_pair("the gate of the castle is closed", "with a lock", max_length=8)
    assert len(cut.ids) == 8 and cut.ids[-1] == loaded.cls_id and cut.ids.count(loaded.sep_id) == 2  # specials stay


def test_spiece_model_alone_says_which_file_is_needed(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x00protobuf")
    with pytest.raises(UserError, match=r"spiece\.model but no tokenizer\.json.*sentencepiece package"):
        Tokenizer.from_files(tmp_path)


def test_min_frequency_is_not_unigrams_and_casing_options_are_checked():
    with pytest.raises(UserError, match="lowercase="):
        Tokenizer.train(iter(CORPUS), "sentencepiece", 150, lowercase="yes")
    with pytest.raises(UserError, match="vocab_size"):
        Tokenizer.train(iter(CORPUS), "sentencepiece", 5)
