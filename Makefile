# Two entry points (see README): `make run` installs and runs the main job, `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= wikitext2
RUN ?= runs/showcase

.PHONY: install run pretrain pretraining-pays ulmfit-imdb objectives russian notebook test test-isa test-bf16 \
	test-fp32 lint bench clean parity-xl

install: $(VENV)/.installed

# torch is pinned to the CPU wheel this machine carries; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Transfer showcase: the packaged MiniLM on 2,000 SST-2 sentences, feature extraction against full fine-tuning
# (about 3 minutes on 2 quiet CPU cores), then the fine-tuned model labels two new sentences.
run: install
	$(BIN)/ctxlm compare --task sst2 --train-size 2000 --model minilm --strategies features,full --seeds 0 \
		--out $(RUN)
	printf 'a gorgeous , witty , seductive movie .\nthe plot is nothing but boilerplate clichés .\n' \
		| $(BIN)/ctxlm predict $(RUN)/minilm/full/seed0

# A ~5M-parameter GPT-2 on WikiText-2: about 5 minutes on a 2-core laptop CPU, then perplexity and a sample.
pretrain: install
	$(BIN)/ctxlm pretrain --model gpt2 --data $(DATA) --out runs/gpt2-wikitext2 --layers 4 --dim 256 --heads 4 \
		--vocab-size 8192 --block-size 128 --batch-size 16 --steps 600 --warmup 60 --lr 2e-3 --max-minutes 8

# Does pretraining pay? Builds the models it compares (per family, GPT-2 and ELMo: a general model on WikiText-2 +
# Gutenberg; stage 2 on SST-2's unlabelled text, from it with one rate and with ULMFiT's rates, and from random
# weights; MiniLM + masked LM on the same text) into runs/pays, chooses each row's fine-tuning recipe on held-out
# training labels, then fine-tunes each on 100 to 3,000 SST-2 labels. PAYS_* shorten it (benchmarks/pretraining_pays.py).
PAYS_BUILD ?= --general-minutes 60 --stage2-minutes 15
PAYS_TABLE ?= --sizes 100,300,1000,3000 --seeds 0,1,2
pretraining-pays: install
	cd benchmarks && ../$(BIN)/python pretraining_pays.py build --out ../runs/pays $(PAYS_BUILD)
	cd benchmarks && ../$(BIN)/python pretraining_pays.py select --out ../runs/pays
	cd benchmarks && ../$(BIN)/python pretraining_pays.py table --out ../runs/pays $(PAYS_TABLE)

# The objectives after BERT at equal compute (benchmarks/objectives_compare.py): BERT, RoBERTa, ALBERT, DeBERTa and
# XLNet of one shape, each pretrained on WikiText-2 + Gutenberg for the same training tokens, then fine-tuned on the
# same 1,000 SST-2 labels (3 seeds), with BERT from random weights beside them: runs/objectives/objectives.md.
OBJECTIVES ?= --tokens 2500000
objectives: install
	cd benchmarks && ../$(BIN)/python objectives_compare.py --out ../runs/objectives $(OBJECTIVES)

# ULMFiT's IMDb experiment (Fig. 3) with ctxlm's own models (benchmarks/ulmfit_imdb.py --help): tokens/s of a few
# shapes (speed.md), the rows' models in runs/imdb (a GPT-2 from scratch, general on WikiText-2 + Gutenberg, general +
# stage 2 on IMDb's training and unlabelled reviews, the LM on those reviews alone, MiniLM + masked LM on them), a
# recipe per row and label count chosen on the imdb dev split (held-out training reviews), the table on 2,000 test
# reviews with TF-IDF + logistic regression beside it (imdb.md, imdb.png), the sentiment unit (neuron.md) and the
# transfer to SST-2 (sst2.md). Every step resumes and skips what is done. At the defaults it is days of CPU (README:
# "ULMFiT's IMDb experiment"); IMDB_* shorten it, e.g. IMDB_SIZES=100,1000 IMDB_BUILD='--general-minutes 20 ...'.
IMDB_OUT ?= runs/imdb
IMDB_SIZES ?= 100,300,1000,3000,10000
IMDB_SPEED ?= --shapes 4x256,6x384,8x512 --steps 30
IMDB_BUILD ?= --layers 4 --dim 256 --heads 4 --general-minutes 60 --imdb-minutes 60 --minilm-minutes 30
IMDB_SELECT ?= --min-steps 200
IMDB_TABLE ?= --seeds 0,1,2 --min-steps 200 --test-reviews 2000
IMDB_NEURON ?= --row general+imdb
IMDB_SST2 ?= --seeds 0,1,2
ulmfit-imdb: install
	cd benchmarks && ../$(BIN)/python ulmfit_imdb.py speed --out ../$(IMDB_OUT) $(IMDB_SPEED)
	cd benchmarks && ../$(BIN)/python ulmfit_imdb.py build --out ../$(IMDB_OUT) $(IMDB_BUILD)
	cd benchmarks && ../$(BIN)/python ulmfit_imdb.py select --out ../$(IMDB_OUT) --sizes $(IMDB_SIZES) $(IMDB_SELECT)
	cd benchmarks && ../$(BIN)/python ulmfit_imdb.py table --out ../$(IMDB_OUT) --sizes $(IMDB_SIZES) $(IMDB_TABLE)
	cd benchmarks && ../$(BIN)/python ulmfit_imdb.py neuron --out ../$(IMDB_OUT) $(IMDB_NEURON)
	cd benchmarks && ../$(BIN)/python ulmfit_imdb.py sst2 --out ../$(IMDB_OUT) $(IMDB_SST2)

# Russian, the lecture's language (README: "Russian"): own GPT-2, BERT and ELMo pretrained on RusLit into runs/ru
# (an hour each at the defaults), their perplexities against a unigram model (russian.md), the замок cosines and the
# sense probe per layer (runs/ru-senses), then CEDR's label-efficiency table (runs/cedr). Every step resumes and
# skips what is done; RU_* shorten it, e.g. RU_BUILD='--minutes 30' RU_CEDR_SIZES=300,1000.
RU_BUILD ?= --minutes 60
RU_CEDR_SELECT ?= --select-sizes 300,1000,3000
RU_CEDR_SIZES ?= 300,1000,3000,all
RU_SENSE_MODELS := minilm,bert=../runs/ru/bert/checkpoint,elmo=../runs/ru/elmo/checkpoint,gpt2=../runs/ru/gpt2/checkpoint
russian: install
	cd benchmarks && ../$(BIN)/python russian_models.py build --out ../runs/ru $(RU_BUILD)
	cd benchmarks && ../$(BIN)/python russian_models.py measure --out ../runs/ru
	cd benchmarks && ../$(BIN)/python russian_senses.py --models $(RU_SENSE_MODELS) --out ../runs/ru-senses
	cd benchmarks && ../$(BIN)/python cedr_labels.py select --out ../runs/cedr --models ../runs/ru $(RU_CEDR_SELECT)
	cd benchmarks && ../$(BIN)/python cedr_labels.py table --out ../runs/cedr --models ../runs/ru --sizes $(RU_CEDR_SIZES)

# The lecture as a notebook (notebooks/lecture.ipynb, README: "The lecture as a notebook"): executed top to bottom
# into runs/notebook/lecture.ipynb, with lecture.html beside it. NOTEBOOK_FAST=1 runs its CI mode (tiny models, a few
# minutes); the full mode builds its models into runs/notebook and reuses them on the next run.
# `.venv/bin/jupyter lab notebooks/lecture.ipynb` (jupyterlab installed separately) opens it to work in.
NOTEBOOK_FAST ?= 0
notebook: install
	mkdir -p runs/notebook
	CTXLM_NOTEBOOK_FAST=$(NOTEBOOK_FAST) $(BIN)/jupyter nbconvert --to notebook --execute notebooks/lecture.ipynb \
		--ExecutePreprocessor.timeout=-1 --output-dir runs/notebook
	$(BIN)/jupyter nbconvert --to html runs/notebook/lecture.ipynb

# ruff, the suite, then the numeric tests again on another instruction set's kernels (test-isa) and the default-path
# tests again in the precision the suite's own run did not use (test-bf16 or test-fp32), both below.
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-isa
	$(MAKE) --no-print-directory test-$$($(BIN)/python -c "$(PICK_OTHER_PRECISION)")

# The tests of the default precision path (pytest -m default_precision: --precision auto, bounds derived from the dtype
# it ran, tests/conftest.py) once more with the other precision forced, so that both paths are tested on every
# machine: bf16 (emulated) where auto picks fp32, as a CPU with AMX or AVX512-BF16 runs them; fp32 where auto picks
# bf16 (such a CPU's own run of the suite is the bf16 one). `make test-bf16` / `make test-fp32` run either by hand.
PICK_OTHER_PRECISION := import torch; from ctxlm.precision import bf16_units; \
	print('fp32' if bf16_units(torch.device('cpu'))[0] else 'bf16')
test-bf16 test-fp32: install
	@echo "default-path tests again, CTXLM_PRECISION=$(@:test-%=%)"
	CTXLM_PRECISION=$(@:test-%=%) $(BIN)/pytest -m "default_precision and not slow"

# The numeric checks (pytest -m numeric: parity with reference implementations and float64 references) once more,
# on PyTorch's kernels for another instruction set, as another machine runs them: AVX2 where this machine's best are
# AVX-512, else ATen's plain C++ ones. Their bounds are derived (tests/tolerances.py), not tuned to one CPU.
# `make test-isa ISA=avx2` (or default, avx512) picks the kernels. About 2 minutes on 2 cores.
PICK_ISA := import torch; print('avx2' if 'AVX512' in torch.backends.cpu.get_cpu_capability() else 'default')
ISA ?= $$($(BIN)/python -c "$(PICK_ISA)")

test-isa: install
	isa=$(ISA) && echo "numeric tests again, ATEN_CPU_CAPABILITY=$$isa" && \
	ATEN_CPU_CAPABILITY=$$isa $(BIN)/pytest -m "numeric and not slow"

bench: install
	$(BIN)/ctxlm bench

# Transformer-XL against the reference implementation, which only transformers 4.x ships (v5 removed TransfoXL):
# its own environment, outside the default suite (a few minutes to install, then under a minute).
XL_VENV ?= .venv-xl
parity-xl: $(XL_VENV)/.installed
	$(XL_VENV)/bin/pytest -p no:cacheprovider tests/parity/test_transfo_xl_parity.py

$(XL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(XL_VENV)
	$(XL_VENV)/bin/pip install --quiet torch==2.13.0
	$(XL_VENV)/bin/pip install --quiet numpy 'transformers>=4.45,<5' pytest -e .
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
