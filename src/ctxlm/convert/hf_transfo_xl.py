"""Hugging Face `transfo-xl` checkpoints (e.g. transfo-xl-wt103) → ctxlm Transformer-XL models.

The layout is the paper's PyTorch code: `transformer.word_emb.emb_layers.{i}` / `emb_projs.{i}` (adaptive
input), `transformer.layers.{l}.dec_attn.{qkv_net,r_net,o_net,layer_norm,r_w_bias,r_r_bias}` and
`pos_ff.{CoreNet.0,CoreNet.3,layer_norm}` per layer (the biases at `transformer.r_w_bias` when shared, untie_r
false), and the adaptive softmax `crit.{out_layers.{i},out_projs.{i},cluster_weight,cluster_bias}`, whose
output weights are the embedding tables and whose projections are the embedding's where `tie_projs` says so.
Those tied copies are checked equal and dropped; the per-cluster output biases become one vector.

The vocabulary is published as `vocab.pkl`, a pickle, which ctxlm never opens: loading a pickle can run any
code. Export it once to a `vocab.txt` (one word per line, in id order, the format
`TransfoXLTokenizer(vocab_file=...)` reads), in an environment where you trust the file, and put it beside the
weights:

    python -c "import pickle; v = pickle.load(open('vocab.pkl', 'rb')); \\
open('vocab.txt', 'w', encoding='utf-8').write(''.join(w + '\\n' for w in v['idx2sym']))"

The reference tokenizer also runs Moses punctuation splitting and writes "1 @,@ 000" for "1,000"; ctxlm's
`WordTokenizer` splits on whitespace only, so give it text tokenised as WikiText-103 is.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ctxlm.config import TransformerXLConfig
from ctxlm.errors import UserError
from ctxlm.models.transformer_xl import AdaptiveEmbedding, AdaptiveSoftmax, cluster_bounds
from ctxlm.tokenizers import WordTokenizer

# ctxlm name (under backbone.blocks.{l}.) ← HF name (under layers.{l}.)
_BLOCK = {
    "attn.qkv.weight": "dec_attn.qkv_net.weight", "attn.pos.weight": "dec_attn.r_net.weight",
    "attn.out.weight": "dec_attn.o_net.weight",
    "attn_norm.weight": "dec_attn.layer_norm.weight", "attn_norm.bias": "dec_attn.layer_norm.bias",
    "mlp.fc.weight": "pos_ff.CoreNet.0.weight", "mlp.fc.bias": "pos_ff.CoreNet.0.bias",
    "mlp.proj.weight": "pos_ff.CoreNet.3.weight", "mlp.proj.bias": "pos_ff.CoreNet.3.bias",
    "mlp_norm.weight": "pos_ff.layer_norm.weight", "mlp_norm.bias": "pos_ff.layer_norm.bias",
}
_BIASES = {"content_bias": "r_w_bias", "position_bias": "r_r_bias"}  # u, v


def config_from_hf(hf: dict) -> TransformerXLConfig:
    """ctxlm config from a Hub `config.json` of model_type `transfo-xl` (missing keys take the Hub's defaults)."""
    if hf.get("attn_type", 0) != 0:
        raise UserError(f"attn_type {hf['attn_type']} is not supported: only the relative attention of the paper (0)")
    if hf.get("sample_softmax", -1) > 0:
        raise UserError("sample_softmax is not supported: the published models use the full adaptive softmax")
    if not hf.get("tie_word_embeddings", hf.get("tie_weight", True)):
        raise UserError("tie_word_embeddings false is not supported: ctxlm ties the softmax to the embeddings")
    cutoffs = list(hf.get("cutoffs", [20000, 40000, 200000]))
    tie_projs = hf.get("tie_projs") or [False] + [bool(hf.get("proj_share_all_but_first", True))] * len(cutoffs)
    return TransformerXLConfig(
        vocab_size=hf.get("vocab_size", hf.get("n_token", 267735)), dim=hf.get("d_model", 1024),
        embed_dim=hf.get("d_embed", 1024), n_layers=hf.get("n_layer", 18), n_heads=hf.get("n_head", 16),
        head_dim=hf.get("d_head", 64), mlp_dim=hf.get("d_inner", 4096), mem_len=hf.get("mem_len", 1600),
        clamp_len=hf.get("clamp_len", 1000), same_length=hf.get("same_length", True),
        pre_norm=hf.get("pre_lnorm", False), untie_r=hf.get("untie_r", True), dropout=hf.get("dropout", 0.1),
        attn_dropout=hf.get("dropatt", 0.0), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        init_std=hf.get("init_std", 0.02), proj_init_std=hf.get("proj_init_std", 0.01),
        adaptive_cutoffs=cutoffs, div_val=hf.get("div_val", 4), tie_projs=[bool(t) for t in tie_projs],
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: TransformerXLConfig) -> dict[str, Tensor]:
    """Rename a Hub TransfoXLLMHeadModel state dict into a `TransformerXLLanguageModel` state dict."""
    hf_state = {re.sub(r"^transformer\.", "", k): v for k, v in hf_state.items()}
    if not any(k.startswith("crit.") for k in hf_state):
        raise UserError("checkpoint has no adaptive softmax (crit.*): a bare TransfoXLModel; ctxlm needs the LM "
                        "head model (TransfoXLLMHeadModel)")
    names: dict[str, str] = {}
    with torch.device("meta"):  # which tables and projections this config has, without allocating them
        embed, head = AdaptiveEmbedding(config), AdaptiveSoftmax(config)
    for i in range(len(embed.tables)):
        names[f"backbone.embed.tables.{i}.weight"] = f"word_emb.emb_layers.{i}.weight"
    for key in embed.projs:
        names[f"backbone.embed.projs.{key}"] = f"word_emb.emb_projs.{key}"
    for layer in range(config.n_layers):
        for ours, theirs in _BLOCK.items():
            names[f"backbone.blocks.{layer}.{ours}"] = f"layers.{layer}.{theirs}"
        if config.untie_r:
            for ours, theirs in _BIASES.items():
                names[f"backbone.blocks.{layer}.attn.{ours}"] = f"layers.{layer}.dec_attn.{theirs}"
    if not config.untie_r:  # one pair that every layer holds too: a save that dedups may keep any of the names
        for ours, theirs in _BIASES.items():
            holders = [theirs, *(f"layers.{layer}.dec_attn.{theirs}" for layer in range(config.n_layers))]
            names[f"backbone.{ours}"] = next((name for name in holders if name in hf_state), theirs)
    for key in head.projs:
        names[f"head.projs.{key}"] = f"crit.out_projs.{key}"
    if head.cluster_weight is not None:
        names |= {"head.cluster_weight": "crit.cluster_weight", "head.cluster_bias": "crit.cluster_bias"}
    n_out = len(cluster_bounds(config)) if config.div_val > 1 else 1
    biases = [f"crit.out_layers.{i}.bias" for i in range(n_out)]

    missing = [theirs for theirs in [*names.values(), *biases] if theirs not in hf_state]
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensor(s) that this transfo-xl config needs, "
                        f"e.g. {missing[0]}")
    ours = {our_name: hf_state[their_name].contiguous() for our_name, their_name in names.items()}
    ours["head.bias"] = torch.cat([hf_state[name] for name in biases])
    _check_tied(hf_state, ours, config, n_out)
    return ours


def _check_tied(hf_state: dict[str, Tensor], ours: dict[str, Tensor], config: TransformerXLConfig,
                n_out: int) -> None:
    """Tied copies that a checkpoint may store: they must equal what ctxlm keeps, since ctxlm keeps one copy."""
    tied = {f"crit.out_layers.{i}.weight": f"backbone.embed.tables.{i}.weight" for i in range(n_out)}
    for i, tie in enumerate(config.projection_ties):
        source = f"backbone.embed.projs.{i if config.div_val > 1 else 0}"
        if tie and source in ours:
            tied[f"crit.out_projs.{i}"] = source
    for theirs, our_name in tied.items():
        if theirs in hf_state and not torch.equal(hf_state[theirs], ours[our_name]):
            raise UserError(f"checkpoint's {theirs} differs from the tensor it is tied to ({our_name}); "
                            "ctxlm ties them")


def published_tokenizer(path: Path) -> WordTokenizer | None:
    """The vocabulary beside the weights: vocab.txt or vocab.json; None (with a warning) if only vocab.pkl."""
    for name in ("vocab.txt", "vocab.json"):
        if (path / name).is_file():
            return WordTokenizer.from_vocab_file(path / name)
    if (path / "vocab.pkl").is_file():
        warnings.warn(f"{path / 'vocab.pkl'} is a pickle, which ctxlm does not open (it could run code); the model "
                      "loads without a tokenizer. Export the vocabulary once to vocab.txt where you trust the file "
                      "(see ctxlm.convert.hf_transfo_xl)", stacklevel=2)
    return None
