"""The task metrics, computed over a whole split: F1, MCC and correlations are not averages over batches."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from scipy import stats
from seqeval.metrics import f1_score as entity_f1_score
from sklearn import metrics as sk

from ctxlm.transfer.data import TaskSpec
from ctxlm.transfer.heads import label_sets


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
    "micro_f1": lambda t, p: sk.f1_score(t, p, average="micro", zero_division=0),
    "exact_match": sk.accuracy_score,  # on multi-label rows: the share of examples whose label set is exactly right
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


def indicator_rows(label_sets, count: int) -> np.ndarray:
    """Multi-label sets of label indices → a 0/1 row of `count` per example, as scikit-learn scores them."""
    rows = np.zeros((len(label_sets), count), dtype=int)
    for row, indices in enumerate(label_sets):
        rows[row, list(indices)] = 1
    return rows


def compute_metrics(spec: TaskSpec, predictions, labels) -> dict[str, float]:
    """Every metric in `spec.metrics`, as a plain float (fractions such as 0.91, not percentages); multi-label
    tasks add the F1 of each label ("f1_joy", ...). A label no example has and none is predicted scores F1 0.

    `predictions` and `labels` are class or choice indices, floats for regression, for tagging one list of tag
    indices per sentence, or for multi-label one set (tuple) of label indices per example, possibly empty.
    """
    if spec.kind == "multi":
        if len(predictions) != len(labels):
            raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
        y_true, y_pred = (indicator_rows(side, len(spec.labels)) for side in (labels, predictions))
        per_label = sk.f1_score(y_true, y_pred, average=None, labels=range(len(spec.labels)), zero_division=0)
        return ({name: float(_CLASS_METRICS[name](y_true, y_pred)) for name in spec.metrics}
                | {f"f1_{label}": float(f1) for label, f1 in zip(spec.labels, per_label, strict=True)})
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


THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # the candidates for a tuned threshold: 0.05 ... 0.95


def tune_threshold(spec: TaskSpec, probabilities: list, labels) -> float:
    """The one threshold among `THRESHOLDS` whose label sets have the best macro-F1 on these examples (dev's;
    never test's, whose figures would then overstate the model); ties go to the one nearest 0.5."""
    y_true = indicator_rows(labels, len(spec.labels))
    scores = {t: _CLASS_METRICS["macro_f1"](y_true, indicator_rows(label_sets(probabilities, t), len(spec.labels)))
              for t in THRESHOLDS}
    return max(THRESHOLDS, key=lambda t: (scores[t], -abs(t - 0.5)))
