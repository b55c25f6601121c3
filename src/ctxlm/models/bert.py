"""BERT (Devlin et al., 2018): a bidirectional transformer encoder pretrained by masked LM + next-sentence prediction.

Input: WordPiece tokens `[CLS] A [SEP] B [SEP]`; each token's embedding is the sum of token, learned position and
segment (A = 0, B = 1) embeddings, LayerNorm'ed. L post-LN encoder blocks (GELU, erf form) attend in both
directions, with padding masked out. The pooler is tanh(W h_[CLS] + b); next-sentence prediction classifies it.
The masked-LM head transforms each state (dense → GELU → LayerNorm) and scores it against the token embeddings
(tied), plus an output bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctxlm.config import BertConfig
from ctxlm.errors import UserError
from ctxlm.nn.attention import build_attention_mask
from ctxlm.nn.blocks import Embeddings, TransformerBlock, init_transformer_weights
from ctxlm.nn.heads import MaskedLMHead
from ctxlm.nn.peft import build_peft, reset_peft_parameters
from ctxlm.outputs import EncoderOutput, Hidden


class BERT(nn.Module):
    """The backbone: token ids (+ segments, padding mask) → every layer's hidden states."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = Embeddings(config.vocab_size, config.dim, config.max_positions, n_segments=config.n_segments,
                                norm_eps=config.layer_norm_eps, dropout=config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.dim, config.n_heads, config.mlp_dim, causal=False, pre_norm=False, dropout=config.dropout,
                attn_dropout=config.attn_dropout, norm_eps=config.layer_norm_eps, activation="gelu",
            )
            for _ in range(config.n_layers)
        )
        build_peft(self.blocks, config)  # adapters / LoRA, when the config has them

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, n_blocks: int | None = None) -> Hidden:
        """`ids`, `segments` (batch, time); `mask` (batch, time), True for real tokens. states[0] = embeddings.

        `n_blocks`: run only the first n_blocks blocks (n_blocks + 1 states), for readers of lower layers."""
        if memory is not None:
            raise ValueError("BERT takes no memory")
        if n_blocks is not None and not 0 <= n_blocks <= len(self.blocks):
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {len(self.blocks)}")
        batch, time = ids.shape
        if time > self.config.max_positions:
            raise UserError(f"input of {time} tokens is longer than the model's {self.config.max_positions} positions")
        positions = self.positions(ids, mask)
        if segments is None:
            segments = torch.zeros_like(ids)
        attn_mask = build_attention_mask(time, time, causal=False, key_mask=mask)
        x = self.embed(ids, positions, segments)
        states = [x]
        for block in self.blocks if n_blocks is None else self.blocks[:n_blocks]:
            x = block(x, attn_mask)
            states.append(x)
        return Hidden(tuple(states))

    def positions(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        """Each token's position: its index from 0, padding or not (a family may count otherwise)."""
        return torch.arange(ids.shape[1], device=ids.device)[None]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.embed.parameters())] + [list(b.parameters()) for b in self.blocks]


class BertModel(nn.Module):
    """The encoder with the pooler and pretraining heads its config asks for."""

    backbone_class: type[BERT] = BERT  # a family that reuses these heads over its own backbone names it here

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = self.backbone_class(config)
        self.pooler = nn.Linear(config.dim, config.dim) if config.pooler else None
        self.mlm = (MaskedLMHead(config.dim, config.vocab_size, norm_eps=config.layer_norm_eps)
                    if config.mlm_head else None)
        self.nsp = nn.Linear(config.dim, 2) if config.nsp_head else None
        self.tokenizer = None
        init_transformer_weights(self, config.init_std, n_layers=None)
        reset_peft_parameters(self)  # adapters and LoRA start at (or near) the identity, not as pretrained weights

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                masked_positions: Tensor | None = None) -> EncoderOutput:
        """`masked_positions` (optional, boolean like `ids`): score the MLM head only there, which saves most of
        its cost in pretraining (15 % of positions); `logits` is then (n_masked, vocab)."""
        hidden = self.backbone(ids, mask=mask, segments=segments)
        top = hidden.last
        pooled = torch.tanh(self.pooler(top[:, 0])) if self.pooler is not None else None
        logits = None
        if self.mlm is not None:
            states = top[masked_positions] if masked_positions is not None else top
            logits = self.mlm(states, self.backbone.embed.tokens.weight)
        nsp_logits = self.nsp(pooled) if self.nsp is not None else None
        return EncoderOutput(hidden=hidden, pooled=pooled, logits=logits, nsp_logits=nsp_logits)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings, block 1, ..., block L]; the pooler and pretraining heads sit on the top block's group."""
        groups = self.backbone.layer_groups()
        for head in (self.pooler, self.mlm, self.nsp):
            if head is not None:
                groups[-1] += list(head.parameters())
        return groups
