"""`ctxlm bench` (benchmarks/bench.py): a smoke run at toy sizes gives the rows it promises, with ratio = ctxlm / peer;
the FLOP formula agrees with PyTorch's counter; outside a source checkout the command says why it cannot run.
No timing is asserted: the machine may be busy."""

import json
from pathlib import Path

import pytest
import torch

from helpers import assert_user_error, run_cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as top-level modules


def test_quick_run_writes_every_row_with_ratios(benchmarks, tmp_path, capsys):
    import bench
    from common import Shape

    settings = bench.Settings(sections=("pretrain", "generate"), device="cpu", quick=True, peak_gflops=100.0,
                              sizes={"toy": Shape(layers=1, dim=32, heads=2, vocab=128, block=16, batch=2)})
    bench.run(settings, tmp_path / "bench.json")
    report = json.loads((tmp_path / "bench.json").read_text())

    assert report["machine"]["torch"] == torch.__version__ and report["peak_gflops"] == 100.0
    measures = [row["measure"] for row in report["rows"]]
    for family in ("GPT-2 pretraining", "BERT pretraining", "ELMo biLM pretraining", "Transformer-XL pretraining"):
        assert sum(m.startswith(family) for m in measures) == 1, measures
    assert sum(m.startswith("GPT-2 greedy generation") for m in measures) == 2  # batch 1 and 8
    for row in report["rows"]:
        assert row["ctxlm"] > 0, row
        if row["measure"].startswith(("ELMo", "Transformer-XL")):  # no maintained peer
            assert row["peer"] is None and row["ratio"] is None
        else:
            assert row["peer"] > 0 and row["ratio"] == pytest.approx(row["ctxlm"] / row["peer"])
        if row["section"] == "pretrain" and not row["measure"].startswith("ELMo"):
            assert row["gflops"] > 0 and row["peak_fraction"] == pytest.approx(row["gflops"] / 100.0)
    table = capsys.readouterr().out
    assert "| measure | unit | ctxlm | peer | ratio |" in table and "machine: " in table


def test_flop_formula_matches_counted_flops(benchmarks):
    """3 × a counted forward pass = the training formula (the math attention kernel, which the counter sees)."""
    from flops import gpt_train_flops
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ctxlm.config import GPTConfig
    from ctxlm.models.gpt import GPTLanguageModel

    layers, dim, block, vocab = 2, 64, 32, 512
    model = GPTLanguageModel(GPTConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=2, max_positions=block))
    ids = torch.randint(0, vocab, (2, block))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, targets=ids)
    assert 3 * counter.get_total_flops() / ids.numel() == gpt_train_flops(layers, dim, block, vocab)


def test_scaling_rows_train_the_same_tokens_per_step(benchmarks):
    from scaling import ScalingSettings, shapes

    sweeps = shapes(ScalingSettings())
    assert [s.block for s in sweeps["length"]] == [128, 256, 512, 1024, 2048]
    assert [s.dim for s in sweeps["width"]] == [128, 256, 512, 768]
    assert {s.batch * s.block for rows in sweeps.values() for s in rows} == {2048}


def test_outside_a_source_checkout(monkeypatch, capsys, tmp_path):
    import ctxlm.cli.bench

    monkeypatch.setattr(ctxlm.cli.bench, "BENCHMARKS", tmp_path / "benchmarks")  # as installed from a wheel
    assert_user_error(run_cli(monkeypatch, capsys, "bench", "--quick"), "source checkout", "benchmarks")


def test_unknown_section(monkeypatch, capsys):
    assert_user_error(run_cli(monkeypatch, capsys, "bench", "--only", "pretrain,speed"), "--only", "scaling")
