# The README's two commands:
#   make demo   set up .venv, create certificates if absent, run the two-node chat demo
#   make test   set up .venv, run the static checks (ruff, mypy --strict) and the whole test
#               suite with line coverage of the library (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m reign_sample.quickstart

check: $(STAMP)
	$(VENV)/bin/ruff check reign reign_init reign_sample tests bench fuzz examples
	$(VENV)/bin/mypy

test: check
	$(PY) -m pytest -q --cov=reign --cov-report=term

bench: $(STAMP)
	$(PY) bench/local.py

clean:
	rm -rf $(VENV) build *.egg-info
