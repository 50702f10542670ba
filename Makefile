# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: run test lint bench evaluate screenshots
run: $(BIN)/.installed
	$(BIN)/python -m example_app

# In random order (pytest-randomly; the seed is printed at the end): PYTEST_ARGS=--randomly-seed=N
# repeats an order, PYTEST_ARGS='-p no:randomly' keeps the files' order. Slow end-to-end cases run
# their small versions; MODELGUARD_SLOW=1 adds the large ones (marked slow).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# What CI checks besides the tests: ruff (lint, import order, complexity) and mypy.
lint: $(BIN)/.installed
	$(BIN)/ruff check flask_modelguard example_app tests benchmarks
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/overhead.py

# The default evaluation scenario with the leave-one-family-out measurement; writes docs/evaluation/.
evaluate: $(BIN)/.installed
	$(BIN)/flask --app example_app modelguard evaluate --scenario default --seed 0 --lofo --out docs/evaluation

# The dashboard's screenshots in docs/img/ (docs/dashboard.md shows them): the example app after a
# simulated day, in headless Chromium (apt-get install chromium chromium-driver), desktop and 400 px.
screenshots: $(BIN)/.installed
	$(BIN)/python -m example_app.screenshots docs/img
