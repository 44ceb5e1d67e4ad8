"""``make check-results``: when a committed number must reproduce exactly and when within a tolerance."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_results.py"
spec = importlib.util.spec_from_file_location("check_results", SCRIPT)
check_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_results)

ENVIRONMENT = {
    "source": {"commit": "a" * 40, "clean": True},
    "command": ["mathpe", "compare", "--preset", "quick"],
    "threads_per_run": 1,
    "jobs": 2,
    "machine": {"cpu": "AMD EPYC", "cpus": 2, "cpu_capability": "AVX2", "cuda": None, "platform": "Linux"},
    "versions": {"mathpe": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.24.0", "accelerate": "1.16.0"},
}


def test_exact_only_when_threads_cpu_and_versions_match():
    differences = check_results.environment_differences
    assert differences(ENVIRONMENT, ENVIRONMENT) == []
    other_commit = {**ENVIRONMENT, "source": {"commit": "b" * 40, "clean": False}, "jobs": 1}
    assert differences(ENVIRONMENT, other_commit) == []  # a commit that moves numbers must regenerate them
    assert differences(None, ENVIRONMENT) == ["the committed results record no environment"]
    moved = {
        **ENVIRONMENT,
        "threads_per_run": 2,
        "machine": {**ENVIRONMENT["machine"], "cpu_capability": "AVX512"},
        "versions": {**ENVIRONMENT["versions"], "accelerate": "1.15.0"},
    }
    assert differences(ENVIRONMENT, moved) == [
        "threads_per_run: 1 -> 2",
        "machine.cpu_capability: AVX2 -> AVX512",
        "versions.accelerate: 1.16.0 -> 1.15.0",
    ]
