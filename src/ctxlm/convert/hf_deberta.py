"""Hugging Face DeBERTa v2/v3 checkpoints (DebertaV2Model, DebertaV2ForMaskedLM layouts) → ctxlm DebertaModel.

Query, key and value are separate Linear layers in the reference; ctxlm fuses them into one (3 * dim, dim)
projection, so they are concatenated here. The published v3 layout is what converts (relative attention, shared
position projections, a LayerNorm'ed position table, no absolute positions in the input, no segments, no
convolution); a config that departs from it is refused, naming the field.

The masked-LM head, when there is one, comes from either of DebertaV2ForMaskedLM's layouts (`lm_predictions` or
the legacy `cls.predictions`). That model has no enhanced mask decoder, so its conversion has `emd_layers` 0 and
computes what it computes; a checkpoint in the authors' layout that also holds the absolute position table
(`embeddings.position_embeddings`, which Hugging Face drops on load) converts with the paper's decoder (2 layers).

Tokenizer: published DeBERTa v3 ships a SentencePiece model (`spm.model`), which ctxlm does not read yet;
`published_tokenizer` reads a tokenizer.json through ctxlm's own loading where the folder has one, and refuses a
folder that has only the SentencePiece model, naming what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from ctxlm.config import DebertaConfig
from ctxlm.errors import UserError
from ctxlm.tokenizers import Tokenizer

_EMBEDDINGS = {
    "backbone.embed.tokens.weight": "embeddings.word_embeddings.weight",
    "backbone.embed.norm.weight": "embeddings.LayerNorm.weight",
    "backbone.embed.norm.bias": "embeddings.LayerNorm.bias",
    "backbone.relative.weight": "encoder.rel_embeddings.weight",
    "backbone.relative_norm.weight": "encoder.LayerNorm.weight",
    "backbone.relative_norm.bias": "encoder.LayerNorm.bias",
}
_BLOCK = {
    "attn.out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "mlp.fc": "intermediate.dense", "mlp.proj": "output.dense", "mlp_norm": "output.LayerNorm",
}
_MLM_HEADS = [  # DebertaV2ForMaskedLM with legacy=False, then legacy=True (the decoder is the tied embeddings)
    {"mlm.transform.weight": "lm_predictions.lm_head.dense.weight",
     "mlm.transform.bias": "lm_predictions.lm_head.dense.bias",
     "mlm.norm.weight": "lm_predictions.lm_head.LayerNorm.weight",
     "mlm.norm.bias": "lm_predictions.lm_head.LayerNorm.bias",
     "mlm.bias": "lm_predictions.lm_head.bias"},
    {"mlm.transform.weight": "cls.predictions.transform.dense.weight",
     "mlm.transform.bias": "cls.predictions.transform.dense.bias",
     "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
     "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
     "mlm.bias": "cls.predictions.bias"},
]
_POSITIONS = "embeddings.position_embeddings.weight"
EMD_LAYERS = 2  # the paper's n, with which the authors trained their masked LM


def normalise_names(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the `deberta.` prefix of the task layouts."""
    return {re.sub(r"^deberta\.", "", name): tensor for name, tensor in hf_state.items()}


def _mlm_names(state: dict[str, Tensor]) -> dict[str, str] | None:
    return next((names for names in _MLM_HEADS if all(theirs in state for theirs in names.values())), None)


def _position_terms(hf: dict) -> list[str]:
    terms = hf.get("pos_att_type") or []
    if isinstance(terms, str):
        terms = terms.lower().split("|")
    terms = [t.strip() for t in terms if t.strip()]
    unknown = sorted(set(terms) - {"c2p", "p2c"})
    if unknown:
        raise UserError(f"DeBERTa config: pos_att_type {unknown} is not supported (only c2p and p2c, as published)")
    return [t for t in ("c2p", "p2c") if t in terms]


def config_from_hf(hf: dict, hf_state: dict[str, Tensor]) -> DebertaConfig:
    hub_type = hf.get("model_type")
    if hub_type == "deberta":
        raise UserError("model_type 'deberta' is DeBERTa v1's layout (its own attention biases, absolute positions "
                        "in the input), which ctxlm does not convert; DeBERTa v2 and v3 (model_type 'deberta-v2') do")
    if hub_type != "deberta-v2":
        raise UserError(f"expected a Hub config of model_type 'deberta-v2', got {hub_type!r}")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    required = {  # field: (the published v3 value, what ctxlm computes)
        "relative_attention": (True, "relative attention"),
        "position_biased_input": (False, "no absolute positions in the input"),
        "share_att_key": (True, "position projections shared with the content query and key projections"),
        "type_vocab_size": (0, "no segment embeddings"),
        "conv_kernel_size": (0, "no convolution beside the first layer"),
        "hidden_act": ("gelu", "GELU (erf)"),
        "norm_rel_ebd": ("layer_norm", "a LayerNorm'ed position table"),
        "embedding_size": (dim, "token embeddings as wide as the model"),
        "attention_head_size": (dim // heads, "heads of hidden_size / num_attention_heads"),
    }
    defaults = {"relative_attention": False, "position_biased_input": True, "share_att_key": False,
                "type_vocab_size": 0, "conv_kernel_size": 0, "hidden_act": "gelu", "norm_rel_ebd": "none",
                "embedding_size": dim, "attention_head_size": dim // heads}  # DebertaV2Config's, where absent
    for field, (wanted, meaning) in required.items():
        value = hf.get(field, defaults[field])
        if isinstance(value, str):
            value = value.strip().lower()
        if value != wanted:
            raise UserError(f"DeBERTa config: {field} is {value!r}; ctxlm converts the published v3 layout only "
                            f"({field} {wanted!r}: {meaning})")
    state = normalise_names(hf_state)
    mlm = _mlm_names(state) is not None
    buckets, reach = hf.get("position_buckets", -1), hf.get("max_relative_positions", -1)
    return DebertaConfig(
        vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"], dim=dim,
        n_layers=hf["num_hidden_layers"], n_heads=heads, mlp_dim=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1), attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-7), init_std=hf.get("initializer_range", 0.02),
        position_buckets=max(buckets, 0), max_relative_positions=max(reach, 0), position_terms=_position_terms(hf),
        mlm_head=mlm, emd_layers=EMD_LAYERS if mlm and _POSITIONS in state else 0,
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: DebertaConfig) -> dict[str, Tensor]:
    state = normalise_names(hf_state)
    names = dict(_EMBEDDINGS)
    if config.mlm_head:
        names |= _mlm_names(state) or _MLM_HEADS[0]
    if config.emd_layers:
        names["emd.positions.weight"] = _POSITIONS
    for i in range(config.n_layers):
        for ours, theirs in _BLOCK.items():
            for param in ("weight", "bias"):
                names[f"backbone.blocks.{i}.{ours}.{param}"] = f"encoder.layer.{i}.{theirs}.{param}"
    fused = {f"backbone.blocks.{i}.attn.qkv.{param}": [f"encoder.layer.{i}.attention.self.{part}_proj.{param}"
                                                       for part in ("query", "key", "value")]
             for i in range(config.n_layers) for param in ("weight", "bias")}
    missing = [theirs for theirs in [*names.values(), *(n for parts in fused.values() for n in parts)]
               if theirs not in state]
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensor(s) that this DeBERTa needs, e.g. {missing[0]}")
    ours = {name: state[theirs] for name, theirs in names.items()}
    ours |= {name: torch.cat([state[part] for part in parts]) for name, parts in fused.items()}
    decoder = state.get("cls.predictions.decoder.weight")
    if config.mlm_head and decoder is not None and not torch.equal(decoder, ours["backbone.embed.tokens.weight"]):
        raise UserError("checkpoint's MLM decoder differs from the token embeddings; ctxlm ties them")
    return {name: tensor.contiguous() for name, tensor in ours.items()}


def published_tokenizer(path: Path) -> Tokenizer | None:
    """The folder's tokenizer.json (published DeBERTa v3's is SentencePiece: the "sentencepiece" kind); None when
    it has no tokenizer files at all. A folder with only SentencePiece's spm.model is refused, naming it."""
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_files(path)  # DeBERTa v3's is SentencePiece (Unigram): the "sentencepiece" kind
    if (path / "spm.model").is_file():
        raise UserError(f"{path}: has a SentencePiece model (spm.model) and no tokenizer.json; ctxlm reads "
                        "SentencePiece vocabularies from tokenizer.json (the sentencepiece package is not used): "
                        "add the tokenizer.json that transformers' DebertaV2TokenizerFast writes (save_pretrained), "
                        "or move spm.model aside to convert the weights alone")
    return None
