"""What one fine-tuning run is asked to do: the model, the task, the strategy and the trainer's settings.

Kept apart from `finetune.py` so that a `Task` (task.py) can read the configuration without importing the loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ctxlm.errors import UserError
from ctxlm.nn.long_text import LongText
from ctxlm.train import TrainConfig
from ctxlm.transfer.data import UserTaskOptions
from ctxlm.transfer.strategies import Strategy


@dataclass
class FinetuneConfig:
    model: str
    task: str
    strategy: str = "full"
    train_size: int | None = None
    seed: int = 0
    epochs: float | None = None  # None: 3 when fine-tuning, 20 for feature extraction (an epoch of a head is cheap)
    # a floor on the optimizer steps: with few labels, epochs x batches per epoch is too few steps to learn from
    # (100 labels, batch 32, 3 epochs: 12); the run then trains this many, more passes over the same labels, its
    # schedule, thawing stages and evaluations spread over them as over the epochs (see `schedule_steps`)
    min_steps: int | None = None
    batch_size: int = 32
    lr: float | None = None  # the peak rate; None: the strategy's own, else 5e-5 (encoders) / 6.25e-5 (GPT, §4.1)
    head_lr: float | None = None  # None: the same as lr, or 1e-3 on a frozen backbone
    weight_decay: float = 0.01
    max_length: int | None = None  # tokens per input; None: the task's default (128; 384 for SQuAD windows, BERT's)
    pooling: str | None = None
    # a single text longer than max_length: "truncate", "head-tail", "windows" (see ctxlm.nn.long_text); None: the
    # task's default, "windows" for imdb, else "truncate"
    long_text: str | None = None
    dropout: float = 0.1
    # multi-label tasks: a label is predicted where its probability reaches this; "tuned": the threshold with the
    # best macro-F1 on dev, chosen at each evaluation and saved with the model (task.json)
    threshold: str = "0.5"
    evals_per_epoch: int = 1
    device: str = "auto"
    max_minutes: float | None = None
    # checkpoints (OUT/checkpoint, for --resume): every `save_every` steps (None: at each evaluation) and once
    # `save_every_minutes` have passed since the last one (None: by steps only), so a kill loses at most that much
    save_every: int | None = None
    save_every_minutes: float | None = 10.0
    precision: str = "fp32"  # "bf16": training forward under bfloat16 autocast (evaluation stays fp32)
    group_by_length: bool = False  # training batches of similar lengths (see inputs.TaskBatches)
    on_nonfinite: str = "stop"  # a NaN/inf step: "stop" or "skip" its update (see TrainConfig)
    deterministic: bool = False  # torch.use_deterministic_algorithms while training
    user_task: UserTaskOptions = field(default_factory=UserTaskOptions)  # how csv:PATH tasks are read
    # the options of tasks registered from outside transfer/, by task name: {"squad": SquadOptions(...)};
    # metrics.json records each under its name, beside user_task
    task_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_save_every(self.save_every, self.save_every_minutes)
        if self.min_steps is not None and (isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int)
                                           or self.min_steps < 1):
            raise UserError(f"min_steps={self.min_steps!r}: expected a positive number of optimizer steps (None: "
                            "epochs x batches per epoch)")
        if self.evals_per_epoch < 0:
            raise UserError(f"evals_per_epoch={self.evals_per_epoch}: expected 1 or more, or 0 for one evaluation "
                            "after the last step")
        LongText.parse(self.long_text)  # a bad value fails now, not after the data is read
        fixed_threshold(self.threshold)

    def resolved(self, strategy: Strategy, decoder: bool, *, max_length: int = 128) -> FinetuneConfig:
        """Defaults that depend on the strategy, the backbone and the task (`max_length`: its default): `lr` is the
        peak rate (the head's, and every backbone group's unless discriminative rates divide it going down); a
        strategy with a rate of its own (adapters, LoRA) uses it over `lr`. The head trains at `head_lr`, which a
        frozen backbone raises to 1e-3 (a linear layer alone tolerates it)."""
        features = strategy.freeze_backbone
        lr = strategy.lr or self.lr or (6.25e-5 if decoder else 5e-5)
        out = replace(self, max_length=self.max_length or max_length, epochs=self.epochs or (20 if features else 3),
                      lr=lr, head_lr=self.head_lr or (1e-3 if features else lr))
        if out.epochs <= 0 or out.batch_size < 1 or out.lr <= 0 or out.head_lr <= 0:
            raise UserError("epochs, batch size and learning rates must be positive")
        return out

    def schedule_steps(self, per_epoch: int) -> tuple[int, int]:
        """(optimizer steps, steps in one epoch of the plan) for `per_epoch` batches an epoch: epochs x per_epoch,
        or `min_steps` where that is more. Under the floor the plan's epoch is stretched to steps / epochs, so that
        warm-up and decay, gradual unfreezing's one-stage-an-epoch and the evaluations fall where they would over
        the epochs asked for, only on the real step count; the batches still go through the labels in passes of
        `per_epoch` (a fresh order each pass)."""
        steps = max(1, math.ceil(per_epoch * self.epochs))
        if self.min_steps is None or steps >= self.min_steps:
            return steps, per_epoch
        return self.min_steps, max(1, math.ceil(self.min_steps / self.epochs))

    def eval_every(self, steps: int, epoch: int) -> int:
        """Steps between two dev evaluations: `evals_per_epoch` an `epoch` of the plan, or with 0 only after the
        last step (the trainer always evaluates then), which saves the dev passes a run never reads."""
        return steps if self.evals_per_epoch == 0 else max(1, epoch // self.evals_per_epoch)

    def train_config(self, steps: int, lr: float, eval_every: int) -> TrainConfig:
        """The trainer's settings: AdamW with BERT's betas, a checkpoint at each evaluation (or every
        `save_every` steps) and every `save_every_minutes`."""
        return TrainConfig(steps=steps, lr=lr, weight_decay=self.weight_decay, betas=(0.9, 0.999),
                           eval_every=eval_every, save_every=self.save_every or eval_every,
                           save_every_minutes=self.save_every_minutes, log_every=max(1, min(50, steps // 20)),
                           seed=self.seed, max_minutes=self.max_minutes, precision=self.precision,
                           on_nonfinite=self.on_nonfinite, deterministic=self.deterministic)

    def record(self) -> dict[str, Any]:
        """The configuration as metrics.json records it: the fields, each task's options under the task's name."""
        fields = asdict(self)
        options = fields.pop("task_options")
        return fields | {name: value for name, value in options.items() if name not in fields}


DEFAULT_THRESHOLD = "0.5"


def fixed_threshold(setting: str) -> float | None:
    """A multi-label threshold setting (`FinetuneConfig.threshold`): a probability in (0, 1), or None for "tuned"
    (chosen on dev)."""
    if setting == "tuned":
        return None
    try:
        value = float(setting)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < 1:
        raise UserError(f"threshold {setting!r}: expected a probability between 0 and 1 (such as 0.5), or 'tuned' "
                        "(the one with the best macro-F1 on dev)")
    return value


def check_save_every(steps: int | None, minutes: float | None) -> None:
    """A UserError for a checkpoint period that is not positive (None: the default, or no time bound)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError(f"save_every={steps!r}: expected a positive number of steps between checkpoints")
    if minutes is not None and not (isinstance(minutes, int | float) and not isinstance(minutes, bool)
                                    and minutes > 0):
        raise UserError(f"save_every_minutes={minutes!r}: expected a positive number of minutes between "
                        "checkpoints (None: by steps only)")
