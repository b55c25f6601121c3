import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import shared helpers from each other


def make_corpus(folder: Path, lines: int = 400) -> Path:
    """A small English-like corpus: enough structure for a model's loss to fall within a few dozen steps."""
    import random

    rng = random.Random(0)
    subjects = ["the cat", "a dog", "the old man", "my sister", "the river", "a small bird"]
    verbs = ["sees", "follows", "likes", "watches", "finds", "remembers"]
    objects = ["the house", "a red ball", "the tall tree", "the quiet town", "an open door"]
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(lines))
    (folder / "train.txt").write_text(text + "\n")
    (folder / "valid.txt").write_text("\n".join(text.splitlines()[:60]) + "\n")
    return folder


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_dir) -> Path:
    """A saved tiny GPT-2 with a trained tokenizer (untrained weights): for CLI and loading tests."""
    import torch

    import ctxlm
    from ctxlm.config import GPTConfig
    from ctxlm.models.gpt import GPTLanguageModel
    from ctxlm.tokenization import Tokenizer

    tokenizer = Tokenizer.train([corpus_dir / "train.txt"], kind="gpt2", vocab_size=300)
    torch.manual_seed(0)
    model = GPTLanguageModel(GPTConfig(vocab_size=tokenizer.vocab_size, max_positions=32, dim=32, n_layers=2,
                                       n_heads=2))
    model.tokenizer = tokenizer
    return ctxlm.save(model, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh $CTXLM_CACHE (tokenised corpora) for one test."""
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def metrics_records(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
