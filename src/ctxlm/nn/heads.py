"""Pretraining heads shared by the encoder families: the masked-LM head scored against tied token embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.nn.blocks import ACTIVATIONS


class MaskedLMHead(nn.Module):
    """dense → activation → LayerNorm, then scores against the (tied) token embeddings plus a bias.

    BERT transforms within its hidden width (`out_dim` = dim, GELU erf form); ALBERT maps the hidden width down
    to its narrower embedding width E (`out_dim` = E), where its token embeddings live."""

    def __init__(self, dim: int, vocab_size: int, *, out_dim: int | None = None, norm_eps: float = 1e-12,
                 activation: str = "gelu") -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.transform = nn.Linear(dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.activation = ACTIVATIONS[activation]

    def forward(self, states: Tensor, token_embeddings: Tensor) -> Tensor:
        return F.linear(self.norm(self.activation(self.transform(states))), token_embeddings, self.bias)
