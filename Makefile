# Two set-up commands for a new user: `make demo` and `make test`. Each creates or refreshes the
# virtual environment first; nothing is reinstalled while pyproject.toml and the checkout path stay the same.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# The stamp names the dependency set and this checkout (an editable install points at one checkout).
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(shell printf '%s' "$(CURDIR)" | sha256sum | cut -c1-8)
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_LAKE ?= demo-lake

.PHONY: venv demo test serve bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=25' 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c "import torch, torchvision, duckdb, prefect, core, storage, zoo"
	@rm -f $(VENV)/.stamp-*
	@touch $@

demo: venv
	$(BIN)/python -m flows.demo --lake $(DEMO_LAKE)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve: venv
	$(BIN)/python -m deploy.serve

bench: venv
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_LAKE) reports .pytest_cache
