"""Pooling a sequence of hidden states into one vector: the first token, the mean, or the last real token.

Shared by task heads (transfer/) and text embeddings (embed.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("cls", "mean", "last")


def pool(states: Tensor, mask: Tensor, how: str) -> Tensor:
    """(sequences, time, dim) → (sequences, dim). Sequences are right-padded; `mask` is True on real tokens.

    "cls": the first token ([CLS] for BERT, the start token for GPT); "mean": the mean of the real tokens;
    "last": the last real token (GPT's <|extract|>, the only decoder state that has seen the whole input).
    """
    if how == "cls":
        return states[:, 0]
    if how == "mean":
        weights = mask.to(states.dtype).unsqueeze(-1)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if how == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return states[torch.arange(len(states), device=states.device), last]
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
