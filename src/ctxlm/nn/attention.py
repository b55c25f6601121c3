"""Multi-head attention on `F.scaled_dot_product_attention`, with a pre-allocated key/value cache.

Masks are boolean, True where a query may attend. The model builds one mask per forward pass with
`build_attention_mask` and every layer reuses it; where SDPA's own `is_causal` flag suffices (no padding, no
cache offset) no mask is built at all, which lets PyTorch pick its fused kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TransposedCopy:
    """F.linear(x, weight, bias) for a few rows outside autograd, read from an (in, out) copy of the weight.

    Why: a decoding step multiplies one row by each weight, and a decoding model's weights do not stay in
    cache between steps. For that product MKL reads a weight fastest when its contiguous rows run along the
    longer side: an 8192x256 LM head laid out (in, out) takes 0.39 ms, laid out (out, in) as nn.Linear keeps
    it 0.96 ms; 256->1024 0.05 vs 0.12 ms (x86, fp32; up to 4 rows it still wins). So weights with more
    outputs than inputs get a copy for such products. The parameter itself keeps its layout (optimizer
    states, checkpoints and fused optimizers see nothing new); the copy costs that weight's memory once more,
    is made on first use and again whenever the weight changes (its version counter moves: optimizer steps,
    load_state_dict). Training and products over more rows go through F.linear unchanged.
    """

    MAX_ROWS = 4

    def __init__(self) -> None:
        self._key: tuple[int, int, int] | None = None
        self._copy: Tensor | None = None

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out_features, in_features = weight.shape
        rows = x.numel() // in_features
        if torch.is_grad_enabled() or rows > self.MAX_ROWS or out_features <= in_features:
            return F.linear(x, weight, bias)
        key = (id(weight), weight.data_ptr(), weight._version)
        if key != self._key:
            self._copy, self._key = weight.detach().t().contiguous(), key
        x2 = x.reshape(rows, in_features)
        y = torch.mm(x2, self._copy) if bias is None else torch.addmm(bias, x2, self._copy)
        return y.view(*x.shape[:-1], out_features)


class DecodingLinear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose decoding-sized products use a TransposedCopy."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.decoding_copy = TransposedCopy()

    def forward(self, x: Tensor) -> Tensor:
        return self.decoding_copy.linear(x, self.weight, self.bias)


class KVCache:
    """Keys and values of every layer, allocated once for `max_len` positions and written in place.

    Tensors are (layers, batch, heads, max_len, head_dim). A forward pass over T new tokens writes positions
    [length, length + T) in each layer through `update`, then the model calls `advance(T)`.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this step's (batch, heads, T, head_dim) keys/values; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} needed")
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


def build_attention_mask(q_len: int, k_len: int, *, causal: bool, key_mask: Tensor | None = None) -> Tensor | None:
    """(batch or 1, 1, q_len, k_len) boolean mask, or None when SDPA needs none.

    The queries are the last `q_len` of `k_len` positions (earlier ones come from a cache). `key_mask` is
    (batch, k_len), True for real tokens and False for padding. A query whose every key is masked (a left-pad
    position) is allowed to see itself, so that softmax never divides by zero; its output is ignored anyway.
    """
    if key_mask is None and (not causal or q_len == k_len or q_len == 1):
        return None  # no mask, or SDPA's is_causal (see MultiHeadAttention.forward)
    device = key_mask.device if key_mask is not None else None
    offset = k_len - q_len
    q_pos = torch.arange(offset, k_len, device=device)[:, None]  # absolute position of each query
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = k_pos <= q_pos if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # (1, 1, q_len, k_len)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
        allowed = allowed | (k_pos == q_pos)[None, None]
    return allowed


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `n_heads` heads with one fused query/key/value projection."""

    def __init__(self, dim: int, n_heads: int, *, causal: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = DecodingLinear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        batch, time, dim = x.shape
        qkv = self.qkv(x).view(batch, time, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, time, head_dim)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (batch, heads, past + time, head_dim)
        # Without a mask, causality is SDPA's flag; build_attention_mask returned None only where that is exact.
        is_causal = self.causal and mask is None and time == k.shape[2] and time > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        return self.out(y.transpose(1, 2).reshape(batch, time, dim))
