"""Hugging Face ALBERT checkpoints (AlbertModel, AlbertForPreTraining, AlbertForMaskedLM layouts) → ctxlm AlbertModel.

The reference keeps its one shared layer under `encoder.albert_layer_groups.0.albert_layers.0`; ctxlm's is
`backbone.block`. Query, key and value are concatenated into ctxlm's fused projection. Only the published
sharing (one group of one layer) converts: a config with more hidden groups or inner layers is refused. The
tokenizer is the folder's tokenizer.json (a Unigram model: ctxlm's "sentencepiece" kind); the `sentencepiece`
package is not used, so a folder with only spiece.model is refused with the way to make tokenizer.json.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ctxlm.config import AlbertConfig
from ctxlm.errors import UserError

_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_EMBEDDINGS = {
    "backbone.embed.tokens.weight": "embeddings.word_embeddings.weight",
    "backbone.embed.positions.weight": "embeddings.position_embeddings.weight",
    "backbone.embed.segments.weight": "embeddings.token_type_embeddings.weight",
    "backbone.embed.norm.weight": "embeddings.LayerNorm.weight",
    "backbone.embed.norm.bias": "embeddings.LayerNorm.bias",
    "backbone.project.weight": "encoder.embedding_hidden_mapping_in.weight",
    "backbone.project.bias": "encoder.embedding_hidden_mapping_in.bias",
}
_LAYER = "encoder.albert_layer_groups.0.albert_layers.0"
_BLOCK = {"attn.out": "attention.dense", "attn_norm": "attention.LayerNorm", "mlp.fc": "ffn",
          "mlp.proj": "ffn_output", "mlp_norm": "full_layer_layer_norm"}
_HEADS = {
    "pooler": {"pooler.weight": "pooler.weight", "pooler.bias": "pooler.bias"},
    "mlm_head": {
        "mlm.transform.weight": "predictions.dense.weight", "mlm.transform.bias": "predictions.dense.bias",
        "mlm.norm.weight": "predictions.LayerNorm.weight", "mlm.norm.bias": "predictions.LayerNorm.bias",
        "mlm.bias": "predictions.bias",
    },
    "nsp_head": {"sop.weight": "sop_classifier.classifier.weight", "sop.bias": "sop_classifier.classifier.bias"},
}


def normalise_names(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the `albert.` prefix of the pretraining layouts."""
    return {re.sub(r"^albert\.", "", name): tensor for name, tensor in hf_state.items()}


def config_from_hf(hf: dict, hf_state: dict[str, Tensor]) -> AlbertConfig:
    if hf.get("model_type") != "albert":
        raise UserError(f"expected a Hub config of model_type 'albert', got {hf.get('model_type')!r}")
    groups, inner = hf.get("num_hidden_groups", 1), hf.get("inner_group_num", 1)
    if (groups, inner) != (1, 1):
        raise UserError(f"this ALBERT has num_hidden_groups={groups}, inner_group_num={inner}; ctxlm converts the "
                        "published sharing only (1 and 1: one layer's weights for every layer)")
    act = hf.get("hidden_act", "gelu_new")
    if act not in _ACTIVATIONS or hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"only ALBERT with {', '.join(_ACTIVATIONS)} and absolute positions is supported, "
                        f"got hidden_act {act!r}")
    state = normalise_names(hf_state)
    present = {head: all(theirs in state for theirs in names.values()) for head, names in _HEADS.items()}
    return AlbertConfig(
        vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"], n_segments=hf["type_vocab_size"],
        embedding_size=hf["embedding_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"], activation=_ACTIVATIONS[act],
        dropout=hf.get("hidden_dropout_prob", 0.0), attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), init_std=hf.get("initializer_range", 0.02),
        pooler=present["pooler"], mlm_head=present["mlm_head"], nsp_head=present["nsp_head"] and present["pooler"],
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: AlbertConfig) -> dict[str, Tensor]:
    state = normalise_names(hf_state)
    names = dict(_EMBEDDINGS)
    for head in ("pooler", "mlm_head", "nsp_head"):
        if getattr(config, head):
            names |= _HEADS[head]
    for ours, theirs in _BLOCK.items():
        for param in ("weight", "bias"):
            names[f"backbone.block.{ours}.{param}"] = f"{_LAYER}.{theirs}.{param}"
    qkv = {param: [f"{_LAYER}.attention.{part}.{param}" for part in ("query", "key", "value")]
           for param in ("weight", "bias")}
    missing = [theirs for theirs in [*names.values(), *qkv["weight"], *qkv["bias"]] if theirs not in state]
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensor(s) that this ALBERT needs, e.g. {missing[0]}")
    ours = {name: state[theirs] for name, theirs in names.items()}
    for param, parts in qkv.items():
        ours[f"backbone.block.attn.qkv.{param}"] = torch.cat([state[part] for part in parts])
    if config.mlm_head:  # ctxlm ties the decoder to the token embeddings and its bias to the head's
        decoder, bias = state.get("predictions.decoder.weight"), state.get("predictions.decoder.bias")
        if decoder is not None and not torch.equal(decoder, ours["backbone.embed.tokens.weight"]):
            raise UserError("checkpoint's MLM decoder differs from the token embeddings; ctxlm ties them")
        if bias is not None and not torch.equal(bias, ours["mlm.bias"]):
            raise UserError("checkpoint's MLM decoder bias differs from predictions.bias; ctxlm has one bias")
    return {name: tensor.contiguous() for name, tensor in ours.items()}
