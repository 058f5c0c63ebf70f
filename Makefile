# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv (once) and install keras_rpat with its test extras, pinned by
# constraints.txt. A CPU build of torch is installed first so that pip never pulls
# the multi-GB CUDA wheels; GPU users follow the README instead.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.keras_rpat-installed
TORCH_CPU ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install lint format graph docs test test-torch test-tensorflow test-jax demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt "$(TORCH_CPU)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

# ruff (installed by the test extra, pinned in constraints.txt): lint, and check
# the formatting (pyproject.toml [tool.ruff] has the line length and exclusions).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff format .

# The import graph in layers (fails on a cycle; also run by tests/test_architecture.py).
graph:
	$(PYTHON) tools/import_graph.py

# The documentation site (mkdocs.yml; docs/), built into site/ with every warning an
# error: a broken link or anchor, a docstring that does not render.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# TensorFlow runs channels_first convolutions on a CPU only through oneDNN, which it
# turns on by default only on CPUs with AVX-512; force it on (e.g. AVX2-only AMD EPYC).
TF_ENV := KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=1
# JAX needs nothing more on a CPU (jax[cpu], from the test extra, finds no accelerator and says nothing).
JAX_ENV := KERAS_BACKEND=jax

# One suite per backend; the tests marked `cross_backend` (every backend compared, the others in
# subprocesses) run in the torch suite only (tests/conftest.py).
test: lint docs
	@echo "== keras_rpat tests, KERAS_BACKEND=torch"
	KERAS_BACKEND=torch $(PY) -m pytest $(PYTEST_ARGS)
	@echo "== keras_rpat tests, KERAS_BACKEND=tensorflow"
	$(TF_ENV) $(PY) -m pytest $(PYTEST_ARGS)
	@echo "== keras_rpat tests, KERAS_BACKEND=jax"
	$(JAX_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest $(PYTEST_ARGS)

test-tensorflow: $(STAMP)
	$(TF_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-jax: $(STAMP)
	$(JAX_ENV) $(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/keras-rpat demo

bench: $(STAMP)
	$(PY) benchmarks/throughput.py --smoke
	$(PY) benchmarks/input_pipeline.py

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
