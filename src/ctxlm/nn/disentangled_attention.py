"""Disentangled attention (He et al. 2020, DeBERTa §3.1), as the published v2/v3 models compute it.

Each token is two vectors: its content H_i and, for every other token, the relative position δ(i, j) between
them. The score of query i for key j sums three of the four cross terms (position-to-position adds nothing with
relative positions only):

    A_ij = Q^c_i · K^c_j            content → content
         + Q^c_i · K^r_δ(i,j)       content → position  ("c2p")
         + K^c_j · Q^r_δ(i,j)       position → content  ("p2c")

scaled by 1/sqrt(3d) (1 + the number of position terms, so that the sum keeps unit variance; §3.1, eq. 4).
Q^r and K^r project one table of relative-position embeddings P (2k rows, the distances -k .. k-1), shared by
every layer and LayerNorm'ed once. In v2/v3 the projections are shared too: Q^r = P W_q + b_q and K^r = P W_k + b_k
with the content query and key projections ("share_att_key"), which is why this attention is a mode of
`MultiHeadAttention` over its one fused `qkv` projection: LoRA updates of q and k reach the position terms as well,
as they would in the reference, and adapters and gradient checkpointing see an ordinary block.

Distances are bucketed in log space beyond ±k/2 (v2's `position_buckets` = k): near tokens keep exact distances,
far ones share buckets that widen up to `max_positions`. `relative_positions` builds the two index tables once per
forward pass. The p2c term reads the bucket of i - j like c2p: that is the published code's δ (the paper writes
δ(j, i) for it), kept for parity with the published weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.nn.attention import KVCache, MultiHeadAttention, attention_weights

POSITION_TERMS = ("c2p", "p2c")


def log_bucket_positions(relative: Tensor, buckets: int, max_positions: int) -> Tensor:
    """Relative distances (any integer tensor) → bucketed ones, as DeBERTa v2's `make_log_bucket_position`.

    Distances within ±buckets/2 stay as they are; a longer one d becomes sign(d) (mid + ceil(log(|d| / mid) /
    log((max_positions - 1) / mid) (mid - 1))), mid = buckets/2: log-spaced buckets reaching ±(buckets - 1) at
    max_positions - 1. The logarithms are taken in float32 as the reference takes them: the ceiling makes a
    bucket's edge depend on that rounding.
    """
    mid = buckets // 2
    sign = torch.sign(relative)
    near = (relative < mid) & (relative > -mid)
    distance = torch.where(near, torch.tensor(mid - 1).type_as(relative), relative.abs())
    log_position = torch.ceil(torch.log(distance / mid) / torch.log(torch.tensor((max_positions - 1) / mid))
                              * (mid - 1)) + mid
    return torch.where(distance <= mid, relative.type_as(log_position), log_position * sign).long()


@dataclass
class RelativePositions:
    """What every layer's disentangled attention reads for one sequence length: `table` (2 span, dim), the
    (normalised) relative-position embeddings, and the rows of it that pairs of tokens use, (time, time), both
    clamped to the table: `c2p`[i, j] = δ(i, j) + span for query i and key j; `p2c`[j, i] = -δ(j, i) + span for
    key j and query i, as the published code indexes it (read transposed, it is δ(i, j) + span again)."""

    table: Tensor
    c2p: Tensor
    p2c: Tensor


def relative_positions(time: int, table: Tensor, *, span: int, buckets: int, max_positions: int) -> RelativePositions:
    """The index tables of `time` tokens for a `table` of 2 `span` rows: δ(i, j) = i - j, log-bucketed when
    `buckets` > 0 (span is then `buckets`), else exact and clamped to ±span."""
    position = torch.arange(time, device=table.device)
    delta = position[:, None] - position[None, :]
    if buckets > 0:
        delta = log_bucket_positions(delta, buckets, max_positions)
    top = 2 * span - 1
    return RelativePositions(table, (delta + span).clamp(0, top), (-delta + span).clamp(0, top))


class DisentangledAttention(MultiHeadAttention):
    """Multi-head attention whose scores add DeBERTa's content → position and position → content terms.

    `position_terms`: which of "c2p", "p2c" are on (both in DeBERTa; one or none for ablations, the scale
    following as 1/sqrt((1 + terms) d)). `position_dropout`: dropout on the position table, drawn in each layer as
    the reference draws it. The position terms enter SDPA as an additive mask, so the content term still runs in
    PyTorch's fused kernel (as Transformer-XL's relative attention does).
    """

    def __init__(self, dim: int, n_heads: int, *, dropout: float = 0.0, position_dropout: float = 0.0,
                 position_terms: tuple[str, ...] | list[str] = POSITION_TERMS) -> None:
        super().__init__(dim, n_heads, causal=False, dropout=dropout)
        unknown = set(position_terms) - set(POSITION_TERMS)
        if unknown:
            raise ValueError(f"unknown position terms {sorted(unknown)}: expected some of {POSITION_TERMS}")
        self.position_terms = tuple(position_terms)
        self.position_dropout = nn.Dropout(position_dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None, layer: int = 0, *,
                relative: RelativePositions, context: Tensor | None = None) -> Tensor:
        """`x` (batch, time, dim) gives the queries (and the keys and values unless `context` does: the enhanced
        mask decoder's queries attend over the states below); `mask` from `build_attention_mask`; `relative`
        from `relative_positions`. There is no cache: this is an encoder's attention."""
        if cache is not None:
            raise ValueError("disentangled attention is bidirectional: it keeps no key/value cache")
        batch, time, dim = x.shape
        heads, head_dim = self.n_heads, self.head_dim
        qkv = self.qkv(x).view(batch, time, 3, heads, head_dim)
        if context is not None:  # queries from x, keys and values from the context
            kv = self.qkv(context).view(batch, time, 3, heads, head_dim)
            qkv = torch.stack([qkv[:, :, 0], kv[:, :, 1], kv[:, :, 2]], dim=2)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, time, head_dim)
        scale = (head_dim * (1 + len(self.position_terms))) ** -0.5
        bias = self.position_scores(q, k, relative) * scale
        if mask is not None:
            bias = bias.masked_fill(~mask, float("-inf"))
        if self.record is not None:
            self.record.append(attention_weights(q, k, scale=scale, bias=bias))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, time, dim))

    def position_scores(self, q: Tensor, k: Tensor, relative: RelativePositions) -> Tensor:
        """c2p + p2c, unscaled, (batch, heads, time, time): each query (key) against every row of the projected
        position table, then the row its distance to each key (query) names picked out."""
        batch, heads, time, head_dim = q.shape
        scores = q.new_zeros(batch, heads, time, time)
        if not self.position_terms:
            return scores
        table = self.position_dropout(relative.table).to(q.dtype)
        rows = table.shape[0]
        # the shared projections: Q^r = P W_q + b_q, K^r = P W_k + b_k (the value rows are a few rows of waste)
        position_q, position_k, _ = self.qkv(table).view(rows, 3, heads, head_dim).permute(1, 2, 0, 3)
        if "c2p" in self.position_terms:
            by_row = q @ position_k.transpose(-1, -2)  # (batch, heads, query, 2 span)
            scores = scores + by_row.gather(-1, relative.c2p.expand(batch, heads, time, time))
        if "p2c" in self.position_terms:
            by_row = k @ position_q.transpose(-1, -2)  # (batch, heads, key, 2 span)
            scores = scores + by_row.gather(-1, relative.p2c.expand(batch, heads, time, time)).transpose(-1, -2)
        return scores
