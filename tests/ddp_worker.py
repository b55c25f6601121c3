"""Run by tests/test_distributed.py under torchrun, for checks that reach inside the processes:

- `diverged`: rank 1 alters one weight after DDP's start; the checkpoint-time comparison must catch it.
- `diverged-fsdp`: rank 1 alters one weight before FSDP shards the model (each process keeps a slice of its own
  copy): the sharding must refuse.
- `interrupt RUN_DIR`: a Ctrl-C reaches rank 1 alone, in step 3; both processes must stop after that step.
- `timed-saves RUN_DIR`: rank 0's clock runs 100 s a look, rank 1's is the real one: a checkpoint by time (every
  minute) must come at every step in both processes, rank 0's clock deciding for all.
Each process reports on stderr (the session silences the stdout of ranks other than 0).
"""

import os
import signal
import sys

import torch

from ctxlm import distributed
from ctxlm.pretrain.causal_lm import causal_lm_objective
from ctxlm.pretrain.corpus import BlockBatches, TokenSpan
from ctxlm.train import TrainConfig, Trainer
from helpers import tiny


def tiny_model():
    return tiny("gpt2", vocab_size=50, dim=16, n_layers=1)


def diverged(sharded: bool = False) -> None:
    model = tiny_model()
    if not sharded:
        distributed.wrap(model)
    if distributed.rank() == 1:
        with torch.no_grad():
            next(model.parameters())[0, 0] += 1e-3
    try:
        if sharded:
            distributed.wrap(model, sharded=True)
        else:
            distributed.check_replicas(model)
    except RuntimeError as error:
        print(f"rank {distributed.rank()}: {error}", file=sys.stderr)


def interrupt(run_dir: str) -> None:
    ids = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    batches = BlockBatches(TokenSpan(ids), block_size=16, batch_size=4, seed=0)

    def batch(i):
        if i == 2 and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C reached this process alone, mid-step
        return batches.batch(i)

    config = TrainConfig(steps=8, lr=1e-2, warmup_steps=2, save_every=100, eval_every=100, log_every=1)
    trainer = Trainer(tiny_model(), causal_lm_objective, batch, config, run_dir)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(f"rank {distributed.rank()} stopped at step {trainer.step}", file=sys.stderr)


def timed_saves(run_dir: str) -> None:
    from types import SimpleNamespace

    from ctxlm import train

    ids = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    batches = BlockBatches(TokenSpan(ids), block_size=16, batch_size=4, seed=0)
    if distributed.rank() == 0:
        looks = iter(range(10**6))
        train.time = SimpleNamespace(perf_counter=lambda: 100.0 * next(looks))  # this process's clock alone
    config = TrainConfig(steps=6, lr=1e-2, warmup_steps=2, save_every=100, eval_every=100, log_every=1,
                         save_every_minutes=1.0)
    trainer = Trainer(tiny_model(), causal_lm_objective, batches.batch, config, run_dir)
    saved = []
    save_state = trainer.save_state
    trainer.save_state = lambda: (saved.append(trainer.step), save_state())
    trainer.fit()
    print(f"rank {distributed.rank()} saved at steps {saved}", file=sys.stderr)


if __name__ == "__main__":
    with distributed.session():
        {"diverged": diverged, "diverged-fsdp": lambda: diverged(sharded=True),
         "interrupt": interrupt, "timed-saves": timed_saves}[sys.argv[1]](*sys.argv[2:])
