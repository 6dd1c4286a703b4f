# Plume developer commands. Every target creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
export PLUME_DATA ?= $(abspath $(DATA))

.PHONY: install demo test test-all lint bench bench-quick clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build on disk. A bare `torch` pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/plume sim --transport http --dataset mnist --model mlp --clients 40 --per-round 10 \
		--rounds 15 --topk 0.05 --bits 4 --local-epochs 2 --out runs/demo

# Two pytest-xdist workers, one per core, a test file each at a time (module fixtures stay in
# one process); TEST_WORKERS=0 runs the suite in this process, one test after another.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sdk coordinator compression mobile_sim protocol bench tests
	$(BIN)/mypy

# Every benchmark at the issues' settings (hours on 2 cores); results land in bench/results/
# and docs/benchmarks.md is regenerated from them. `make bench-quick` is a smoke run of each:
# a --quick run never writes a canonical results file unless --out names it; it writes
# bench/results/<name>_quick.json (marked "quick": true) beside <name>.json, and
# bench/summarize.py refuses a results file or section marked quick (bench/_common.py).
BENCHES := codec bandwidth_accuracy coordinator_ingest secagg robustness privacy onnx_train sim_throughput server_opt

bench: $(STAMP)
	for b in $(BENCHES); do $(BIN)/python bench/$$b.py || exit 1; done
	$(BIN)/python bench/summarize.py

bench-quick: $(STAMP)
	for b in $(BENCHES); do $(BIN)/python bench/$$b.py --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
