"""benchmarks/russian_senses.py (the lecture's "замок" example and the Russian sense probe): the probe file has the
shape the measurement claims (≥ 8 homonyms, two senses, ≥ 4 sentences a sense, one target form per word), the
leave-one-out score is right on planted vectors (and counts ties at their share), and a model's readings have one
value per layer. No figure of the real measurement is asserted."""

from collections import Counter
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def senses(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import russian_senses

    return russian_senses


def test_the_probe_has_eight_homonyms_of_two_senses_and_four_sentences_each(senses):
    occurrences = senses.read_probe()
    per_sense = Counter((o.word, o.sense) for o in occurrences)
    words = Counter(word for word, _ in per_sense)
    assert len(words) >= 8 and set(words.values()) == {2}
    assert min(per_sense.values()) >= 4
    assert all(o.words[o.target] == o.word for o in occurrences)  # the same form everywhere: only context differs
    assert len({o.words for o in occurrences}) == len(occurrences)  # no sentence twice


def test_split_marked_finds_the_targets_among_words_and_punctuation(senses):
    words, targets = senses.split_marked("Ворота [замка] закрыты на [замок].")
    assert words == ["Ворота", "замка", "закрыты", "на", "замок", "."]
    assert targets == [1, 4]


def test_a_malformed_probe_line_names_the_file_and_line(senses, tmp_path):
    bad = tmp_path / "probe.tsv"
    bad.write_text("# header\nзамок\tlock\tНа двери висел замок.\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"probe.tsv:2: expected exactly one \[замок\]"):
        senses.read_probe(bad)


def test_separated_senses_score_one_and_identical_vectors_score_the_tie_share(senses):
    words = ["a"] * 10 + ["b"] * 10
    labels = (["x"] * 5 + ["y"] * 5) * 2
    torch.manual_seed(0)
    centres = {"x": torch.randn(16), "y": torch.randn(16)}
    separated = torch.stack([centres[s] + 0.01 * torch.randn(16) for s in labels])
    assert senses.nearest_sense_accuracy(separated, words, labels) == 1.0
    same = torch.ones(20, 16)  # a static embedding: every neighbour tied, 4 of the 9 of the same sense
    assert senses.nearest_sense_accuracy(same, words, labels) == pytest.approx(4 / 9)
    swapped = torch.stack([centres["y" if s == "x" else "x"] if i % 5 == 0 else centres[s]
                           for i, s in enumerate(labels)])  # one odd occurrence per sense: its neighbours disagree
    assert senses.nearest_sense_accuracy(swapped, words, labels) < 1.0


@pytest.mark.fp32
def test_a_model_gets_one_score_and_one_cosine_per_layer(senses, tmp_path):
    from helpers import tiny

    occurrences = senses.read_probe()[:20]
    (tmp_path / "train.txt").write_text("\n".join(" ".join(o.words) for o in occurrences) * 3, encoding="utf-8")
    model = tiny("bert", corpus=tmp_path, max_positions=64).eval()
    result = senses.measure(model, occurrences)
    layers = model.config.n_layers + 1
    assert len(result["accuracy"]) == layers and all(0.0 <= a <= 1.0 for a in result["accuracy"])
    assert {k: len(v) for k, v in result["cosine"].items()} == {"lecture": layers, "same-form": layers}
