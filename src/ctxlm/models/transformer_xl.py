"""Transformer-XL (Dai et al., 2019): a decoder that carries a memory of earlier segments.

Text is read one segment at a time. Each layer attends over [memory ‖ segment], where the memory holds that
layer's inputs for the previous `mem_len` positions, kept without gradient (§3.2), so context reaches
L × mem_len tokens back at the cost of one segment. Positions are relative: attention scores add a term on a
sinusoidal encoding of the query-key distance, with two learned global biases u and v (§3.3), so a memory
reused in a later segment needs no renumbering. The WikiText-103 model has 18 post-LN layers 1024 wide,
16 heads of 64, ReLU MLPs of 4096, an adaptive input embedding and an adaptive softmax sharing its tables
(Baevski & Auli, 2019; cutoffs 20k/40k/200k, each cluster 4 times narrower than the one before).

`ids` are word ids; memory None means empty (the paper's code; the Hugging Face port pads a first segment's
memory with mem_len zero vectors instead, which changes its first outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlm.config import TransformerXLConfig
from ctxlm.nn.attention import (
    RelativeMultiHeadAttention,
    keep_last,
    memory_attention_mask,
    sinusoidal_relative_positions,
)
from ctxlm.nn.blocks import MLP, init_transformer_weights
from ctxlm.nn.losses import linear_cross_entropy
from ctxlm.outputs import Hidden, LMOutput


def cluster_bounds(config: TransformerXLConfig) -> list[tuple[int, int]]:
    """[lo, hi) id range of each cluster of the adaptive embedding and softmax (one cluster: the whole vocabulary)."""
    edges = [0, *config.adaptive_cutoffs, config.vocab_size]
    return list(zip(edges[:-1], edges[1:], strict=True))


class AdaptiveEmbedding(nn.Module):
    """Token embeddings × sqrt(dim); with div_val > 1, cluster i is embed_dim / div_val**i wide, projected to dim.

    `tables[i]` embeds cluster i (a single table when div_val is 1); `projs[str(i)]` (dim, width) projects it,
    present for every cluster when div_val > 1, else only when embed_dim differs from dim. The softmax reuses both.
    """

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.bounds = cluster_bounds(config) if config.div_val > 1 else [(0, config.vocab_size)]
        widths = [config.embed_dim // config.div_val ** i for i in range(len(self.bounds))]
        self.tables = nn.ModuleList(nn.Embedding(hi - lo, w) for (lo, hi), w in zip(self.bounds, widths, strict=True))
        self.projs = nn.ParameterDict({
            str(i): nn.Parameter(torch.zeros(config.dim, w)) for i, w in enumerate(widths)
            if config.div_val > 1 or w != config.dim})
        self.dim = config.dim

    def forward(self, ids: Tensor) -> Tensor:
        if len(self.tables) == 1:
            x = self.tables[0](ids)
            x = F.linear(x, self.projs["0"]) if "0" in self.projs else x
        else:
            x = torch.zeros(*ids.shape, self.dim, dtype=self.projs["0"].dtype, device=ids.device)
            for i, (lo, hi) in enumerate(self.bounds):
                where = (ids >= lo) & (ids < hi)
                x[where] = F.linear(self.tables[i](ids[where] - lo), self.projs[str(i)]).to(x.dtype)
        return x * self.dim ** 0.5


class AdaptiveSoftmax(nn.Module):
    """The projected adaptive softmax of the paper's code, its weights tied to the `AdaptiveEmbedding`'s tables.

    Without cutoffs it is a full softmax (weights = the embedding table, plus a bias). With them, the head
    scores the first cluster's words and one logit per tail cluster; a tail word's log-probability is its
    cluster's head log-probability plus its log-probability within the cluster. Cluster i's hidden state is
    projected to its width by the embedding's projection (`projection_ties[i]`) or its own (`projs[str(i)]`).
    The tables are passed in at each call rather than held, so that they are saved once.
    """

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.bounds = cluster_bounds(config)
        self.div_val = config.div_val
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        n_tails = len(self.bounds) - 1
        self.cluster_weight = nn.Parameter(torch.zeros(n_tails, config.embed_dim)) if n_tails else None
        self.cluster_bias = nn.Parameter(torch.zeros(n_tails)) if n_tails else None
        projected = config.div_val > 1 or config.embed_dim != config.dim
        self.tied = [tie and projected for tie in config.projection_ties]
        self.projs = nn.ParameterDict({
            str(i): nn.Parameter(torch.zeros(config.dim, config.embed_dim // config.div_val ** i))
            for i in range(len(self.bounds)) if projected and not config.projection_ties[i]})

    def _cluster(self, embed: AdaptiveEmbedding, i: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Cluster i's output weight, bias and projection (None: none)."""
        lo, hi = self.bounds[i]
        weight = embed.tables[i].weight if self.div_val > 1 else embed.tables[0].weight[lo:hi]
        bias = self.bias[lo:hi]
        if i == 0 and self.cluster_weight is not None:
            weight = torch.cat([weight, self.cluster_weight])
            bias = torch.cat([bias, self.cluster_bias])
        proj = embed.projs[str(i if self.div_val > 1 else 0)] if self.tied[i] else self.projs.get(str(i))
        return weight, bias, proj

    @staticmethod
    def _project(hidden: Tensor, proj: Tensor | None) -> Tensor:
        return hidden if proj is None else hidden @ proj

    def log_probs(self, hidden: Tensor, embed: AdaptiveEmbedding) -> Tensor:
        """(..., dim) → (..., vocab): log-probabilities with clusters, plain logits without (same softmax)."""
        weight, bias, proj = self._cluster(embed, 0)
        head = F.linear(self._project(hidden, proj), weight, bias)
        if len(self.bounds) == 1:
            return head
        head = F.log_softmax(head, dim=-1)
        shortlist = self.bounds[0][1]
        out = [head[..., :shortlist]]
        for i in range(1, len(self.bounds)):
            weight, bias, proj = self._cluster(embed, i)
            tail = F.log_softmax(F.linear(self._project(hidden, proj), weight, bias), dim=-1)
            out.append(head[..., shortlist + i - 1, None] + tail)
        return torch.cat(out, dim=-1)

    def loss(self, hidden: Tensor, embed: AdaptiveEmbedding, targets: Tensor) -> Tensor:
        """Mean negative log-likelihood of `targets` (-100: not scored), without the full vocabulary's logits."""
        hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        weight, bias, proj = self._cluster(embed, 0)
        if len(self.bounds) == 1:
            return linear_cross_entropy(self._project(hidden, proj), weight, targets, bias=bias)
        scored = targets != -100
        hidden, targets = hidden[scored], targets[scored]
        head = F.log_softmax(F.linear(self._project(hidden, proj), weight, bias), dim=-1, dtype=torch.float32)
        shortlist = self.bounds[0][1]
        in_head = targets < shortlist
        log_prob = head.gather(1, torch.where(in_head, targets, 0)[:, None]).squeeze(1) * in_head
        for i in range(1, len(self.bounds)):  # only the rows whose target falls in cluster i
            lo, hi = self.bounds[i]
            rows = ((targets >= lo) & (targets < hi)).nonzero().squeeze(1)
            weight, bias, proj = self._cluster(embed, i)
            tail = F.log_softmax(F.linear(self._project(hidden[rows], proj), weight, bias), dim=-1, dtype=torch.float32)
            picked = tail.gather(1, (targets[rows] - lo)[:, None]).squeeze(1) + head[rows, shortlist + i - 1]
            log_prob = log_prob.index_add(0, rows, picked)
        return -log_prob.sum() / scored.sum().clamp(min=1)


class XLBlock(nn.Module):
    """Relative attention over [memory ‖ segment], then a ReLU MLP, each residual with LayerNorm (post-LN by
    default; pre-LN normalises each sub-layer's input, the memory included)."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = RelativeMultiHeadAttention(config.dim, config.n_heads, config.head_dim,
                                               dropout=config.attn_dropout, own_biases=config.untie_r)
        self.attn_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config.dim, config.mlp_dim, "relu")
        self.mlp_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor, memory: Tensor | None,
                biases: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.pre_norm:
            memory = None if memory is None else self.attn_norm(memory)
            x = x + self.dropout(self.attn(self.attn_norm(x), positions, mask, memory, biases))
            return x + self._mlp(self.mlp_norm(x))
        x = self.attn_norm(x + self.dropout(self.attn(x, positions, mask, memory, biases)))
        return self.mlp_norm(x + self._mlp(x))

    def _mlp(self, x: Tensor) -> Tensor:
        # The paper's code drops out the MLP's hidden activations as well as its output.
        return self.dropout(self.mlp.proj(self.dropout(self.mlp.activation(self.mlp.fc(x)))))


class TransformerXL(nn.Module):
    """The backbone: word ids (+ memory) → every layer's hidden states and the next segment's memory."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = AdaptiveEmbedding(config)
        self.blocks = nn.ModuleList(XLBlock(config) for _ in range(config.n_layers))
        shape = (config.n_heads, config.head_dim)
        self.content_bias = None if config.untie_r else nn.Parameter(torch.zeros(shape))  # u, shared by all layers
        self.position_bias = None if config.untie_r else nn.Parameter(torch.zeros(shape))  # v
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, mem_len: int | None = None,
                n_blocks: int | None = None) -> Hidden:
        """`ids` (batch, time); `mask` (batch, time), True for real tokens (padding is hidden from attention;
        right padding never reaches a real token anyway). `memory`: the previous call's `Hidden.memory`, one
        (batch, past, dim) tensor per layer, or None (empty). `mem_len` (default config.mem_len): positions of
        memory kept for the next segment, which also bounds attention under same_length. `segments` are
        accepted and ignored (Transformer-XL has none). `n_blocks`: run only the first n_blocks layers (their
        states, and their memory only).

        states[0] is the scaled embedding, states[k] the input of layer k + 1, states[-1] the top layer's
        output; memory[k] = [old memory ‖ states[k]], its last mem_len positions, detached.
        """
        n_layers = len(self.blocks)
        if n_blocks is not None and not 0 <= n_blocks <= n_layers:
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {n_layers}")
        blocks = self.blocks if n_blocks is None else self.blocks[:n_blocks]
        if memory is not None and len(memory) < len(blocks):
            raise ValueError(f"memory holds {len(memory)} layers, {len(blocks)} needed")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, ids {tuple(ids.shape)}")
        mem_len = self.config.mem_len if mem_len is None else mem_len
        batch, time = ids.shape
        past = 0 if memory is None else memory[0].shape[1]

        x = self.dropout(self.embed(ids))
        positions = self.dropout(sinusoidal_relative_positions(past + time, self.config.dim, self.config.clamp_len,
                                                               device=ids.device, dtype=x.dtype))
        key_mask = None if mask is None else torch.cat([mask.new_ones(batch, past), mask.bool()], dim=1)
        attn_mask = memory_attention_mask(time, past, mem_len=mem_len, same_length=self.config.same_length,
                                          key_mask=key_mask, device=ids.device)
        biases = None if self.config.untie_r else (self.content_bias, self.position_bias)
        states, new_memory = [x], []
        for i, block in enumerate(blocks):
            layer_memory = None if memory is None else memory[i]
            new_memory.append(keep_last(x, layer_memory, mem_len))
            x = block(x, positions, attn_mask, layer_memory, biases)
            states.append(x)
        return Hidden(tuple(states), memory=new_memory)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings (tables, projections, shared position biases), block 1, ..., block L]."""
        shared = [p for p in (self.content_bias, self.position_bias) if p is not None]
        return [[*self.embed.parameters(), *shared]] + [list(b.parameters()) for b in self.blocks]


class TransformerXLLanguageModel(nn.Module):
    """Transformer-XL with its (adaptive) softmax, tied to the (adaptive) embeddings."""

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = TransformerXL(config)
        self.head = AdaptiveSoftmax(config)
        self.dropout = nn.Dropout(config.dropout)  # on the top state, before the softmax (the paper's code)
        self.tokenizer = None  # set by ctxlm.load / the trainer; saved beside the weights
        init_transformer_weights(self, config.init_std, None)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if ".projs." in name:
                    p.normal_(0.0, config.proj_init_std)

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, memory: list[Tensor] | None = None,
                mem_len: int | None = None, targets: Tensor | None = None, last_only: bool = False) -> LMOutput:
        """Next-word logits (batch, time, vocab), log-probabilities when the softmax is adaptive; `hidden.memory`
        is the memory for the next segment. `targets` (batch, time; targets[t] follows ids[t], -100 = not
        scored): the mean loss instead, logits None. `last_only`: logits of the last position only."""
        hidden = self.backbone(ids, mask=mask, memory=memory, mem_len=mem_len)
        top = self.dropout(hidden.last)
        if targets is not None:
            return LMOutput(logits=None, hidden=hidden, loss=self.head.loss(top, self.backbone.embed, targets))
        if last_only:
            top = top[:, -1:]
        return LMOutput(logits=self.head.log_probs(top, self.backbone.embed), hidden=hidden)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's groups; the softmax's own parameters (bias, cluster logits, untied projections) join
        the top group, whose states they read."""
        groups = self.backbone.layer_groups()
        groups[-1] += list(self.head.parameters())
        return groups
