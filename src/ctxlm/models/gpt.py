"""GPT (Radford et al., 2018) and GPT-2 (Radford et al., 2019): decoder-only transformers trained as causal LMs.

GPT: 12 post-LN blocks of masked self-attention (768 wide, 12 heads), learned positions over 512 tokens,
a 40,478-token BPE vocabulary, GELU, and an LM head tied to the token embeddings.
GPT-2: the same decoder with LayerNorm moved to the input of each sub-block, a final LayerNorm after the last
block, residual projections initialised at 1/sqrt(2 L), a 50,257-token byte-level BPE and 1,024 positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctxlm.config import GPTConfig
from ctxlm.errors import UserError
from ctxlm.nn.attention import KVCache, TransposedCopy, build_attention_mask
from ctxlm.nn.blocks import Embeddings, TransformerBlock, init_transformer_weights, positions_from_mask
from ctxlm.nn.losses import linear_cross_entropy
from ctxlm.nn.peft import build_peft, reset_peft_parameters
from ctxlm.outputs import Hidden, LMOutput


class GPT(nn.Module):
    """The backbone: token ids → every layer's hidden states."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = Embeddings(config.vocab_size, config.dim, config.max_positions, dropout=config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.dim, config.n_heads, config.mlp_dim, causal=True, pre_norm=config.pre_norm,
                dropout=config.dropout, attn_dropout=config.attn_dropout, norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.n_layers)
        )
        build_peft(self.blocks, config)  # adapters / LoRA, when the config has them
        self.final_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if config.pre_norm else None

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, segments: Tensor | None = None,
                memory: list[Tensor] | None = None, cache: KVCache | None = None,
                n_blocks: int | None = None) -> Hidden:
        """`ids` (batch, time); `mask` (batch, past + time), True for real tokens, covers cached positions too.

        With a `cache`, `ids` are the tokens after the cached ones. The top state of GPT-2 has the final
        LayerNorm applied (as in the reference implementation), the others are the residual stream.
        `n_blocks`: run only the first n_blocks blocks (n_blocks + 1 states), for readers of lower layers; the
        final LayerNorm belongs to the top, so it is applied only when every block runs.
        """
        if segments is not None or memory is not None:
            raise ValueError("GPT models take neither segment ids nor memory")
        if n_blocks is not None and not 0 <= n_blocks <= len(self.blocks):
            raise ValueError(f"n_blocks={n_blocks}: expected 0 to {len(self.blocks)}")
        if n_blocks is not None and cache is not None:
            raise ValueError("n_blocks cannot be combined with a cache: the skipped blocks' cache would lag")
        blocks = self.blocks if n_blocks is None else self.blocks[:n_blocks]
        batch, time = ids.shape
        past = cache.length if cache is not None else 0
        if past + time > self.config.max_positions:
            raise UserError(
                f"input of {past + time} tokens is longer than the model's context of "
                f"{self.config.max_positions} positions"
            )
        if mask is not None:
            positions = positions_from_mask(mask, time)
        else:
            positions = torch.arange(past, past + time, device=ids.device)[None]
        attn_mask = build_attention_mask(time, past + time, causal=True, key_mask=mask)

        x = self.embed(ids, positions)
        states = [x]
        for i, block in enumerate(blocks):
            x = block(x, attn_mask, cache, i)
            states.append(x)
        if self.final_norm is not None and len(blocks) == len(self.blocks):
            states[-1] = self.final_norm(x)
        if cache is not None:
            cache.advance(time)
        return Hidden(tuple(states))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[embeddings, block 1, ..., block L]; GPT-2's final LayerNorm belongs to the top block's group."""
        groups = [list(self.embed.parameters())] + [list(b.parameters()) for b in self.blocks]
        if self.final_norm is not None:
            groups[-1] += list(self.final_norm.parameters())
        return groups


class GPTLanguageModel(nn.Module):
    """GPT or GPT-2 with its language-model head, whose weights are the token embeddings (tied)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = GPT(config)
        self.tokenizer = None  # set by ctxlm.load / the trainer; saved beside the weights
        init_transformer_weights(self, config.init_std, config.n_layers)
        reset_peft_parameters(self)  # adapters and LoRA start at (or near) the identity, not as pretrained weights
        self.head_copy = TransposedCopy()  # the tied LM head, read transposed when decoding

    def forward(self, ids: Tensor, *, mask: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, targets: Tensor | None = None) -> LMOutput:
        """`last_only`: logits of the last position only, (batch, 1, vocab), all that generation reads; it
        spares the LM-head product over the rest of a prompt (the largest matrix of a small model).
        `targets` (batch, time; -100 = not scored): return the mean next-token loss instead of logits."""
        hidden = self.backbone(ids, mask=mask, cache=cache)
        if targets is not None:
            loss = linear_cross_entropy(hidden.last, self.backbone.embed.tokens.weight, targets)
            return LMOutput(logits=None, hidden=hidden, loss=loss)
        top = hidden.last[:, -1:] if last_only else hidden.last
        logits = self.head_copy.linear(top, self.backbone.embed.tokens.weight)  # (batch, time or 1, vocab)
        return LMOutput(logits=logits, hidden=hidden)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return self.backbone.layer_groups()

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """A KV cache for `batch` rows of up to `max_len` positions, in `dtype` (default the weights'; the autocast
        dtype when decoding runs under autocast, so that keys and values are not cast again at every step)."""
        c = self.config
        param = self.backbone.embed.tokens.weight
        return KVCache(c.n_layers, batch, c.n_heads, c.dim // c.n_heads, max_len or c.max_positions,
                       dtype=dtype or param.dtype, device=param.device)
