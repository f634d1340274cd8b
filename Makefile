# bakeoff — `make bench` runs the quick suite, `make test` runs the test suite.
# Both create the virtual environment first, so they work on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUITE ?= quick
PYTEST_ARGS ?=
UI_PORT ?= 5000

.PHONY: install bench report ui test test-deep test-deps bench-check bench-baseline overhead cost cost-imports cost-instructions envs golden lint lock \
	clean help gpu-check gpu-dry-run gpu-wheels gpu-publish

help:
	@echo "make install   create $(VENV) and install bakeoff with every adapter library (idempotent)"
	@echo "make bench     run the $(SUITE) suite (SUITE=name to change), log it to MLflow, write and print the report"
	@echo "make report    rebuild the $(SUITE) suite's report from MLflow"
	@echo "make ui        MLflow UI on http://127.0.0.1:$(UI_PORT) over bakeoff's store (UI_PORT=n to change)"
	@echo "make test      run the test suite (CI runs this)"
	@echo "make bench-check  per-step micro-benchmarks of every adapter vs the committed baseline (exit 1 on regression)"
	@echo "make overhead  the harness's own instrumentation cost: native+probe vs a bare loop"
	@echo "make cost      paired in-process cost of every main adapter (wall + thread clocks, syncs, attribution, imports; <= 10 min)"
	@echo "make cost-instructions  the same cells under callgrind: instructions per step, two runs (9-24 min quiet on 2 cores, by CPU)"
	@echo "make envs      build the isolated environments the standard suite uses (Flash ~1-2 min, ~180 MB; Lightning 2.1.4 ~5 s)"
	@echo "make golden    regenerate the golden native trajectories (only when a change is meant to alter them)"
	@echo "make test-deep the slow tests and the deep hypothesis profile"
	@echo "make gpu-check on the GPU machine: the whole GPU check in one command (its python3, no .venv; files to \$$OUT)"
	@echo "make gpu-dry-run  the GPU check on this CPU at tiny sizes (CI runs it)"
	@echo "make gpu-wheels   download the wheels the GPU image lacks into .whl/ (carry .whl to the GPU machine)"
	@echo "make gpu-publish GPU_FILES=DIR  unpack the GPU machine's files, bakeoff ingest + report"
	@echo "make lint      ruff check"
	@echo "make lock      rewrite constraints/bench.txt from the current environment"
	@echo "make clean     remove generated state (results, caches); keeps $(VENV)"

install: $(STAMP)

# Reinstall only when the project's dependencies change. constraints/bench.txt pins the exact
# versions the published results used; pip still honours the machine's own torch cap.
$(STAMP): pyproject.toml constraints/bench.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/bench.txt -e '.[adapters,dev]'
	touch $(STAMP)

# bench logs every result to MLflow and ends by writing reports/out/<report-id>/ and printing its path.
bench: $(STAMP)
	$(BIN)/bakeoff bench --suite $(SUITE)

report: $(STAMP)
	$(BIN)/bakeoff report --suite $(SUITE)

# Prints, for each suite's experiment, the link that opens its run table with bakeoff's columns, then
# serves the UI on this machine only.
ui: $(STAMP)
	$(BIN)/bakeoff ui --port $(UI_PORT)

test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

# Debian packages the tests need: Chromium renders the report HTML; PostgreSQL backs the MLflow
# server of the scale-out test (tests/harness/test_scaleout_postgres.py starts and stops its own
# cluster; Debian puts initdb/pg_ctl under /usr/lib/postgresql/<version>/bin). One apt-get when
# something is missing, nothing when both are there.
test-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v valgrind >/dev/null 2>&1 || missing="$$missing valgrind"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then echo "installing Debian's$$missing for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

test-deep: $(STAMP) test-deps
	HYPOTHESIS_PROFILE=deep $(BIN)/python -m pytest -q -n 2 --run-slow $(PYTEST_ARGS)

# Benchmarks compare each adapter's per-step ratio to native measured in the same session, so a
# busier or slower machine of the same class does not read as a regression.
BENCH_BASELINE := benchmarks/baseline/cpu-2core.json
BENCH_THRESHOLD ?= 0.25
bench-check: $(STAMP)
	mkdir -p results/bench-check
	$(BIN)/python -m pytest -q -p no:xdist benchmarks --benchmark-only \
		--benchmark-json=results/bench-check/latest.json --benchmark-columns=median,iqr,rounds
	$(BIN)/python -m harness.benchgate $(BENCH_BASELINE) results/bench-check/latest.json \
		--threshold $(BENCH_THRESHOLD) --json results/bench-check/comparison.json

bench-baseline: $(STAMP)
	$(BIN)/python -m pytest -q -p no:xdist benchmarks --benchmark-only --benchmark-json=$(BENCH_BASELINE)

overhead: $(STAMP)
	$(BIN)/python -m harness.overhead --task scaling --width 64 --steps 300 --rounds 12

# Per-step cost, paired in one process per cell (harness/cost): the native loop and the adapter alternate
# round by round. COST_SUITE names the cells and the protocol; results go to results/<suite>/cost/.
COST_SUITE ?= benchmarks/suites/cost-paired.toml
COST_ARGS ?=
cost: $(STAMP)
	$(BIN)/bakeoff cost --suite-file $(COST_SUITE) --passes paired $(COST_ARGS)

# Does importing a library slow plain torch: clean vs library-imported processes, interleaved.
cost-imports: $(STAMP)
	$(BIN)/bakeoff cost --suite-file $(COST_SUITE) --passes imports $(COST_ARGS)

# Instructions per step under callgrind: deterministic, so it can run on a busy machine.
cost-instructions: $(STAMP) test-deps
	$(BIN)/bakeoff cost --suite-file $(COST_SUITE) --passes instructions $(COST_ARGS)

# Isolated adapter environments build on first use; this builds them ahead of time.
envs: $(STAMP)
	$(BIN)/python -m harness.envs build flash lightning@2.1.4

golden: $(STAMP)
	$(BIN)/python -m tests.golden.regenerate

# The GPU machine has its own python3 (torch, Lightning, transformers) and no .venv: the check
# installs what it lacks from .whl/ and writes its three files to $OUT (harness/gpucheck.py).
gpu-check:
	PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py

gpu-dry-run: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --device cpu

gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py fetch-wheels

GPU_FILES ?= results/gpu-check-out
gpu-publish: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py publish $(GPU_FILES)

lint: $(STAMP)
	$(BIN)/ruff check .

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e ' > constraints/bench.txt

clean:
	rm -rf results reports/out .hypothesis .benchmarks .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
