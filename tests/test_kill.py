"""kill -9 at random moments of `ctxlm pretrain`, 6 trials (CTXLM_KILL_TRIALS=20 for more): whatever the moment
(tokenising the corpus, between steps, in the middle of writing a checkpoint), the newest checkpoint loads and the
resumed run ends with the same weights, and logs the same losses and gradient norms, bit for bit, as a run that was
never interrupted. The runs train with `--precision auto`: bf16 autocast on a CPU with bf16 units, fp32 elsewhere,
and `make test` reruns them in the other precision, so that exact resume is tested in both arithmetics."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctxlm.checkpoint import load_checkpoint

TRIALS = int(os.environ.get("CTXLM_KILL_TRIALS", "6"))  # each costs two process starts: ~15 s
pytestmark = pytest.mark.default_precision
STEPS = 40


def command(corpus_dir: Path, tokenizer_dir: Path, out: Path, *, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "ctxlm", "pretrain", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_dir),
            "--layers", "2", "--dim", "32", "--heads", "2", "--block-size", "32", "--batch-size", "8",
            "--steps", str(STEPS), "--warmup", "4", "--lr", "3e-3", "--eval-every", str(STEPS), "--save-every", "2",
            "--seed", "3", "--precision", "auto", "--out", str(out), *(["--resume"] if resume else [])]


def environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "CTXLM_CACHE": str(cache), "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}


def finish(args: list[str], cache: Path) -> None:
    done = subprocess.run(args, env=environment(cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def final_state(out: Path) -> tuple[dict[str, torch.Tensor], list[tuple]]:
    """The final weights, and every logged training loss and gradient norm (the log lines, timings aside)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["loss"], r["grad_norm"]) for r in records if "loss" in r]
    return load_checkpoint(out / "checkpoint").state_dict(), logged


@pytest.fixture(scope="module")
def reference(corpus_dir, tiny_model_dir, tmp_path_factory):
    """An uninterrupted run: its final state, and how long its phases took (to aim the kills)."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "run"
    start = time.perf_counter()
    process = subprocess.Popen(command(corpus_dir, tiny_model_dir, out), env=environment(root / "cache"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not (out / "train_config.json").exists():  # written as training starts
        time.sleep(0.005)
    training_starts = time.perf_counter() - start
    while process.poll() is None and last_step(out) < STEPS:
        time.sleep(0.005)
    training_ends = time.perf_counter() - start
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return final_state(out), training_starts, training_ends, time.perf_counter() - start


def last_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_minus_9_at_random_moments_loses_nothing(corpus_dir, tiny_model_dir, tmp_path, reference):
    (weights, log), training_starts, training_ends, total = reference
    rng = random.Random(2026)
    outcomes = []
    for trial in range(TRIALS):
        out, cache = tmp_path / f"trial{trial}" / "run", tmp_path / f"trial{trial}" / "cache"  # a cold cache each
        process = subprocess.Popen(command(corpus_dir, tiny_model_dir, out), env=environment(cache),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The first trial dies anywhere (start-up, tokenising, the final report), the others while training and
        # checkpointing (timed from when this run's training starts: start-up times vary more than training lasts).
        if trial < 1:
            at = rng.uniform(0, total)
        else:
            while process.poll() is None and not (out / "train_config.json").exists():
                time.sleep(0.005)
            at = rng.uniform(0, training_ends - training_starts)
        try:
            process.wait(timeout=at)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        has_checkpoint = (out / "checkpoint" / "trainer_state.json").is_file()
        if has_checkpoint:
            step = last_step(out)
            load_checkpoint(out / "checkpoint")  # the newest checkpoint always loads
        outcomes.append(step if has_checkpoint else None)
        finish(command(corpus_dir, tiny_model_dir, out, resume=has_checkpoint), cache)
        resumed, resumed_log = final_state(out)
        differing = [name for name, value in weights.items() if not torch.equal(resumed[name], value)]
        # both checks in one message: which of weights, losses and gradient norms moved tells kernels apart
        assert resumed_log == log and not differing, (
            f"trial {trial}: killed at {at:.2f} s (checkpoint {outcomes[-1]}); weights that differ: {differing}; "
            f"log entries that differ (step, loss, grad_norm) resumed vs uninterrupted: "
            f"{[(a, b) for a, b in zip(resumed_log, log, strict=False) if a != b]}")
    print(f"checkpoint step at each kill (None: killed before the first): {outcomes}")
    assert any(step is not None and step < STEPS for step in outcomes)  # some kills did land mid-training
