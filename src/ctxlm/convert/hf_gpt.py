"""Hugging Face `openai-gpt` and `gpt2` checkpoints → ctxlm GPT models.

The Hub's GPT and GPT-2 checkpoints store every projection as a `Conv1D` whose weight is (in, out), the
transpose of `nn.Linear`; those are transposed here. Names map one to one; the LM head is tied to the token
embeddings in both, so `lm_head.weight` is dropped after checking it equals them.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ctxlm.config import GPTConfig
from ctxlm.errors import UserError

# ctxlm name ← HF name, per family; {i} is the block index.
_EMBEDDINGS = {
    "gpt2": {"embed.tokens.weight": "wte.weight", "embed.positions.weight": "wpe.weight"},
    "gpt": {"embed.tokens.weight": "tokens_embed.weight", "embed.positions.weight": "positions_embed.weight"},
}
_BLOCK = {  # both families: ln_1 wraps attention and ln_2 the MLP (before them in GPT-2, after in GPT)
    "attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj",
    "attn_norm": "ln_1", "mlp_norm": "ln_2",
}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def config_from_hf(hf: dict) -> GPTConfig:
    """ctxlm config from a Hub `config.json` of model_type `openai-gpt` or `gpt2`."""
    model_type = {"openai-gpt": "gpt", "gpt2": "gpt2"}.get(hf.get("model_type", ""))
    if model_type is None:
        raise UserError(f"expected a Hub config of model_type 'openai-gpt' or 'gpt2', got {hf.get('model_type')!r}")
    activation = hf.get("activation_function", hf.get("afn", "gelu_new"))
    if activation not in ("gelu_new", "gelu"):  # openai-gpt's "gelu" is the tanh approximation too
        raise UserError(f"activation {activation!r} is not supported (GPT and GPT-2 use the tanh GELU)")
    return GPTConfig(
        model_type=model_type, vocab_size=hf["vocab_size"], max_positions=hf["n_positions"], dim=hf["n_embd"],
        n_layers=hf["n_layer"], n_heads=hf["n_head"], mlp_dim=hf.get("n_inner"),
        dropout=hf.get("resid_pdrop", 0.1), attn_dropout=hf.get("attn_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), init_std=hf.get("initializer_range", 0.02),
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Rename (and transpose) a Hub GPT/GPT-2 state dict into a `GPTLanguageModel` state dict."""
    # Accept the LM-head layout ("transformer.h.0...") and the bare-model layout ("h.0...").
    hf_state = {re.sub(r"^transformer\.", "", k): v for k, v in hf_state.items()}
    names = {f"backbone.{ours}": theirs for ours, theirs in _EMBEDDINGS[config.model_type].items()}
    for i in range(config.n_layers):
        for ours, theirs in _BLOCK.items():
            for param in ("weight", "bias"):
                names[f"backbone.blocks.{i}.{ours}.{param}"] = f"h.{i}.{theirs}.{param}"
    if config.pre_norm:
        names |= {"backbone.final_norm.weight": "ln_f.weight", "backbone.final_norm.bias": "ln_f.bias"}

    missing = [theirs for theirs in names.values() if theirs not in hf_state]
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensor(s) that a {config.model_type} model needs, "
                        f"e.g. {missing[0]}")
    ours = {}
    for our_name, their_name in names.items():
        tensor = hf_state[their_name]
        if their_name.endswith(".weight") and their_name.removesuffix(".weight").endswith(_CONV1D):
            tensor = tensor.t()
        ours[our_name] = tensor.contiguous()
    head = hf_state.get("lm_head.weight")
    if head is not None and not torch.equal(head, ours["backbone.embed.tokens.weight"]):
        raise UserError("checkpoint's lm_head.weight differs from the token embeddings; ctxlm ties them")
    return ours
