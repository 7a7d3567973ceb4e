# Two commands on a fresh machine with only python3: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck pytest bench wasm-examples clean

# Byte-compile the package so agent processes start fast even where
# PYTHONDONTWRITEBYTECODE is set (compiling spear_actors.agent on every spawn costs ~10 ms).
setup: $(STAMP)
	@$(PY) -m compileall -q spear_actors examples >/dev/null

$(STAMP): pyproject.toml
	@echo "setup: creating the virtual environment in $(VENV) (first run only)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: upgrading pip"
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "setup: installing spear_actors and its test tools (about a minute the first time)"
	@$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)
	@echo "setup: done"

# `make run PORT=7500` serves on another port (SPEAR_LISTEN overrides the config's listen).
PORT ?=
run: setup
	$(if $(PORT),SPEAR_LISTEN=ws://127.0.0.1:$(PORT) )$(VENV)/bin/spear serve --config examples/node.toml

lint: setup
	$(VENV)/bin/ruff check spear_actors tests benchmarks examples
	$(VENV)/bin/ruff format --check spear_actors tests benchmarks examples

typecheck: setup
	$(VENV)/bin/mypy --strict spear_actors

pytest: setup
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: setup
	@for f in benchmarks/[!_]*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# spear against Ray and tractor (installed in .venv-peers/ on first use); ARGS=--quick
.PHONY: bench-peers
bench-peers: setup
	$(PY) benchmarks/peers.py $(ARGS)

# The C examples compiled to wasm32-wasi (rules in examples/c/Makefile; WASM_OUT=dir
# puts the .wasm files elsewhere).
wasm-examples:
	$(MAKE) -C examples/c

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
