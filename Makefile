# Two commands on a fresh machine: `make run` (the main job) and `make test`.
# torch is installed first, pinned, so that pip does not pull a multi-GB CUDA build; override with
#   make run TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
RUN_DIR ?= runs/$(shell date +%Y%m%d-%H%M%S)
ARGS ?=
# The data for `make run`: $CIFARKIT_DATA if set, else this workspace's shared copy when it is there, else the
# cache, else a download.
SHARED_DATA := $(wildcard ../shared/datasets/cifar10-png.tar.gz)

.PHONY: run test test-fast venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# The assignment with its defaults (24 epochs, peak at 5, batch 512, LRs from the range test) on $CIFARKIT_DATA,
# else the cached or downloaded official set, into runs/<timestamp>/.
run: export CIFARKIT_DATA ?= $(SHARED_DATA)
run: venv
	$(BIN)/cifarkit summary --batch-size 512
	$(BIN)/cifarkit train --out $(RUN_DIR) $(ARGS)

test: venv
	$(BIN)/python -m pytest tests

# The unit tests alone (no training runs, torchrun, kill -9 or notebook): for a quick check while editing.
test-fast: venv
	$(BIN)/python -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
