PY ?= .venv/bin/python

.PHONY: venv test test-slow lint bench demo

venv:
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	.venv/bin/pip install torch==2.13.0
	.venv/bin/pip install -e '.[dev]'

test:
	$(PY) -m pytest -q

test-slow:
	$(PY) -m pytest -q -m slow

lint:
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

bench:
	$(PY) -m mathpe.cli.main bench --quick
