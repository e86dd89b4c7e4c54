# The two commands a new user needs:  make run   and   make test
# Both create .venv (Python >= 3.12) and install contextwarden into it on first use.
# make test runs the whole suite on three pytest-xdist workers; ARGS naming a file or folder runs it in one process.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
ARGS   ?=

# Offline assets for tests and benchmarks (on a user's machine tiktoken and Chroma download them), and bytecode
# written even where the environment turns it off: otherwise every Python process the suite starts (mitmdump, the
# memory processes, the CLIs) compiles contextwarden afresh (~1.5 s of CPU each).
TEST_ENV := TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken CONTEXTWARDEN_SHARED=$(SHARED) PYTHONDONTWRITEBYTECODE=

# make run on an offline machine: ../shared's tokenizer cache and embedding model when present (else tiktoken and
# Chroma download them on first use); the environment's own settings win.
MODEL  := $(SHARED)/models/all-MiniLM-L6-v2/onnx
RUN_ENV := $(if $(wildcard $(SHARED)/tiktoken),TIKTOKEN_CACHE_DIR="$${TIKTOKEN_CACHE_DIR:-$(SHARED)/tiktoken}") \
	$(if $(wildcard $(MODEL)/model.onnx),CONTEXTWARDEN_MEMORY__MODEL_DIR="$${CONTEXTWARDEN_MEMORY__MODEL_DIR:-$(MODEL)}")

.PHONY: run test bench install clean lock

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "contextwarden needs Python >= 3.12 (found %s); with pyenv, .python-version selects 3.12" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(RUN_ENV) $(BIN)/contextwarden run $(ARGS)

test: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest $(ARGS)

bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python bench/run_all.py $(ARGS)

# Re-pin requirements.lock from pyproject.toml in a scratch venv.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install --quiet --upgrade pip
	.lockvenv/bin/pip install --quiet -e '.[dev]'
	{ echo "# Every package contextwarden and its tests install, pinned: 'make' and .ci/run install from this file."; \
	  echo "# Regenerate after changing pyproject.toml's dependencies: make lock"; \
	  .lockvenv/bin/pip freeze | grep -v -i -e '^-e' -e '^contextwarden'; } > requirements.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
