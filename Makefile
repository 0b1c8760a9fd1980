# Two commands do everything on a fresh machine:
#   make demo   build a synthetic singing set, preprocess, train, convert
#   make test   run the whole test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

demo: $(VENV)/.runtime-installed
	$(BIN)/python demo.py

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest tests

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest tests -m "not slow"

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

clean-demo:
	rm -rf demo_workspace
