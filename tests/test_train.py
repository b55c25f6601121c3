"""The trainer: loss falls on a fixed seed, a resumed run equals an uninterrupted one, schedules are right."""

import json
import sys

import pytest
import torch

from ctxlm.config import GPTConfig
from ctxlm.pretrain.causal_lm import LMData, pretrain_causal_lm
from ctxlm.train import TrainConfig, lr_factor
from helpers import TRAINING_GPT, Interrupt, tiny, train_tiny


def test_pretraining_reduces_loss(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    config = GPTConfig(vocab_size=300, max_positions=32, dim=32, n_layers=2, n_heads=2, dropout=0.0,
                       attn_dropout=0.0)
    train = TrainConfig(steps=40, lr=3e-3, warmup_steps=5, eval_every=20, save_every=20, log_every=5)
    pretrain_causal_lm(LMData.resolve(corpus_dir), tmp_path / "run", config, train, block_size=32,
                       batch_size=8, eval_batches=4)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    valid = [r["valid_loss"] for r in records if "valid_loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses
    assert valid[-1] < valid[0], valid
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "checkpoint" / "tokenizer.json").is_file()


def test_resumed_run_matches_uninterrupted(tmp_path):
    reference, ref_trainer = train_tiny(tmp_path / "a")
    with pytest.raises(Interrupt):
        train_tiny(tmp_path / "b", stop_at=2 * 10)  # step 10's first micro-batch; the last checkpoint is step 8
    resumed, trainer = train_tiny(tmp_path / "b", resume=True)
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert ref_trainer.history[-1]["loss"] == trainer.history[-1]["loss"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the interrupted run's records after step 8 were dropped, none repeat


def test_a_resumed_run_computes_on_memory_laid_out_as_an_uninterrupted_runs(tmp_path):
    """safetensors reads tensors into buffers 8- or 16-byte aligned, as its header's length falls; the optimizer
    would keep them as its moments. Kernels whose summation order follows alignment (MKL's AVX-512 paths) would
    then round otherwise after a resume than without one: resumed state lives in torch's 64-byte-aligned memory."""
    from safetensors import safe_open

    train_tiny(tmp_path / "a", steps=8)
    with safe_open(tmp_path / "a" / "checkpoint" / "optimizer.safetensors", framework="pt") as f:
        names = f.keys()  # safe_open is not iterable itself
        as_read = [f.get_tensor(name).data_ptr() % 64 for name in names if name.startswith("state.")]
    assert any(as_read), "safetensors now reads into aligned memory: this test no longer shows the hazard"
    _, trainer = train_tiny(tmp_path / "a", steps=8, resume=True)  # loads, then has nothing left to do
    moments = [t for state in trainer.optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert moments and all(t.data_ptr() % 64 == 0 for t in moments)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    reference, _ = train_tiny(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt, match="stopped at step 6"):
        train_tiny(tmp_path / "b", ctrl_c_at=2 * 5 + 1)  # inside step 6 (micro-batches 10 and 11)
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6  # not a save_every multiple: saved because of the interrupt
    resumed, _ = train_tiny(tmp_path / "b", resume=True)
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    from ctxlm.errors import UserError

    with pytest.raises(UserError, match="no checkpoint to resume"):
        train_tiny(tmp_path, resume=True)


def test_schedule_warms_up_then_decays():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    linear = TrainConfig(steps=100, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, linear) == pytest.approx(0.5)


def test_no_weight_decay_on_biases_and_norms():
    from ctxlm.train import default_param_groups

    decay, no_decay = default_param_groups(tiny("gpt2", **TRAINING_GPT), 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_a_run_folder_loads_its_checkpoint(tmp_path):
    import ctxlm

    reference, _ = train_tiny(tmp_path / "run")
    loaded = ctxlm.load(tmp_path / "run")  # the folder `ctxlm pretrain --out` wrote, as the README uses it
    for (name, p), q in zip(reference.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_after_training_a_decoding_forward_reads_the_new_weights(tmp_path):
    """Small no-grad products (decoding) use transposed copies of the weights, remade when a weight's version
    moves; the fused AdamW kernel does not move it by itself, so the trainer does, or an evaluation (or a sample)
    after training would read the weights of before it."""
    from ctxlm.pretrain.causal_lm import causal_lm_objective
    from ctxlm.train import Trainer
    from helpers import synthetic_batches
    from tolerances import assert_fp_close

    model = tiny("gpt2", **TRAINING_GPT).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        model(ids)  # makes the copies
    batches = synthetic_batches()
    Trainer(model, causal_lm_objective, batches.batch, TrainConfig(steps=3, lr=1e-2, warmup_steps=1), tmp_path).fit()
    model.eval()
    with torch.no_grad():
        decoded = model(ids).logits
    with torch.enable_grad():  # more than a decoding product: no copies
        direct = model(ids).logits
    # the same weights through two kernels: rounding of a few chained sums of dim terms (stale weights differ by
    # a step of lr 1e-2, far outside)
    assert_fp_close(decoded, direct, terms=model.config.dim, depth=2 * model.config.n_layers + 1)


def test_a_run_with_a_time_budget_shows_the_budget_left_not_only_the_steps_eta(tmp_path, capsys, monkeypatch):
    """A run sized by --minutes (ELMo's: a million steps, stopped by its budget) would otherwise promise an ETA of
    hundreds of hours: its progress line says how much of the budget is left."""
    from ctxlm.pretrain.causal_lm import causal_lm_objective
    from ctxlm.train import Trainer
    from helpers import synthetic_batches

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # plain lines, as in a log file
    for minutes, expected in ((60.0, "budget_left=59:"), (None, None)):
        config = TrainConfig(steps=3, lr=1e-2, warmup_steps=1, eval_every=100, log_every=1, max_minutes=minutes)
        Trainer(tiny("gpt2", **TRAINING_GPT), causal_lm_objective, synthetic_batches().batch, config,
                tmp_path / str(minutes)).fit()
        last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")][-1]
        assert ("budget_left=" in last) == (expected is not None) and (expected is None or expected in last), last
