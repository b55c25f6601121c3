"""DeBERTa (He et al., 2020): BERT's encoder with disentangled attention and an enhanced mask decoder.

The v2/v3 layout as published (deberta-v3-base: 12 layers 768 wide, 12 heads, 256 position buckets):

- Input: token embeddings alone, LayerNorm'ed, padding zeroed; no absolute positions, no segments (§3.1).
- L post-LN blocks as BERT's (GELU MLP), whose attention is disentangled (`ctxlm.nn.disentangled_attention`):
  content → content + content → position + position → content scores over log-bucketed relative distances,
  scaled by 1/sqrt(3d), with one table of relative-position embeddings (LayerNorm'ed) shared by every layer and
  projected by each layer's own query and key projections.
- Enhanced mask decoder (EMD, §3.2 and appendix A.4): absolute positions matter for some predictions ("a new
  *store* opened beside the new *mall*"), so they enter just before the masked-LM softmax. With H the states
  below the top layer and I = H + P (absolute position embeddings), the top layer runs `emd_layers` more times
  (n = 2, weights shared), its queries from I, then from its own last output, its keys and values from H; the
  masked-LM head (dense → GELU → LayerNorm → tied embeddings + bias, as BERT's) reads the result. H is the top
  layer's input, as the authors' code takes it (`EnhancedMaskDecoder.emd_context_layer`); the backbone's own
  states, which fine-tuning and features read, never see an absolute position.

Hugging Face's DebertaV2ForMaskedLM has no EMD (its head reads the top layer, and it drops the position table):
a checkpoint converted from it has `emd_layers` 0, which is that model.
"""

from __future__ import annotations

from torch import Tensor, nn

from ctxlm.config import DebertaConfig
from ctxlm.errors import UserError
from ctxlm.nn.attention import build_attention_mask
from ctxlm.nn.blocks import TransformerBlock, init_transformer_weights
from ctxlm.nn.disentangled_attention import DisentangledAttention, RelativePositions, relative_positions
from ctxlm.nn.heads import MaskedLMHead
from ctxlm.nn.peft import build_peft, reset_peft_parameters
from ctxlm.outputs import EncoderOutput, Hidden


class TokenEmbeddings(nn.Module):
    """Token embeddings, LayerNorm'ed, zero at padding, then dropout: DeBERTa's input has no positions."""

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.dim)
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        x = self.norm(self.tokens(ids))
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        return self.dropout(x)


class DeBERTa(nn.Module):
    """The backbone: token ids (+ padding mask) → every layer's hidden states."""

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = TokenEmbeddings(config)
        self.relative = nn.Embedding(2 * config.relative_span, config.dim)  # P: distances -k .. k - 1
        self.relative_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.dim, config.n_heads, config.mlp_dim, causal=False, pre_norm=False, dropout=config.dropout,
                norm_eps=config.layer_norm_eps, activation="gelu",
                attention=DisentangledAttention(config.dim, config.n_heads, dropout=config.attn_dropout,
                                                position_dropout=config.dropout,
                                                position_terms=config.position_terms),
            )
            for _ in range(config.n_layers)
        )
        build_peft(self.blocks, config)  # adapters / LoRA, when the config has them

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, n_blocks: int | None = None) -> Hidden:
        """`ids` (batch, time); `mask` (batch, time), True for real tokens. states[0] = embeddings. `segments` are
        accepted and ignored (DeBERTa v3 has no segment embeddings). `n_blocks`: run only the first n_blocks."""
        if memory is not None:
            raise ValueError("DeBERTa takes no memory")
        if n_blocks is not None and not 0 <= n_blocks <= len(self.blocks):
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {len(self.blocks)}")
        attn_mask, relative = self.attention_inputs(ids, mask)
        x = self.embed(ids, mask)
        states = [x]
        for block in self.blocks if n_blocks is None else self.blocks[:n_blocks]:
            x = block(x, attn_mask, relative=relative)
            states.append(x)
        return Hidden(tuple(states))

    def attention_inputs(self, ids: Tensor, mask: Tensor | None) -> tuple[Tensor | None, RelativePositions]:
        """What every block's attention reads besides its input: the padding mask and the relative positions."""
        time = ids.shape[1]
        if time > self.config.max_positions:
            raise UserError(f"input of {time} tokens is longer than the model's {self.config.max_positions} positions")
        table = self.relative_norm(self.relative.weight)
        relative = relative_positions(time, table, span=self.config.relative_span,
                                      buckets=self.config.position_buckets, max_positions=self.config.relative_reach)
        return build_attention_mask(time, time, causal=False, key_mask=mask), relative

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings and the shared relative-position table, block 1, ..., block L]."""
        shared = [*self.embed.parameters(), *self.relative.parameters(), *self.relative_norm.parameters()]
        return [shared] + [list(b.parameters()) for b in self.blocks]


class EnhancedMaskDecoder(nn.Module):
    """§3.2: the top layer again, `n` times, with absolute positions in its queries (see the module docstring).

    It owns only the absolute position table: the layer is the backbone's top block, passed in."""

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__()
        self.n = config.emd_layers
        self.positions = nn.Embedding(config.max_positions, config.dim)

    def forward(self, backbone: DeBERTa, hidden: Hidden, ids: Tensor, mask: Tensor | None) -> Tensor:
        below = hidden.states[-2]  # H: the top layer's input
        queries = below + self.positions.weight[:ids.shape[1]]  # I = H + P
        attn_mask, relative = backbone.attention_inputs(ids, mask)
        top = backbone.blocks[-1]
        for _ in range(self.n):
            queries = top(queries, attn_mask, relative=relative, context=below)
        return queries


class DebertaModel(nn.Module):
    """The encoder with its masked-LM head (behind the enhanced mask decoder), when the config has one."""

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = DeBERTa(config)
        self.emd = EnhancedMaskDecoder(config) if config.mlm_head and config.emd_layers else None
        self.mlm = (MaskedLMHead(config.dim, config.vocab_size, norm_eps=config.layer_norm_eps)
                    if config.mlm_head else None)
        self.tokenizer = None
        init_transformer_weights(self, config.init_std, n_layers=None)
        reset_peft_parameters(self)  # adapters and LoRA start at (or near) the identity, not as pretrained weights

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                masked_positions: Tensor | None = None) -> EncoderOutput:
        """`masked_positions` (optional, boolean like `ids`): score the MLM head only there; `logits` is then
        (n_masked, vocab). `segments` are ignored (no segment embeddings)."""
        hidden = self.backbone(ids, mask=mask)
        logits = None
        if self.mlm is not None:
            decoded = self.emd(self.backbone, hidden, ids, mask) if self.emd is not None else hidden.last
            states = decoded[masked_positions] if masked_positions is not None else decoded
            logits = self.mlm(states, self.backbone.embed.tokens.weight)
        return EncoderOutput(hidden=hidden, logits=logits)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings, block 1, ..., block L]; the decoder's position table and the head sit on the top
        block's group (the decoder reuses that block)."""
        groups = self.backbone.layer_groups()
        for head in (self.emd, self.mlm):
            if head is not None:
                groups[-1] += list(head.parameters())
        return groups
