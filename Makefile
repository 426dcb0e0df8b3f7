# amulet-lab: `make demo` runs the main job, `make test` runs every test.
# Both create .venv when it is missing; a stamp keyed on the requirements' hash
# makes a second call reuse it (changed requirements reinstall).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
# ui-check only: playwright (requirements-ui.txt) on top of the venv; a new venv stamp removes this one too.
UI_STAMP := $(VENV)/.installed-ui-$(shell cat requirements-ui.txt | sha256sum | cut -c1-16)

.PHONY: venv demo test test-fast report train-default bench ui-check clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed-*
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name amulet-lab --display-name "amulet-lab (.venv)" >/dev/null
	@touch $(STAMP)

demo: venv
	$(BIN)/amulet-lab demo

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

report: venv
	$(BIN)/amulet-lab report

train-default: venv
	$(BIN)/amulet-lab train-default

bench: venv
	$(BIN)/amulet-lab bench run

# Run notebooks/01_classify.ipynb in JupyterLab in a local headless Chromium (not in CI): screenshots and
# timings into reports/ui/. Exit code 2 from amulet-lab when no Chromium is found (AMULET_CHROMIUM).
ui-check: venv
	@$(BIN)/python -m amulet_lab bench ui --find-chromium >/dev/null
	@$(MAKE) --no-print-directory $(UI_STAMP)
	$(BIN)/python -m amulet_lab bench ui

$(UI_STAMP): requirements-ui.txt $(STAMP)
	@rm -f $(VENV)/.installed-ui-*
	$(BIN)/pip install --quiet -r requirements-ui.txt
	@touch $(UI_STAMP)

clean-venv:
	rm -rf $(VENV)
