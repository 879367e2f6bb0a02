# make install | test | test-slow | test-all | train | lint — each installs what it needs first (a .venv/ in the repo root).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.selfsup-installed

.PHONY: install test test-slow test-all train lint

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# The suite but the `slow` tests (about 9 minutes on 2 cores), in 2 pytest-xdist workers of one torch thread each; ends
# with the 20 slowest tests. PYTEST_WORKERS=0: in this process. CI runs it, then test-slow.
PYTEST_WORKERS ?= 2
PYTEST = OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=20
test: install
	$(PYTEST) -m "not slow"

# The `slow` tests (about 15 minutes): runs that train twice to compare (resume, preemption, DDP/FSDP/DeepSpeed, SLURM:
# its tests share one worker, one cluster), every recipe in gradient-cache chunks.
test-slow: install
	$(PYTEST) -m slow

# Both in one pytest run: what CI checks, without the pause between the two.
test-all: install
	$(PYTEST)

# The quickstart: SimCLR on scikit-learn's digits, CPU, offline; prints trained vs random-init kNN/RankMe.
train: install
	$(VENV)/bin/selfsup-train recipes=quickstart

lint: install
	$(VENV)/bin/ruff check ssl kernels tests bench
	$(VENV)/bin/ruff format --check ssl kernels tests bench
