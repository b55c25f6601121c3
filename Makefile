# Two entry points (see README): `make run` installs and runs the main job, `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= wikitext2
RUN ?= runs/gpt2-wikitext2

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

# torch is pinned to the CPU wheel this machine carries; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# A ~5M-parameter GPT-2 on WikiText-2: about 5 minutes on a 2-core laptop CPU, then perplexity and a sample.
run: install
	$(BIN)/ctxlm pretrain --model gpt2 --data $(DATA) --out $(RUN) --layers 4 --dim 256 --heads 4 \
		--vocab-size 8192 --block-size 128 --batch-size 16 --steps 600 --warmup 60 --lr 2e-3 --max-minutes 8

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/gpt2_vs_transformers.py

clean:
	rm -rf $(VENV) runs .pytest_cache
