"""ALBERT (Lan et al. 2019): BERT with fewer parameters, by three changes (§3.1, §3.2).

- Factorised embeddings: tokens, positions and segments are embedded in E dimensions (`embedding_size`, 128 in
  every published size) and LayerNorm'ed there, then projected to the hidden width H by one linear map, so the
  vocabulary costs V x E + E x H parameters instead of V x H.
- Cross-layer parameter sharing: one post-LN transformer block (attention and feed-forward, GELU in its tanh
  form, the published "gelu_new") is applied L times. Every application still gives a hidden state, so a model
  of L layers returns L + 1 states (the projected embeddings, then each layer's output) like any other encoder,
  while its parameter count does not depend on L. The published models share everything (one group of one
  layer: `num_hidden_groups` = `inner_group_num` = 1), which is what this file builds.
- Sentence-order prediction (SOP) replaces next-sentence prediction: the pooled [CLS] state (tanh(W h + b))
  says whether two consecutive segments of one document are in their order (class 0) or swapped (class 1).

The masked-LM head maps each state from H down to E (dense → activation → LayerNorm) and scores it against the
E-wide token embeddings (tied), plus an output bias.

Layer groups (what fine-tuning strategies see): with one set of layer weights there are no per-layer groups, so
ALBERT has two, bottom to top: [embeddings + the E → H projection] and [the shared block + the pooler and the
pretraining heads] (the heads sit on the top group, as BERT's do: a group of heads alone would spend a
gradual-unfreezing stage thawing nothing the task reads). Gradual unfreezing therefore trains the task head, then
the shared block (every layer at once, since they are one), then the embeddings; discriminative rates give the
block lr / decay and the embeddings lr / decay². Adapters and LoRA are built into the one block and so shared by
every layer too, as its weights are: an adapted ALBERT adds the parameters of one layer's adapters, not L.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctxlm.config import AlbertConfig
from ctxlm.errors import UserError
from ctxlm.nn.attention import build_attention_mask
from ctxlm.nn.blocks import Embeddings, TransformerBlock, init_transformer_weights
from ctxlm.nn.heads import MaskedLMHead
from ctxlm.nn.peft import build_peft, reset_peft_parameters
from ctxlm.outputs import EncoderOutput, Hidden


class ALBERT(nn.Module):
    """The backbone: token ids (+ segments, padding mask) → every layer's hidden states, H wide."""

    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = Embeddings(config.vocab_size, config.embedding_size, config.max_positions,
                                n_segments=config.n_segments, norm_eps=config.layer_norm_eps, dropout=config.dropout)
        self.project = nn.Linear(config.embedding_size, config.dim)  # E → H, the factorisation
        self.block = TransformerBlock(
            config.dim, config.n_heads, config.mlp_dim, causal=False, pre_norm=False, dropout=config.dropout,
            attn_dropout=config.attn_dropout, norm_eps=config.layer_norm_eps, activation=config.activation,
        )
        build_peft([self.block], config)  # adapters / LoRA, shared by every layer as the block is

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, n_blocks: int | None = None) -> Hidden:
        """`ids`, `segments` (batch, time); `mask` (batch, time), True for real tokens. states[0] = the projected
        embeddings, states[k] = the shared block applied k times.

        `n_blocks`: apply the block only n_blocks times (n_blocks + 1 states), for readers of lower layers."""
        if memory is not None:
            raise ValueError("ALBERT takes no memory")
        n_layers = self.config.n_layers
        if n_blocks is not None and not 0 <= n_blocks <= n_layers:
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {n_layers}")
        batch, time = ids.shape
        if time > self.config.max_positions:
            raise UserError(f"input of {time} tokens is longer than the model's {self.config.max_positions} positions")
        positions = torch.arange(time, device=ids.device)[None]
        if segments is None:
            segments = torch.zeros_like(ids)
        attn_mask = build_attention_mask(time, time, causal=False, key_mask=mask)
        x = self.project(self.embed(ids, positions, segments))
        states = [x]
        for _ in range(n_layers if n_blocks is None else n_blocks):
            x = self.block(x, attn_mask)
            states.append(x)
        return Hidden(tuple(states))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings + projection, the shared block]: see the module docstring."""
        return [[*self.embed.parameters(), *self.project.parameters()], list(self.block.parameters())]


class AlbertModel(nn.Module):
    """The encoder with the pooler, masked-LM head and sentence-order head its config asks for."""

    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ALBERT(config)
        self.pooler = nn.Linear(config.dim, config.dim) if config.pooler else None
        self.mlm = (MaskedLMHead(config.dim, config.vocab_size, out_dim=config.embedding_size,
                                 norm_eps=config.layer_norm_eps, activation=config.activation)
                    if config.mlm_head else None)
        self.sop = nn.Linear(config.dim, 2) if config.nsp_head else None
        self.tokenizer = None
        init_transformer_weights(self, config.init_std, n_layers=None)
        reset_peft_parameters(self)  # adapters and LoRA start at (or near) the identity, not as pretrained weights

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                masked_positions: Tensor | None = None) -> EncoderOutput:
        """`masked_positions` (optional, boolean like `ids`): score the MLM head only there; `logits` is then
        (n_masked, vocab). `nsp_logits` holds the sentence-order logits (0: in order, 1: swapped)."""
        hidden = self.backbone(ids, mask=mask, segments=segments)
        top = hidden.last
        pooled = torch.tanh(self.pooler(top[:, 0])) if self.pooler is not None else None
        logits = None
        if self.mlm is not None:
            states = top[masked_positions] if masked_positions is not None else top
            logits = self.mlm(states, self.backbone.embed.tokens.weight)
        order_logits = self.sop(pooled) if self.sop is not None else None
        return EncoderOutput(hidden=hidden, pooled=pooled, logits=logits, nsp_logits=order_logits)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings + projection, shared block + pooler + heads]; the MLM decoder is the token embeddings."""
        groups = self.backbone.layer_groups()
        for head in (self.pooler, self.mlm, self.sop):
            if head is not None:
                groups[-1] += list(head.parameters())
        return groups
