# One command to run the service, one to run the tests; both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned, so resolving the project never pulls a different (CUDA) build.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# The suite spreads over the machine's cores (up to 4; each worker gets its own PostgreSQL
# database, Celery queues and temporary homes). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
PARALLEL := -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal
PRESET ?= smoke
STAMP := $(VENV)/.installed

.PHONY: install serve worker test test-fast bench estimate lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml plugins/lethe-example-arch/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	# The client (client/, its own distribution), the service, which uses it for its CLI, and
	# the example architecture plugin (plugins/lethe-example-arch: the `conv1d` architecture).
	$(BIN)/python -m pip install --quiet -e client -e ".[dev]" -e plugins/lethe-example-arch
	touch $(STAMP)

serve: install  ## the API with an in-process worker (SQLite + local blobs under .lethe/)
	$(BIN)/lethe serve --host $(HOST) --port $(PORT)

worker: install  ## a Celery worker (needs LETHE_BROKER_URL and LETHE_DATABASE_URL)
	$(BIN)/lethe worker

test: install  ## lint, then the whole suite (PostgreSQL/Redis tests skip if those are absent)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: install  ## the suite without the slow end-to-end tests
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)

# A preset with a committed set of original models (benchmarks/PRESET/originals) starts from it.
ORIGINALS = $(wildcard benchmarks/$(PRESET)/originals)

bench: install  ## e.g. make bench PRESET=cpu (results in bench-out/PRESET)
	$(BIN)/lethe bench --preset $(PRESET) --out bench-out/$(PRESET) $(if $(ORIGINALS),--originals $(ORIGINALS))

estimate: install  ## without a GPU: e.g. make estimate PRESET=gpu-quick (an estimate, not a measurement)
	$(BIN)/python -m worker.bench.estimate --preset $(PRESET) --time-data --out benchmarks/$(PRESET)/ESTIMATE.md

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .lethe .pytest_cache .ruff_cache *.egg-info
