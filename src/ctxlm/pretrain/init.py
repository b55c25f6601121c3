"""Continued pretraining (ULMFiT's stage 2, task-adaptive pretraining): a run that starts from a checkpoint.

`start_from(init, ...)` loads the checkpoint with `ctxlm.load` (a run or model folder, a converted Hub folder,
"minilm", ...) and returns the model the run trains: the checkpoint's weights, config and tokenizer, with the
objective's heads that it lacks created. The family's objective follows from the loaded config as for a run
from scratch; the tokenizer and vocabulary are the checkpoint's (none is trained), and the sizes are its own, so
the options that would set them must be left out or agree with it.

A BERT checkpoint without its masked-LM head (sentence encoders such as the packaged MiniLM ship without one)
gets BERT's: dense → GELU → LayerNorm, scored against the input token embeddings (tied: the head owns no
decoder matrix) plus a bias, initialised as BERT initialises it. Next-sentence prediction is trained only when
the checkpoint has its head. An ELMo without a softmax (the published weights) cannot be continued: its word
list and softmax would have to be made first.

A resumed run (`resume`) starts from its own checkpoint, which holds everything (the head added, the training
state); the `init` folder is not read again. The run folder's init.json names the checkpoint it started from,
so that `--resume` alone resumes it as such.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctxlm.api import load
from ctxlm.checkpoint import is_checkpoint, resolve
from ctxlm.config import BertConfig, ModelConfig, TransformerConfig
from ctxlm.errors import UserError
from ctxlm.models import build_model

INIT_FILE = "init.json"
# option name → the config field it sets in a run from scratch
SIZE_FIELDS = {"vocab_size": "vocab_size", "layers": "n_layers", "dim": "dim", "heads": "n_heads",
               "cell_dim": "cell_dim"}


def start_from(init: str | Path, *, family: str | None, run_dir: Path, resume: bool, seed: int,
               block_size: int, options: dict[str, Any], dropout: float | None = None,
               mem_len: int | None = None) -> nn.Module:
    """The model a run continued from `init` trains, in training mode, its tokenizer attached.

    `family`: the --model given, or None; it must be the checkpoint's. `options`: the sizing options as given
    (None = left out): tokenizer, vocab_size, layers, dim, heads, cell_dim, clip, softmax, cutoffs (a list);
    each given one must agree with the checkpoint. `dropout` and `mem_len` (Transformer-XL's memory in training),
    when given, replace the checkpoint's; `block_size` must fit its positions. A head the objective needs and the
    checkpoint lacks is drawn from `seed`."""
    own = run_dir / "checkpoint"
    source = resolve(own) if resume and is_checkpoint(resolve(own)) else init
    loaded = load(source)
    config = loaded.config
    if family is not None and family != config.model_type:
        raise UserError(f"--init {init} is a {config.model_type} model, --model says {family}: leave --model out "
                        "to continue the checkpoint's family")
    tokenizer = getattr(loaded, "tokenizer", None)
    if tokenizer is None:
        raise UserError(f"--init {init}: the folder has no tokenizer, and a continued run keeps the checkpoint's")
    check_options(init, config, tokenizer, options)
    if block_size > config.max_positions:
        raise UserError(f"--block-size {block_size} exceeds the {config.max_positions} positions of --init {init}")
    if config.word_level and not config.causal and not config.vocab_size:
        raise UserError(f"--init {init}: this {config.model_type} has no softmax (vocab_size 0), so its "
                        "language-model objective cannot be continued")
    words = tokenizer.vocab_size
    if words > config.vocab_size or (config.word_level and words != config.vocab_size):
        raise UserError(f"--init {init}: its tokenizer has {words:,} tokens, its model a vocabulary of "
                        f"{config.vocab_size:,}")

    changes: dict[str, Any] = {}
    if isinstance(config, BertConfig) and not config.mlm_head:
        changes["mlm_head"] = True  # the masked-LM head BERT builds, tied to the token embeddings
    if dropout is not None and dropout != config.dropout:
        changes["dropout"] = dropout
        if isinstance(config, TransformerConfig):
            changes["attn_dropout"] = dropout  # as a run from scratch sets both
    if mem_len is not None and config.has_memory:
        changes["mem_len"] = mem_len
    model = rebuilt(loaded, dataclasses.replace(config, **changes), seed) if changes else loaded
    model.tokenizer = tokenizer
    added = ", with a new masked-LM head" if changes.get("mlm_head") else ""
    print(f"continuing from {source}: {config.model_type}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters{added}")
    return model.train()


def record_init(run_dir: Path, init: str | Path) -> None:
    """run_dir/init.json: the checkpoint the run started from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / INIT_FILE).write_text(json.dumps({"init": str(init)}) + "\n")


def recorded_init(run_dir: Path) -> str | None:
    """The checkpoint a run started from (its init.json), or None: a run from scratch."""
    path = run_dir / INIT_FILE
    return json.loads(path.read_text())["init"] if path.is_file() else None


def rebuilt(loaded: nn.Module, config: ModelConfig, seed: int) -> nn.Module:
    """The family's model built from `config` (drawn from `seed`), holding every weight of `loaded`; only the
    parameters of heads that `loaded` lacks keep their fresh initialisation."""
    torch.manual_seed(seed)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    fresh = {name for name, _ in model.named_parameters() if name.startswith("mlm.")}
    if unexpected or set(missing) - fresh:
        raise RuntimeError(f"rebuilding the checkpoint's model: missing {missing}, unexpected {unexpected}")
    return model


def check_options(init: str | Path, config: ModelConfig, tokenizer, options: dict[str, Any]) -> None:
    """A UserError naming the first given option that contradicts the checkpoint, and the checkpoint's value."""

    def refuse(option: str, given: Any, own: str) -> None:
        flag = f"--{option.replace('_', '-')}"
        shown = f"{flag} {given}" if given != "" else flag
        raise UserError(f"{shown} contradicts --init {init}, whose {own}: leave {flag} out to keep the "
                        "checkpoint's")

    if options.get("tokenizer") is not None:
        refuse("tokenizer", options["tokenizer"], f"tokenizer is its own ({tokenizer.vocab_size:,} tokens, "
               f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)})")
    for option, name in SIZE_FIELDS.items():
        given = options.get(option)
        if given is not None and hasattr(config, name) and given != getattr(config, name):
            refuse(option, given, f"{name} is {getattr(config, name)}")
    cutoffs = getattr(config, "adaptive_cutoffs", None)
    if cutoffs is None:
        return  # no softmax option applies (gpt, gpt2, bert)
    if options.get("clip") is not None and hasattr(config, "cell_clip"):
        clipped = config.cell_clip is not None or config.proj_clip is not None
        if options["clip"] != clipped:
            refuse("clip" if options["clip"] else "no-clip", "", f"LSTMs are {'' if clipped else 'not '}clipped")
    softmax = "adaptive" if cutoffs else "full"
    if options.get("softmax") is not None and options["softmax"] != softmax:
        refuse("softmax", options["softmax"], f"softmax is {softmax}")
    given = options.get("cutoffs")
    if given is not None and cutoffs and list(given) != list(cutoffs):
        refuse("cutoffs", ",".join(map(str, given)), f"cut-offs are {','.join(map(str, cutoffs))}")
