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

# Three pytest-xdist workers on two cores, a test file each at a time (module fixtures stay in
# one process): much of the suite waits (servers, subprocesses, round deadlines), and two
# workers kept about 1.65 of the 2 cores busy; three kept 1.79 busy and ran the suite in 17:09
# against 18:55 for two (2-vCPU AMD EPYC, 2026-12-01). TEST_WORKERS=2 for one per core,
# TEST_WORKERS=0 runs the suite in this process, one test after another.
TEST_WORKERS ?= 3
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# Bytecode on for the suite even where the shell turns it off (PYTHONDONTWRITEBYTECODE=1):
# otherwise every interpreter the tests start (CLI runs, spawned pool workers, Ray workers)
# compiles the project's modules from source again, and a second `make test` in the same
# checkout rewrites every test module's asserts again (collection 33 s a worker, 16 s with
# the cache).
PYTEST = env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -p no:cacheprovider

test: $(STAMP)
	$(PYTEST) $(XDIST)

test-all: $(STAMP)
	$(PYTEST) $(XDIST) -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sdk coordinator compression mobile_sim protocol bench tests
	$(BIN)/mypy

# Every benchmark at the settings docs/benchmarks.md publishes (each script's defaults; hours on
# 2 cores); results land in bench/results/ and docs/benchmarks.md is regenerated from them. Each
# results file records the git commit it was written at (and whether the tree was dirty).
# `make bench-quick` is a smoke run of each:
# a --quick run never writes a canonical results file unless --out names it; it writes
# bench/results/<name>_quick.json (marked "quick": true) beside <name>.json, and
# bench/summarize.py refuses a results file or section marked quick (bench/_common.py).
BENCHES := codec bandwidth_accuracy coordinator_ingest secagg secagg_unmask robustness privacy onnx_train \
	device_round_rss device_footprint sim_throughput server_opt cli_startup partition json_checks

bench: $(STAMP)
	for b in $(BENCHES); do $(BIN)/python bench/$$b.py || exit 1; done
	$(BIN)/python bench/summarize.py

bench-quick: $(STAMP)
	for b in $(BENCHES); do $(BIN)/python bench/$$b.py --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
