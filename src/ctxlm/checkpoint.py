"""The one checkpoint format: a folder with config.json + model.safetensors + tokenizer files.

safetensors holds tensors only, so loading a checkpoint never runs code. Every tensor's name and shape is
checked against the model the config describes before any weight is copied, and a mismatch names the tensor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ctxlm.config import load_config
from ctxlm.errors import UserError
from ctxlm.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(model: nn.Module, path: str | Path, *, extra: Callable[[Path], None] | None = None,
         state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model (and its tokenizer, if it has one) to the folder `path`, atomically.

    Files go to a temporary sibling folder first, which then replaces `path` by renames: an interrupted save
    leaves the old checkpoint or the new one, never a mix. `extra(folder)` may add files (training state).
    `state`: the weights to write instead of `model.state_dict()`, e.g. a sharded model's gathered whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.config.save(tmp / CONFIG_FILE)
        weights = model.state_dict() if state is None else state
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS_FILE,
                  metadata={"format": "pt", "model_type": model.config.model_type})
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save(tmp)
        if extra is not None:
            extra(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model that `path/config.json` describes and fill it from `path/model.safetensors`."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such model folder")
    config = load_config(path / CONFIG_FILE)
    model = build_model(config)
    weights = path / WEIGHTS_FILE
    load_weights(model, weights)
    if has_tokenizer(path):
        model.tokenizer = load_tokenizer(path)
    return model.to(device).eval()


def check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise `UserError` naming the first tensor that is missing, unexpected, or of the wrong shape."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in sorted(expected.keys() - shapes.keys()):
        raise UserError(f"{source}: tensor {name!r} is missing")
    for name in sorted(shapes.keys() - expected.keys()):
        raise UserError(f"{source}: unexpected tensor {name!r} for model_type {model.config.model_type!r}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(shapes[name])}, the config expects {shape}")


def load_weights(model: nn.Module, weights: Path) -> None:
    """Fill `model` from a safetensors file after checking every tensor's name and shape against it."""
    model.load_state_dict(read_weights(model, weights))


def read_weights(model: nn.Module, weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after checking every one's name and shape against `model` (from the
    file's header, before any tensor is read)."""
    if not weights.is_file():
        raise UserError(f"{weights}: missing (a model folder holds config.json + model.safetensors)")
    try:
        with safe_open(weights, framework="pt") as f:
            names = f.keys()  # safe_open is not iterable itself
            check_shapes(model, {name: tuple(f.get_slice(name).get_shape()) for name in names}, str(weights))
            state = {name: f.get_tensor(name) for name in names}
    except SafetensorError as err:
        raise UserError(f"{weights}: not a readable safetensors file, truncated or corrupt ({err})") from None
    return state


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "vocab.txt", "words.txt",
                                                    "word_tokenizer.json"))


def load_tokenizer(path: Path):
    """The tokenizer saved in a model folder: ELMo's word list, Transformer-XL's word vocabulary, or a Hugging
    Face `tokenizers` one."""
    from ctxlm.char_tokenizer import WORDS_FILE, CharTokenizer
    from ctxlm.tokenization import Tokenizer
    from ctxlm.word_tokenizer import CONFIG_FILE as WORD_CONFIG_FILE
    from ctxlm.word_tokenizer import WordTokenizer

    if (path / WORDS_FILE).is_file():
        return CharTokenizer.from_files(path)
    if (path / WORD_CONFIG_FILE).is_file():
        return WordTokenizer.from_files(path)
    return Tokenizer.from_files(path)
