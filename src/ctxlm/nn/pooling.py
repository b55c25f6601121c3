"""Pooling a sequence of hidden states into one vector: the first token, the mean, the last real token, or
ULMFiT's concatenation of the last, the max and the mean.

Shared by task heads (transfer/) and text embeddings (embed.py); `long_text.pool_windows` pools a long text's
windows with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("cls", "mean", "last", "concat")


def pooled_width(how: str) -> int:
    """How many hidden vectors one pooled vector holds: 3 for "concat", else 1."""
    return 3 if how == "concat" else 1


def pool(states: Tensor, mask: Tensor, how: str) -> Tensor:
    """(sequences, time, dim) → (sequences, dim), or (sequences, 3 × dim) for "concat". Sequences are
    right-padded; `mask` is True on real tokens.

    "cls": the first token ([CLS] for BERT, the start token for GPT); "mean": the mean of the real tokens;
    "last": the last real token (GPT's <|extract|>, the only decoder state that has seen the whole input);
    "concat": [last, max over the real tokens, mean] (Howard & Ruder 2018 §3.3, concat pooling for a language
    model's states, whose last one alone may forget what came long before).
    """
    if how == "cls":
        return states[:, 0]
    if how == "mean":
        weights = mask.to(states.dtype).unsqueeze(-1)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if how == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return states[torch.arange(len(states), device=states.device), last]
    if how == "concat":
        highest = states.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return torch.cat([pool(states, mask, "last"), highest, pool(states, mask, "mean")], dim=-1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
