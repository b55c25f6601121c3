"""Hugging Face RoBERTa checkpoints (RobertaModel, RobertaForMaskedLM layouts) → ctxlm RobertaModel.

RoBERTa's tensors are BERT's under other names (`roberta.` for `bert.`, `lm_head.*` for `cls.predictions.*`), so
they are renamed and converted by `hf_bert`. One tensor differs in meaning: the reference numbers a real token's
position from `pad_token_id + 1` (rows 0 and 1 of the table are never read by a real token), ctxlm from 0, so the
table loses its first `pad_token_id + 1` rows here and `max_positions` counts the rest (514 → 512).
"""

from __future__ import annotations

import re

from torch import Tensor

from ctxlm.config import RobertaConfig
from ctxlm.convert import hf_bert
from ctxlm.errors import UserError

_RENAMES = [  # (reference pattern, BERT's name), applied in order
    (r"^roberta\.", ""),
    (r"^lm_head\.dense\.", "cls.predictions.transform.dense."),
    (r"^lm_head\.layer_norm\.", "cls.predictions.transform.LayerNorm."),
    (r"^lm_head\.decoder\.weight$", "cls.predictions.decoder.weight"),
    (r"^lm_head\.bias$", "cls.predictions.bias"),
]
_POSITIONS = "embeddings.position_embeddings.weight"


def bert_names(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint under BERT's tensor names (`lm_head.decoder.bias`, a tied copy of `lm_head.bias`, dropped)."""
    out = {}
    for name, tensor in hf_state.items():
        if name == "lm_head.decoder.bias":
            continue
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def config_from_hf(hf: dict, hf_state: dict[str, Tensor]) -> RobertaConfig:
    if hf.get("model_type") != "roberta":
        raise UserError(f"expected a Hub config of model_type 'roberta', got {hf.get('model_type')!r}")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError("only RoBERTa with GELU (erf) and absolute positions is supported")
    offset = hf.get("pad_token_id", 1) + 1
    if hf["max_position_embeddings"] <= offset:
        raise UserError(f"max_position_embeddings {hf['max_position_embeddings']} leaves no position after the "
                        f"{offset} rows before the first one (pad_token_id + 1)")
    present = hf_bert.heads_present(bert_names(hf_state))
    return RobertaConfig(
        vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"] - offset,
        n_segments=hf.get("type_vocab_size", 1), dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1), attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5), init_std=hf.get("initializer_range", 0.02),
        pooler=present["pooler"], mlm_head=present["mlm_head"], nsp_head=False,
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: RobertaConfig) -> dict[str, Tensor]:
    state = bert_names(hf_state)
    table = state.get(_POSITIONS)
    if table is None:
        raise UserError(f"checkpoint lacks {_POSITIONS}")
    offset = table.shape[0] - config.max_positions
    if offset < 0:
        raise UserError(f"{_POSITIONS} has {table.shape[0]} rows, fewer than the config's {config.max_positions} "
                        "positions")
    state[_POSITIONS] = table[offset:]  # ctxlm's position 0 is the reference's pad_token_id + 1
    return hf_bert.state_dict_from_hf(state, config)
