"""What tests share: tiny models of every family, the one way to call the CLI, corpora and data files.

Imported as `from helpers import ...` (tests/ is on sys.path: pytest puts each test file's folder there, and
tests/ddp_worker.py runs as a script from it). Heavy or optional imports (transformers, the tokenizers) happen
inside the functions that need them.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ctxlm.config import BertConfig, ElmoConfig, GPTConfig, ModelConfig, TransformerXLConfig
from ctxlm.models import build_model

# ------------------------------------------------------------------------------------------------- tiny models
FAMILIES = ("gpt", "gpt2", "bert", "elmo", "transformer-xl")
CONFIG_CLASSES: dict[str, type[ModelConfig]] = {"gpt": GPTConfig, "gpt2": GPTConfig, "bert": BertConfig,
                                                "elmo": ElmoConfig, "transformer-xl": TransformerXLConfig}
_TRANSFORMER = dict(vocab_size=64, max_positions=16, dim=32, n_layers=2, n_heads=2)
TINY_SHAPES: dict[str, dict] = {  # a few thousand parameters each; tests override what they need
    "gpt": _TRANSFORMER,
    "gpt2": _TRANSFORMER,
    "bert": _TRANSFORMER,
    "elmo": dict(vocab_size=1000, dim=16, cell_dim=32, n_layers=2, char_dim=8, filters=[[1, 8], [2, 8], [3, 16]],
                 n_highway=1, cell_clip=None, proj_clip=None, dropout=0.0),
    "transformer-xl": dict(vocab_size=100, dim=32, n_layers=2, n_heads=2, head_dim=16, mlp_dim=64, mem_len=16,
                           clamp_len=0, same_length=False, dropout=0.0, attn_dropout=0.0),
}
TOKENIZER_VOCAB = {"gpt": 300, "gpt2": 300, "bert": 200, "elmo": 100, "transformer-xl": None}


def tiny_config(family: str = "gpt2", **overrides) -> ModelConfig:
    """The config of a tiny `family` model (gpt, gpt2, bert, elmo, transformer-xl): `TINY_SHAPES[family]`, then
    `overrides`; every other field is the config class's default."""
    fields = {"model_type": family, **TINY_SHAPES[family], **overrides}
    return CONFIG_CLASSES[family](**fields)


def tiny_tokenizer(family: str, corpus: Path, vocab_size: int | None = None):
    """A tokenizer of `family`'s kind trained on `corpus`/train.txt: byte-level BPE (gpt2, 300), BPE (gpt, 300),
    WordPiece (bert, 200), ELMo's words (100) or Transformer-XL's words (all of them)."""
    files = [Path(corpus) / "train.txt"]
    vocab_size = TOKENIZER_VOCAB[family] if vocab_size is None else vocab_size
    if family == "elmo":
        from ctxlm.tokenizers import CharTokenizer

        return CharTokenizer.train(files, vocab_size=vocab_size)
    if family == "transformer-xl":
        from ctxlm.tokenizers import WordTokenizer

        return WordTokenizer.train(files, vocab_size)
    from ctxlm.tokenizers import Tokenizer

    return Tokenizer.train(files, kind=family, vocab_size=vocab_size)


def tiny(family: str = "gpt2", *, seed: int | None = 0, tokenizer=None, corpus: Path | None = None,
         save_to: Path | None = None, **overrides) -> nn.Module | Path:
    """A tiny `family` model, `tiny_config(family, **overrides)`, built right after `torch.manual_seed(seed)`
    (seed None: from the random state as it is), in training mode as built.

    tokenizer: attached to the model, and its vocabulary size is the config's (unless overridden); corpus: a
    folder holding train.txt, to train `tiny_tokenizer(family, corpus)` instead. save_to: save the model there
    (`ctxlm.save`) and return the folder instead of the model.
    """
    if tokenizer is None and corpus is not None:
        tokenizer = tiny_tokenizer(family, corpus)
    if tokenizer is not None:
        overrides = {"vocab_size": tokenizer.vocab_size, **overrides}
    config = tiny_config(family, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(config)
    if tokenizer is not None:
        model.tokenizer = tokenizer
    if save_to is None:
        return model
    import ctxlm

    return ctxlm.save(model, save_to)


TRAINING_GPT = dict(vocab_size=50, n_heads=4)  # `tiny("gpt2", **TRAINING_GPT)` reads `synthetic_batches()`


def synthetic_batches(seed: int = 0, vocab_size: int = 50):
    """Blocks of 16 token ids below `vocab_size`, 4 a batch, in which every other token is predictable (the
    previous one + 1): the loss has somewhere to go."""
    from ctxlm.pretrain.corpus import BlockBatches, TokenSpan

    rng = torch.Generator().manual_seed(123)
    ids = torch.randint(0, vocab_size, (4000,), generator=rng).numpy().astype("uint16")
    ids[1::2] = (ids[::2] + 1) % vocab_size
    return BlockBatches(TokenSpan(ids), block_size=16, batch_size=4, seed=seed)


class Interrupt(Exception):
    """Raised by `train_tiny`'s batches at `stop_at`: as if the process were killed."""


def dying_at(batches: type, index: int) -> type:
    """A subclass of the batch source `batches` whose `batch(index)` raises `Interrupt`: a process killed while
    it makes that batch (patch it in where a pretraining job builds its batches)."""

    class Killed(batches):
        def batch(self, i):
            if i == index:
                raise Interrupt
            return super().batch(i)

    return Killed


def train_tiny(run_dir: Path, *, stop_at: int | None = None, ctrl_c_at: int | None = None, resume: bool = False,
               steps: int = 12):
    """Train a tiny GPT-2 (vocabulary 50, 4 heads) on `synthetic_batches()` into `run_dir`, with checkpoints every
    4 steps, 2 micro-batches a step: (model, trainer). Micro-batch `stop_at` raises `Interrupt`; `ctrl_c_at` sends
    this process a SIGINT, as a Ctrl-C in the middle of a step."""
    import os
    import signal

    from ctxlm.pretrain.causal_lm import causal_lm_objective
    from ctxlm.train import TrainConfig, Trainer

    model = tiny("gpt2", **TRAINING_GPT)
    batches = synthetic_batches()

    def batch(i):
        if stop_at is not None and i == stop_at:
            raise Interrupt  # as if the process were killed while fetching this batch
        if ctrl_c_at is not None and i == ctrl_c_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C in the middle of a step
        return batches.batch(i)

    config = TrainConfig(steps=steps, lr=1e-2, warmup_steps=3, save_every=4, eval_every=100, log_every=1,
                         grad_accum=2)
    trainer = Trainer(model, causal_lm_objective, batch, config, run_dir)
    trainer.fit(resume=resume)
    return model, trainer


# -------------------------------------------------------------------------- GPT / GPT-2 against `transformers`
GPT_CONFIGS = [  # (family, layers, heads, head width, positions, vocab) — odd sizes on purpose
    ("gpt2", 2, 4, 16, 64, 101),
    ("gpt2", 3, 6, 16, 48, 257),
    ("gpt", 2, 4, 16, 64, 101),
    ("gpt", 3, 6, 16, 48, 257),
]


def gpt_fp32(family, n_layer, n_head, head_dim, n_positions, vocab) -> dict:
    """Float32 rounding of these models' outputs (tests/tolerances.py): sums of up to 4 x the width terms (the MLP's
    second product; a log-softmax sums `vocab`), through the embeddings, the blocks, the head and a loss."""
    return dict(terms=max(4 * n_head * head_dim, vocab), depth=n_layer + 3)


def gpt_reference_pair(family, n_layer, n_head, head_dim, n_positions, vocab):
    """A random-initialised `transformers` GPT-2 or GPT (eval mode) and its conversion to ctxlm."""
    import transformers

    from ctxlm.convert.hf_gpt import config_from_hf, state_dict_from_hf
    from ctxlm.models.gpt import GPTLanguageModel

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, n_positions=n_positions, n_embd=n_head * head_dim, n_layer=n_layer,
                  n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if family == "gpt2":
        ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**common))
    else:
        ref = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**common))
    ref.eval()
    with torch.no_grad():  # random LayerNorm parameters, so a swapped norm cannot pass by accident
        for name, p in ref.named_parameters():
            if "ln" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "wte" not in name and "wpe" not in name and "embed" not in name:
                # Conv1D (in, out) products of unit scale, not 0.02's: order-1 activations, so that a wrong GELU
                # form (erf for tanh) shows, at 1e-4
                p.normal_(0.0, p.shape[0] ** -0.5)
    config = config_from_hf(ref.config.to_dict())
    ours = GPTLanguageModel(config).eval()
    ours.load_state_dict(state_dict_from_hf(ref.state_dict(), config))
    return ref, ours


# ------------------------------------------------------------------------------------------------------ the CLI
class CliResult(NamedTuple):
    """`ctxlm`'s exit status, standard output and standard error; also under click.testing.Result's names."""

    code: int
    out: str
    err: str

    @property
    def exit_code(self) -> int:
        return self.code

    @property
    def output(self) -> str:
        return self.out + self.err


def run_cli(monkeypatch, capsys, *args) -> CliResult:
    """Run `ctxlm ARGS...` in this process, as the installed program does (`ctxlm.cli.main`: its exit statuses,
    its one-line errors), and return (exit status, stdout, stderr)."""
    import pytest

    from ctxlm.cli import main

    monkeypatch.setattr(sys, "argv", ["ctxlm", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return CliResult(exit_info.value.code, out.out, out.err)


def assert_user_error(result, *fragments):
    """`result` (of `run_cli`) is exit status 1 with one "error: ..." line, last, holding every fragment, and no
    traceback."""
    code, _, err = result
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # progress bars may precede it
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def metrics_records(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- corpora and files
def write_corpus(folder: Path, lines: int = 400) -> Path:
    """A small English-like corpus, train.txt and valid.txt (its first 60 lines): enough structure for a model's
    loss to fall within a few dozen steps."""
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "the old man", "my sister", "the river", "a small bird"]
    verbs = ["sees", "follows", "likes", "watches", "finds", "remembers"]
    objects = ["the house", "a red ball", "the tall tree", "the quiet town", "an open door"]
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(lines))
    (folder / "train.txt").write_text(text + "\n")
    (folder / "valid.txt").write_text("\n".join(text.splitlines()[:60]) + "\n")
    return folder


def write_documents(corpus: Path, folder: Path, sentences: int = 8) -> Path:
    """`corpus`/train.txt cut into documents of `sentences` lines (blank lines between), for BERT's next-sentence
    pairs: train.txt, and valid.txt of the first 6 documents, in the new `folder`."""
    lines = (corpus / "train.txt").read_text().splitlines()
    paragraphs = ["\n".join(lines[i:i + sentences]) for i in range(0, len(lines), sentences)]
    folder.mkdir()
    (folder / "train.txt").write_text("\n\n".join(paragraphs) + "\n")
    (folder / "valid.txt").write_text("\n\n".join(paragraphs[:6]) + "\n")
    return folder


def write_file(path: Path, text: str | bytes, *, bom: bool = False) -> Path:
    """Write `text` (UTF-8, after a byte order mark if `bom`) to `path`, gzipped if its name ends in .gz, making
    its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    data = ("\ufeff".encode() if bom else b"") + data
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# -- SQuAD-format data ---------------------------------------------------------------------------------------
def qa(qid, question, context, answer, start=None):
    start = context.index(answer) if start is None else start
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


SQUAD_ANIMALS = ["cat", "dog", "bird"]  # whole words in the test vocabulary
SQUAD_THINGS = ["house", "ball", "tree", "door", "town"]


def animal_articles(n_articles: int, per_article: int, seed: int = 0) -> list[dict]:
    """Which animal is in the passage? Learnable by a tiny BERT: the one animal word among things."""
    rng = random.Random(seed)
    articles = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(per_article):
            words = [f"the {rng.choice(SQUAD_THINGS)}" for _ in range(rng.randint(2, 6))]
            animal = rng.choice(SQUAD_ANIMALS)
            words.insert(rng.randrange(len(words) + 1), f"a {animal}")
            context = " sees ".join(words) + " ."
            paragraphs.append({"context": context, "qas": [qa(f"{a}-{p}", "which animal is here ?", context,
                                                              animal)]})
        articles.append({"title": f"article {a}", "paragraphs": paragraphs})
    return articles
