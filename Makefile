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
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(VENV)/bin/jax-align demo --out demo_out

lint: venv
	$(VENV)/bin/ruff check jax_align models tests tools

clean:
	rm -rf $(VENV) demo_out build *.egg-info
