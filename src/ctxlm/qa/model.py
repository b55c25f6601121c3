"""A BERT-family encoder with a span head: start and end logits over the passage tokens (BERT §4.2).

Defining `SpanModel` registers it with `transfer.model.load_finetuned` for task.json's head kind "span"."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ctxlm.api import load
from ctxlm.checkpoint import load_weights
from ctxlm.errors import UserError
from ctxlm.transfer.data import TaskSpec
from ctxlm.transfer.model import HEAD_FILE, HeadedModel, finetuned_folder

SQUAD_SPEC = TaskSpec("squad", "span", (), ("f1", "exact_match"))


class SpanHead(nn.Module):
    """Start and end logits for every token (BERT §4.2): one linear layer, two outputs per token.

    Positions that cannot start or end an answer (the question, [SEP], padding) get -inf, except [CLS] at
    position 0, the target of windows that do not hold the answer (and of SQuAD v2's "no answer")."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, 2)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, states: Tensor, passage: Tensor) -> tuple[Tensor, Tensor]:
        allowed = passage.clone()
        allowed[:, 0] = True
        logits = self.linear(self.dropout(states)).float().masked_fill(~allowed.unsqueeze(-1), float("-inf"))
        return logits[..., 0], logits[..., 1]


def span_loss(start_logits: Tensor, end_logits: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """The mean of the start and end positions' cross-entropies (BERT §4.2)."""
    return (nn.functional.cross_entropy(start_logits, starts) + nn.functional.cross_entropy(end_logits, ends)) / 2


class SpanModel(HeadedModel):
    """`lm` (an encoder: BERT, MiniLM, ...) + `SpanHead`, and the windowing settings it was trained with."""

    kinds = ("span",)
    description = "question-answering"

    def __init__(self, lm: nn.Module, *, max_length: int = 384, doc_stride: int = 128, max_question_tokens: int = 64,
                 max_answer_tokens: int = 30, no_answer: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        if lm.config.causal or lm.config.word_level:
            raise UserError(f"span extraction needs a BERT-family encoder (a bidirectional sub-word model), got "
                            f"{lm.config.model_type}; a decoder can answer questions zero-shot with `ctxlm zeroshot`")
        if max_length > lm.config.max_positions:
            raise UserError(f"--max-length {max_length} exceeds the model's {lm.config.max_positions} positions")
        if doc_stride < 1:
            raise UserError(f"doc stride must be positive, got {doc_stride}")
        self.lm, self.head, self.spec = lm, SpanHead(lm.config.hidden_dim, dropout), SQUAD_SPEC
        self.max_length, self.doc_stride, self.max_question_tokens = max_length, doc_stride, max_question_tokens
        self.max_answer_tokens, self.no_answer = max_answer_tokens, no_answer

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(start, end) logits, (windows, positions), -inf where no answer can start or end."""
        segments = batch["segments"] if self.lm.config.has_segments else None  # one token type: none to read
        hidden = self.lm.backbone(batch["ids"], mask=batch["mask"], segments=segments)
        return self.head(hidden.last, batch["passage"])

    def window_options(self) -> dict:
        return {"max_length": self.max_length, "doc_stride": self.doc_stride,
                "max_question_tokens": self.max_question_tokens}

    def task_config(self) -> dict:
        return {"spec": {"name": self.spec.name, "kind": "span", "labels": [], "metrics": list(self.spec.metrics)},
                **self.window_options(), "max_answer_tokens": self.max_answer_tokens, "no_answer": self.no_answer,
                "dropout": self.head.dropout.p}

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> SpanModel:
        path, config = finetuned_folder(path)
        options = {k: config[k] for k in ("max_length", "doc_stride", "max_question_tokens", "max_answer_tokens",
                                          "no_answer", "dropout")}
        model = cls(load(path), **options)
        load_weights(model.head, path / HEAD_FILE)
        return model.to(device).eval()
