from pathlib import Path

import pytest

from helpers import tiny, write_corpus


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_dir) -> Path:
    """A saved tiny GPT-2 with a trained tokenizer (untrained weights): for CLI and loading tests."""
    return tiny("gpt2", corpus=corpus_dir, max_positions=32, save_to=tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh $CTXLM_CACHE (tokenised corpora) for one test."""
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
