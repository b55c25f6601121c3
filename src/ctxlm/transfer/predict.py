"""Using a fine-tuned model: evaluate it on a task split, or label new inputs."""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch

from ctxlm.errors import UserError
from ctxlm.transfer.data import Example, TaskSpec, UserTaskOptions, load_task
from ctxlm.transfer.heads import predictions, task_loss
from ctxlm.transfer.inputs import TaskBatches, encode_examples
from ctxlm.transfer.metrics import compute_metrics
from ctxlm.transfer.model import TaskModel


def _batches(model: TaskModel, examples: list[Example], batch_size: int, labelled: bool) -> TaskBatches:
    encoded = encode_examples(model.tokenizer, model.spec, examples, decoder=model.decoder,
                              max_length=model.max_length)
    labels = [e.label for e in examples] if labelled else None
    return TaskBatches(encoded, labels, model.spec, model.tokenizer.pad_id, batch_size)


@torch.inference_mode()
def predict(model: TaskModel, examples: list[Example], *, batch_size: int = 64) -> list[dict]:
    """One dict per example: "label" (class name, choice index, tag names, or score) and, for classes and
    choices, "probability" of that label."""
    if not examples:
        return []
    model.eval()
    device = next(model.parameters()).device
    spec = model.spec
    out: list[dict | None] = [None] * len(examples)
    for batch in _batches(model, examples, batch_size, labelled=False).eval_batches():
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch).float()
        predicted = predictions(logits, spec.regression).cpu()
        probs = None if spec.regression else logits.softmax(-1).cpu()
        for row, i in enumerate(batch["index"].tolist()):
            if spec.regression:
                out[i] = {"label": round(float(predicted[row]), 4)}
            elif spec.kind == "tag":
                kept = batch["slot_mask"][row].cpu()
                tags = [spec.labels[t] for t in predicted[row][kept].tolist()]
                out[i] = {"label": tags + [spec.labels[0]] * (len(examples[i].texts) - len(tags))}
            else:
                k = int(predicted[row])
                out[i] = {"label": k if spec.kind == "choice" else spec.labels[k],
                          "probability": round(float(probs[row, k]), 4)}
    return out  # type: ignore[return-value]


@torch.inference_mode()
def gather_predictions(logits_of, source: TaskBatches, device: torch.device) -> tuple[list, float]:
    """Every example's prediction (class, choice, score, or a tag per word) in the split's order, and the mean
    loss. Metrics such as F1 or Spearman are computed over a whole split, not averaged over batches."""
    spec = source.spec
    preds: dict[int, object] = {}
    total = 0.0
    for batch in source.eval_batches():
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = logits_of(batch)
        total += float(task_loss(logits, batch["labels"], spec.kind, spec.regression)) * len(batch["index"])
        predicted = predictions(logits, spec.regression).cpu()
        for row, i in enumerate(batch["index"].tolist()):
            if spec.kind == "tag":
                tags = predicted[row][batch["slot_mask"][row].cpu()].tolist()
                preds[i] = tags + [0] * (len(source.labels[i]) - len(tags))  # words cut by max_length: tag 0
            else:
                preds[i] = predicted[row].item()
    return [preds[i] for i in range(len(preds))], total / len(preds)


def evaluate(model: TaskModel, task: str, split: str = "dev", *, batch_size: int = 64,
             csv_options: UserTaskOptions | None = None) -> dict[str, float]:
    """The task's metrics for a fine-tuned model on a split of a built-in task (or csv:PATH)."""
    if task == "csv":
        raise UserError("the model was fine-tuned on a user file: name it with --task csv:PATH (and its columns)")
    data = load_task(task, csv_options=csv_options)
    examples = {"train": data.train, "dev": data.dev, "test": data.test}.get(split)
    if examples is None:
        raise UserError(f"task {task!r} has no labelled {split} split")
    if data.spec.kind != model.spec.kind or data.spec.labels != model.spec.labels:
        raise UserError(f"the model was fine-tuned for {model.spec.name} ({model.spec.kind}, labels "
                        f"{list(model.spec.labels)}), which does not match task {task!r}")
    model.eval()
    source = _batches(model, examples, batch_size, labelled=True)
    preds, loss = gather_predictions(model, source, next(model.parameters()).device)
    return {"loss": loss, **compute_metrics(model.spec, preds, source.labels)}


def parse_inputs(lines: Iterable[str], spec: TaskSpec, source: str) -> list[Example]:
    """Inputs for `predict`, one per line: a text; "a<TAB>b" for pairs; a JSON object {"context": ...,
    "choices": [...]} for multiple choice; words separated by spaces for tagging. Blank lines are skipped."""
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
