"""The trainer: loss falls on a fixed seed, a resumed run equals an uninterrupted one, schedules are right."""

import json
import os
import signal

import pytest
import torch

from ctxlm.config import GPTConfig
from ctxlm.models.gpt import GPTLanguageModel
from ctxlm.pretrain.causal_lm import LMData, causal_lm_objective, pretrain_causal_lm
from ctxlm.pretrain.corpus import BlockBatches, TokenSpan
from ctxlm.train import TrainConfig, Trainer, lr_factor


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPTLanguageModel(GPTConfig(vocab_size=50, max_positions=16, dim=32, n_layers=2, n_heads=4))


def synthetic_batches(seed=0):
    rng = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 50, (4000,), generator=rng).numpy().astype("uint16")
    ids[1::2] = (ids[::2] + 1) % 50  # every other token is predictable: the loss has somewhere to go
    return BlockBatches(TokenSpan(ids), block_size=16, batch_size=4, seed=seed)


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


class Interrupt(Exception):
    pass


def run(run_dir, *, stop_at=None, ctrl_c_at=None, resume=False, steps=12):
    model = tiny_model()
    batches = synthetic_batches()

    def batch(i):
        if stop_at is not None and i == stop_at:
            raise Interrupt  # as if the process were killed while fetching this batch
        if ctrl_c_at is not None and i == ctrl_c_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C in the middle of a step
        return batches.batch(i)

    config = TrainConfig(steps=steps, lr=1e-2, warmup_steps=3, save_every=4, eval_every=100, log_every=1,
                         grad_accum=2)
    trainer = Trainer(model, causal_lm_objective, batch, config, run_dir)
    trainer.fit(resume=resume)
    return model, trainer


def test_resumed_run_matches_uninterrupted(tmp_path):
    reference, ref_trainer = run(tmp_path / "a")
    with pytest.raises(Interrupt):
        run(tmp_path / "b", stop_at=2 * 10)  # step 10's first micro-batch; the last checkpoint is step 8
    resumed, trainer = run(tmp_path / "b", resume=True)
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert ref_trainer.history[-1]["loss"] == trainer.history[-1]["loss"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the interrupted run's records after step 8 were dropped, none repeat


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    reference, _ = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt, match="stopped at step 6"):
        run(tmp_path / "b", ctrl_c_at=2 * 5 + 1)  # inside step 6 (micro-batches 10 and 11)
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6  # not a save_every multiple: saved because of the interrupt
    resumed, _ = run(tmp_path / "b", resume=True)
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    from ctxlm.errors import UserError

    with pytest.raises(UserError, match="no checkpoint to resume"):
        run(tmp_path, resume=True)


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

    decay, no_decay = default_param_groups(tiny_model(), 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_a_run_folder_loads_its_checkpoint(tmp_path):
    import ctxlm

    reference, _ = run(tmp_path / "run")
    loaded = ctxlm.load(tmp_path / "run")  # the folder `ctxlm pretrain --out` wrote, as the README uses it
    for (name, p), q in zip(reference.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
