"""The task metrics, computed over a whole split: F1, MCC and correlations are not averages over batches."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from scipy import stats
from seqeval.metrics import f1_score as entity_f1_score
from sklearn import metrics as sk

from ctxlm.transfer.data import TaskSpec


def _correlation(coefficient: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    """Pearson or Spearman; 0 when either side is constant (a model that predicts one score for everything),
    where scipy would give NaN and break "best so far" comparisons."""

    def score(labels: np.ndarray, predictions: np.ndarray) -> float:
        if np.ptp(labels) == 0 or np.ptp(predictions) == 0:
            return 0.0
        return coefficient(labels, predictions)[0]

    return score


_CLASS_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": sk.accuracy_score,
    "f1": lambda t, p: sk.f1_score(t, p, pos_label=1, zero_division=0),  # class 1: MRPC's "1" (a paraphrase)
    "macro_f1": lambda t, p: sk.f1_score(t, p, average="macro", zero_division=0),
    "mcc": sk.matthews_corrcoef,
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
}


def _word_accuracy(labels: list[list[str]], predictions: list[list[str]]) -> float:
    return sk.accuracy_score(list(itertools.chain(*labels)), list(itertools.chain(*predictions)))


# Entity F1 as conlleval counts it (seqeval's default mode): an entity is right only if its type and both ends
# are. Per-word accuracy looks much better, since most words are "O".
_TAG_METRICS: dict[str, Callable[[list[list[str]], list[list[str]]], float]] = {
    "entity_f1": entity_f1_score,
    "accuracy": _word_accuracy,
}


def compute_metrics(spec: TaskSpec, predictions, labels) -> dict[str, float]:
    """Every metric in `spec.metrics`, as a plain float (fractions such as 0.91, not percentages).

    `predictions` and `labels` are class or choice indices, floats for regression, or for tagging one list of tag
    indices per sentence.
    """
    if spec.kind == "tag":
        if len(predictions) != len(labels) or any(len(p) != len(t) for p, t in zip(predictions, labels, strict=True)):
            raise ValueError("tag predictions and labels need the same number of sentences, and of words in each")
        table = _TAG_METRICS
        y_true, y_pred = ([[spec.labels[i] for i in sentence] for sentence in side] for side in (labels, predictions))
    else:
        table = _CLASS_METRICS
        y_true, y_pred = np.asarray(labels), np.asarray(predictions)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{len(y_pred)} predictions for {len(y_true)} labels")
    unknown = [name for name in spec.metrics if name not in table]
    if unknown:
        raise ValueError(f"unknown metric(s) for a {spec.kind} task: {', '.join(unknown)}")
    return {name: float(table[name](y_true, y_pred)) for name in spec.metrics}
