"""Hugging Face BERT checkpoints (BertModel, BertForPreTraining, BertForMaskedLM layouts) → ctxlm BertModel.

Query, key and value are separate Linear layers in the reference; ctxlm fuses them into one (3 * dim, dim)
projection, so they are concatenated here. Heads are optional: whichever of pooler / MLM / NSP tensors the
checkpoint has, the converted config keeps, and the rest are left out rather than randomly initialised.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ctxlm.config import BertConfig
from ctxlm.errors import UserError

_EMBEDDINGS = {
    "backbone.embed.tokens.weight": "embeddings.word_embeddings.weight",
    "backbone.embed.positions.weight": "embeddings.position_embeddings.weight",
    "backbone.embed.segments.weight": "embeddings.token_type_embeddings.weight",
    "backbone.embed.norm.weight": "embeddings.LayerNorm.weight",
    "backbone.embed.norm.bias": "embeddings.LayerNorm.bias",
}
_BLOCK = {
    "attn.out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "mlp.fc": "intermediate.dense", "mlp.proj": "output.dense", "mlp_norm": "output.LayerNorm",
}
_HEADS = {
    "pooler": {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"},
    "mlm_head": {
        "mlm.transform.weight": "cls.predictions.transform.dense.weight",
        "mlm.transform.bias": "cls.predictions.transform.dense.bias",
        "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm.bias": "cls.predictions.bias",
    },
    "nsp_head": {"nsp.weight": "cls.seq_relationship.weight", "nsp.bias": "cls.seq_relationship.bias"},
}


def normalise_names(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the `bert.` prefix of the pretraining layouts and TF-era `gamma`/`beta` LayerNorm names."""
    out = {}
    for name, tensor in hf_state.items():
        name = re.sub(r"^bert\.", "", name)
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        out[name] = tensor
    return out


def config_from_hf(hf: dict, hf_state: dict[str, Tensor]) -> BertConfig:
    if hf.get("model_type") != "bert":
        raise UserError(f"expected a Hub config of model_type 'bert', got {hf.get('model_type')!r}")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError("only BERT with GELU (erf) and absolute positions is supported")
    present = heads_present(normalise_names(hf_state))
    return BertConfig(
        vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"], n_segments=hf["type_vocab_size"],
        dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"], dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        init_std=hf.get("initializer_range", 0.02), pooler=present["pooler"], mlm_head=present["mlm_head"],
        nsp_head=present["nsp_head"] and present["pooler"],
    )


def heads_present(state: dict[str, Tensor]) -> dict[str, bool]:
    """Which of pooler, mlm_head, nsp_head a checkpoint (in BERT's names, `normalise_names`) holds whole."""
    return {head: all(theirs in state for theirs in names.values()) for head, names in _HEADS.items()}


def state_dict_from_hf(hf_state: dict[str, Tensor], config: BertConfig) -> dict[str, Tensor]:
    state = normalise_names(hf_state)
    names = dict(_EMBEDDINGS)
    for head in ("pooler", "mlm_head", "nsp_head"):
        if getattr(config, head):
            names |= _HEADS[head]
    for i in range(config.n_layers):
        for ours, theirs in _BLOCK.items():
            for param in ("weight", "bias"):
                names[f"backbone.blocks.{i}.{ours}.{param}"] = f"encoder.layer.{i}.{theirs}.{param}"
    missing = [theirs for theirs in names.values() if theirs not in state]
    for i in range(config.n_layers):
        for part in ("query", "key", "value"):
            for param in ("weight", "bias"):
                if f"encoder.layer.{i}.attention.self.{part}.{param}" not in state:
                    missing.append(f"encoder.layer.{i}.attention.self.{part}.{param}")
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensor(s) that this BERT needs, e.g. {missing[0]}")

    ours = {name: state[theirs] for name, theirs in names.items()}
    for i in range(config.n_layers):
        prefix = f"encoder.layer.{i}.attention.self"
        for param in ("weight", "bias"):
            ours[f"backbone.blocks.{i}.attn.qkv.{param}"] = torch.cat(
                [state[f"{prefix}.{part}.{param}"] for part in ("query", "key", "value")])
    decoder = state.get("cls.predictions.decoder.weight")
    if config.mlm_head and decoder is not None and not torch.equal(decoder, ours["backbone.embed.tokens.weight"]):
        raise UserError("checkpoint's MLM decoder differs from the token embeddings; ctxlm ties them")
    return {name: tensor.contiguous() for name, tensor in ours.items()}
