# Two commands on a fresh machine: `make run` (the main job) and `make test`.
# torch is installed first and pinned. From PyPI on Linux, torch==2.13.0 is a CUDA build of several GB; a CPU-only
# machine takes PyTorch's CPU wheel index instead:
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
NOW := $(shell date +%Y%m%d-%H%M%S)
RUN_DIR ?= runs/$(NOW)
ARGS ?=
# The data for `make run`: $CIFARKIT_DATA if set, else the PNG archive at ../shared/datasets when it is there, else
# the cache, else a download (with no network and no data: one `error:` line saying what to pass).
SHARED_DATA := $(wildcard ../shared/datasets/cifar10-png.tar.gz)

.PHONY: run quick test test-fast venv clean

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
	@echo "report: $(RUN_DIR)/report.md (also report.html, plots/*.png; redraw with: $(BIN)/cifarkit report $(RUN_DIR))"

# A quick try of the whole pipeline on real CIFAR-10 (range test, 2 epochs, plots, report): minutes on a CPU.
QUICK := --subset 2000 --test-subset 1000 --epochs 2 --batch-size 128 --lr-find-iters 32
quick: export CIFARKIT_DATA ?= $(SHARED_DATA)
quick: venv
	$(BIN)/cifarkit train --out $(RUN_DIR) $(QUICK) $(ARGS)
	@echo "report: $(RUN_DIR)/report.md (also report.html, plots/*.png)"

# One pytest worker per core (-n auto); tests that share a port, a server or a browser run in one worker
# (--dist loadgroup, pytest.mark.xdist_group). PYTEST_ARGS adds options, e.g. PYTEST_ARGS="--cpu-flags avx2" to run
# under the precision policy of an AVX2-only CPU.
PYTEST_ARGS ?=
PYTEST := $(BIN)/python -m pytest tests -n auto --dist loadgroup

test: venv
	$(PYTEST) $(PYTEST_ARGS)

# The unit tests alone (no training, torchrun, kill -9, server, browser or notebook): a quick check while editing.
test-fast: venv
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
