# The two commands a new user needs:  make run   and   make test
# Both create .venv (Python >= 3.12) and install contextwarden into it on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
ARGS   ?=

# Offline assets for tests and benchmarks (on a user's machine tiktoken and Chroma download them).
TEST_ENV := TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken CONTEXTWARDEN_SHARED=$(SHARED)

.PHONY: run test bench install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "contextwarden needs Python >= 3.12 (found %s); with pyenv, .python-version selects 3.12" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/contextwarden run $(ARGS)

test: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest $(ARGS)

bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
