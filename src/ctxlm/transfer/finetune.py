"""`ctxlm finetune`: a pretrained model + a task + a strategy → a fine-tuned model folder with its metrics.

One loop for every task: the `Task` (see `task.py`) reads the data, builds the model with its head, batches, and
gives the loss and the metrics; the loop never asks which task it runs. Feature extraction runs the frozen
backbone once over every split and trains the head on the cached features (so an epoch costs a linear layer, not
a transformer); every other strategy trains through the backbone, with its parameter groups, schedule,
unfreezing and penalty taken from the `Strategy`.

A run folder holds `model/` (backbone checkpoint + task.json + head weights), `metrics.json` (the final
dev/test figures and the configuration), `metrics.jsonl` (the curve), `loss.png`, and while training
`checkpoint/` (with the optimizer), from which `--resume` continues. The checkpoint is written atomically at each
evaluation (or every `save_every` steps) and once `save_every_minutes` (10) have passed since the last one, so a
kill loses at most that much; training batch i is a pure function of (seed, i) and the checkpoint holds the random
states and the open log window, so a resumed run, even from the middle of an epoch, ends as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ctxlm.api import load
from ctxlm.checkpoint import is_resumable, remove_folder
from ctxlm.errors import UserError
from ctxlm.nn.peft import merge_lora
from ctxlm.train import TrainConfig, Trainer, pick_device
from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.data import TaskData
from ctxlm.transfer.model import HeadedModel
from ctxlm.transfer.strategies import Strategy, get_strategy
from ctxlm.transfer.task import Task, task_named, to_device


def finetune(config: FinetuneConfig, run_dir: str | Path, *, resume: bool = False,
             data: TaskData | None = None) -> dict:
    """Fine-tune, evaluate on dev (and test where it ships), save the model; return the final metrics.

    The task comes from `task.task_named(config.task)` (the classification family unless a registered task
    claims the name); `data`, if given, is the classification family's already-read `TaskData`."""
    run_dir = Path(run_dir)
    if resume:
        check_resumable(run_dir)  # now, not after the data is read and the model loaded
    strategy = get_strategy(config.strategy)
    task: Task = task_named(config.task)(config, data)
    task.check(strategy)
    task.read()
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    lm = load(config.model)
    config = config.resolved(strategy, lm.config.causal, max_length=task.max_length)
    model = task.build(lm, config, strategy)
    model.to(device)

    train = task.batches(model, config, device)
    steps, epoch = config.schedule_steps(train.per_epoch)  # `min_steps` may stretch the plan's epoch
    eval_every = config.eval_every(steps, epoch)
    base_lr = config.head_lr if strategy.freeze_backbone else config.lr
    train_config = config.train_config(steps, base_lr, eval_every)
    start = time.perf_counter()
    module: nn.Module = model

    def loss_of(module: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return task.loss(module, to_device(batch, device))

    def evaluator() -> dict[str, float]:
        return {f"valid_{k}": v for k, v in task.evaluate(module, "dev").items()}

    if strategy.freeze_backbone:  # the head alone, on features the backbone computes once
        module, train = task.on_features(model, device)
    trainer = plan_trainer(module, strategy, epoch, loss_of, train.train_batch, train_config, config,
                           run_dir, evaluator)
    share = report_trainable(trainer, model)
    last = trainer.fit(resume=resume)  # the trainer evaluates dev after its last step: no need to repeat it
    minutes = (time.perf_counter() - start) / 60
    dev = {k.removeprefix("valid_"): v for k, v in last.items()} or task.evaluate(module, "dev")
    result = {"task": task.name, "strategy": strategy.name, **task.sizes(), "steps": trainer.step,
              "minutes": round(minutes, 2), "device": str(device), "trainable_share": share,
              **{f"dev_{k}": v for k, v in dev.items()}}
    for split in task.splits:
        result |= {f"{split}_{k}": v for k, v in task.evaluate(module, split).items()}
    return save_run(model, result, trainer.step == train_config.steps, config, strategy, run_dir)


def save_run(model: HeadedModel, result: dict, finished: bool, config: FinetuneConfig, strategy: Strategy,
             run_dir: Path) -> dict:
    """model/ and metrics.json in the run folder; checkpoint/ goes once the run has finished."""
    result["finished"] = finished
    if strategy.peft == "lora":  # model/ holds the merged weights: a plain model that loads without LoRA
        merge_lora(model.lm)
    model.save_checkpoint(run_dir / "model")
    summary = {"metrics": result, "config": config.record() | {"strategy": asdict(strategy)}}
    tmp = run_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, run_dir / "metrics.json")  # whole or absent, whenever the run is killed
    if finished:  # model/ is the result; the optimizer state is only needed to resume. Removed last (a run killed
        # before still resumes: its last step done, it evaluates and saves again), whole or not at all
        remove_folder(run_dir / "checkpoint")
    return result


def check_resumable(run_dir: Path) -> None:
    """A UserError unless run_dir holds a checkpoint that --resume continues, saying why not."""
    folder = run_dir / "checkpoint"
    if is_resumable(folder):
        return
    if (run_dir / "metrics.json").is_file() and (run_dir / "model").is_dir():
        raise UserError(f"{folder}: no checkpoint to resume from: the run finished (its model is in "
                        f"{run_dir / 'model'}); run without --resume to train again")
    raise UserError(f"{folder}: no checkpoint to resume from (the run stopped before its first checkpoint?); run "
                    "without --resume to start again")


def plan_trainer(model: nn.Module, strategy: Strategy, per_epoch: int, loss_of, train_batch,
                 train_config: TrainConfig, config: FinetuneConfig, run_dir: Path, evaluator) -> Trainer:
    """A Trainer that adapts `model` (a backbone `lm` + `head`, or the head alone on cached features) by
    `strategy`'s plan: parameter groups and rates, schedule, thawing stages, SP terms. `per_epoch`: the steps of
    one epoch as the plan counts them (`FinetuneConfig.schedule_steps`). `loss_of(model, batch)` is the task's
    loss."""
    lm = getattr(model, "lm", None)
    only = strategy.prepare(lm) if lm is not None else None
    groups = model.layer_groups() if lm is not None and not strategy.freeze_backbone else []
    plan = strategy.plan(groups, list(model.head.parameters()), lr=config.lr, head_lr=config.head_lr,
                         weight_decay=config.weight_decay, steps_per_epoch=per_epoch,
                         total_steps=train_config.steps, only=only)

    def objective(module: nn.Module, batch: dict[str, Tensor]):
        return loss_of(module, batch), {}

    return Trainer(model, objective, train_batch, train_config, run_dir, plan=plan, evaluator=evaluator)


def report_trainable(trainer: Trainer, model: nn.Module) -> float:
    """Print how many of the model's parameters the run trains; return the share."""
    total = sum(p.numel() for p in model.parameters())
    share = trainer.trainable_parameters / total
    print(f"trainable parameters: {trainer.trainable_parameters:,} of {total:,} ({100 * share:.2f} %)", flush=True)
    return share
