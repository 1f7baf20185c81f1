# Clickstream pipeline: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNNER ?= prism
FOLLOW ?=
DURATION ?=
RUN_ARGS ?=
EVENTS ?= 3000
SEED ?= 7
PYTEST_ARGS ?=
BENCH_ARGS ?=
PROFILE_ARGS ?=
ARGS ?= --help

.DEFAULT_GOAL := help
.PHONY: help setup test test-unit lint run bench profile clean up down status template

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/.installed ## Create the venv and install the project (idempotent)

test: setup ## Run the whole test suite
	$(BIN)/pytest tests --durations=25 $(PYTEST_ARGS)

test-unit: setup ## Run the DirectRunner unit tests only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: setup ## Lint and check formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

up: setup ## Start the local stack (Kafka, registry, PostgreSQL, Redis, Prometheus, Prism) on loopback; idempotent
	$(BIN)/python -m runners.stack up

down: setup ## Stop exactly the processes `make up` started
	$(BIN)/python -m runners.stack down

status: setup ## Show each stack component, its address and health
	$(BIN)/python -m runners.stack status

run: setup ## The live pipeline: stack up, sample -> Kafka -> Prism -> Kafka, reconciled (EVENTS= SEED= RUNNER= FOLLOW=1 DURATION=)
ifeq ($(RUNNER),prism)
	$(BIN)/python -m runners.stack up
endif
	$(BIN)/python -m runners --runner '$(RUNNER)' --events $(EVENTS) --seed $(SEED) $(if $(FOLLOW),--follow) $(if $(DURATION),--duration $(DURATION)) $(RUN_ARGS)

template: setup ## Template jobs for schedulers: make template ARGS="launch clickstream --job-name clicks" (status, list, stop, describe)
	$(BIN)/python -m runners.templates $(ARGS)

bench: setup ## Benchmark tables: coders, publish, enrichment, then the pipeline vs passthroughs and peers (BENCH_ARGS=, starts the stack)
	$(BIN)/python -m runners.stack up
	$(BIN)/python -m benchmarks.coders
	$(BIN)/python -m benchmarks.publish
	$(BIN)/python -m benchmarks.enrichment
	$(BIN)/python -m benchmarks.end_to_end $(BENCH_ARGS)

profile: setup ## Profile the pipeline's worker per stage with py-spy while it drains a generated topic (PROFILE_ARGS=)
	$(BIN)/python -m runners.stack up
	$(BIN)/python -m benchmarks.profile_pipeline $(PROFILE_ARGS)

clean: ## Stop the local stack, remove the venv, stack data, run outputs and caches
	-test -x $(BIN)/python && $(BIN)/python -m runners.stack down
	rm -rf $(VENV) .stack .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
