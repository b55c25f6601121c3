"""benchmarks/objectives_compare.py (the objectives after BERT at equal compute) on tiny models, a tiny document
corpus and a tiny SST-2 folder: every family is pretrained to the same token budget, each row (and BERT from random
weights) is fine-tuned once per seed, the table names every row, and a second run trains nothing again. No figure
of the real measurement is asserted."""

import argparse
import json
import random
from pathlib import Path

import pytest

from helpers import write_corpus, write_documents, write_file

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FAMILIES = ("bert", "roberta", "albert", "deberta", "xlnet")


def write_sst2(root: Path) -> None:
    rng = random.Random(0)
    words = ["the", "film", "plot", "was", "a", "story"]

    def rows(n: int) -> str:
        lines = []
        for i in range(n):
            label = i % 2
            lines.append(" ".join(rng.choice(words) for _ in range(5)) + (" great ." if label else " dull .")
                         + f" \t{label}\n")
        return "sentence\tlabel\n" + "".join(lines)

    write_file(root / "sst2" / "train.tsv.gz", rows(40))
    write_file(root / "sst2" / "dev.tsv", rows(12))


@pytest.fixture
def bench(monkeypatch, tmp_path):
    data = tmp_path / "data"
    write_sst2(data)
    corpus = write_documents(write_corpus(tmp_path / "corpus"), tmp_path / "documents")
    # documents: next-sentence pairs need two or more
    write_file(data / "wikitext2" / "valid.txt.gz", (corpus / "valid.txt").read_text())
    monkeypatch.setenv("CTXLM_DATA", str(data))
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives_compare

    monkeypatch.setattr(objectives_compare, "general_corpus", lambda: corpus)
    return objectives_compare


@pytest.mark.fp32
def test_every_objective_sees_the_same_tokens_and_every_row_is_fine_tuned_per_seed_and_rate(bench, tmp_path):
    out = tmp_path / "objectives"
    argv = ["--out", str(out), "--tokens", str(3 * 4 * 16), "--layers", "1", "--dim", "32", "--heads", "2",
            "--vocab", "300", "--block-size", "16", "--batch-size", "4", "--save-every-minutes", "10",
            "--labels", "16", "--seeds", "0,1", "--epochs", "1", "--min-steps", "2"]
    args = bench.parser().parse_args(argv)
    text = bench.compare(args)
    builds = {f: json.loads((out / "build" / f"{f}.json").read_text()) for f in FAMILIES}
    assert {b["steps"] for b in builds.values()} == {3}
    assert {b["tokens"] for b in builds.values()} == {3 * 4 * 16}  # the same budget, counted from each run's files
    results = sorted(p.stem for p in (out / "results").glob("*.json"))
    assert results == sorted(f"{row}-lr0.0005-{seed}" for row in (*FAMILIES, bench.SCRATCH) for seed in (0, 1))
    cells = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| model |")}
    assert cells.keys() == {*FAMILIES, bench.SCRATCH}
    assert all(row[-1].endswith("[2] |") for row in cells.values())  # two seeds in every cell
    held_out = {name: row[5] for name, row in cells.items()}
    assert held_out["bert"].startswith("masked-LM acc. ") and held_out["bert"].split(", ")[1].startswith("NSP ")
    assert held_out["albert"].split(", ")[1].startswith("SOP ")  # its sentence task is the order, not NSP
    assert held_out["roberta"].startswith("masked-LM acc. ") and "," not in held_out["roberta"]
    assert held_out["xlnet"].startswith("perplexity ") and held_out[bench.SCRATCH] == "—"
    assert all(float(row[6]) > 0 for row in cells.values())  # every row's sentence-vector spread
    assert (out / "objectives.md").read_text() == text

    stamps = {p: p.stat().st_mtime_ns for p in (out / "build").glob("*.json")}
    stamps |= {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    assert bench.compare(args) == text  # done runs are read back, not trained again
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())

    other_rate = bench.parser().parse_args([*argv, "--ft-lr", "1e-3", "--seeds", "0"])
    assert "at 0.001 on 16 labels" in bench.compare(other_rate)  # another rate fine-tunes anew, keeping the first
    assert (out / "results" / "bert-lr0.001-0.json").exists()
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())


def test_the_budget_sets_the_steps(bench, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, "record_build", lambda out, name, run, train: seen.setdefault(name, train.keywords))
    args = argparse.Namespace(families="roberta,xlnet", tokens=1_000_000, batch_size=32, block_size=128, layers=4,
                              dim=256, heads=4, vocab=8192, lr=1e-3, save_every_minutes=10.0)
    bench.build(args, tmp_path)
    assert [seen[f]["steps"] for f in ("roberta", "xlnet")] == [1_000_000 // (32 * 128)] * 2
    assert seen["roberta"]["model"] == "roberta" and seen["xlnet"]["model"] == "xlnet"
