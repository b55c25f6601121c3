"""Numerics: NaN/inf steps stopped or skipped, gradient norms logged, deterministic mode, run logs kept."""

import json
import math

import pytest
import torch

from ctxlm.pretrain.causal_lm import causal_lm_objective
from ctxlm.train import MAX_SKIPPED_IN_A_ROW, NonFiniteLoss, TrainConfig, Trainer
from helpers import TRAINING_GPT, metrics_records, run_cli, synthetic_batches, tiny


def poisoned_objective(bad_steps: set[int], counter: list[int], poison: str = "nan"):
    """The causal LM loss, made NaN on the micro-batches numbered in `bad_steps` (as a bad batch or an overflow
    would: the NaN reaches every gradient through backward), or infinite with finite gradients ("inf")."""
    def objective(model, batch):
        loss, metrics = causal_lm_objective(model, batch)
        index = counter[0]
        counter[0] += 1
        if index in bad_steps:
            loss = loss * math.nan if poison == "nan" else loss + math.inf
        return loss, metrics

    return objective


def train(run_dir, bad_steps=(), steps=12, poison="nan", **options):
    model = tiny("gpt2", **TRAINING_GPT)
    config = TrainConfig(steps=steps, lr=1e-2, warmup_steps=2, save_every=4, eval_every=100, log_every=1, **options)
    trainer = Trainer(model, poisoned_objective(set(bad_steps), [0], poison), synthetic_batches().batch, config,
                      run_dir)
    trainer.fit()
    return model


@pytest.mark.parametrize("poison, says", [("nan", "loss nan, gradient norm nan"),
                                          ("inf", r"loss inf, gradient norm \d")])  # gradients finite
def test_a_nan_step_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, poison, says):
    with pytest.raises(NonFiniteLoss, match=rf"step 6: {says}.*: not finite, training stopped"):
        train(tmp_path, bad_steps={5}, poison=poison)
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4  # the checkpoint before the NaN, untouched
    weights = tiny("gpt2", **TRAINING_GPT).state_dict()
    from ctxlm.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "checkpoint").state_dict()
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert any(not torch.equal(saved[k], weights[k]) for k in weights)  # it trained, then stopped


def test_skipped_steps_leave_the_weights_as_if_the_batch_were_absent(tmp_path):
    skipped = train(tmp_path / "skip", bad_steps={3, 7}, on_nonfinite="skip")
    assert all(torch.isfinite(p).all() for p in skipped.parameters())
    records = metrics_records(tmp_path / "skip")
    assert [r["step"] for r in records if r.get("skipped_steps")] == [5, 9]  # told at the next record
    assert [r["step"] for r in records if "loss" in r] == [s for s in range(1, 13) if s not in (4, 8)]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records if "loss" in r)
    # Up to the first bad batch, the same weights as a clean run; after it they differ (a batch was dropped).
    clean = train(tmp_path / "clean", steps=3)
    first = train(tmp_path / "first", bad_steps={3}, steps=4, on_nonfinite="skip")
    for a, b in zip(clean.parameters(), first.parameters(), strict=True):
        assert torch.equal(a, b)  # step 4 (NaN) changed nothing


def test_a_diverged_run_stops_even_when_skipping(tmp_path):
    bad = set(range(2, 40))
    with pytest.raises(NonFiniteLoss, match=f"{MAX_SKIPPED_IN_A_ROW + 1} non-finite steps in a row"):
        train(tmp_path, bad_steps=bad, steps=30, on_nonfinite="skip")


def test_gradient_norm_is_logged_before_clipping(tmp_path):
    model = tiny("gpt2", **TRAINING_GPT)
    batches = synthetic_batches()
    config = TrainConfig(steps=1, lr=1e-9, warmup_steps=1, log_every=1, eval_every=100, save_every=100,
                         grad_clip=1e-3)
    Trainer(model, causal_lm_objective, batches.batch, config, tmp_path).fit()
    expected = tiny("gpt2", **TRAINING_GPT)
    causal_lm_objective(expected.train(), batches.batch(0))[0].backward()  # dropout differs; norm is close
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in expected.parameters()]))
    logged = metrics_records(tmp_path)[0]["grad_norm"]
    assert logged > 100 * 1e-3  # the norm before clipping to 1e-3
    assert logged == pytest.approx(float(norm), rel=0.3)


def test_deterministic_mode_gives_bitwise_equal_runs_and_is_restored(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    a = train(tmp_path / "a", deterministic=True)
    b = train(tmp_path / "b", deterministic=True)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.fp32
def test_cli_options_and_the_run_log(monkeypatch, capsys, corpus_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "--data", corpus_dir, "--tokenizer", tiny_model_dir,
                           "--layers", 1, "--dim", 16, "--heads", 2, "--block-size", 16, "--batch-size", 4,
                           "--steps", 6, "--warmup", 2, "--eval-every", 6, "--save-every", 3, "--seed", 1,
                           "--deterministic", "--on-nonfinite", "skip", "--out", out)
    assert code == 0, err
    config = json.loads((out / "train_config.json").read_text())
    assert config["deterministic"] is True and config["on_nonfinite"] == "skip"
    log = (out / "train.log").read_text()
    lines = log.splitlines()
    assert "ctxlm pretrain" in lines[0] and lines[-1].endswith("end of run")
    assert "corpus:" in log and "model saved in" in log and "train: 100%" in log
    assert "\r" not in log
    # a failing run logs its error, appended to the same file
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "--data", corpus_dir, "--tokenizer", tiny_model_dir,
                           "--layers", 1, "--dim", 16, "--heads", 2, "--block-size", 16, "--steps", 12, "--resume",
                           "--out", out)
    assert code == 0, err  # resumes at step 6 and trains to 12
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "--data", tmp_path / "missing", "--out", out)
    assert code == 1
    log = (out / "train.log").read_text()
    assert log.count("end of run") == 3 and "error: " in log.splitlines()[-2]


@pytest.mark.parametrize("kind", ["gpt", "bert", "gpt2"])
def test_the_same_corpus_trains_the_same_tokenizer(corpus_dir, kind):
    """HF's trainers number symbols in hash-map order (randomly seeded) and break ties between merges by those
    numbers (huggingface/tokenizers#1794): on this small corpus 6 WordPiece trainings gave 6 different
    vocabularies before ctxlm fixed the numbers up front."""
    from ctxlm.tokenizers import Tokenizer

    files = sorted(corpus_dir.iterdir())
    made = {Tokenizer.train(files, kind=kind, vocab_size=400).backend.to_str() for _ in range(4)}
    assert len(made) == 1
