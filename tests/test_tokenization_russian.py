"""Russian, the lecture's own language, through every family's tokenizer: case and accent handling are settings
chosen at training time and saved with the tokenizer (a cased vocabulary keeps "Ё", "й" and capitals), decoding
gives the words back, `token_texts` reads as text (never byte symbols such as "Ð"), ELMo's per-word byte limit
cuts only what the character CNN sees, and `ctxlm.embed(..., pool="words")` gives one vector per Russian word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ctxlm
from ctxlm.errors import UserError
from ctxlm.pretrain.causal_lm import LMData, run_tokenizer
from ctxlm.tokenizers import CharTokenizer, Tokenizer, WordTokenizer
from ctxlm.tokenizers.characters import word_characters
from ctxlm.tokenizers.training import latin_script
from helpers import tiny, tiny_config

LECTURE = "Ворота замка закрыты на замок"
SENTENCE = "Ёлка стояла у ворот; Ворота замка закрыты на замок, а йод в шкафу."
CORPUS = [SENTENCE, LECTURE, "Ёж и йогурт: Йошкар-Ола, ёлки и замки.",
          "В замке жила принцесса, а у ворот стоял сторож.", "Мы ели йогурт и пили чай у ёлки.",
          "Сторож закрыл ворота на замок и ушёл домой.",
          "Врач читал данные рентгеноэлектрокардиографического анализа."] * 20
LONG_WORD = "рентгеноэлектрокардиографического"  # 34 letters, 68 UTF-8 bytes


def words(text: str) -> list[str]:
    """The words of a text, letters and digits only: what must survive a round trip whatever the spacing."""
    return re.findall(r"\w+", text)


def corpus_file(folder: Path) -> Path:
    path = folder / "ru.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tokenizer of each family trained on the Russian corpus, kept as it is written (the sub-word kinds cased)."""
    path = corpus_file(tmp_path_factory.mktemp("ru"))
    return {"bert": Tokenizer.train(iter(CORPUS), "bert", 400, lowercase=False),
            "gpt": Tokenizer.train(iter(CORPUS), "gpt", 400, lowercase=False),
            "gpt2": Tokenizer.train(iter(CORPUS), "gpt2", 300),
            "elmo": CharTokenizer.train([path], vocab_size=100),
            "transformer-xl": WordTokenizer.train([path], None)}


def spelled(piece: str) -> bytes:
    """The bytes a displayed piece stands for: its text, or the bytes its escapes ("\\xd0") name."""
    escapes = re.fullmatch(r"(\\x[0-9a-f]{2})+", piece)
    return bytes.fromhex(piece.replace("\\x", "")) if escapes else piece.encode("utf-8")


@pytest.mark.parametrize("family", ["bert", "gpt", "gpt2", "elmo", "transformer-xl"])
def test_every_family_gives_russian_back(trained, family):
    tok = trained[family]
    for text in (SENTENCE, LECTURE, LONG_WORD):
        decoded = tok.decode(tok.encode(text))
        assert words(decoded) == words(text), (family, decoded)
    assert LECTURE in tok.decode(tok.encode(SENTENCE))
    assert "Ё" in tok.decode(tok.encode(SENTENCE)) and "й" in tok.decode(tok.encode(SENTENCE))


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_case_and_accents_are_settings_saved_with_the_tokenizer(tmp_path, kind):
    settings = {(True, True): "елка ворота иод", (True, False): "ёлка ворота йод", (False, False): "Ёлка Ворота йод",
                (False, True): "Елка Ворота иод"}
    for (lowercase, strip), expected in settings.items():
        tok = Tokenizer.train(iter(CORPUS), kind, 400, lowercase=lowercase, strip_accents=strip)
        assert (tok.lowercase, tok.strip_accents) == (lowercase, strip)
        folder = tmp_path / f"{kind}-{lowercase}-{strip}"
        tok.save(folder)
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert (config["lowercase"], config["strip_accents"]) == (lowercase, strip)
        loaded = Tokenizer.from_files(folder)
        assert (loaded.lowercase, loaded.strip_accents) == (lowercase, strip)
        assert " ".join(words(loaded.decode(loaded.encode("Ёлка Ворота йод")))) == expected
    # the default is the published uncased vocabularies': lower-cased, accents stripped
    default = Tokenizer.train(iter(CORPUS), kind, 400)
    assert (default.lowercase, default.strip_accents) == (True, True)


def test_a_config_that_contradicts_the_normaliser_is_refused(tmp_path):
    Tokenizer.train(iter(CORPUS), "bert", 400, lowercase=False).save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "strip_accents": True}), encoding="utf-8")
    with pytest.raises(UserError, match="strip_accents=False, but strip_accents=True is written in"):
        Tokenizer.from_files(tmp_path)


def test_a_folder_saved_before_the_settings_loads_as_it_did(tmp_path):
    """A bert folder from before strip_accents was saved: no such key in tokenizer_config.json, and BERT's unset
    strip_accents (null) in tokenizer.json's normaliser; it still lower-cases and strips accents."""
    Tokenizer.train(iter(CORPUS), "bert", 400).save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["strip_accents"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    backend = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    backend["normalizer"]["strip_accents"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(backend), encoding="utf-8")
    old = Tokenizer.from_files(tmp_path)
    assert (old.lowercase, old.strip_accents) == (True, True)
    assert words(old.decode(old.encode("Ёлка йод"))) == ["елка", "иод"]


def test_gpt2_takes_no_casing_settings():
    with pytest.raises(UserError, match="apply to gpt, bert and sentencepiece tokenizers only"):
        Tokenizer.train(iter(CORPUS), "gpt2", 300, strip_accents=False)


@pytest.mark.parametrize("family", ["bert", "gpt", "gpt2", "elmo", "transformer-xl"])
def test_token_texts_read_as_text(trained, family):
    tok = trained[family]
    ids = tok.encode(SENTENCE)
    shown = tok.token_texts(ids)
    assert len(shown) == len(ids)
    assert not any(ch in "".join(shown) for ch in "ÐÑĠ")  # byte-level symbols never reach a reader
    if family == "gpt2":  # a byte-level BPE's pieces read as the text they stand for, spaces included
        assert b"".join(spelled(piece) for piece in shown).decode("utf-8") == SENTENCE
    assert any(re.fullmatch(" ?[а-яё]{2,}(</w>)?", piece) for piece in shown)  # "замок"-like pieces


def test_byte_level_pieces_show_the_leading_space_and_split_bytes():
    tok = Tokenizer.train(iter(["the cats are here", "are you there", "Ж"] * 10), "gpt2", 270)
    ids = tok.encode("cats are Ж")
    entries = [tok.backend.id_to_token(i) for i in ids]  # the raw entries, as the vocabulary holds them
    shown = tok.token_texts(ids)
    spaced = [j for j, entry in enumerate(entries) if entry.startswith("Ġ")]
    assert spaced and all(shown[j] == " " + entries[j][1:] for j in spaced if "Ð" not in entries[j])
    assert "".join(shown) == "cats are Ж"
    one_byte = tok.backend.token_to_id("Ð")
    assert tok.token_texts([one_byte]) == ["\\xd0"]  # half of a character: an escape, never mojibake
    with pytest.raises(UserError, match="outside the vocabulary"):
        tok.token_texts([tok.vocab_size])


def test_elmo_cuts_a_long_russian_word_only_where_the_character_cnn_reads_it(trained):
    """ELMo's ids are words: the whole word comes back however long; its character ids are the first
    max_characters - 2 UTF-8 bytes (24 Cyrillic letters of 50), as AllenNLP's ELMoCharacterMapper cuts them."""
    tok = trained["elmo"]
    encoding = tok.encode_text(f"{LONG_WORD} замок")
    assert tok.token_texts(encoding.ids)[1:3] == [LONG_WORD, "замок"]
    assert encoding.word_ids[1:3] == [0, 1]
    chars = word_characters(LONG_WORD, 50)
    assert len(chars) == 50
    assert bytes(c - 1 for c in chars[1:49]) == LONG_WORD.encode("utf-8")[:48]


@pytest.mark.fp32
@pytest.mark.parametrize("family", ["bert", "gpt2", "elmo", "transformer-xl"])
def test_embed_gives_one_vector_per_russian_word(trained, family):
    tok = trained[family]
    model = tiny(family, tokenizer=tok, **({"max_positions": 64} if family in ("gpt2", "bert") else {})).eval()
    (vectors,) = ctxlm.embed([LECTURE], model=model, pool="words", dtype="float32")
    assert vectors.shape[0] == len(LECTURE.split())
    (split,) = ctxlm.embed([[*LECTURE.split(), LONG_WORD]], model=model, pool="words", dtype="float32")
    assert split.shape[0] == len(LECTURE.split()) + 1


def test_pretraining_keeps_russian_cased_and_english_uncased_unless_told(tmp_path, capsys):
    russian, english = corpus_file(tmp_path), tmp_path / "en.txt"
    english.write_text("The Cat sat on the Mat, café.\n" * 50, encoding="utf-8")
    assert not latin_script([russian]) and latin_script([english])

    def trained_for(path: Path, **casing) -> Tokenizer:
        return run_tokenizer(LMData(path), tmp_path / "run", tiny_config("bert", vocab_size=400), given=None,
                             resume=False, **casing)

    assert (trained_for(russian).lowercase, trained_for(russian).strip_accents) == (False, False)
    assert "cased tokenizer" in capsys.readouterr().out
    assert (trained_for(english).lowercase, trained_for(english).strip_accents) == (True, True)
    told = trained_for(russian, lowercase=True, strip_accents=False)
    assert (told.lowercase, told.strip_accents) == (True, False)
    assert words(told.decode(told.encode(SENTENCE)))[:1] == ["ёлка"]


@pytest.mark.parametrize("family", ["elmo", "transformer-xl"])
def test_pretrain_refuses_casing_for_word_level_families(tmp_path, family):
    with pytest.raises(UserError, match="apply to gpt and bert"):
        ctxlm.pretrain(model=family, data=str(corpus_file(tmp_path)), out=tmp_path / "run", lowercase=False, steps=1)
