# mathpe: `make demo` runs the main job, `make test` the tests; both create .venv on first use.
PY := .venv/bin/python

.PHONY: demo test test-slow lint bench verify check-results clean-venv

.venv/bin/mathpe: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	# The CPU build of torch first, so no dependency range can pull a CUDA build.
	.venv/bin/pip install --quiet torch==2.13.0
	.venv/bin/pip install --quiet -e '.[dev]'
	touch .venv/bin/mathpe

demo: .venv/bin/mathpe
	.venv/bin/mathpe compare --preset quick --overwrite

test: .venv/bin/mathpe
	$(PY) -m pytest -q

test-slow: .venv/bin/mathpe
	$(PY) -m pytest -q -m slow

lint: .venv/bin/mathpe
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

bench: .venv/bin/mathpe
	.venv/bin/pip install --quiet -e '.[dev,bench]'   # x-transformers, for its comparisons
	.venv/bin/mathpe bench --quick

verify: .venv/bin/mathpe
	.venv/bin/mathpe verify

# Re-run results/quick's rope cell (~70 s, one thread) and compare with the committed numbers (docs/runs.md).
check-results: .venv/bin/mathpe
	$(PY) scripts/check_results.py

clean-venv:
	rm -rf .venv
