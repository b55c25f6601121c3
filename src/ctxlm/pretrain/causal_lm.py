"""Causal language-model pretraining (GPT, GPT-2): predict each token from the ones before it.

`pretrain_causal_lm` is the whole job behind `ctxlm pretrain --model gpt2`: train (or load) a tokenizer,
tokenise the corpus once into a memory-mapped cache, build the model, train, report validation perplexity.

Under torchrun each of N processes trains on its share of the global batch of N x batch_size rows: every row is
block_size tokens, so the mean loss over a process's rows, averaged over the processes, is the mean over the
global batch, and N processes train as one with N times the batch size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ctxlm import distributed
from ctxlm.config import GPTConfig
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.paths import cache_root
from ctxlm.pretrain.corpus import BlockBatches, TokenizedCorpus, TokenSpan
from ctxlm.textfiles import find_text_files
from ctxlm.tokenizers import Tokenizer
from ctxlm.tokenizers.published import NORMALISED_KINDS
from ctxlm.tokenizers.training import latin_script
from ctxlm.train import TrainConfig, Trainer


def causal_lm_objective(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean next-token cross-entropy over a batch of (inputs, inputs shifted left by one)."""
    device = next(model.parameters()).device
    x, y = (t.to(device) for t in batch)
    return model(x, targets=y).loss, {}


@dataclass
class LMData:
    """Where the text comes from: a train file or folder, and optionally a separate validation one."""

    train: Path
    valid: Path | None = None
    valid_fraction: float = 0.05  # used only without `valid`: the corpus's last 5 % of tokens

    @classmethod
    def resolve(cls, path: str | Path, valid: str | Path | None = None) -> LMData:
        """A folder with train.txt[.gz] and valid.txt[.gz] (as wikitext2) uses them as its splits."""
        path = Path(path)
        if valid is None and path.is_dir():
            splits = {name: [p for p in path.iterdir() if p.name in (f"{name}.txt", f"{name}.txt.gz")]
                      for name in ("train", "valid")}
            if splits["train"] and splits["valid"]:
                return cls(splits["train"][0], splits["valid"][0])
        return cls(path, Path(valid) if valid is not None else None)


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()[:16]


def run_tokenizer(data: LMData, run_dir: Path, model_config, *, given: Tokenizer | None, resume: bool,
                  lowercase: bool | None = None, strip_accents: bool | None = None) -> Tokenizer:
    """The run's tokenizer: the checkpoint's when resuming, else the one given, else one trained on the
    training text with the config's vocabulary size (the config then takes the tokenizer's exact size). Under
    torchrun rank 0 makes it and sends it to the others.

    A trained one lower-cases as `lowercase` says, or when None, exactly when the text is Latin-script
    (`latin_script`: English keeps the uncased default it always had, Russian stays cased); `strip_accents`
    (None: when lower-casing) as `Tokenizer.train`. Both are saved with it."""

    def make() -> Tokenizer:
        if resume and (run_dir / "checkpoint" / "tokenizer.json").is_file():
            return Tokenizer.from_files(run_dir / "checkpoint")
        if given is not None:
            return given
        files = find_text_files(data.train)
        kind, lower = model_config.tokenizer_kind or model_config.model_type, lowercase
        print(f"training a {model_config.vocab_size}-token {kind} tokenizer on {len(files)} file(s)")
        if lower is None and kind in NORMALISED_KINDS:
            lower = latin_script(files)
            print(f"{'Latin-script' if lower else 'not Latin-script'} text: a {'lower-cased' if lower else 'cased'} "
                  "tokenizer (--lowercase or --no-lowercase to choose)")
        return Tokenizer.train(files, kind=kind, vocab_size=model_config.vocab_size, lowercase=lower,
                               strip_accents=strip_accents)

    tokenizer = distributed.from_main(make)
    model_config.vocab_size = tokenizer.vocab_size
    return tokenizer


def tokenize(path: Path, tokenizer: Tokenizer) -> TokenizedCorpus:
    end = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    return TokenizedCorpus.build(path, tokenizer.encode_batch, tokenizer.vocab_size, cache_root() / "corpus",
                                 fingerprint=tokenizer_fingerprint(tokenizer), end_of_document=end)


def corpus_spans(data: LMData, tokenize_file: Callable[[Path], TokenizedCorpus]) -> tuple[TokenSpan, TokenSpan]:
    """Training and validation tokens: the validation file's when there is one, else the corpus's last
    `valid_fraction`. `tokenize_file` turns a file or folder into its cached token stream (under torchrun
    built by one process per machine, then read by the others)."""

    def spans() -> tuple[TokenSpan, TokenSpan]:
        corpus = tokenize_file(data.train)
        if data.valid is not None:
            return TokenSpan(corpus.ids), TokenSpan(tokenize_file(data.valid).ids)
        return corpus.split(data.valid_fraction)

    return distributed.main_first(spans)


def write_data_json(run_dir: Path, data: LMData, **settings) -> None:
    """run_dir/data.json: where the text came from and the batch shape (written by rank 0 under torchrun)."""
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data.json").write_text(json.dumps(
            {"train": str(data.train), "valid": str(data.valid) if data.valid else None, **settings},
            indent=2) + "\n")


def seeded_model(config, tokenizer, seed: int) -> nn.Module:
    """The family's model with the run's initial weights (part of its seed) and its tokenizer attached."""
    torch.manual_seed(seed)
    model = build_model(config)
    model.tokenizer = tokenizer
    return model


def starting_model(config, tokenizer, seed: int, init: nn.Module | None) -> nn.Module:
    """The model a run trains: `init` (a checkpoint's, see `ctxlm.pretrain.init.start_from`, whose config is
    `config`) with the run's tokenizer, or else the family's freshly initialised model."""
    if init is None:
        return seeded_model(config, tokenizer, seed)
    init.tokenizer = tokenizer
    return init.train()


def pretrain_causal_lm(data: LMData, run_dir: str | Path, model_config: GPTConfig, train: TrainConfig, *,
                       block_size: int = 256, batch_size: int = 16, tokenizer: Tokenizer | None = None,
                       resume: bool = False, eval_batches: int = 50, init: nn.Module | None = None,
                       casing: dict[str, bool | None] | None = None) -> nn.Module:
    """Pretrain a GPT / GPT-2 on raw text; the model (with its tokenizer) ends in run_dir/checkpoint.

    `init`: continue this model (a checkpoint's, with its tokenizer; `model_config` is its config) instead of
    a freshly initialised one. `casing`: "lowercase" and "strip_accents" of a tokenizer trained here
    (`run_tokenizer`)."""
    run_dir = Path(run_dir)
    if block_size > model_config.max_positions:
        raise UserError(f"block size {block_size} exceeds the model's {model_config.max_positions} positions")
    tokenizer = init.tokenizer if init is not None else run_tokenizer(data, run_dir, model_config, given=tokenizer,
                                                                       resume=resume, **(casing or {}))

    train_span, valid_span = corpus_spans(data, lambda path: tokenize(path, tokenizer))
    rows = batch_size * distributed.world_size()  # the global batch, of which each process takes its rows
    train_batches = BlockBatches(train_span, block_size, rows, seed=train.seed)
    valid_batches = BlockBatches(valid_span, block_size, rows, seed=train.seed)
    print(f"corpus: {len(train_span):,} training tokens, {len(valid_span):,} validation tokens "
          f"({len(train_batches):,} batches of {rows}x{block_size} per epoch)")

    model = starting_model(model_config, tokenizer, train.seed, init)
    print(f"model: {model_config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    write_data_json(run_dir, data, block_size=block_size, batch_size=batch_size)
    trainer = Trainer(model, causal_lm_objective, train_batches.batch, train, run_dir,
                      eval_batches=lambda: valid_batches.eval_batches(eval_batches),
                      tokens_per_batch=batch_size * block_size)
    trainer.fit(resume=resume)
    return model
