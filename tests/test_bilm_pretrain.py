"""ELMo's biLM pretraining: loss falls, each direction's perplexity is exact, resuming is exact, and the CLI's run
folder loads back with its word list."""

import math

import pytest
import torch

import ctxlm
from ctxlm.pretrain import bilm
from ctxlm.pretrain.bilm import pretrain_bilm, windows
from ctxlm.pretrain.causal_lm import LMData
from ctxlm.pretrain.corpus import BlockBatches, TokenSpan
from ctxlm.train import TrainConfig
from helpers import Interrupt, dying_at, metrics_records, run_cli, tiny_config
from tolerances import assert_fp_close

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir):
    """A biLM trained for 40 steps on the tiny corpus: (model, run folder)."""
    run_dir = tmp_path_factory.mktemp("bilm") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTXLM_CACHE", str(run_dir.parent / "cache"))
        train = TrainConfig(steps=40, lr=2e-2, warmup_steps=3, eval_every=20, save_every=20, log_every=5)
        model = pretrain_bilm(LMData.resolve(corpus_dir), run_dir, tiny_config("elmo", dim=32, cell_dim=64), train,
                              block_size=16, batch_size=8)
    return model, run_dir


def test_pretraining_reduces_both_directions_losses(trained, capsys):
    _, run_dir = trained
    logged = metrics_records(run_dir)
    losses = [r["loss"] for r in logged if "loss" in r]
    valid = [r for r in logged if "valid_loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses
    assert len(valid) == 2
    for direction in ("forward", "backward"):
        assert valid[-1][f"valid_{direction}_loss"] < valid[0][f"valid_{direction}_loss"], valid
        assert valid[-1][f"valid_{direction}_loss"] < losses[0] - 1.0, valid  # both directions learned
    assert (run_dir / "checkpoint" / "words.txt").is_file() and (run_dir / "loss.png").is_file()


@pytest.mark.numeric
def test_perplexities_are_exp_of_the_mean_loss_over_validation_words(trained, corpus_dir):
    model, run_dir = trained
    final = metrics_records(run_dir)[-1]
    valid = BlockBatches(TokenSpan(bilm.tokenize_words(corpus_dir / "valid.txt", model.tokenizer).ids), 16, 8, seed=0)
    batches = [windows(b) for b in valid.eval_batches(50)]
    assert len({len(b) for b in batches}) > 1  # a last, smaller batch: a mean of batch means would be off
    model.eval()
    losses = {"forward": [], "backward": []}
    with torch.no_grad():
        for ids in batches:
            top, dim = model(ids).hidden.last, model.config.dim
            targets = model.tokenizer.softmax_targets(ids)
            forward = model.log_probs(top[:, :-1, :dim]).gather(-1, targets[:, 1:, None])
            backward = model.log_probs(top[:, 1:, dim:]).gather(-1, targets[:, :-1, None])
            losses["forward"] += (-forward).flatten().tolist()
            losses["backward"] += (-backward).flatten().tolist()
    # The same log-probabilities: the logged loss adds float32 means over each batch's positions, the test the
    # positions one by one in float64 (tests/tolerances.py: a log-softmax, then sums of a batch's positions).
    fp32 = dict(terms=max(b.numel() for b in batches), depth=2, dtype=torch.float32)
    for direction, values in losses.items():
        mean = sum(values) / len(values)
        assert_fp_close(final[f"valid_{direction}_loss"], mean, **fp32)
        assert_fp_close(math.log(final[f"valid_{direction}_perplexity"]), mean, **fp32)  # exp of that mean
    assert final["valid_loss"] == pytest.approx((final["valid_forward_loss"] + final["valid_backward_loss"]) / 2)


def test_resumed_run_matches_uninterrupted(tmp_path, corpus_dir, monkeypatch):
    def run(run_dir, resume=False):
        train = TrainConfig(steps=8, lr=1e-2, warmup_steps=2, eval_every=4, save_every=4, log_every=1)
        return pretrain_bilm(LMData.resolve(corpus_dir), run_dir, tiny_config("elmo", dropout=0.2), train,
                             block_size=16, batch_size=4, resume=resume)

    reference = run(tmp_path / "a")

    Killed = dying_at(BlockBatches, 6)  # as if the process died in step 7; the last checkpoint is step 4

    with monkeypatch.context() as patch:
        patch.setattr(bilm, "BlockBatches", Killed)
        with pytest.raises(Interrupt):
            run(tmp_path / "b")
    resumed = run(tmp_path / "b", resume=True)
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]  # noqa: E731
    assert strip(metrics_records(tmp_path / "a")) == strip(metrics_records(tmp_path / "b"))
    assert resumed.tokenizer.words.words == reference.tokenizer.words.words


@pytest.mark.parametrize("options", [[], ["--clip", "--softmax", "adaptive", "--cutoffs", "6,12"]])
@pytest.mark.fp32
def test_cli_pretrains_a_biLM_that_loads_and_embeds(monkeypatch, capsys, tmp_path, corpus_dir, options):
    run_dir = tmp_path / "run"
    result = run_cli(monkeypatch, capsys, "pretrain", "--model", "elmo", "--data", str(corpus_dir), "--out",
                     str(run_dir), "--steps", "4", "--block-size", "16", "--batch-size", "4", "--dim", "16",
                     "--cell-dim", "32", "--eval-every", "2", *options)
    assert result.exit_code == 0, result.output
    assert "validation perplexity forward" in result.output and "backward:" in result.output
    model = ctxlm.load(run_dir)
    assert model.config.n_layers == 2 and model.config.cell_dim == 32
    assert (model.config.cell_clip == 3.0) == ("--clip" in options)
    assert model.config.softmax == ("adaptive" if options else "full")
    assert model.tokenizer.vocab_size == model.config.vocab_size > 10
    vectors = ctxlm.embed(["some text"], model, layers="all", pool="mean")
    assert vectors.shape == (1, 3, 32) and torch.isfinite(vectors).all()
