# Two set-up commands for a new user: `make demo` and `make test`. Each creates or refreshes the
# virtual environment first; nothing is reinstalled while pyproject.toml and the checkout path stay the same.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# Extras installed with the project: dev (tests) and k8s (Prefect's Kubernetes worker).
EXTRAS ?= dev,k8s
comma := ,
# The stamp names the dependency set (pyproject + extras) and this checkout (an editable install points at one checkout).
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(subst $(comma),-,$(EXTRAS))-$(shell printf '%s' "$(CURDIR)" | sha256sum | cut -c1-8)
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_LAKE ?= demo-lake
# pipefail: a failed pip install fails the build even though its output goes through grep.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# The local find-links folders some pip configs name print one warning per package: not errors.
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: venv demo test serve bench clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=25' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python .ci/check_deps.py --extras $(EXTRAS)
	$(BIN)/python -c "import core, storage, zoo, labeling, weightnet, evaluation, flows, deploy, cli"
	@rm -f $(VENV)/.stamp-*
	@touch $@

# Chromium and PostgreSQL for the browser and PostgreSQL-catalog tests (installed when missing and allowed).
system-deps:
	@.ci/system-deps

demo: venv
	$(BIN)/python -m flows.demo --lake $(DEMO_LAKE)

test: venv system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve: venv
	$(BIN)/python -m deploy.serve

bench: venv
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_LAKE) reports .pytest_cache
