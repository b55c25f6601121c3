"""Hugging Face XLNet checkpoints (XLNetModel, XLNetLMHeadModel layouts) → ctxlm XLNetLanguageModel.

The reference keeps each attention projection as a (d_model, n_head, d_head) tensor read by einsum; ctxlm uses
linear layers: q, k and v become the rows of one fused (3 inner, d_model) projection (transposed), r the position
projection (transposed), and o the output projection (its (d_model, inner) layout is already nn.Linear's).
r_w_bias, r_r_bias, r_s_bias and seg_embed are the attention's content, position and segment biases and the two
segment vectors; mask_emb is w, the query stream's input. The LM head is tied to the word embeddings; its bias
comes from `lm_loss.bias`, or is zero for a checkpoint without the head (XLNetModel).

Only what fine-tuning and the published models use is read: bidirectional attention (attn_type "bi") without the
pretraining-time bi_data trick. The reference keeps every past state when mem_len is unset; ctxlm's mem_len 0
keeps none (memory matters for segment-by-segment reading, not for the tasks).

The published tokenizer is SentencePiece (spiece.model, template `A <sep> B <sep> <cls>`); a folder with a
`tokenizer.json` is read by ctxlm's tokenizer loading, one without it is refused by `published_tokenizer`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ctxlm.config import XLNetConfig
from ctxlm.errors import UserError
from ctxlm.tokenizers import Tokenizer

# ctxlm name (under backbone.blocks.{l}.) ← HF name (under layer.{l}.), tensors taken as they are
_BLOCK = {
    "attn.content_bias": "rel_attn.r_w_bias", "attn.position_bias": "rel_attn.r_r_bias",
    "attn.segment_bias": "rel_attn.r_s_bias", "attn.segment_embed": "rel_attn.seg_embed",
    "attn_norm.weight": "rel_attn.layer_norm.weight", "attn_norm.bias": "rel_attn.layer_norm.bias",
    "mlp.fc.weight": "ff.layer_1.weight", "mlp.fc.bias": "ff.layer_1.bias",
    "mlp.proj.weight": "ff.layer_2.weight", "mlp.proj.bias": "ff.layer_2.bias",
    "mlp_norm.weight": "ff.layer_norm.weight", "mlp_norm.bias": "ff.layer_norm.bias",
}
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}


def config_from_hf(hf: dict) -> XLNetConfig:
    """ctxlm config from a Hub `config.json` of model_type `xlnet` (missing keys take the Hub's defaults)."""
    if hf.get("model_type") != "xlnet":
        raise UserError(f"expected a Hub config of model_type 'xlnet', got {hf.get('model_type')!r}")
    if hf.get("attn_type", "bi") != "bi":
        raise UserError(f"attn_type {hf['attn_type']!r} is not supported: only bidirectional attention ('bi'), "
                        "as the published models")
    if hf.get("bi_data", False):
        raise UserError("bi_data true (a pretraining-time split of the batch) is not supported")
    activation = hf.get("ff_activation", "gelu")
    if activation not in _ACTIVATIONS:
        raise UserError(f"ff_activation {activation!r} is not supported: expected one of {', '.join(_ACTIVATIONS)}")
    dim, heads = hf.get("d_model", 1024), hf.get("n_head", 16)
    if hf.get("d_head", dim // heads) != dim // heads:
        raise UserError(f"d_head {hf['d_head']} is not d_model / n_head ({dim // heads})")
    dropout = hf.get("dropout", 0.1)
    return XLNetConfig(
        vocab_size=hf.get("vocab_size", 32000), dim=dim, n_layers=hf.get("n_layer", 24), n_heads=heads,
        mlp_dim=hf.get("d_inner", 4096), activation=_ACTIVATIONS[activation], dropout=dropout, attn_dropout=dropout,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), init_std=hf.get("initializer_range", 0.02),
        mem_len=hf.get("mem_len") or 0, clamp_len=hf.get("clamp_len", -1),
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: XLNetConfig) -> dict[str, Tensor]:
    state = {re.sub(r"^transformer\.", "", name): t for name, t in hf_state.items()}
    dim, inner = config.dim, config.dim  # heads are dim / n_heads wide
    names = {"backbone.embed.tokens.weight": "word_embedding.weight", "backbone.embed.query": "mask_emb"}
    projections = {}
    for i in range(config.n_layers):
        names |= {f"backbone.blocks.{i}.{ours}": f"layer.{i}.{theirs}" for ours, theirs in _BLOCK.items()}
        projections[i] = {p: f"layer.{i}.rel_attn.{p}" for p in "qkvor"}
    missing = [theirs for theirs in [*names.values(), *(n for p in projections.values() for n in p.values())]
               if theirs not in state]
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensor(s) that this XLNet needs, e.g. {missing[0]}")

    ours = {name: state[theirs] for name, theirs in names.items()}
    ours["backbone.embed.query"] = ours["backbone.embed.query"].reshape(dim)
    for i, p in projections.items():
        flat = {part: state[name].reshape(dim, inner) for part, name in p.items()}  # (d_model, heads * d_head)
        block = f"backbone.blocks.{i}.attn"
        ours[f"{block}.qkv.weight"] = torch.cat([flat["q"].T, flat["k"].T, flat["v"].T])
        ours[f"{block}.pos.weight"] = flat["r"].T
        ours[f"{block}.out.weight"] = flat["o"]
    embeddings = ours["backbone.embed.tokens.weight"]
    head = state.get("lm_loss.weight")
    if head is not None and not torch.equal(head, embeddings):
        raise UserError("checkpoint's LM head differs from the word embeddings; ctxlm ties them")
    ours["bias"] = state.get("lm_loss.bias", torch.zeros(config.vocab_size, dtype=embeddings.dtype))
    return {name: tensor.contiguous() for name, tensor in ours.items()}


def published_tokenizer(path: Path) -> Tokenizer:
    """The folder's tokenizer.json (SentencePiece: the "sentencepiece" kind, its `a <sep> b <sep> <cls>` layout
    from the file's template); refused, naming the file, without it (ctxlm reads SentencePiece vocabularies from
    tokenizer.json, not from spiece.model)."""
    if not (path / "tokenizer.json").is_file():
        found = ", ".join(sorted(p.name for p in path.glob("spiece.model"))) or "no tokenizer file"
        raise UserError(f"{path}: an XLNet checkpoint needs its tokenizer as tokenizer.json, which is missing "
                        f"(found: {found}); save the tokenizer with transformers' XLNetTokenizerFast into this "
                        "folder first")
    return Tokenizer.from_files(path)
