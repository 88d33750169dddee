# The two set-up commands README.md shows: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test bench chromium
install: $(BIN)/.installed

demo: install
	$(BIN)/postwarden demo

# Browser tests drive Debian's Chromium; install it when missing (CI runs as root).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: install chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench
