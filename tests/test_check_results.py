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


XEON = {**ENVIRONMENT, "machine": {**ENVIRONMENT["machine"], "cpu": "Intel Xeon", "cpu_capability": "AVX512"}}
BY_LENGTH = {"1": 0.74, "2": 0.5, "3": 0.0}


def quick_table(environment: dict) -> dict:
    """A one-seed comparison.json with a rope row, made in ``environment``."""
    row = {"per_seed": [0.3], "by_length_mean": {"1": 0.9, "2": 0.0, "3": 0.0}}
    return {"environment": environment, "pes": {"rope": {"seeds": [0], "errors": [], "addition": row}}}


def test_exact_reference_is_the_table_made_here_or_a_cell_recorded_here():
    metrics = {
        "addition": {
            "headline": "exact_match",
            "exact_match": 0.41,
            "by_group": {"exact_match": {1: 0.74, 2: 0.5, 3: 0.0}},
        }
    }
    cell = check_results.recorded_cell("rope", 0, metrics, ENVIRONMENT)
    assert cell["datasets"] == {"addition": {"overall": 0.41, "by_length": BY_LENGTH}}
    reference = check_results.exact_reference

    table_here = quick_table(ENVIRONMENT)
    assert reference(table_here, [cell], "rope", 0, ENVIRONMENT) == (
        "table",
        {"addition": {"overall": 0.3, "by_length": {"1": 0.9, "2": 0.0, "3": 0.0}}},
    )
    table_elsewhere = quick_table(XEON)
    assert reference(table_elsewhere, [cell], "rope", 0, ENVIRONMENT) == ("cell", cell["datasets"])
    assert reference(table_elsewhere, [], "rope", 0, ENVIRONMENT) is None
    assert reference(table_elsewhere, [cell], "rope", 1, ENVIRONMENT) is None  # another seed's cell
    assert reference(table_elsewhere, [{**cell, "pe": "alibi"}], "rope", 0, ENVIRONMENT) is None
    newer_torch = {**ENVIRONMENT, "versions": {**ENVIRONMENT["versions"], "torch": "2.14.0+cpu"}}
    assert reference(table_elsewhere, [cell], "rope", 0, newer_torch) is None


def test_committed_cells_belong_to_the_committed_quick_table():
    import json

    results = SCRIPT.parents[1] / "results" / "quick"
    comparison = json.loads((results / "comparison.json").read_text())
    for cell in json.loads((results / "check_cells.json").read_text())["cells"]:
        assert cell["pe"] in comparison["pes"] and cell["seed"] in comparison["pes"][cell["pe"]]["seeds"]
        assert check_results.environment_differences(comparison["environment"], cell["environment"]), (
            "a cell for the table's own environment is redundant"
        )
