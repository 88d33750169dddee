# The two set-up commands README.md shows: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/.installed

demo: install
	$(BIN)/postwarden demo

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench
