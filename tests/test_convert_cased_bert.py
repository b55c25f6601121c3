"""A Hugging Face BERT folder with a cased Cyrillic + Latin WordPiece vocabulary (as multilingual and Russian
checkpoints are) converts and loads with its tokenizer's own case and accent settings: ctxlm's ids equal
transformers' on Russian sentences with capitals, "ё" and "й", and its hidden states match the reference's to
float32 rounding; an uncased folder still lower-cases. Everything is built here: no download."""

import re
import unicodedata

import pytest
import torch

import ctxlm

transformers = pytest.importorskip("transformers")

from tolerances import assert_fp_close  # noqa: E402

pytestmark = pytest.mark.numeric

SENTENCES = ["Ёлка стояла у ворот; Ворота замка закрыты на замок, а йод в шкафу.",
             "Йошкар-Ола и Moscow: ёж, ЁЖ и Ёж.", "Ворота замка закрыты на замок"]
LETTERS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя" + "abcdefghijklmnopqrstuvwxyz"
WORDS = ["Ворота", "ворота", "замок", "замка", "закрыты", "на", "Ёлка", "ёлка", "елка", "йод", "иод", "Moscow", "##ка"]
LAYERS, HEADS, HEAD_DIM, INTERMEDIATE = 2, 2, 16, 64


def normalised(text: str, lowercase: bool, strip_accents: bool) -> str:
    """The text as the folder's settings say its tokenizer reads it (cased: as written, "Ё" and "й" kept)."""
    text = text.lower() if lowercase else text
    if strip_accents:
        text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
    return text


def write_folder(folder, *, lowercase: bool, strip_accents: bool | None):
    """A random BertModel saved with save_pretrained, beside a BertTokenizerFast over a vocabulary written here."""
    letters = [*LETTERS, *LETTERS.upper()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,:;-", *letters, *(f"##{c}" for c in letters), *WORDS]
    tokenizer = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))},
                                               do_lower_case=lowercase, strip_accents=strip_accents)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=HEADS * HEAD_DIM,
                                     num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                     intermediate_size=INTERMEDIATE, max_position_embeddings=64)
    reference = transformers.BertModel(config).eval()
    reference.save_pretrained(folder)
    return reference, tokenizer


@pytest.mark.fp32
@pytest.mark.parametrize(("lowercase", "strip_accents"), [(False, None), (True, None), (True, False)],
                         ids=["cased", "uncased", "uncased-keeps-accents"])
@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.txt"])
def test_hf_bert_folder_keeps_its_tokenizer_settings(tmp_path, lowercase, strip_accents, layout):
    reference, hf_tokenizer = write_folder(tmp_path / "hub", lowercase=lowercase, strip_accents=strip_accents)
    if layout == "vocab.txt":  # older checkpoints' layout: vocab.txt, the settings in tokenizer_config.json alone
        by_id = sorted(hf_tokenizer.get_vocab().items(), key=lambda item: item[1])
        (tmp_path / "hub" / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id), encoding="utf-8")
        (tmp_path / "hub" / "tokenizer.json").unlink()
    ctxlm.convert(tmp_path / "hub", tmp_path / "native")
    strips = lowercase if strip_accents is None else strip_accents
    for model in (ctxlm.load(tmp_path / "native"), ctxlm.load(tmp_path / "hub")):
        tokenizer = model.tokenizer
        assert (tokenizer.lowercase, tokenizer.strip_accents) == (lowercase, strips)
        for text in SENTENCES:
            encoding = tokenizer.encode_text(text)
            assert encoding.ids == hf_tokenizer(text)["input_ids"], text
            decoded = tokenizer.decode(encoding.ids)
            assert re.findall(r"\w+", decoded) == re.findall(r"\w+", normalised(text, lowercase, strips))
            ids = torch.tensor([encoding.ids])
            with torch.no_grad():
                expected = reference(ids).last_hidden_state
                got = model(ids).hidden.states[-1]
            assert_fp_close(got, expected, terms=max(INTERMEDIATE, HEADS * HEAD_DIM), depth=LAYERS + 2)
