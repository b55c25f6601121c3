"""benchmarks/russian_models.py (own Russian models on RusLit) on a tiny fake RusLit + FLORES: build makes the three
runs and records tokens seen; measure scores every token once, the unigram baseline is the smoothed frequency model,
BERT's pseudo-perplexity masks every ordinary token once; the report names each figure. No real figure is asserted."""

import argparse
import gzip
import math
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LINES = ["Ворота замка закрыты на замок, а ключ потерян.", "Ёлка стояла у ворот, и йод был в шкафу.",
         "Старый замок стоит на высоком холме над рекой.", "Она открыла дверь и вошла в светлую комнату."]
TINY = {"gpt2": dict(model="gpt2", layers=1, dim=32, heads=2, vocab_size=400, block_size=16, batch_size=4, lr=1e-3,
                     warmup=1, steps=3),
        "bert": dict(model="bert", layers=1, dim=32, heads=2, vocab_size=300, block_size=32, batch_size=4, lr=1e-3,
                     warmup=1, steps=3),
        "elmo": dict(model="elmo", dim=16, block_size=8, batch_size=4, lr=1e-3, warmup=1, schedule="constant",
                     steps=3)}


@pytest.fixture
def russian(monkeypatch, tmp_path):
    data = tmp_path / "data"
    (data / "ruslit").mkdir(parents=True)
    for split, repeat in (("train", 40), ("valid", 5), ("test", 2)):
        with gzip.open(data / "ruslit" / f"{split}.txt.gz", "wt", encoding="utf-8") as f:
            f.write("\n\n".join(" ".join(LINES) for _ in range(repeat)) + "\n")  # documents: blank lines
    (data / "flores200_en_ru").mkdir()
    (data / "flores200_en_ru" / "rus_Cyrl.devtest").write_text("\n".join(LINES[:2]) + "\n", encoding="utf-8")
    monkeypatch.setenv("CTXLM_DATA", str(data))
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import russian_models

    monkeypatch.setattr(russian_models, "FAMILIES", TINY)
    return russian_models


@pytest.mark.fp32
def test_build_then_measure_writes_every_family_and_the_unigram_baseline(russian, tmp_path):
    out = tmp_path / "ru"
    russian.build(argparse.Namespace(out=out, families="gpt2,bert,elmo", minutes=5.0, steps=None, scale_steps=1.0,
                                     save_every_minutes=None))
    for family in ("gpt2", "bert", "elmo"):
        assert (out / family / "done").exists() and (out / "build" / f"{family}.json").exists()
    russian.measure(argparse.Namespace(out=out, bert_lines=3))
    report = (out / "russian.md").read_text()
    for label in ("GPT-2", "unigram (GPT-2's tokens)", "BERT (pseudo)", "ELMo forward / backward", "flores-devtest",
                  "Ворота замка"):
        assert label in report


@pytest.mark.fp32
def test_every_token_is_scored_once_and_the_unigram_is_add_one(russian, tmp_path):
    from helpers import tiny

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text("\n".join(LINES * 5), encoding="utf-8")
    model = tiny("gpt2", corpus=tmp_path / "corpus", max_positions=8).eval()  # lines longer than the context
    loss, n, tokens = russian.causal_nll(model, LINES)
    assert n == len(tokens) == sum(len(model.tokenizer.encode(line)) for line in LINES)  # each once, eos not
    assert loss > 0
    counts = np.zeros(10)
    assert russian.unigram_nll(counts, [1, 2, 3]) == pytest.approx(3 * math.log(10))  # no data: uniform
    counts[1] = 8  # p(1) = 9 / 18
    assert russian.unigram_nll(counts, [1]) == pytest.approx(math.log(2))


@pytest.mark.fp32
def test_pseudo_perplexity_masks_each_ordinary_token_once(russian, tmp_path):
    from helpers import tiny

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text("\n".join(LINES * 5), encoding="utf-8")
    model = tiny("bert", corpus=tmp_path / "corpus", max_positions=64).eval()
    _, count = russian.pseudo_nll(model, LINES[:2], batch=5)  # batches cut a line's positions
    assert count == sum(len(model.tokenizer.encode(line)) for line in LINES[:2])
