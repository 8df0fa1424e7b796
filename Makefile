# The two commands a new user runs (see README.md):
#   make quickstart   install, build a local model, start the whole stack, stream a completion
#   make test         install with test dependencies and run the whole suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
NODE_CLIENT := tests/clients/node

.PHONY: quickstart test install install-test protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU wheel (torch==2.13.0) by pyproject.toml; an
# unpinned torch would pull a multi-GB CUDA build.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error

quickstart: install
	$(BIN)/pipeserve quickstart

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

protos: install-test
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) models $(NODE_CLIENT)/node_modules
