"""benchmarks/cedr_labels.py (CEDR label efficiency) on a tiny CEDR folder in the real files' format: select never
reads the test file and chooses per row and size; table runs the chosen recipe at every size and seed (3 seeds up
to 1,000, 1 above) and writes the table; the TF-IDF reference learns the labels. No real figure is asserted."""

import argparse
import gzip
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CUES = {"joy": "радость счастье", "sadness": "грусть тоска", "surprise": "вдруг неожиданно", "fear": "страх ужас",
        "anger": "злость ярость"}
SETS = [(), ("joy",), ("sadness",), ("surprise", "fear"), ("anger",), ("joy", "surprise")]


def write_cedr(root: Path, rows: int) -> None:
    def line(i: int) -> str:
        labels = SETS[i % len(SETS)]
        words = " ".join(CUES[label] for label in labels) or "обычный день"
        return f"Предложение {i} : {words} .\t{','.join(labels)}\tlj\n"

    header = "sentence\tlabels\tsource\n"
    (root / "cedr").mkdir(parents=True)
    with gzip.open(root / "cedr" / "train.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(header + "".join(line(i) for i in range(rows)))
    (root / "cedr" / "test.tsv").write_text(header + "".join(line(i) for i in range(rows, rows + 24)),
                                            encoding="utf-8")


@pytest.fixture
def cedr(monkeypatch, tmp_path):
    write_cedr(tmp_path / "data", 120)
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path / "data"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cedr_labels

    return cedr_labels


def args_for(tmp_path, models, **changes):
    values = dict(out=str(tmp_path / "out"), models=str(models), epochs=1, min_steps=2, batch_size=8,
                  max_length=32, recipes="full", select_sizes="30", sizes="30,all", seeds="0,1")
    return argparse.Namespace(**(values | changes))


def test_tfidf_learns_the_cue_words(cedr):
    data = cedr.cedr(cedr.ALL, 0, test=True)
    scores = cedr.tfidf_run(data, "word-C=30")
    assert scores["test_macro_f1"] > 0.8 and 0.05 <= scores["threshold"] <= 0.95


def test_the_choice_at_a_size_is_the_largest_selected_size_below_it(cedr):
    choices = {"300": "features", "1000": "full", "3000": "ulmfit"}
    assert [cedr.recipe_for(choices, s) for s in ("100", "300", "999", "1000", "5000", "all")] == \
        ["features", "features", "features", "full", "ulmfit", "ulmfit"]


@pytest.mark.fp32
def test_select_then_table_on_a_tiny_bert(cedr, tmp_path):
    import ctxlm
    from helpers import tiny

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text(" ".join(CUES.values()) + " Предложение обычный день .\n" * 3,
                                      encoding="utf-8")
    ctxlm.save(tiny("bert", corpus=corpus, max_positions=32), tmp_path / "models" / "bert" / "checkpoint")
    test_file = tmp_path / "data" / "cedr" / "test.tsv"
    hidden = test_file.rename(test_file.with_suffix(".away"))  # select must not need the test split
    cedr.select(args_for(tmp_path, tmp_path / "models"))
    hidden.rename(test_file)
    out = tmp_path / "out"
    chosen = (out / "chosen.json").read_text()
    for row in ("bert", "bert-scratch", "tfidf"):
        assert f'"{row}"' in chosen
    cedr.table(args_for(tmp_path, tmp_path / "models"))
    results = sorted(p.name for p in (out / "results").glob("bert-*.json") if "scratch" not in p.name)
    assert [name.rsplit("-", 2)[1:] for name in results] == [["30", "0.json"], ["30", "1.json"], ["all", "0.json"]]
    table = (out / "cedr.md").read_text()
    assert "| bert |" in table and "| tfidf |" in table and "[2]" in table  # two seeds at 30 labels
