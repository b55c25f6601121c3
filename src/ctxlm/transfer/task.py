"""The Task protocol: what fine-tuning, evaluation and prediction know of a task, and its registry.

`finetune` runs one loop for every task, `load_finetuned` reads every model folder, and `predict.evaluate` /
`predict.predict` use every fine-tuned model; none of them asks which task it is. A task name resolves here to a
Task class (`task_named`); a fine-tuned model to the Task that made it (`task_for`). The classification family
(single texts, pairs, multiple choice, tagging) is transfer's own and takes every name no other task claims (the
built-in data sets, csv:PATH). Other tasks register themselves from the layer above: qa/ registers SQuAD
span extraction when it is imported, which the first lookup does through its entry point (`discover_tasks`).

A Task is used in two ways:

- fine-tuning: `Task(config, data)` for one run, then `check(strategy)` (before any data is read: refuse a
  strategy the task cannot train with), `read()`, `build(lm, config, strategy)` (the backbone with the task's
  head, a `HeadedModel` that saves its head config to task.json), `batches(model, config, device)` (every split
  encoded; the training batches back), for a frozen backbone `on_features(model, device)` (the head alone over
  cached features), `loss(module, batch)`, `evaluate(module, split)`, and `name`, `sizes()`, `splits`,
  `main_metric` for the run's record;
- a saved model (class methods): `read_inputs(model, lines, source)`, `predict(model, inputs, ...)`,
  `score(model, task, split, ...)`. The folder itself loads through its model class (`model.load_finetuned`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ctxlm.errors import UserError
from ctxlm.progress import progress
from ctxlm.transfer.config import DEFAULT_THRESHOLD, FinetuneConfig, fixed_threshold
from ctxlm.transfer.data import TASKS, Example, TaskData, TaskSpec, UserTaskOptions, load_task
from ctxlm.transfer.heads import label_sets, predictions, task_loss
from ctxlm.transfer.inputs import TaskBatches, encode_examples, label_tensor
from ctxlm.transfer.model import HeadedModel, TaskModel, discover_tasks
from ctxlm.transfer.strategies import Strategy


class TrainBatches(Protocol):
    """What the trainer draws from: `per_epoch` batches make an epoch; `train_batch(i)` is training batch i."""

    per_epoch: int

    def train_batch(self, i: int) -> dict[str, Tensor]: ...


class Task(Protocol):
    """A task as the fine-tuning loop and the users of a fine-tuned model see it (see the module docstring)."""

    names: ClassVar[tuple[str, ...]]  # the task names it fine-tunes; () for the classification family: any other
    model: ClassVar[type[HeadedModel]]  # the model class it builds, whose folders it predicts and scores with
    max_length: ClassVar[int]  # default tokens per input sequence

    # -- one fine-tuning run: Task(config, data) --------------------------------------------------------------
    @property
    def name(self) -> str: ...  # as the run's metrics name the task

    @property
    def main_metric(self) -> str: ...  # the metric `compare` ranks by (without "dev_")

    @property
    def splits(self) -> tuple[str, ...]: ...  # splits scored after training besides dev ("test" where shipped)

    def check(self, strategy: Strategy) -> None: ...

    def read(self) -> None: ...

    def build(self, lm: nn.Module, config: FinetuneConfig, strategy: Strategy) -> HeadedModel: ...

    def batches(self, model: HeadedModel, config: FinetuneConfig, device: torch.device) -> TrainBatches: ...

    def on_features(self, model: HeadedModel, device: torch.device) -> tuple[nn.Module, TrainBatches]: ...

    def loss(self, module: nn.Module, batch: dict[str, Tensor]) -> Tensor: ...

    def evaluate(self, module: nn.Module, split: str) -> dict[str, float]: ...

    def sizes(self) -> dict[str, int]: ...

    # -- a saved model -------------------------------------------------------------------------------------
    @classmethod
    def read_inputs(cls, model: HeadedModel, lines: Iterable[str], source: str) -> list: ...

    @classmethod
    def predict(cls, model: HeadedModel, inputs: list, *, batch_size: int = 64, **options) -> list: ...

    @classmethod
    def score(cls, model: HeadedModel, task: str | None, split: str = "dev", *, batch_size: int = 64,
              **options) -> dict[str, Any]: ...


_TASKS: list[type[Task]] = []


def register_task(task: type[Task]) -> type[Task]:
    """Make `task` the one for its `names` and for models of its `model` class (a later registration wins)."""
    _TASKS.insert(0, task)
    return task


def task_named(name: str) -> type[Task]:
    """The Task for a task name: a registered one that claims it, else the classification family."""
    discover_tasks()
    return next((task for task in _TASKS if name in task.names), ClassificationTask)


def task_for(model: nn.Module) -> type[Task]:
    """The Task of a fine-tuned model (`load_finetuned`'s result)."""
    discover_tasks()
    for task in _TASKS:
        if isinstance(model, task.model):
            return task
    raise UserError(f"no task is registered for a {type(model).__name__}")


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# -- the classification family ----------------------------------------------------------------------------------
class ClassificationTask:
    """Single texts, pairs (`TaskSpec.order_matters`), multiple choice, tagging and multi-label: one `TaskModel`,
    whose `TaskHead` scores slot features, batched by `TaskBatches`, scored by `metrics.compute_metrics`. The only
    family that trains on cached features when the backbone is frozen (an epoch of a linear head is then cheap).

    Multi-label predicts the labels whose probability reaches the spec's threshold: `config.threshold` fixes it,
    or ("tuned") each evaluation of dev sets it to the one that scores best there (`metrics.tune_threshold`); the
    model's spec carries it into task.json, and later splits (test) are scored with it, never tuned on."""

    names: ClassVar[tuple[str, ...]] = ()
    model: ClassVar[type[HeadedModel]] = TaskModel
    max_length: ClassVar[int] = 128

    def __init__(self, config: FinetuneConfig, data: TaskData | None = None) -> None:
        self.config, self.data = config, data
        self.aux = 0.0  # weight of a decoder's auxiliary LM loss (GPT §3.2)
        self.split_batches: dict[str, TaskBatches] = {}

    @property
    def name(self) -> str:
        return self.data.spec.name

    @property
    def main_metric(self) -> str:
        data = self.data or load_task(self.config.task, csv_options=self.config.user_task)
        return data.spec.metrics[0]

    @property
    def splits(self) -> tuple[str, ...]:
        return ("test",) if self.data.test else ()

    def check(self, strategy: Strategy) -> None:
        pass

    def read(self) -> None:
        if self.data is None:
            config = self.config
            self.data = load_task(config.task, train_size=config.train_size, seed=config.seed,
                                  csv_options=config.user_task)
        threshold = fixed_threshold(self.config.threshold)
        if self.data.spec.kind == "multi" and threshold is not None:
            self.data.spec = replace(self.data.spec, threshold=threshold)
        elif self.data.spec.kind != "multi" and self.config.threshold != DEFAULT_THRESHOLD:
            raise UserError(f"threshold {self.config.threshold!r}: a threshold is for multi-label tasks, and "
                            f"{self.data.spec.name} is a {self.data.spec.kind} task")

    def build(self, lm: nn.Module, config: FinetuneConfig, strategy: Strategy) -> TaskModel:
        builtin = TASKS.get(self.data.spec.name)
        long_text = config.long_text or (builtin.long_text if builtin else "truncate")
        model = TaskModel(lm, self.data.spec, pooling=config.pooling, dropout=config.dropout,
                          max_length=config.max_length, long_text=long_text)
        if strategy.aux_lm_weight and not model.decoder:
            raise UserError(f"strategy {strategy.name!r} adds a language-model loss, which needs a decoder "
                            "(GPT, GPT-2)")
        self.aux = strategy.aux_lm_weight if model.decoder else 0.0
        self.model = model  # whose spec takes a tuned threshold
        return model

    def batches(self, model: TaskModel, config: FinetuneConfig, device: torch.device) -> TaskBatches:
        data, self.config, self.device = self.data, config, device
        splits = {"train": data.train, "dev": data.dev, **({"test": data.test} if data.test else {})}
        encoded = {name: encode_examples(model.tokenizer, data.spec, examples, decoder=model.decoder,
                                         max_length=model.max_length, long_text=model.long_text)
                   for name, examples in splits.items()}
        self.split_batches = {name: TaskBatches(encoded[name], [e.label for e in examples], data.spec,
                                                model.tokenizer.pad_id, config.batch_size, seed=config.seed,
                                                group_by_length=config.group_by_length)
                              for name, examples in splits.items()}
        return self.split_batches["train"]

    def on_features(self, model: TaskModel, device: torch.device) -> tuple[nn.Module, TaskBatches]:
        """Run the frozen backbone once over every split; the head then trains on the cached features."""
        config = self.config
        self.split_batches = {
            name: FeatureBatches(cache_features(model, b, device, f"features ({name})"), b.labels, self.data.spec, 0,
                                 config.batch_size, seed=config.seed, group_by_length=config.group_by_length)
            for name, b in self.split_batches.items()}
        return _HeadOnFeatures(model), self.split_batches["train"]

    def loss(self, module: TaskModel | _HeadOnFeatures, batch: dict[str, Tensor]) -> Tensor:
        spec = self.data.spec
        features, slot_mask, lm_loss = module.features(batch, lm_loss=self.aux > 0)
        loss = task_loss(module.head(features, slot_mask), batch["labels"], spec.kind, spec.regression)
        return loss + self.aux * lm_loss if lm_loss is not None else loss

    def evaluate(self, module: TaskModel | _HeadOnFeatures, split: str) -> dict[str, float]:
        """The task's metrics and mean loss over a whole split; a tuned multi-label threshold is chosen on dev."""
        from ctxlm.transfer.metrics import tune_threshold  # scipy, scikit-learn, seqeval: seconds to import

        was_training = module.training
        module.eval()
        preds, loss = gather_predictions(module, self.split_batches[split], self.device)
        module.train(was_training)
        labels = self.split_batches[split].labels
        if split == "dev" and self.data.spec.kind == "multi" and fixed_threshold(self.config.threshold) is None:
            threshold = tune_threshold(self.data.spec, preds, labels)
            self.data.spec = self.model.spec = replace(self.data.spec, threshold=threshold)
        return {"loss": loss, **scored(self.data.spec, preds, labels)}

    def sizes(self) -> dict[str, int]:
        return {"train_examples": len(self.data.train)}

    # -- a saved model -------------------------------------------------------------------------------------
    @classmethod
    def read_inputs(cls, model: TaskModel, lines: Iterable[str], source: str) -> list[Example]:
        return parse_inputs(lines, model.spec, source)

    @classmethod
    @torch.inference_mode()
    def predict(cls, model: TaskModel, inputs: list[Example], *, batch_size: int = 64, **options) -> list[dict]:
        """One dict per example: "label" (class name, choice index, tag names, or score) and, for classes and
        choices, "probability" of that label; multi-label: `multi_label_result`. Other tasks' `options` (n_best,
        ...) are ignored."""
        if not inputs:
            return []
        model.eval()
        device = next(model.parameters()).device
        spec = model.spec
        out: list[dict | None] = [None] * len(inputs)
        for batch in _batches(model, inputs, batch_size, labelled=False).eval_batches():
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch).float()
            predicted = predictions(logits, spec.kind, spec.regression).cpu()
            probs = None if spec.regression else logits.softmax(-1).cpu()
            for row, i in enumerate(batch["index"].tolist()):
                if spec.kind == "multi":
                    out[i] = multi_label_result(spec, predicted[row].tolist())
                elif spec.regression:
                    out[i] = {"label": round(float(predicted[row]), 4)}
                elif spec.kind == "tag":
                    kept = batch["slot_mask"][row].cpu()
                    tags = [spec.labels[t] for t in predicted[row][kept].tolist()]
                    out[i] = {"label": tags + [spec.labels[0]] * (len(inputs[i].texts) - len(tags))}
                else:
                    k = int(predicted[row])
                    out[i] = {"label": k if spec.kind == "choice" else spec.labels[k],
                              "probability": round(float(probs[row, k]), 4)}
        return out  # type: ignore[return-value]

    @classmethod
    def score(cls, model: TaskModel, task: str | None, split: str = "dev", *, batch_size: int = 64,
              csv_options: UserTaskOptions | None = None, **options) -> dict[str, float]:
        """The task's metrics for a fine-tuned model on a split of a built-in task (or csv:PATH); `task` None: the
        one it was fine-tuned on. Multi-label: at the threshold saved with the model. Other tasks' `options` are
        ignored."""
        task = task or model.spec.name
        if task == "csv":
            raise UserError("the model was fine-tuned on a user file: name it with --task csv:PATH (and its columns)")
        mismatch = (f"the model was fine-tuned for {model.spec.name} ({model.spec.kind}, labels "
                    f"{list(model.spec.labels)}), which does not match task {task!r}")
        if task in TASKS and TASKS[task].kind != model.spec.kind:  # known before any file is read
            raise UserError(mismatch)
        data = load_task(task, csv_options=csv_options)
        examples = {"train": data.train, "dev": data.dev, "test": data.test}.get(split)
        if examples is None:
            raise UserError(f"task {task!r} has no labelled {split} split")
        if data.spec.kind != model.spec.kind or data.spec.labels != model.spec.labels:
            raise UserError(mismatch)
        model.eval()
        source = _batches(model, examples, batch_size, labelled=True)
        preds, loss = gather_predictions(model, source, next(model.parameters()).device)
        return {"loss": loss, **scored(model.spec, preds, source.labels)}


register_task(ClassificationTask)

def scored(spec: TaskSpec, preds: list, labels: Sequence) -> dict[str, float]:
    """`gather_predictions`' result scored by `metrics.compute_metrics`; multi-label probabilities become label
    sets at the spec's threshold, which the metrics record."""
    from ctxlm.transfer.metrics import compute_metrics

    if spec.kind != "multi":
        return compute_metrics(spec, preds, labels)
    return {**compute_metrics(spec, label_sets(preds, spec.threshold), labels), "threshold": spec.threshold}


def multi_label_result(spec: TaskSpec, probabilities: list[float]) -> dict:
    """A multi-label prediction: the "labels" whose probability reaches the threshold (in the spec's order, maybe
    none) and every label's probability."""
    return {"labels": [spec.labels[i] for i in label_sets([probabilities], spec.threshold)[0]],
            "probabilities": {label: round(p, 4) for label, p in zip(spec.labels, probabilities, strict=True)}}


def _batches(model: TaskModel, examples: list[Example], batch_size: int, labelled: bool) -> TaskBatches:
    encoded = encode_examples(model.tokenizer, model.spec, examples, decoder=model.decoder,
                              max_length=model.max_length, long_text=model.long_text)
    labels = [e.label for e in examples] if labelled else None
    return TaskBatches(encoded, labels, model.spec, model.tokenizer.pad_id, batch_size)


@torch.inference_mode()
def gather_predictions(logits_of, source: TaskBatches, device: torch.device) -> tuple[list, float]:
    """Every example's prediction (class, choice, score, a tag per word, or multi-label each label's probability)
    in the split's order, and the mean loss. Metrics such as F1 or Spearman are computed over a whole split, not
    averaged over batches."""
    spec = source.spec
    preds: dict[int, object] = {}
    total = 0.0
    for batch in source.eval_batches():
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = logits_of(batch).float()  # bf16 under an autocast inference: metrics from float32
        total += float(task_loss(logits, batch["labels"], spec.kind, spec.regression)) * len(batch["index"])
        predicted = predictions(logits, spec.kind, spec.regression).cpu()
        for row, i in enumerate(batch["index"].tolist()):
            if spec.kind == "multi":
                preds[i] = tuple(predicted[row].tolist())
            elif spec.kind == "tag":
                tags = predicted[row][batch["slot_mask"][row].cpu()].tolist()
                preds[i] = tags + [0] * (len(source.labels[i]) - len(tags))  # words cut by max_length: tag 0
            else:
                preds[i] = predicted[row].item()
    return [preds[i] for i in range(len(preds))], total / len(preds)


def parse_inputs(lines: Iterable[str], spec: TaskSpec, source: str) -> list[Example]:
    """Inputs for `predict`, one per line: a text; "a<TAB>b" for pairs; a JSON object {"context": ...,
    "choices": [...]} for multiple choice; words separated by spaces for tagging; a text for multi-label. Blank
    lines are skipped."""
    examples = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        where = f"{source}:{number}"
        if spec.kind == "pair":
            parts = line.split("\t")
            if len(parts) != 2:
                raise UserError(f"{where}: expected two texts separated by a tab, got {len(parts)} field(s)")
            texts = tuple(parts)
        elif spec.kind == "choice":
            try:
                item = json.loads(line)
                texts = (item["context"], *item["choices"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f'{where}: expected a JSON object {{"context": "...", "choices": ["...", ...]}}') \
                    from None
        elif spec.kind == "tag":
            texts = tuple(line.split())
        else:
            texts = (line,)
        examples.append(Example(texts, None, where))
    return examples


# -- feature extraction: the frozen backbone runs once, the head trains on its cached features -------------------
class _HeadOnFeatures(nn.Module):
    """The trainable part of feature extraction: the head, saved together with the frozen backbone."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.head = model.head
        self._model = [model]  # a list, so that the backbone is not registered as this module's parameters

    def features(self, batch: dict[str, Tensor], lm_loss: bool = False) -> tuple[Tensor, Tensor, None]:
        """The cached slot features and slot mask (as `TaskModel.features` computes them); no LM loss."""
        return batch["features"], batch["slot_mask"], None

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
    for batch in progress(batches.eval_batches(), desc=desc, total=math.ceil(len(out) / batches.batch_size),
                          leave=False):
        batch = to_device(batch, device)
        features, slot_mask, _ = model.features(batch)
        for row, i in enumerate(batch["index"].tolist()):
            out[i] = features[row, :int(slot_mask[row].sum())].float().clone()
    return out  # type: ignore[return-value]
