"""XLNet (Yang et al., 2019): permutation language modelling on a bidirectional Transformer-XL.

XLNet maximises the likelihood of a text under a random factorisation order z: token x_{z_t} is predicted from
the tokens before it in the order, x_{z<t}, wherever they stand in the text (§2.2). The text stays in place; the
order only decides who sees whom, through attention masks. Predicting x_{z_t} needs its position but must not see
its content, while the tokens after it in the order need its content: hence two streams (§2.3). The content
stream h_i sees x_{z<=t}, itself included, and is the representation that tasks use; the query stream g_i starts
from one learned vector w, sees x_{z<t} and its own position only, and predicts x_{z_t}. Both streams share every
weight. Only the last tokens of each order are predicted (partial prediction, §2.3): the objective, with its
masks, is `ctxlm.pretrain.permutation_lm`.

From Transformer-XL (§2.4) XLNet takes relative positional attention and segment recurrence: each layer attends
over [memory ‖ segment], the memory holding the content states of the previous segment. Distances run both ways
(the reference's attn_type "bi"). Segments are relative too (§2.5): attention adds a term that asks only whether
two tokens share a segment (`ctxlm.nn.attention.TwoStreamRelativeAttention`). Blocks are post-LN, LN(x + Attn),
then LN(x + FF) with a GELU feed-forward, as the reference's XLNetLayer; the LM head scores the top states against
the tied word embeddings, plus a bias.

Fine-tuning and embeddings read the content stream alone, with no order (every token sees every other): the
backbone's `forward`. The query stream runs only where positions to predict are given (`two_stream`). As in the
reference, a padded position still sees itself in the content stream, and the memory is visible to every query.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.config import XLNetConfig
from ctxlm.nn.attention import (
    RelativeKeys,
    TwoStreamRelativeAttention,
    bidirectional_relative_positions,
    keep_last,
)
from ctxlm.nn.blocks import MLP, AdaptableBlock, init_transformer_weights
from ctxlm.nn.losses import linear_cross_entropy
from ctxlm.nn.peft import build_peft, reset_peft_parameters
from ctxlm.outputs import Hidden, LMOutput


class XLNetEmbedding(nn.Module):
    """Word embeddings (positions are relative: no table) and w, the query stream's input at every position it
    predicts (the reference's mask_emb); both dropped out."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.dim)
        self.query = nn.Parameter(torch.zeros(config.dim))  # w
        self.dropout = nn.Dropout(config.dropout)


class QueryRows(NamedTuple):
    """What the query stream's rows read in every layer: their positions (batch, n), which keys each may see
    (batch, 1, n, k_len) and which keys share its segment (batch, n, k_len; None: one segment)."""

    positions: Tensor
    mask: Tensor
    same_segment: Tensor | None


class XLNetBlock(AdaptableBlock):
    """Two-stream relative attention, then the feed-forward network, each residual with LayerNorm (post-LN); both
    streams go through the same sub-layers, the query stream attending to the content stream's keys."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.attn = TwoStreamRelativeAttention(config.dim, config.n_heads, dropout=config.attn_dropout)
        self.attn_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config.dim, config.mlp_dim, config.activation)
        self.mlp_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: Tensor, g: Tensor | None, positions: Tensor, mask: Tensor | None, memory: Tensor | None,
                same_segment: Tensor | None, query: QueryRows | None = None) -> tuple[Tensor, Tensor | None]:
        q, keys = self.attn.project(h, memory, positions)  # the keys of this layer's input, for both streams
        h_out = self._sublayers(h, self.attn.attend(q, keys, mask, same_segment))
        if g is None or query is None:
            return h_out, None
        return h_out, self._query_stream(g, keys, query)

    def _query_stream(self, g: Tensor, keys: RelativeKeys, query: QueryRows) -> Tensor:
        attended = self.attn.attend(self.attn.queries(g), keys, query.mask, query.same_segment, query.positions)
        return self._sublayers(g, attended)

    def _sublayers(self, x: Tensor, attended: Tensor) -> Tensor:
        x = self.attn_norm(x + self._branch(attended, self.attn_adapter))
        return self.mlp_norm(x + self._branch(self._mlp(x), self.mlp_adapter))

    def _mlp(self, x: Tensor) -> Tensor:
        # The reference drops out the feed-forward's hidden activations as well as its output (in `_branch`).
        return self.mlp.proj(self.dropout(self.mlp.activation(self.mlp.fc(x))))


class XLNet(nn.Module):
    """The backbone: token ids (+ padding mask, segments, memory) → every layer's content states and the next
    segment's memory; with a permutation and positions to predict, the top query states as well."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = XLNetEmbedding(config)
        self.blocks = nn.ModuleList(XLNetBlock(config) for _ in range(config.n_layers))
        build_peft(self.blocks, config)  # adapters / LoRA, when the config has them

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, mem_len: int | None = None,
                n_blocks: int | None = None) -> Hidden:
        """The content stream with no order: every token sees every other (and the memory). `ids`, `segments`
        (batch, time); `mask` (batch, time), True for real tokens; `memory` the previous call's `Hidden.memory`
        (one (batch, past, dim) tensor per layer) or None; `mem_len` (default config.mem_len) positions kept for
        the next segment; `n_blocks`: run only the first n_blocks layers.

        states[0] is the word embedding, states[k] the output of block k; memory[k] = [old memory ‖ states[k]],
        its last mem_len positions, detached."""
        hidden, _ = self._run(ids, mask, segments, memory, mem_len, n_blocks, None, None)
        return hidden

    def two_stream(self, ids: Tensor, perm_mask: Tensor, predict_at: Tensor, *, mask: Tensor | None = None,
                   segments: Tensor | None = None, memory: list[Tensor] | None = None,
                   mem_len: int | None = None) -> tuple[Hidden, Tensor]:
        """Both streams under a factorisation order. `perm_mask` (batch, time, time), True where position i may
        NOT see token j (the reference's perm_mask): the content stream of i still sees itself, the query stream
        does not unless perm_mask allows it. `predict_at` (batch, n): the positions whose query states are
        computed. Returns the content stream (as `forward`) and the top query states (batch, n, dim)."""
        if perm_mask.shape != (*ids.shape, ids.shape[1]):
            raise ValueError(f"perm_mask has shape {tuple(perm_mask.shape)}, expected {(*ids.shape, ids.shape[1])}")
        if predict_at.dim() != 2 or predict_at.shape[0] != ids.shape[0]:
            raise ValueError(f"predict_at has shape {tuple(predict_at.shape)}, expected (batch, n)")
        if predict_at.numel() and not 0 <= int(predict_at.min()) <= int(predict_at.max()) < ids.shape[1]:
            raise ValueError(f"predict_at holds positions outside 0 to {ids.shape[1] - 1}")
        hidden, g = self._run(ids, mask, segments, memory, mem_len, None, perm_mask, predict_at)
        return hidden, g

    def _run(self, ids: Tensor, mask: Tensor | None, segments: Tensor | None, memory: list[Tensor] | None,
             mem_len: int | None, n_blocks: int | None, perm_mask: Tensor | None,
             predict_at: Tensor | None) -> tuple[Hidden, Tensor | None]:
        n_layers = len(self.blocks)
        if n_blocks is not None and not 0 <= n_blocks <= n_layers:
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {n_layers}")
        blocks = self.blocks if n_blocks is None else self.blocks[:n_blocks]
        if memory is not None and len(memory) < len(blocks):
            raise ValueError(f"memory holds {len(memory)} layers, {len(blocks)} needed")
        for name, t in (("mask", mask), ("segments", segments)):
            if t is not None and t.shape != ids.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, ids {tuple(ids.shape)}")
        mem_len = self.config.mem_len if mem_len is None else mem_len
        batch, time = ids.shape
        past = 0 if memory is None else memory[0].shape[1]

        sees = self._visibility(batch, time, past, mask, perm_mask, ids.device)
        content_mask = None
        if sees is not None:  # the content stream always sees itself: key past + i for query i
            keys = torch.arange(past + time, device=ids.device)
            itself = keys[None, :] == past + torch.arange(time, device=ids.device)[:, None]
            content_mask = (sees | itself)[:, None]
        same_segment = None
        if segments is not None:  # memory counts as segment 0, as in the reference
            key_segments = torch.cat([segments.new_zeros(batch, past), segments], dim=1)
            same_segment = segments[:, :, None] == key_segments[:, None, :]

        h = self.embed.dropout(self.embed.tokens(ids))
        positions = self.embed.dropout(bidirectional_relative_positions(
            time, past + time, self.config.dim, self.config.clamp_len, device=ids.device, dtype=h.dtype))
        g, query = None, None
        if predict_at is not None:
            rows = predict_at[:, :, None].expand(-1, -1, past + time)
            query = QueryRows(predict_at, sees.gather(1, rows)[:, None],
                              None if same_segment is None else same_segment.gather(1, rows))
            g = self.embed.dropout(self.embed.query.to(h.dtype).expand(batch, predict_at.shape[1], -1))

        states, new_memory = [h], []
        for i, block in enumerate(blocks):
            layer_memory = None if memory is None else memory[i]
            new_memory.append(keep_last(h, layer_memory, mem_len))
            h, g = block(h, g, positions, content_mask, layer_memory, same_segment, query)
            states.append(h)
        return Hidden(tuple(states), memory=new_memory), g

    @staticmethod
    def _visibility(batch: int, time: int, past: int, mask: Tensor | None, perm_mask: Tensor | None,
                    device: torch.device) -> Tensor | None:
        """(batch, time, past + time): True where position i may see key j — no padding, and allowed by the
        order; every memory key is visible. None when everything is."""
        if mask is None and perm_mask is None:
            return None
        sees = torch.ones(batch, time, time, dtype=torch.bool, device=device)
        if mask is not None:
            sees = sees & mask.bool()[:, None, :]
        if perm_mask is not None:
            sees = sees & ~perm_mask.bool()
        return torch.cat([sees.new_ones(batch, time, past), sees], dim=2)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings (word table, w), block 1, ..., block L]."""
        return [list(self.embed.parameters())] + [list(b.parameters()) for b in self.blocks]


class XLNetLanguageModel(nn.Module):
    """XLNet with its LM head: logits = states · E^T + b, E the (tied) word embeddings."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = XLNet(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.dropout = nn.Dropout(config.dropout)  # on the top states, before the head (the reference's)
        self.tokenizer = None  # set by ctxlm.load / the trainer; saved beside the weights
        init_transformer_weights(self, config.init_std, None)
        with torch.no_grad():
            self.backbone.embed.query.normal_(0.0, config.init_std)
        reset_peft_parameters(self)  # adapters and LoRA start at (or near) the identity

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, mem_len: int | None = None, perm_mask: Tensor | None = None,
                predict_at: Tensor | None = None, targets: Tensor | None = None) -> LMOutput:
        """With `perm_mask` and `predict_at` (see `XLNet.two_stream`): logits (batch, n, vocab) of the tokens at
        `predict_at`, from the query stream. Without them: logits (batch, time, vocab) of the content stream (the
        reference's output without a target mapping: each token scored from a state that has seen it). `targets`
        (like the logits' first two dimensions, -100 = not scored): the mean loss instead, logits None."""
        if (perm_mask is None) != (predict_at is None):
            raise ValueError("perm_mask and predict_at go together: the query stream needs both")
        if predict_at is None:
            hidden = self.backbone(ids, mask=mask, segments=segments, memory=memory, mem_len=mem_len)
            top = hidden.last
        else:
            hidden, top = self.backbone.two_stream(ids, perm_mask, predict_at, mask=mask, segments=segments,
                                                   memory=memory, mem_len=mem_len)
        top = self.dropout(top)
        weight = self.backbone.embed.tokens.weight
        if targets is not None:
            if targets.shape != top.shape[:-1]:
                raise ValueError(f"targets have shape {tuple(targets.shape)}, expected {tuple(top.shape[:-1])}")
            loss = linear_cross_entropy(top.reshape(-1, top.shape[-1]), weight, targets.reshape(-1), bias=self.bias)
            return LMOutput(logits=None, hidden=hidden, loss=loss)
        return LMOutput(logits=F.linear(top, weight, self.bias), hidden=hidden)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's groups; the head's bias joins the top group, whose states it reads."""
        groups = self.backbone.layer_groups()
        groups[-1].append(self.bias)
        return groups
