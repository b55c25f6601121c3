"""Multi-head attention on `F.scaled_dot_product_attention`, with a pre-allocated key/value cache.

Masks are boolean, True where a query may attend. The model builds one mask per forward pass with
`build_attention_mask` and every layer reuses it; where SDPA's own `is_causal` flag suffices (no padding, no
cache offset) no mask is built at all, which lets PyTorch pick its fused kernels.

SDPA never materialises the attention weights. `recording_attention(model)` asks every attention layer of a model
for them, recomputed as softmax(q k^T * scale + mask) beside SDPA, for one forward pass: an explorer's view, off
(one attribute test per layer) on the normal path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TransposedCopy:
    """F.linear(x, weight, bias) for a few rows outside autograd, read from an (in, out) copy of the weight.

    Why: a decoding step multiplies one row by each weight, and a decoding model's weights do not stay in
    cache between steps. For that product MKL reads a weight fastest when its contiguous rows run along the
    longer side: an 8192x256 LM head laid out (in, out) takes 0.39 ms, laid out (out, in) as nn.Linear keeps
    it 0.96 ms; 256->1024 0.05 vs 0.12 ms (x86, fp32). It still wins at a few rows: greedy decoding of 8 prompts
    with a 4x256 GPT-2 ran at 1,690 new tokens/s through the copy against 1,431 without (medians of 5 alternating
    rounds; 16 rows: 1.07x; at 32 no gain). So weights with more outputs than inputs get a copy for such
    products. The parameter itself keeps its layout (optimizer states, checkpoints and fused optimizers see
    nothing new); the copy costs that weight's memory once more, is made on first use and again whenever the
    weight changes (its version counter moves: optimizer steps, load_state_dict). Training and products over
    more rows go through F.linear unchanged.
    """

    MAX_ROWS = 16

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._copy: Tensor | None = None

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out_features, in_features = weight.shape
        rows = x.numel() // in_features
        if torch.is_grad_enabled() or rows > self.MAX_ROWS or out_features <= in_features:
            return F.linear(x, weight, bias)
        # Under autocast the copy is kept in its dtype (bf16): cast once, not at every decoding step.
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else weight.dtype
        key = (id(weight), weight.data_ptr(), weight._version, dtype)
        if key != self._key:
            self._copy, self._key = weight.detach().t().contiguous().to(dtype), key
        x2 = x.reshape(rows, in_features)
        y = torch.mm(x2, self._copy) if bias is None else torch.addmm(bias, x2, self._copy)
        return y.view(*x.shape[:-1], out_features)


class DecodingLinear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose decoding-sized products use a TransposedCopy."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
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
    """(batch or 1, 1, q_len or 1, k_len) boolean mask, or None when SDPA needs none.

    The queries are the last `q_len` of `k_len` positions (earlier ones come from a cache). `key_mask` is
    (batch, k_len), True for real tokens and False for padding. A query whose every key is masked (a left-pad
    position) is allowed to see itself, so that softmax never divides by zero; its output is ignored anyway.
    Without causality every query of a sequence sees the same keys: the mask is then one row per sequence,
    (batch, 1, 1, k_len), broadcast over the queries (SDPA turns a boolean mask into an additive one in every
    layer: a (batch, 1, 256, 256) one cost 2-3 % of a MiniLM batch of long texts); a sequence without any real
    token keeps its first key, as its queries' outputs are ignored anyway.
    """
    if key_mask is None and (not causal or q_len == k_len or q_len == 1):
        return None  # no mask, or SDPA's is_causal (see MultiHeadAttention.forward)
    if not causal:
        keys = key_mask.bool()
        first = torch.arange(k_len, device=keys.device) == 0
        return (keys | (first & ~keys.any(1, keepdim=True)))[:, None, None, :]
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

    record: list[Tensor] | None = None  # set by `recording_attention`: each pass appends its attention weights

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        batch, time, dim = x.shape
        qkv = self.qkv(x).view(batch, time, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, time, head_dim)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (batch, heads, past + time, head_dim)
        # Without a mask, causality is SDPA's flag; build_attention_mask returned None only where that is exact.
        is_causal = self.causal and mask is None and time == k.shape[2] and time > 1
        if self.record is not None:
            self.record.append(attention_weights(q, k, mask, is_causal=is_causal))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        return self.out(y.transpose(1, 2).reshape(batch, time, dim))


# ---- Transformer-XL: relative positions, memory of earlier segments (Dai et al. 2019, §3.2-3.3) ------------------


def sinusoidal_relative_positions(k_len: int, dim: int, clamp_len: int = 0, *, device: torch.device | None = None,
                                  dtype: torch.dtype = torch.float32) -> Tensor:
    """(k_len, dim) encodings of the distances k_len - 1, ..., 1, 0: [sin(d ω) ‖ cos(d ω)], ω_k = 10000^(-2k/dim).

    Row j is the distance from the last query to key j, so that a query's row of scores, once shifted by
    `relative_shift`, lines up with its own distances. `clamp_len` > 0 caps distances (farther keys share the
    encoding of clamp_len), as the published WikiText-103 model does at 1,000.
    """
    distances = torch.arange(k_len - 1, -1, -1.0, device=device, dtype=dtype)
    if clamp_len > 0:
        distances = distances.clamp(max=clamp_len)
    return sinusoidal_encoding(distances, dim)


def sinusoidal_encoding(distances: Tensor, dim: int) -> Tensor:
    """(n, dim) encodings [sin(d ω) ‖ cos(d ω)] of n distances d, ω_k = 10000^(-2k/dim) (Vaswani et al. 2017)."""
    inv_freq = 1 / (10000 ** (torch.arange(0.0, dim, 2.0, device=distances.device, dtype=distances.dtype) / dim))
    angles = torch.outer(distances, inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def relative_shift(x: Tensor) -> Tensor:
    """(..., q_len, k_len) scores against positions k_len-1 … 0 → scores against each key.

    out[i, j] = x[i, j + q_len - 1 - i] wherever query i may see key j (j <= i + k_len - q_len), the rest is
    junk that the causal mask hides. The trick: pad a zero column on the left, read the buffer as
    (k_len + 1, q_len), drop the first row and read it back as (q_len, k_len): each row ends up shifted left by
    one more than the row above, without a gather.
    """
    *lead, q_len, k_len = x.shape
    padded = F.pad(x, (1, 0)).view(*lead, k_len + 1, q_len)
    return padded[..., 1:, :].reshape(*lead, q_len, k_len)


def keep_last(x: Tensor, memory: Tensor | None, mem_len: int) -> Tensor:
    """The next segment's memory of one layer: [memory ‖ x], its last mem_len positions, without gradient."""
    with torch.no_grad():
        both = x if memory is None else torch.cat([memory, x], dim=1)
        return both[:, max(0, both.shape[1] - mem_len):].detach()


def memory_attention_mask(q_len: int, past: int, *, mem_len: int, same_length: bool,
                          key_mask: Tensor | None = None, device: torch.device | None = None) -> Tensor:
    """(batch or 1, 1, q_len, past + q_len) boolean mask over [memory ‖ segment], True where a query may attend.

    Query i (position past + i) sees every key up to itself. With `same_length` (the paper's evaluation setting)
    it also sees no key more than `mem_len` - 1 positions back once past + q_len exceeds mem_len, so that every
    query attends to the same number of keys whatever its place in the segment; the bounds are the reference
    implementation's: the query itself and the mem_len - 1 keys before it. `key_mask` (batch, past + q_len) hides
    padding; a query always sees itself.
    """
    k_len = past + q_len
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    allowed = j <= i + past
    if same_length:
        shift = mem_len - past if k_len > mem_len else q_len
        allowed = allowed & (j > i - shift)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    return allowed | (j == i + past)[None, None]  # never an empty row (mem_len 0 with same_length would be one)


class RelativeMultiHeadAttention(nn.Module):
    """Attention with Transformer-XL's relative position scores, over [memory ‖ segment].

    score(i, j) = (q_i + u)·k_j + (q_i + v)·R_{i-j}, scaled by 1/sqrt(head_dim): a content term with a global
    content bias u, and a position term on the sinusoidal encoding of the distance, projected by `pos`, with a
    global position bias v. Keys and values come from the memory and the segment, queries from the segment only.
    u and v are this layer's own (`own_biases`) or passed in shared by every layer. The position term enters
    SDPA as an additive mask, so the content term still runs in PyTorch's fused kernel.
    """

    def __init__(self, dim: int, n_heads: int, head_dim: int, *, dropout: float = 0.0, own_biases: bool = True) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.dropout = dropout
        inner = n_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.pos = nn.Linear(dim, inner, bias=False)
        self.out = nn.Linear(inner, dim, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(n_heads, head_dim)) if own_biases else None  # u
        self.position_bias = nn.Parameter(torch.zeros(n_heads, head_dim)) if own_biases else None  # v

    record: list[Tensor] | None = None  # set by `recording_attention`: each pass appends its attention weights

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor, memory: Tensor | None = None,
                biases: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`x` (batch, q_len, dim), `memory` (batch, past, dim) or None, `positions` (past + q_len, dim) from
        `sinusoidal_relative_positions`, `mask` from `memory_attention_mask`; `biases` (u, v) when shared."""
        batch, q_len, _ = x.shape
        context = x if memory is None else torch.cat([memory, x], dim=1)
        k_len = context.shape[1]
        inner = self.n_heads * self.head_dim
        q = F.linear(x, self.qkv.weight[:inner])  # queries for the segment only
        kv = F.linear(context, self.qkv.weight[inner:]).view(batch, k_len, 2, self.n_heads, self.head_dim)
        q = q.view(batch, q_len, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, heads, q_len, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (batch, heads, k_len, head_dim)
        r = self.pos(positions).view(k_len, self.n_heads, self.head_dim).transpose(0, 1)  # (heads, k_len, head_dim)
        u, bias_v = biases if biases is not None else (self.content_bias, self.position_bias)
        u, bias_v = u.to(q.dtype), bias_v.to(q.dtype)  # under autocast q is bf16/fp16 while the biases stay fp32
        scale = self.head_dim ** -0.5
        by_position = relative_shift((q + bias_v[:, None]) @ r.transpose(1, 2)) * scale  # (batch, heads, q, k)
        by_position = by_position.masked_fill(~mask, float("-inf"))
        if self.record is not None:
            self.record.append(attention_weights(q + u[:, None], k, scale=scale, bias=by_position))
        y = F.scaled_dot_product_attention(q + u[:, None], k, v, attn_mask=by_position, scale=scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, q_len, inner))


# ---- XLNet: positions both ways, relative segments, two streams (Yang et al. 2019, §2.3-2.5) ---------------------


def bidirectional_relative_positions(q_len: int, k_len: int, dim: int, clamp_len: int = 0, *,
                                     device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(k_len + q_len, dim) encodings of the distances k_len, k_len - 1, ..., 1 - q_len (XLNet's attn_type "bi").

    The queries are the last q_len of k_len positions and, the model being bidirectional, see keys after them
    too: distances run from the farthest memory key to the last key seen from the first query (negative). Row
    m is distance k_len - m; `bidirectional_relative_shift` lines each query's row up with its keys.
    `clamp_len` > 0 caps |distance|."""
    distances = torch.arange(k_len, -q_len, -1.0, device=device, dtype=dtype)
    if clamp_len > 0:
        distances = distances.clamp(-clamp_len, clamp_len)
    return sinusoidal_encoding(distances, dim)


def bidirectional_relative_shift(x: Tensor, k_len: int, query_positions: Tensor | None = None) -> Tensor:
    """(batch, heads, n_q, k_len + q_len) scores against `bidirectional_relative_positions` → (batch, heads, n_q,
    k_len) scores against each key: the query at segment position i reads key j (memory first) at distance
    past + i - j, column q_len - i + j.

    Without `query_positions` the queries are the segment's q_len positions in order, and the reshape trick of
    `relative_shift` applies (read the buffer as (k_len + q_len, q_len), drop its first row: each row shifts
    left by one more than the row above), here exact for every key. `query_positions` (batch, n_q) gives each
    query's own position instead (XLNet's query stream at the positions it predicts): its columns are gathered.
    """
    *lead, n_q, width = x.shape
    if query_positions is None:
        return x.reshape(*lead, width, n_q)[..., 1:, :].reshape(*lead, n_q, width - 1)[..., :k_len]
    q_len = width - k_len
    columns = q_len - query_positions[..., None] + torch.arange(k_len, device=x.device)  # (batch, n_q, k_len)
    return x.gather(-1, columns[:, None].expand(*lead, n_q, k_len))


class RelativeKeys(NamedTuple):
    """What both of XLNet's streams attend to: keys and values of [memory ‖ segment] (batch, heads, k_len,
    head_dim) and the projected distance encodings (heads, k_len + q_len, head_dim)."""

    k: Tensor
    v: Tensor
    r: Tensor


class TwoStreamRelativeAttention(RelativeMultiHeadAttention):
    """XLNet's attention (Yang et al. 2019, §2.3, §2.5, Appendix A.2): Transformer-XL's, both ways, plus segments.

    score(i, j) = [(q_i + u)·k_j + (q_i + v)·R_{i-j} + (q_i + b)·s_ij] / sqrt(head_dim): the content and position
    terms of `RelativeMultiHeadAttention`, with distances of either sign, and a relative segment term: s_ij is
    one of two learned vectors, s+ when positions i and j are in the same segment and s- when not, with its own
    bias b (§2.5), so that the model only asks whether two tokens share a segment, never which segment it is.
    Memory keys count as segment 0, as in the paper's code. Keys and values always come from the content stream
    over [memory ‖ segment]; queries from whichever stream asks (`project` gives the content stream's with the
    keys, `queries` any other's), so the query stream costs one query projection and one attention.

    Masked scores are set to -1e30 (the reference's constant), not -inf: a row with nothing to see then spreads
    its attention evenly instead of producing NaN, as the reference does. The projections are called as
    modules (`qkv`, `out`), so LoRA updates of `ctxlm.nn.peft` apply to both streams.
    """

    def __init__(self, dim: int, n_heads: int, *, dropout: float = 0.0) -> None:
        super().__init__(dim, n_heads, dim // n_heads, dropout=dropout, own_biases=True)
        self.segment_bias = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # b
        self.segment_embed = nn.Parameter(torch.zeros(2, n_heads, self.head_dim))  # s+ (same segment), s- (other)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None, memory: Tensor | None = None,
                biases: tuple[Tensor, Tensor] | None = None, *, same_segment: Tensor | None = None) -> Tensor:
        """The content stream alone: `x` (batch, q_len, dim), `positions` from `bidirectional_relative_positions`,
        `mask` (batch or 1, 1, q_len, k_len) True where a query may attend (None: everywhere), `same_segment`
        (batch, q_len, k_len) or None (no segment term: one segment)."""
        if biases is not None:
            raise ValueError("XLNet's attention has its own biases")
        q, keys = self.project(x, memory, positions)
        return self.attend(q, keys, mask, same_segment)

    def project(self, x: Tensor, memory: Tensor | None, positions: Tensor) -> tuple[Tensor, RelativeKeys]:
        """The content stream's queries (batch, heads, q_len, head_dim) and the keys both streams read."""
        batch, q_len, _ = x.shape
        context = x if memory is None else torch.cat([memory, x], dim=1)
        k_len = context.shape[1]
        qkv = self.qkv(context).view(batch, k_len, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, k_len, head_dim); memory rows' q unused
        r = self.pos(positions).view(-1, self.n_heads, self.head_dim).transpose(0, 1)
        return q[:, :, k_len - q_len:], RelativeKeys(k, v, r)

    def queries(self, g: Tensor) -> Tensor:
        """Queries of another stream's states `g` (batch, n, dim) → (batch, heads, n, head_dim)."""
        batch, n, _ = g.shape
        inner = self.n_heads * self.head_dim
        return self.qkv(g)[..., :inner].reshape(batch, n, self.n_heads, self.head_dim).transpose(1, 2)

    def attend(self, q: Tensor, keys: RelativeKeys, mask: Tensor | None, same_segment: Tensor | None,
               query_positions: Tensor | None = None) -> Tensor:
        """Attention of queries `q` (batch, heads, n_q, head_dim) over `keys`, out-projected: (batch, n_q, dim).
        Without `query_positions` the queries are the segment's positions in order; else (batch, n_q) their
        positions. `mask` and `same_segment` have one row per query."""
        batch, _, n_q, _ = q.shape
        k_len = keys.k.shape[2]
        u, bias_v, bias_s = (p.to(q.dtype) for p in (self.content_bias, self.position_bias, self.segment_bias))
        scale = self.head_dim ** -0.5
        bias = bidirectional_relative_shift((q + bias_v[:, None]) @ keys.r.transpose(1, 2), k_len, query_positions)
        if same_segment is not None:
            by_segment = (q + bias_s[:, None]) @ self.segment_embed.to(q.dtype).permute(1, 2, 0)  # (b, h, n_q, 2)
            bias = bias + torch.where(same_segment[:, None], by_segment[..., :1], by_segment[..., 1:])
        bias = bias * scale
        if mask is not None:
            bias = bias.masked_fill(~mask, max(-1e30, torch.finfo(bias.dtype).min))
        if self.record is not None and query_positions is None:
            self.record.append(attention_weights(q + u[:, None], keys.k, scale=scale, bias=bias))
        y = F.scaled_dot_product_attention(q + u[:, None], keys.k, keys.v, attn_mask=bias, scale=scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, n_q, self.n_heads * self.head_dim))


# ---- attention weights, for looking at them --------------------------------------------------------------------


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, *, is_causal: bool = False,
                      scale: float | None = None, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + bias) where `mask` (boolean, True = may attend) and `is_causal` allow, else 0: the
    weights SDPA applies to the values, (batch, heads, q_len, k_len), in float32. `scale` defaults to
    1/sqrt(head_dim); `bias` is an additive score term (Transformer-XL's position scores, -inf where masked)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    if is_causal:
        q_len, k_len = scores.shape[-2:]
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Inside the block every attention layer of `model` keeps its weights: the list it yields receives one
    (batch, heads, q_len, k_len) float32 tensor per layer and forward pass, in the order the layers ran (bottom
    up). Outside it nothing is recorded, and nothing is computed beyond what SDPA does."""
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention | RelativeMultiHeadAttention)]
    weights: list[Tensor] = []
    for layer in layers:
        layer.record = weights
    try:
        yield weights
    finally:
        for layer in layers:
            layer.record = None
