# make install | test | train | lint — each installs what it needs first (a .venv/ in the repo root).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.selfsup-installed

.PHONY: install test test-fast train lint

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# The whole suite, slow/ddp tests included (what CI runs), in 2 pytest-xdist workers of one torch thread each (the
# SLURM tests share one worker: one cluster); ends with the 20 slowest tests. PYTEST_WORKERS=0: in this process.
PYTEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=20

# Skip the slow and multi-process tests while iterating.
test-fast: install
	$(PY) -m pytest -q -m "not slow and not ddp"

# The quickstart: SimCLR on scikit-learn's digits, CPU, offline; prints trained vs random-init kNN/RankMe.
train: install
	$(VENV)/bin/selfsup-train recipes=quickstart

lint: install
	$(VENV)/bin/ruff check ssl kernels tests bench
	$(VENV)/bin/ruff format --check ssl kernels tests bench
