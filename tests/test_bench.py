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


@pytest.mark.default_precision
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


def test_precision_rows_compare_bf16_with_fp32(benchmarks):
    """bf16 autocast against fp32 pretraining: both rates, and losses after the same steps within bf16's rounding
    (tests/tolerances.py: one more rounding per chained product, 1 layer x 6 products + the head: depth 7)."""
    import bench
    from common import Shape

    from tolerances import tolerance

    settings = bench.Settings(sections=("precision",), device="cpu", quick=True,
                              sizes={"toy": Shape(layers=1, dim=32, heads=2, vocab=128, block=16, batch=2)})
    rows = bench.precision_rows(settings, torch.device("cpu"))
    assert [row.measure.split(" pretraining")[0] for row in rows] == ["GPT-2", "BERT (MLM + NSP)"]
    for row in rows:
        assert row.section == "precision" and row.ctxlm > 0 and row.peer > 0 and row.peer_name == "ctxlm fp32"
        fp32, bf16 = row.extra["loss_fp32"], row.extra["loss_bf16"]
        bound = tolerance(torch.bfloat16, terms=1, depth=7)["rtol"] * fp32
        assert row.extra["loss_steps"] == 2 and abs(bf16 - fp32) <= bound


@pytest.mark.filterwarnings("ignore:.*longer than max_length")  # the long texts are cut at 256 tokens on purpose
@pytest.mark.default_precision
def test_embed_rows_without_onnxruntime_say_why(benchmarks, monkeypatch):
    """Each text set gives one row per peer; ONNX Runtime's, when it is missing, skipped with the reason (not a crash),
    and every measured contender's lowest cosine to ctxlm's fp32 vectors beside it."""
    import bench
    import onnx_embed

    from ctxlm.errors import UserError
    from ctxlm.paths import dataset_path

    try:
        dataset_path("sst2", "dev.tsv")
        dataset_path("wikitext2", "valid.txt.gz")
    except UserError:
        pytest.skip("needs SST-2 and WikiText-2 under $CTXLM_DATA")
    import embed_vs_sentence_transformers as embed

    monkeypatch.setattr(onnx_embed, "missing", lambda: "onnxruntime is not installed (pip install -e '.[bench]')")
    long_texts = embed.long_texts
    monkeypatch.setattr(embed, "long_texts", lambda count, words: long_texts(4, words))  # 4 are enough here
    rows = bench.embed_rows(bench.Settings(sections=("embed",), device="cpu", quick=True), torch.device("cpu"))
    assert len(rows) == 2 * len(bench.EMBED_PEERS)
    for row in rows:
        assert row.ctxlm > 0 and row.ctxlm_cosine > 0.9999  # ctxlm's default: fp32, or bf16 where it is fast
        if row.peer_name.startswith("ONNX"):
            assert row.peer is None and "skipped, onnxruntime is not installed" in row.peer_name
        else:
            assert row.peer > 0 and row.peer_cosine > 0.9999


@pytest.mark.slow
def test_onnx_runtime_contenders_agree_with_fp32(benchmarks):
    """The exported MiniLM in ONNX Runtime: fp32 gives ctxlm's vectors; dynamic int8 stays close (minutes: export,
    optimisation, quantisation)."""
    import onnx_embed

    import ctxlm

    if onnx_embed.missing():
        pytest.skip(onnx_embed.missing())
    model = ctxlm.load("minilm")
    texts = ["A bank by the river.", "The bank raised its rates.", "word " * 300]
    exact = ctxlm.embed(texts, model, normalize=True, max_length=256, dtype="fp32")
    encode = onnx_embed.encoders(model, batch_size=2)
    assert (encode["ONNX Runtime fp32"](texts) * exact).sum(-1).min() > 0.99999
    assert (encode["ONNX Runtime int8"](texts) * exact).sum(-1).min() > 0.95
