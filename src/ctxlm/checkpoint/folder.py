"""The model folder: config.json + model.safetensors + tokenizer files, written atomically (`atomic`) and read
after checking every tensor (`safetensors_checks`).

While a save is between its two renames (or was interrupted there) the folder is missing and its last good
checkpoint is `.NAME.old`: readers (`load_checkpoint`, `resolve`) fall back to it, the next save (or `recover`)
puts it back. A save killed midway leaves its temporary folder, which loading ignores.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ctxlm.checkpoint import atomic
from ctxlm.checkpoint.safetensors_checks import load_weights
from ctxlm.config import load_config
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.tokenizers import CharTokenizer, Tokenizer, WordTokenizer
from ctxlm.tokenizers.characters import WORDS_FILE
from ctxlm.tokenizers.words import CONFIG_FILE as WORD_CONFIG_FILE

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"  # ctxlm.train.STATE_FILE: a training checkpoint, resumable


# -- writing ----------------------------------------------------------------------------------------------------
def save(model: nn.Module, path: str | Path, *, extra: Callable[[Path], None] | None = None,
         state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model (and its tokenizer, if it has one) to the folder `path`, atomically.

    Files go to a temporary sibling folder first, flushed to disk, which then replaces `path` atomically: an
    interrupted save leaves the old checkpoint or the new one, never a mix. `extra(folder)` may add files
    (training state). `state`: the weights to write instead of `model.state_dict()`, e.g. a sharded model's
    gathered whole. A full disk raises a `UserError` that says the previous checkpoint is intact.
    `path` may be missing, an empty folder or a checkpoint: any other folder is refused, never replaced.
    """
    path = Path(path)
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)  # a save interrupted between its two renames left the last good checkpoint at .NAME.old
    _check_replaceable(target, path)

    def fill(folder: Path) -> None:
        model.config.save(folder / CONFIG_FILE)
        weights = model.state_dict() if state is None else state
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, folder / WEIGHTS_FILE,
                  metadata={"format": "pt", "model_type": model.config.model_type})
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save(folder)
        if extra is not None:
            extra(folder)

    atomic.write_folder(target, fill, disk_full=lambda code: _disk_full(code, target, path))
    return path


def _check_replaceable(target: Path, shown: Path) -> None:
    if not os.path.lexists(target):
        return
    if target.is_dir() and (is_checkpoint(target) or not any(target.iterdir())):
        return
    raise UserError(f"{shown}: exists and is not a ctxlm checkpoint (config.json + model.safetensors); refusing "
                    "to replace it: choose a new folder, or remove this one first")


def _disk_full(code: int, target: Path, shown: Path) -> UserError:
    what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    if is_checkpoint(target):
        resumable = (target / TRAINER_STATE_FILE).is_file()
        return UserError(f"{what} while writing checkpoint {shown}; the previous checkpoint at {shown} is intact; "
                         f"free space and {'resume with --resume' if resumable else 'save again'}")
    return UserError(f"{what} while writing checkpoint {shown}; nothing was written there; free space and try again")


def recover(path: str | Path) -> Path:
    """For the process that writes `path` (a save, a resuming trainer): when `path` is missing because a save
    was interrupted between its two renames, put the last good checkpoint, `.NAME.old`, back. Returns `path`."""
    return atomic.recover(path, is_checkpoint)


def resolve(path: str | Path) -> Path:
    """For readers: `path`, or the last good checkpoint `.NAME.old` while `path` is missing (a save between its
    two renames, under way or interrupted). Renames nothing, so that a save under way is not disturbed."""
    return atomic.resolve(path, is_checkpoint)


# -- reading ----------------------------------------------------------------------------------------------------
def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def is_resumable(path: str | Path) -> bool:
    """Whether `path` (or, while a save is between its two renames, `.NAME.old`) is a training checkpoint, one
    that `--resume` continues: a model folder with the trainer's state."""
    folder = resolve(path)
    return is_checkpoint(folder) and (folder / TRAINER_STATE_FILE).is_file()


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model that `path/config.json` describes and fill it from `path/model.safetensors`.

    While `path` is missing because a save is between its two renames (or was interrupted there), the last
    good checkpoint `.NAME.old` is read instead."""
    path = Path(path)
    folder = resolve(path)
    try:
        return _load_folder(folder, device)
    except (UserError, OSError):
        if folder != path and path.is_dir():  # the save under way finished meanwhile and removed .NAME.old
            return _load_folder(path, device)
        raise


def _load_folder(path: Path, device: str | torch.device) -> nn.Module:
    if not path.is_dir():
        raise UserError(f"{path}: no such model folder")
    config = load_config(path / CONFIG_FILE)
    model = build_model(config)
    load_weights(model, path / WEIGHTS_FILE)
    if has_tokenizer(path):
        model.tokenizer = load_tokenizer(path)
    return model.to(device).eval()


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "vocab.txt", "words.txt",
                                                    "word_tokenizer.json"))


def load_tokenizer(path: Path):
    """The tokenizer saved in a model folder: ELMo's word list, Transformer-XL's word vocabulary, or a Hugging
    Face `tokenizers` one."""
    if (path / WORDS_FILE).is_file():
        return CharTokenizer.from_files(path)
    if (path / WORD_CONFIG_FILE).is_file():
        return WordTokenizer.from_files(path)
    return Tokenizer.from_files(path)
