"""Using a fine-tuned model: score it on a task split, or label new inputs. One `evaluate`, one `predict` and one
`read_inputs` for every task: each goes to the Task that made the model (`task.task_for`).

Both run the model in the precision `dtype` picks (`ctxlm.precision`): "auto", the default, is bf16 autocast where
the device has bf16 units (AMX or AVX512-BF16 CPUs, GPUs from Ampere on) and fp32 elsewhere; "fp32" and "bf16"
force one. Logits are read in float32 either way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ctxlm.precision import device_of, inference_context
from ctxlm.transfer.task import gather_predictions, parse_inputs, task_for

__all__ = ["evaluate", "gather_predictions", "parse_inputs", "predict", "read_inputs"]


def evaluate(model: nn.Module, task: str | None = None, split: str = "dev", *, batch_size: int = 64,
             dtype: str | torch.dtype | None = "auto", **options) -> dict[str, Any]:
    """The metrics of a fine-tuned model (`load_finetuned`'s result) on a labelled split of `task` (None: the task
    it was fine-tuned on). `options` are the task's: `csv_options` (a `UserTaskOptions`) for csv:PATH tasks;
    `squad_file` and `holdout_articles` for question answering, whose metrics include the number of "questions".
    A task ignores the options of the others."""
    with inference_context(dtype, device_of(model)):
        return task_for(model).score(model, task, split, batch_size=batch_size, **options)


def predict(model: nn.Module, inputs: list, *, batch_size: int = 64, dtype: str | torch.dtype | None = "auto",
            **options) -> list:
    """The model's prediction for each input (`read_inputs`' result): for classification, pair, choice and tagging
    models a dict of "label" (class name, choice index, tag names, or score) and, for classes and choices, its
    "probability"; for multi-label models the "labels" that reach the threshold saved with the model and every
    label's "probabilities"; for question answering, given (question, passage) pairs, each pair's `n_best` answers."""
    with inference_context(dtype, device_of(model)):
        return task_for(model).predict(model, inputs, batch_size=batch_size, **options)


def read_inputs(model: nn.Module, lines: Iterable[str], source: str) -> list:
    """Inputs for `predict`, one per line of `lines`, as the model's task reads them (see `parse_inputs` for
    classification; {"question": ..., "context": ...} objects for question answering). `source` names the lines in
    error messages."""
    return task_for(model).read_inputs(model, lines, source)
