"""Data-parallel pretraining under torchrun, with 2 CPU processes (gloo): they train as one process with twice the
batch, stay identical, stop together and resume exactly; what cannot run under torchrun says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctxlm import distributed
from ctxlm import load as load_model
from ctxlm.errors import UserError
from helpers import assert_user_error, metrics_records, run_cli, write_documents
from tolerances import assert_fp_close

WORKER = Path(__file__).parent / "ddp_worker.py"
TINY = {"gpt2": ["--layers", 2, "--dim", 32, "--heads", 2, "--block-size", 32, "--warmup", 2],
        "elmo": ["--vocab-size", 20, "--layers", 1, "--dim", 16, "--block-size", 16, "--warmup", 2]}
# Two processes add their gradients in another order than one: float32 rounding (tests/tolerances.py) of sums of up
# to 300 terms (the tiny GPT-2's vocabulary; 4 x 32 positions into a weight's gradient), through 20 steps of about
# 10 stages each (5 forward, 5 back), which the weights carry from step to step.
TRAINING = dict(terms=300, depth=20 * 10)


def assert_close_after_training(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Each tensor within TRAINING's rounding at the scale of the largest tensor of its kind (weights, or one
    optimizer moment): Adam moves every element about lr a step whatever its size, also one whose gradient is
    rounding noise (a key bias, which the softmax ignores), so a tensor's own values do not set its errors."""
    assert ours.keys() == theirs.keys()
    kind = lambda name: name.rsplit(".", 1)[-1] if name.startswith("state.") else "weight"  # noqa: E731
    scale = {}
    for name, value in theirs.items():
        scale[kind(name)] = max(scale.get(kind(name), 0.0), value.abs().max().item())
    for name in ours:
        assert_fp_close(ours[name], theirs[name], **TRAINING, magnitude=scale[kind(name)], msg=name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One $CTXLM_CACHE for the module: the corpus is tokenised once."""
    return tmp_path_factory.mktemp("cache")


def torchrun(cache: Path, *args) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGS` (ARGS: `-m ctxlm pretrain ...` or a script), one thread
    per process."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "CTXLM_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


def pretrain_ddp(cache: Path, *args) -> subprocess.CompletedProcess:
    result = torchrun(cache, "-m", "ctxlm", "pretrain", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoint" / "model.safetensors")


def without_speed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def assert_same_training(run: Path, reference: Path) -> None:
    """The same weights and the same logged records (speeds aside) in two run folders, to float32 rounding."""
    assert_close_after_training(weights(run), weights(reference))
    records, expected = (without_speed(metrics_records(r)) for r in (run, reference))
    assert [r.keys() for r in records] == [r.keys() for r in expected]
    for a, b in zip(records, expected, strict=True):
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == {
            k: v for k, v in b.items() if not isinstance(v, float)}, (a, b)  # steps, token counts: exact
        for k, v in a.items():
            if isinstance(v, float):
                assert_fp_close(v, b[k], **TRAINING, dtype=torch.float32, msg=f"step {a.get('step')}: {k}")


@pytest.mark.parametrize("family", ["gpt2", "elmo"])
@pytest.mark.fp32
def test_two_processes_train_as_one_with_twice_the_batch(family, monkeypatch, capsys, tmp_path, cache, corpus_dir,
                                                         tiny_model_dir):
    args = ["--model", family, "--data", corpus_dir, *TINY[family], "--steps", 20, "--eval-every", 10,
            "--save-every", 10, "--dropout", 0]
    if family == "gpt2":
        args += ["--tokenizer", tiny_model_dir]
    # Every checkpoint compares the two processes' parameters and fails the run if they differ.
    pretrain_ddp(cache, *args, "--batch-size", 2, "--out", tmp_path / "ddp")
    monkeypatch.setenv("CTXLM_CACHE", str(cache))
    code, out, err = run_cli(monkeypatch, capsys, "pretrain", *args, "--batch-size", 4, "--out", tmp_path / "one")
    assert code == 0, err

    assert_same_training(tmp_path / "ddp", tmp_path / "one")
    # Rank 0 wrote the checkpoint with each process's random state (they draw different dropout masks).
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "trainer_state.json").read_text())
    rng = [k for k in load_file(tmp_path / "ddp" / "checkpoint" / "optimizer.safetensors") if k.startswith("rng.")]
    assert state["world_size"] == 2 and sorted(rng) == ["rng.torch", "rng.torch.rank1"]


def assert_stop_and_resume_exact(cache, tmp_path, corpus_dir, tiny_model_dir, *extra) -> list:
    """Two processes stopped after step 1 and resumed end as two that ran through: the same weights and last log
    line. Returns the arguments, for more runs of the same training."""
    args = ["--model", "gpt2", "--data", corpus_dir, "--tokenizer", tiny_model_dir, *TINY["gpt2"], "--steps", 12,
            "--eval-every", 5, "--save-every", 5, "--batch-size", 2, *extra]  # dropout 0.1: random states matter
    pretrain_ddp(cache, *args, "--out", tmp_path / "whole")
    pretrain_ddp(cache, *args, "--out", tmp_path / "parts", "--max-minutes", 0)  # stops after step 1
    assert json.loads((tmp_path / "parts" / "checkpoint" / "trainer_state.json").read_text())["step"] == 1
    pretrain_ddp(cache, *args, "--out", tmp_path / "parts", "--resume")
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    assert metrics_records(tmp_path / "whole")[-1] == metrics_records(tmp_path / "parts")[-1]
    return args


def test_a_stopped_run_resumes_exactly(monkeypatch, capsys, tmp_path, cache, corpus_dir, tiny_model_dir):
    args = assert_stop_and_resume_exact(cache, tmp_path, corpus_dir, tiny_model_dir)

    # One process cannot resume it: the global batch and the random states to restore are those of two.
    monkeypatch.setenv("CTXLM_CACHE", str(cache))
    result = run_cli(monkeypatch, capsys, "pretrain", *args, "--out", tmp_path / "whole", "--steps", 14, "--resume")
    assert_user_error(result, "written by a run of 2 process(es), resumed with 1")


def bert_args(corpus_dir: Path, folder: Path) -> list:
    """Arguments of a tiny BERT pretraining on the corpus cut into documents of 8 sentences, in `folder`."""
    return ["--model", "bert", "--data", write_documents(corpus_dir, folder), "--vocab-size", 200, "--layers", 1,
            "--dim", 32, "--heads", 2, "--block-size", 32, "--steps", 10, "--eval-every", 5, "--warmup", 2,
            "--dropout", 0]


def test_bert_trains_almost_as_one_process(monkeypatch, capsys, tmp_path, cache, corpus_dir):
    """The masked-LM loss is a mean over each process's masked tokens, whose counts differ a little: close, not
    equal, to one process with the whole batch."""
    args = bert_args(corpus_dir, tmp_path / "data")
    pretrain_ddp(cache, *args, "--batch-size", 2, "--out", tmp_path / "ddp")
    monkeypatch.setenv("CTXLM_CACHE", str(cache))
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", *args, "--batch-size", 4, "--out", tmp_path / "one")
    assert code == 0, err
    losses = ("loss", "valid_loss", "valid_mlm_loss", "valid_nsp_loss")
    ddp, one = ([{k: r[k] for k in losses if k in r} for r in metrics_records(tmp_path / run)]
                for run in ("ddp", "one"))
    assert [r.keys() for r in ddp] == [r.keys() for r in one]
    for a, b in zip(ddp, one, strict=True):
        assert a == pytest.approx(b, abs=0.05), (a, b)


def test_a_ctrl_c_in_one_process_stops_both_at_the_same_step(tmp_path, cache):
    result = torchrun(cache, WORKER, "interrupt", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 stopped at step 3" in result.stderr and "rank 1 stopped at step 3" in result.stderr
    assert json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 3


def test_checkpoints_by_time_follow_rank_0s_clock(cache, tmp_path):
    """Rank 0's clock alone says when a checkpoint is due (the processes' clocks differ), and every process takes
    part in writing it: rank 1, whose clock says no, saves at the same steps, and nothing waits forever."""
    result = torchrun(cache, WORKER, "timed-saves", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} saved at steps [1, 2, 3, 4, 5, 6]" in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("case", ["diverged", "diverged-fsdp"])
def test_diverged_processes_are_caught(case, cache):
    """At each checkpoint of a DDP run; before FSDP shards a model, as each process keeps a slice of its copy."""
    result = torchrun(cache, WORKER, case)
    for rank in (0, 1):
        assert f"rank {rank}: the processes' parameters have diverged: rank 1's" in result.stderr, result.stderr


@pytest.mark.fp32
def test_fsdp_trains_as_one_process_and_saves_the_whole_model(monkeypatch, capsys, tmp_path, cache, corpus_dir,
                                                              tiny_model_dir):
    """Each process holds half of every parameter and optimizer moment, and trains as DDP does; the checkpoint
    is the whole model in the usual files."""
    args = ["--model", "gpt2", "--data", corpus_dir, "--tokenizer", tiny_model_dir, *TINY["gpt2"], "--steps", 20,
            "--eval-every", 10, "--save-every", 10, "--dropout", 0]
    result = pretrain_ddp(cache, *args, "--fsdp", "--batch-size", 2, "--out", tmp_path / "fsdp")
    assert "sample: " in result.stdout  # rank 0 reports on the saved model
    monkeypatch.setenv("CTXLM_CACHE", str(cache))
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", *args, "--batch-size", 4, "--out", tmp_path / "one")
    assert code == 0, err

    assert_same_training(tmp_path / "fsdp", tmp_path / "one")
    fsdp = weights(tmp_path / "fsdp")
    optimizer = {run: load_file(tmp_path / run / "checkpoint" / "optimizer.safetensors") for run in ("fsdp", "one")}
    moments = {run: {k: v for k, v in tensors.items() if k.startswith("state.")} for run, tensors in optimizer.items()}
    assert moments["fsdp"].keys() == moments["one"].keys()  # numbered as one process numbers them
    assert_close_after_training(moments["fsdp"], moments["one"])
    model = load_model(tmp_path / "fsdp")
    assert all(torch.equal(value, fsdp[name]) for name, value in model.state_dict().items())


def test_fsdp_trains_bert_as_ddp(tmp_path, cache, corpus_dir):
    """BERT's heads and tied embeddings stay whole in the root's unit. Its last validation batch has one row,
    which leaves rank 0 none: it must still join the forward, which gathers the parameters."""
    args = [*bert_args(corpus_dir, tmp_path / "data"), "--batch-size", 2]
    pretrain_ddp(cache, *args, "--out", tmp_path / "ddp")
    # with the same tokenizer: training one twice may give two vocabularies
    pretrain_ddp(cache, *args, "--fsdp", "--tokenizer", tmp_path / "ddp" / "checkpoint", "--out", tmp_path / "fsdp")
    assert_same_training(tmp_path / "fsdp", tmp_path / "ddp")


def test_a_stopped_fsdp_run_resumes_exactly(tmp_path, cache, corpus_dir, tiny_model_dir):
    assert_stop_and_resume_exact(cache, tmp_path, corpus_dir, tiny_model_dir, "--fsdp")


def test_fsdp_needs_torchrun_and_transformer_blocks(monkeypatch, capsys, tmp_path, corpus_dir):
    args = ["pretrain", "--data", corpus_dir, "--out", tmp_path / "run", "--fsdp"]
    assert_user_error(run_cli(monkeypatch, capsys, *args), "start several with torchrun")
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before joining the other processes
    assert_user_error(run_cli(monkeypatch, capsys, *args, "--model", "elmo"), "gpt2, gpt and bert, not elmo")


def test_transformer_xl_is_refused_under_torchrun(monkeypatch, tmp_path, corpus_dir):
    from ctxlm.config import TransformerXLConfig
    from ctxlm.pretrain.causal_lm import LMData
    from ctxlm.pretrain.xl import pretrain_xl
    from ctxlm.train import TrainConfig

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(UserError, match="Transformer-XL pretraining runs in one process"):
        pretrain_xl(LMData.resolve(corpus_dir), tmp_path / "run", TransformerXLConfig(), TrainConfig())


def test_other_commands_are_refused_under_torchrun(monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert_user_error(run_cli(monkeypatch, capsys, "info", tiny_model_dir), "only `ctxlm pretrain` runs under torchrun")
