"""`ctxlm finetune`: a pretrained model + a task + a strategy → a fine-tuned model folder with its metrics.

Feature extraction runs the frozen backbone once over every split and trains the head on the cached features
(so an epoch costs a linear layer, not a transformer). Every other strategy trains through the backbone, with
its parameter groups, schedule, unfreezing and penalty taken from the `Strategy`.

A run folder holds `model/` (backbone checkpoint + task.json + head weights), `metrics.json` (the final
dev/test figures and the configuration), `metrics.jsonl` (the curve), `loss.png`, and while training
`checkpoint/` (with the optimizer), from which `--resume` continues.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ctxlm.errors import UserError
from ctxlm.nn.peft import merge_lora
from ctxlm.qa.options import SquadOptions
from ctxlm.train import TrainConfig, Trainer, pick_device
from ctxlm.transfer.data import Example, TaskData, TaskSpec, UserTaskOptions, load_task
from ctxlm.transfer.heads import task_loss
from ctxlm.transfer.inputs import TaskBatches, encode_examples, label_tensor
from ctxlm.transfer.metrics import compute_metrics
from ctxlm.transfer.model import HeadedModel, TaskModel
from ctxlm.transfer.predict import gather_predictions
from ctxlm.transfer.strategies import Strategy, get_strategy, lr_multiplier, param_groups, plan, prepare_model


@dataclass
class FinetuneConfig:
    model: str
    task: str
    strategy: str = "full"
    train_size: int | None = None
    seed: int = 0
    epochs: float | None = None  # None: 3 when fine-tuning, 20 for feature extraction (an epoch of a head is cheap)
    batch_size: int = 32
    lr: float | None = None  # the peak rate; None: the strategy's own, else 5e-5 (encoders) / 6.25e-5 (GPT, §4.1)
    head_lr: float | None = None  # None: the same as lr, or 1e-3 on a frozen backbone
    weight_decay: float = 0.01
    max_length: int | None = None  # tokens per input; None: 128, or 384 for SQuAD windows (BERT's)
    pooling: str | None = None
    dropout: float = 0.1
    evals_per_epoch: int = 1
    device: str = "auto"
    max_minutes: float | None = None
    precision: str = "fp32"  # "bf16": training forward under bfloat16 autocast (evaluation stays fp32)
    group_by_length: bool = False  # training batches of similar lengths (see inputs.TaskBatches)
    on_nonfinite: str = "stop"  # a NaN/inf step: "stop" or "skip" its update (see TrainConfig)
    deterministic: bool = False  # torch.use_deterministic_algorithms while training
    user_task: UserTaskOptions = field(default_factory=UserTaskOptions)
    squad: SquadOptions = field(default_factory=SquadOptions)

    def resolved(self, strategy: Strategy, decoder: bool) -> FinetuneConfig:
        """Defaults that depend on the strategy and the backbone: `lr` is the peak rate (the head's, and every
        backbone group's unless discriminative rates divide it going down); a strategy with a rate of its own
        (adapters, LoRA) uses it over `lr`. The head trains at `head_lr`, which a frozen backbone raises to 1e-3
        (a linear layer alone tolerates it)."""
        features = strategy.freeze_backbone
        out = FinetuneConfig(**{**asdict(self), "user_task": self.user_task, "squad": self.squad})
        out.max_length = self.max_length or (384 if self.task == "squad" else 128)
        out.epochs = self.epochs or (20 if features else 3)
        out.lr = strategy.lr or self.lr or (6.25e-5 if decoder else 5e-5)
        out.head_lr = self.head_lr or (1e-3 if features else out.lr)
        if out.epochs <= 0 or out.batch_size < 1 or out.lr <= 0 or out.head_lr <= 0:
            raise UserError("epochs, batch size and learning rates must be positive")
        return out

    def train_config(self, steps: int, lr: float, eval_every: int) -> TrainConfig:
        """The trainer's settings: AdamW with BERT's betas, a checkpoint at each evaluation."""
        return TrainConfig(steps=steps, lr=lr, weight_decay=self.weight_decay, betas=(0.9, 0.999),
                           eval_every=eval_every, save_every=eval_every, log_every=max(1, min(50, steps // 20)),
                           seed=self.seed, max_minutes=self.max_minutes, precision=self.precision,
                           on_nonfinite=self.on_nonfinite, deterministic=self.deterministic)


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _labels(examples: list[Example]) -> list:
    return [e.label for e in examples]


def finetune(config: FinetuneConfig, run_dir: str | Path, *, resume: bool = False,
             data: TaskData | None = None) -> dict:
    """Fine-tune, evaluate on dev (and test where it ships), save the model; return the final metrics."""
    from ctxlm.api import load

    if config.task == "squad":
        from ctxlm.qa.finetune import finetune_squad

        return finetune_squad(config, run_dir, resume=resume)
    run_dir = Path(run_dir)
    strategy = get_strategy(config.strategy)
    data = data or load_task(config.task, train_size=config.train_size, seed=config.seed,
                             csv_options=config.user_task)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    lm = load(config.model)
    config = config.resolved(strategy, lm.config.causal)
    model = TaskModel(lm, data.spec, pooling=config.pooling, dropout=config.dropout, max_length=config.max_length)
    if strategy.aux_lm_weight and not model.decoder:
        raise UserError(f"strategy {strategy.name!r} adds a language-model loss, which needs a decoder (GPT, GPT-2)")
    model.to(device)

    splits = {"train": data.train, "dev": data.dev, **({"test": data.test} if data.test else {})}
    encoded = {name: encode_examples(model.tokenizer, data.spec, examples, decoder=model.decoder,
                                     max_length=config.max_length) for name, examples in splits.items()}
    batches = {name: TaskBatches(encoded[name], _labels(examples), data.spec, model.tokenizer.pad_id,
                                 config.batch_size, seed=config.seed, group_by_length=config.group_by_length)
               for name, examples in splits.items()}
    steps = max(1, math.ceil(batches["train"].per_epoch * config.epochs))
    eval_every = max(1, batches["train"].per_epoch // config.evals_per_epoch)
    base_lr = config.head_lr if strategy.freeze_backbone else config.lr
    train_config = config.train_config(steps, base_lr, eval_every)
    start = time.perf_counter()
    if strategy.freeze_backbone:
        trainer, evaluate = _feature_trainer(model, strategy, batches, data.spec, train_config, config, run_dir,
                                             device)
    else:
        trainer, evaluate = _backbone_trainer(model, strategy, batches, data.spec, train_config, config, run_dir,
                                              device)
    share = report_trainable(trainer, model)
    last = trainer.fit(resume=resume)  # the trainer evaluates dev after its last step: no need to repeat it
    minutes = (time.perf_counter() - start) / 60
    dev = {k.removeprefix("valid_"): v for k, v in last.items()} or evaluate("dev")
    result = {"task": data.spec.name, "strategy": strategy.name, "train_examples": len(data.train),
              "steps": trainer.step, "minutes": round(minutes, 2), "device": str(device),
              "trainable_share": share, **{f"dev_{k}": v for k, v in dev.items()}}
    if "test" in batches:
        result |= {f"test_{k}": v for k, v in evaluate("test").items()}
    return save_run(model, result, trainer.step == train_config.steps, config, strategy, run_dir)


def save_run(model: HeadedModel, result: dict, finished: bool, config: FinetuneConfig, strategy: Strategy,
             run_dir: Path) -> dict:
    """model/ and metrics.json in the run folder; checkpoint/ goes once the run has finished."""
    result["finished"] = finished
    if strategy.peft == "lora":  # model/ holds the merged weights: a plain model that loads without LoRA
        merge_lora(model.lm)
    model.save_checkpoint(run_dir / "model")
    if finished:  # model/ is the result; the optimizer state is only needed to resume
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    summary = {"metrics": result, "config": asdict(config) | {"strategy": asdict(strategy)}}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _evaluator(spec: TaskSpec, batches: dict[str, TaskBatches], logits_of, device: torch.device, module: nn.Module):
    """`evaluate(split)` → the task's metrics and mean loss over a whole split."""

    def evaluate(split: str) -> dict[str, float]:
        was_training = module.training
        module.eval()
        preds, loss = gather_predictions(logits_of, batches[split], device)
        module.train(was_training)
        return {"loss": loss, **compute_metrics(spec, preds, batches[split].labels)}

    return evaluate


def strategy_trainer(model: HeadedModel, strategy: Strategy, per_epoch: int, loss_of, train_batch,
                     train_config: TrainConfig, config: FinetuneConfig, run_dir: Path, evaluator) -> Trainer:
    """A Trainer that adapts `model` (a backbone + `head`) by `strategy`'s plan: its parameter groups and rates,
    schedule, thawing stages and L2-SP terms. `loss_of(model, batch)` is the task's loss."""
    only = prepare_model(strategy, model.lm)
    head = list(model.head.parameters())
    steps = plan(strategy, model.layer_groups(), head, lr=config.lr, head_lr=config.head_lr,
                 weight_decay=config.weight_decay, steps_per_epoch=per_epoch, total_steps=train_config.steps,
                 only=only)
    penalty = steps.penalty

    def objective(module: HeadedModel, batch: dict[str, Tensor]):
        loss = loss_of(module, batch)
        return (loss + penalty() if penalty is not None else loss), {}

    return Trainer(model, objective, train_batch, train_config, run_dir, param_groups=steps.param_groups,
                   evaluator=evaluator, lr_schedule=steps.lr_schedule, before_step=steps.before_step,
                   after_step=steps.after_step)


def report_trainable(trainer: Trainer, model: nn.Module) -> float:
    """Print how many of the model's parameters the run trains; return the share."""
    total = sum(p.numel() for p in model.parameters())
    share = trainer.trainable_parameters / total
    print(f"trainable parameters: {trainer.trainable_parameters:,} of {total:,} ({100 * share:.2f} %)", flush=True)
    return share


def _backbone_trainer(model: TaskModel, strategy: Strategy, batches, spec: TaskSpec, train_config: TrainConfig,
                      config: FinetuneConfig, run_dir: Path, device: torch.device):
    aux = strategy.aux_lm_weight if model.decoder else 0.0

    def loss_of(module: TaskModel, batch: dict[str, Tensor]) -> Tensor:
        batch = to_device(batch, device)
        features, slot_mask, lm_loss = module.features(batch, lm_loss=aux > 0)
        loss = task_loss(module.head(features, slot_mask), batch["labels"], spec.kind, spec.regression)
        return loss + aux * lm_loss if lm_loss is not None else loss

    evaluate = _evaluator(spec, batches, model, device, model)
    trainer = strategy_trainer(model, strategy, batches["train"].per_epoch, loss_of, batches["train"].train_batch,
                               train_config, config, run_dir, lambda: _prefixed(evaluate("dev")))
    return trainer, evaluate


def _prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {f"valid_{k}": v for k, v in metrics.items()}


class _HeadOnFeatures(nn.Module):
    """The trainable part of feature extraction: the head, saved together with the frozen backbone."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.head = model.head
        self._model = [model]  # a list, so that the backbone is not registered as this module's parameters

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(batch["features"], batch["slot_mask"])

    def save_checkpoint(self, path, extra=None):
        return self._model[0].save_checkpoint(path, extra)

    def load_checkpoint_weights(self, path) -> None:
        self._model[0].load_checkpoint_weights(path)


class FeatureBatches(TaskBatches):
    """TaskBatches whose examples are cached slot features (slots, dim) instead of token sequences."""

    def _length(self, i: int) -> int:
        return len(self.encoded[i])  # slots: words of a tagged sentence, else one per sequence

    def _batch(self, indices):
        feats = [self.encoded[i] for i in indices]
        slots = max(len(f) for f in feats)
        features = feats[0].new_zeros(len(feats), slots, feats[0].shape[-1])
        slot_mask = torch.zeros(len(feats), slots, dtype=torch.bool)
        for row, f in enumerate(feats):
            features[row, :len(f)] = f
            slot_mask[row, :len(f)] = True
        batch = {"features": features, "slot_mask": slot_mask, "index": torch.tensor(list(indices))}
        if self.labels is not None:
            batch["labels"] = label_tensor([self.labels[i] for i in indices], self.spec, slots)
        return batch

    def eval_batches(self):
        for start in range(0, len(self.encoded), self.batch_size):
            yield self._batch(range(start, min(start + self.batch_size, len(self.encoded))))


@torch.inference_mode()
def cache_features(model: TaskModel, batches: TaskBatches, device: torch.device, desc: str) -> list[Tensor]:
    """Each example's slot features from the frozen backbone, (slots or words, dim), kept on the device."""
    model.eval()
    out: list[Tensor | None] = [None] * len(batches.encoded)
    for batch in tqdm(batches.eval_batches(), desc=desc, total=math.ceil(len(out) / batches.batch_size),
                      leave=False, dynamic_ncols=True):
        batch = to_device(batch, device)
        features, slot_mask, _ = model.features(batch)
        for row, i in enumerate(batch["index"].tolist()):
            out[i] = features[row, :int(slot_mask[row].sum())].float().clone()
    return out  # type: ignore[return-value]


def _feature_trainer(model: TaskModel, strategy: Strategy, batches, spec: TaskSpec, train_config: TrainConfig,
                     config: FinetuneConfig, run_dir: Path, device: torch.device):
    for p in model.lm.parameters():
        p.requires_grad_(False)
    cached = {name: FeatureBatches(cache_features(model, b, device, f"features ({name})"), b.labels, spec, 0,
                                   config.batch_size, seed=config.seed, group_by_length=config.group_by_length)
              for name, b in batches.items()}
    head = _HeadOnFeatures(model)

    def objective(module: _HeadOnFeatures, batch: dict[str, Tensor]):
        batch = to_device(batch, device)
        return task_loss(module(batch), batch["labels"], spec.kind, spec.regression), {}

    evaluate = _evaluator(spec, cached, head, device, head)
    groups = param_groups([], list(model.head.parameters()), strategy, config.head_lr,
                          weight_decay=config.weight_decay)
    trainer = Trainer(head, objective, cached["train"].train_batch, train_config, run_dir, param_groups=groups,
                      evaluator=lambda: _prefixed(evaluate("dev")),
                      lr_schedule=lambda step: lr_multiplier(strategy, step, train_config.steps))
    return trainer, evaluate
