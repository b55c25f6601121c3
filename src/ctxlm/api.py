"""`ctxlm.load`: one entry point for native checkpoints, Hub-layout folders and published names."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ctxlm.checkpoint import is_checkpoint, load_checkpoint, resolve
from ctxlm.convert import HUB_MODELS, download, from_hub_folder, is_hub_layout, packaged_model_path
from ctxlm.convert.allennlp_elmo import ELMO_MODELS, from_allennlp_folder, is_allennlp_layout
from ctxlm.convert.allennlp_elmo import download as download_elmo
from ctxlm.errors import UserError


def load(name_or_path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A model in eval mode, with `.tokenizer` and `.config`.

    `name_or_path`: a ctxlm folder (config.json + model.safetensors) or a run folder holding one in
    `checkpoint/`, a folder in the Hugging Face layout or AllenNLP's ELMo folder (*options.json + *weights.hdf5)
    (converted on the fly), "minilm" (the packaged all-MiniLM-L6-v2, offline), or a published name such as
    "gpt2" or "elmo-original" (downloaded when online).
    """
    path = resolve(Path(name_or_path))  # while a save swaps folders (or one died doing so): the last good one
    if path.is_dir() and is_checkpoint(resolve(path / "checkpoint")):  # a training run folder: its latest checkpoint
        path = resolve(path / "checkpoint")
    if path.is_dir():
        if is_checkpoint(path) and not is_hub_layout(path):
            return load_checkpoint(path, device=device)
        if is_hub_layout(path):
            return from_hub_folder(path).to(device)
        if is_allennlp_layout(path):
            return from_allennlp_folder(path).to(device)
        raise UserError(f"{path}: not a model folder (expected config.json + model.safetensors, or ELMo's "
                        "*options.json + *weights.hdf5)")
    packaged = packaged_model_path(str(name_or_path))
    if packaged is not None:
        return from_hub_folder(packaged).to(device)
    if str(name_or_path) in HUB_MODELS:
        return from_hub_folder(download(str(name_or_path))).to(device)
    if str(name_or_path) in ELMO_MODELS:
        return from_allennlp_folder(download_elmo(str(name_or_path))).to(device)
    raise UserError(f"unknown model {str(name_or_path)!r}: not a folder, and not a published name "
                    f"(minilm, {', '.join([*HUB_MODELS, *ELMO_MODELS])})")
