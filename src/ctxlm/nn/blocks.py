"""Transformer building blocks shared by every family: embeddings, MLP, the block with pre- or post-LN."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ctxlm.nn.attention import DecodingLinear, KVCache, MultiHeadAttention

ACTIVATIONS = {
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT, GPT-2 ("gelu_new"): one fused kernel
    "gelu": F.gelu,  # BERT (erf form)
    "relu": F.relu,
}


class Embeddings(nn.Module):
    """Token + learned absolute position (+ segment) embeddings, optionally LayerNorm'ed, then dropout."""

    def __init__(self, vocab_size: int, dim: int, max_positions: int, *, n_segments: int = 0,
                 norm_eps: float | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_positions, dim)
        self.segments = nn.Embedding(n_segments, dim) if n_segments else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm_eps is not None else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, positions: Tensor, segments: Tensor | None = None) -> Tensor:
        x = self.tokens(ids) + self.positions(positions)
        if segments is not None:
            if self.segments is None:
                raise ValueError("this model has no segment embeddings")
            x = x + self.segments(segments)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear → activation → Linear."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.fc = DecodingLinear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.activation(self.fc(x)))


class AdaptableBlock(nn.Module):
    """A block that parameter-efficient transfer (`ctxlm.nn.peft`) can extend: an attention sub-layer `attn` whose
    `qkv` (fused query, key, value rows, each `attn.out.in_features` wide) and `out` projections are called as
    modules, LayerNorms `attn_norm` and `mlp_norm`, and two adapter slots that `_branch` applies."""

    attn: nn.Module
    attn_norm: nn.LayerNorm

    def __init__(self) -> None:
        super().__init__()
        # Houlsby adapters of the two sub-layers (ctxlm.nn.peft); a plain block has none, and no extra work
        self.attn_adapter: nn.Module | None = None
        self.mlp_adapter: nn.Module | None = None

    def _branch(self, h: Tensor, adapter: nn.Module | None) -> Tensor:
        """A sub-layer's output as it joins the residual stream: dropout, then the adapter if there is one
        (Houlsby et al. 2019, §2.1: before the residual addition; after the dropout, as AdapterHub places it)."""
        h = self.dropout(h)
        return h if adapter is None else adapter(h)


class TransformerBlock(AdaptableBlock):
    """Attention and MLP sub-layers, each in a residual connection with LayerNorm.

    post-LN (GPT, BERT):  x = LN(x + Attn(x));   x = LN(x + MLP(x))
    pre-LN  (GPT-2):      x = x + Attn(LN(x));   x = x + MLP(LN(x))
    """

    def __init__(self, dim: int, n_heads: int, mlp_dim: int, *, causal: bool, pre_norm: bool,
                 dropout: float = 0.0, attn_dropout: float = 0.0, norm_eps: float = 1e-5,
                 activation: str = "gelu_tanh", attention: MultiHeadAttention | None = None) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        # `attention`: another mode of attention over the same projections (qkv, out), such as DeBERTa's
        # disentangled one, in place of the plain one; what it reads beyond (x, mask) comes in `attn_inputs`
        self.attn = attention if attention is not None else MultiHeadAttention(dim, n_heads, causal=causal,
                                                                                dropout=attn_dropout)
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_dim, activation)
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.checkpointing = False  # see `use_gradient_checkpointing`

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0, **attn_inputs) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled() and cache is None:
            # Keep only the block's input; backward recomputes the rest (with the same dropout masks: the
            # checkpoint replays the random state).
            return checkpoint(self._forward, x, mask, use_reentrant=False, **attn_inputs)
        return self._forward(x, mask, cache, layer, **attn_inputs)

    def _forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                 layer: int = 0, **attn_inputs) -> Tensor:
        if self.pre_norm:
            x = x + self._branch(self.attn(self.attn_norm(x), mask, cache, layer, **attn_inputs), self.attn_adapter)
            return x + self._branch(self.mlp(self.mlp_norm(x)), self.mlp_adapter)
        x = self.attn_norm(x + self._branch(self.attn(x, mask, cache, layer, **attn_inputs), self.attn_adapter))
        return self.mlp_norm(x + self._branch(self.mlp(x), self.mlp_adapter))


def use_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Gradient checkpointing for every transformer block of `model`: in training, a block keeps only its input
    and recomputes its activations in backward. Activation memory then grows with the number of blocks times
    one block's input instead of every intermediate tensor (about a third more compute). Returns the number of
    blocks switched."""
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    for block in blocks:
        block.checkpointing = enabled
    return len(blocks)


def positions_from_mask(key_mask: Tensor, q_len: int) -> Tensor:
    """Positions of the last `q_len` tokens counted over real tokens only, so left padding does not shift them."""
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions[:, -q_len:]


def init_transformer_weights(module: nn.Module, std: float, n_layers: int | None) -> None:
    """N(0, std) weights, zero biases, unit LayerNorms; with `n_layers`, residual projections scaled by 1/sqrt(2 L).

    The scaling of the projections that write into the residual stream is GPT-2's (§2.3), so the stream's
    variance does not grow with depth; BERT (post-LN) has none: pass n_layers=None.
    """
    residual = ("attn.out.weight", "mlp.proj.weight")
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            scale = (2 * n_layers) ** -0.5 if n_layers and name.endswith(residual) else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)
        elif "norm" in name and name.endswith("weight"):
            nn.init.ones_(p)
        else:
            nn.init.zeros_(p)
