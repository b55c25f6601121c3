"""ELMo's scalar mix (Peters et al. 2018, eq. 1): a task learns how much of each layer it wants.

    mix(h_0, ..., h_L) = γ Σ_j softmax(s)_j h_j

Different tasks draw on different depths (syntax lower, semantics higher), so rather than fixing one layer the
task's model learns L + 1 scalars s and a scale γ with the rest of its parameters. Feed it what
`ctxlm.embed(..., layers="all")` returns: every state on an axis of its own, second to last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScalarMix(nn.Module):
    """γ Σ_j softmax(s)_j h_j over `n_states` layers; s starts at zero (the plain average), γ at one.

    `do_layer_norm`: normalise each layer's vectors (zero mean, unit variance over the features, no learned
    affine) before mixing, which ELMo found helps when the layers' scales differ widely. This is Ba et al.'s
    per-vector layer normalisation; AllenNLP's implementation instead normalises over all unmasked positions
    of the batch at once.
    """

    def __init__(self, n_states: int, do_layer_norm: bool = False) -> None:
        super().__init__()
        if n_states < 1:
            raise ValueError(f"n_states={n_states}: expected at least one layer to mix")
        self.n_states = n_states
        self.do_layer_norm = do_layer_norm
        self.s = nn.Parameter(torch.zeros(n_states))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, states: Tensor | Sequence[Tensor]) -> Tensor:
        """`states`: (..., n_states, dim), or a list of n_states tensors (..., dim). Returns (..., dim)."""
        if not isinstance(states, Tensor):
            states = torch.stack(list(states), dim=-2)
        if states.dim() < 2 or states.shape[-2] != self.n_states:
            raise ValueError(f"ScalarMix({self.n_states}) got states of shape {tuple(states.shape)}; expected "
                             f"the layer axis (of size {self.n_states}) second to last")
        if self.do_layer_norm:
            states = F.layer_norm(states, states.shape[-1:])
        weights = F.softmax(self.s, dim=0).to(states.dtype)
        return self.gamma.to(states.dtype) * torch.einsum("...ld,l->...d", states, weights)

    def extra_repr(self) -> str:
        return f"n_states={self.n_states}, do_layer_norm={self.do_layer_norm}"
