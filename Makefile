# mathpe: `make demo` runs the main job, `make test` the fast tests, `make test-all` every test tier (what CI
# runs, docs/testing.md); all create .venv on first use.
PY := .venv/bin/python

.PHONY: demo test test-integration test-slow test-all lint bench verify check-results gpu-check gpu-wheels clean-venv

.venv/bin/mathpe: pyproject.toml constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	# The CPU build of torch first, so no dependency range can pull a CUDA build.
	.venv/bin/pip install --quiet torch==2.13.0
	# The reference environment: every dependency at the version constraints.txt pins (docs/runs.md).
	.venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch .venv/bin/mathpe

demo: .venv/bin/mathpe
	.venv/bin/mathpe compare --preset quick --overwrite

# The test tiers (docs/testing.md): fast by default, end-to-end runs, slow unit tests, and all three at once.
test: .venv/bin/mathpe
	$(PY) -m pytest -q -m "not slow and not integration"

test-integration: .venv/bin/mathpe
	$(PY) -m pytest -q -m integration

test-slow: .venv/bin/mathpe
	$(PY) -m pytest -q -m slow

test-all: .venv/bin/mathpe
	$(PY) -m pytest -q -m ""

lint: .venv/bin/mathpe
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

bench: .venv/bin/mathpe
	.venv/bin/pip install --quiet -e '.[dev,bench]'   # x-transformers, for its comparisons
	.venv/bin/mathpe bench --quick

verify: .venv/bin/mathpe
	.venv/bin/mathpe verify

# Re-run results/quick's rope cell (the cheapest, one thread) and compare with the committed numbers (docs/runs.md).
check-results: .venv/bin/mathpe
	$(PY) scripts/check_results.py

# On a CUDA machine: the CUDA tests, verify, bench's cuda section and the founding command's shape (docs/gpu-check.md).
gpu-check:
	python3 scripts/gpu_check.py

# Wheels of what the lent GPU machine lacks (its torch stays), for `carry` (docs/gpu-check.md).
GPU_WHEELS := transformers huggingface.hub httpx2 httpcore2 truststore click peft accelerate math.verify latex2sympy2.extended antlr4.python3.runtime
gpu-wheels: .venv/bin/mathpe
	rm -rf .whl && mkdir .whl
	.venv/bin/pip freeze | grep -iE "^($$(echo $(GPU_WHEELS) | tr ' ' '|'))==" > .whl/requirements.txt
	.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl -r .whl/requirements.txt

clean-venv:
	rm -rf .venv
