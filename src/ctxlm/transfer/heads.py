"""Task heads: from a backbone's hidden states to one prediction per text, per text pair, per choice or per word.

Every task is read the same way. The backbone's states become *slot features* (batch, slots, dim) with a
slot mask, and a linear layer scores them:

- single text (one class, or multi-label: one logit per label), encoder pair, decoder pair whose order matters
  (entailment): one slot per example, the pooled sequence ([CLS], mean, last token, or ULMFiT's [last, max,
  mean]); a long text read in windows fills its slot with its windows' vectors pooled into one
  (`ctxlm.nn.long_text.pool_windows`);
- decoder pair without an order (GPT §3.3, similarity): two slots, the pooled states of (a, b) and of (b, a),
  added, so the prediction cannot depend on the order of the texts;
- multiple choice: one slot per choice (context + answer), each scored, softmax over the real ones;
- token tagging: one slot per word, the state of the word's first sub-token.

Splitting `extract_features` (backbone side) from `TaskHead` (trainable side) is what lets feature extraction
compute the features once and train only the head on them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctxlm.nn.long_text import pool_windows

TASK_KINDS = ("single", "pair", "choice", "tag", "multi")  # how `TaskHead` reads slots (TaskSpec.kind)


def extract_features(states: Tensor, batch: dict[str, Tensor], pooling: str) -> tuple[Tensor, Tensor]:
    """Slot features (examples, slots, dim) and the slot mask (examples, slots) of a collated batch.

    Word slots (tagging) gather each word's first sub-token from the example's one sequence. Otherwise every
    sequence is pooled and scattered to its (example, slot) from `seq_example` / `seq_slot`; the sequences of one
    slot (a long text's windows, in order) are pooled into one vector.
    """
    if "word_positions" in batch:
        positions = batch["word_positions"]  # (examples, words), 0 where there is no word
        rows = torch.arange(len(states), device=states.device)[:, None]
        return states[rows, positions], batch["slot_mask"]
    slot_mask = batch["slot_mask"]
    width = slot_mask.shape[1]
    slots, owner = (batch["seq_example"] * width + batch["seq_slot"]).unique(return_inverse=True)
    pooled = pool_windows(states, batch["mask"], owner, pooling)
    features = pooled.new_zeros(*slot_mask.shape, pooled.shape[-1])
    features[slots // width, slots % width] = pooled
    return features, slot_mask


class TaskHead(nn.Module):
    """Dropout → linear over slot features. `kind` says how slots become predictions:

    "single"/"pair"/"multi": slots are added (one slot, or a similarity pair's two orderings) → (examples, outputs:
    one per class, or per label for "multi");
    "choice": one score per slot, padded slots at -inf → (examples, slots);
    "tag": one prediction per slot → (examples, slots, outputs).
    """

    def __init__(self, dim: int, num_outputs: int, kind: str, dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown head kind {kind!r}")
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, 1 if kind == "choice" else num_outputs)
        nn.init.normal_(self.linear.weight, std=0.02)  # as the backbones' own layers (BERT, GPT)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor, slot_mask: Tensor) -> Tensor:
        features = self.dropout(features)
        if self.kind in ("single", "pair", "multi"):
            return self.linear((features * slot_mask.unsqueeze(-1).to(features.dtype)).sum(1))
        scores = self.linear(features)
        if self.kind == "choice":
            return scores.squeeze(-1).masked_fill(~slot_mask, float("-inf"))
        return scores


def task_loss(logits: Tensor, labels: Tensor, kind: str, regression: bool) -> Tensor:
    """Mean squared error for regression; multi-label: binary cross-entropy of each label's logit against its 0/1,
    averaged over examples and labels; else cross-entropy (over classes, choices, or tagged words)."""
    if kind == "multi":
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if regression:
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
    if kind == "tag":
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    return nn.functional.cross_entropy(logits.float(), labels)


def predictions(logits: Tensor, kind: str, regression: bool) -> Tensor:
    """Scores for regression; multi-label: each label's probability (its sigmoid), which a threshold turns into
    labels (`label_sets`), so that the threshold can be tuned after the model has run; else the arg-max class /
    choice / tag."""
    if kind == "multi":
        return logits.float().sigmoid()
    return logits.squeeze(-1).float() if regression else logits.argmax(-1)


def label_sets(probabilities, threshold: float) -> list[tuple[int, ...]]:
    """Multi-label predictions: per example (a row of label probabilities), the indices whose probability reaches
    `threshold`; possibly none."""
    return [tuple(i for i, p in enumerate(row) if p >= threshold) for row in probabilities]
