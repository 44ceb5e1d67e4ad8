"""mathpe.bench: the smoke profile runs every section in seconds and reports well-formed figures.

A benchmark is not a test: nothing here asserts a speed, only the structure of what the bench reports.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mathpe.bench import PROFILES, SECTION_KEYS, run_benchmarks
from mathpe.bench.cuda import flex_alibi
from mathpe.bench.measure import measure, memory_use
from mathpe.bench.models import x_transformers_available
from mathpe.bench.report import Table, Target
from mathpe.bench.sections import Setting
from mathpe.pe import list_pes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[str]]:
    """The smoke run's JSON file, read back, and the Markdown it printed."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    printed: list[str] = []
    run_benchmarks(profile="smoke", json_path=path, echo=printed.append)
    return json.loads(Path(path).read_text(encoding="utf-8")), printed


def ratio_values(results: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(table key, column, value) of every ratio column of every row."""
    return [
        (key, column, row[column])
        for key, table in results["tables"].items()
        for row in table["rows"]
        for column in table["columns"]
        if "ratio" in column
    ]


def test_smoke_run_reports_every_section(smoke: tuple[dict[str, Any], list[str]]) -> None:
    results, printed = smoke
    assert results["meta"]["profile"] == "smoke"
    assert results["meta"]["threads"] == 1
    expected = ["pe_overhead", "baselines", "swapped", "generation", "scaling", "bias_attention"]
    if torch.cuda.is_available():
        assert {f"cuda_{key}" for key in expected} <= set(results["tables"])
    else:
        assert "cuda" in results["tables"]
    assert set(expected) <= set(results["tables"])
    for key in expected:
        table = results["tables"][key]
        assert table["rows"], key
        for row in table["rows"]:
            assert set(row) <= set(table["columns"]), key
            assert row["met"] in (True, False, None)
    training = results["tables"]["training"]["rows"]
    assert [row["settings"] for row in training[:3]] == ["defaults", "group_by_length", "bf16"]
    assert all(0 < row["real_token_fraction"] <= 1 and row["tokens_per_core_s"] > 0 for row in training)
    assert sum(bool(row["target"]) for row in training) == 1  # the tiny preset's combination
    data = results["tables"]["data"]["rows"]
    assert [row["encoding"] for row in data] == ["one call per pair", "batched (mathpe train)"]
    assert all(row["seconds"] > 0 for row in data) and data[0]["ratio_vs_per_pair"] == 1.0
    pes = {row["pe"] for row in results["tables"]["pe_overhead"]["rows"]}
    assert pes == set(list_pes())
    assert {row["pe"] for row in results["tables"]["generation"]["rows"]} == set(list_pes())
    assert len(results["tables"]["baselines"]["rows"]) == (5 if x_transformers_available() else 1)
    assert any(line.startswith("### 1. PE overhead") for line in printed)
    assert printed[-1].startswith("### Targets missed")


def test_every_ratio_is_positive_and_finite(smoke: tuple[dict[str, Any], list[str]]) -> None:
    values = ratio_values(smoke[0])
    assert len(values) > 50
    for key, column, value in values:
        assert isinstance(value, float), (key, column, value)
        assert math.isfinite(value) and value > 0, (key, column, value)


def test_missed_targets_are_listed(smoke: tuple[dict[str, Any], list[str]]) -> None:
    results = smoke[0]
    missed = [row for table in results["tables"].values() for row in table["rows"] if row["met"] is False]
    assert len(results["missed"]) == len(missed)
    checked = [row for table in results["tables"].values() for row in table["rows"] if row["target"]]
    assert all(row["met"] is not None for row in checked)


def test_run_restores_threads_and_rejects_bad_arguments() -> None:
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="unknown bench profile"):
        run_benchmarks(profile="huge")
    with pytest.raises(ValueError, match="unknown bench section"):
        run_benchmarks(profile="smoke", sections=["speed"])
    run_benchmarks(profile="smoke", sections=["cuda"], threads=2, echo=lambda _: None)
    assert torch.get_num_threads() == threads
    assert set(SECTION_KEYS) == {
        "pe_overhead",
        "baselines",
        "swapped",
        "generation",
        "scaling",
        "bias_attention",
        "training",
        "data",
        "cuda",
    }


def test_measure_alternates_sides_after_warmup() -> None:
    calls: list[str] = []
    sides = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = measure(sides, warmup=2, repeats=3, device=CPU)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    rounds = [calls[start : start + 3] for start in range(6, 18, 3)]
    assert len(calls) == 18  # 4 rounds: at least 3, and in pairs (an order, then its reverse)
    assert all(sorted(order) == ["a", "b", "c"] for order in rounds)
    assert rounds[1] == rounds[0][::-1] and rounds[3] == rounds[2][::-1]
    assert all(len(seconds) == 4 for seconds in result.seconds.values())
    assert result.ratio("a", "a") == 1.0


def test_memory_use_counts_what_a_call_allocates() -> None:
    peak, retained = memory_use(lambda: torch.ones(1000, 1000) + 1, CPU)
    megabytes = 4_000_000
    assert (
        megabytes <= retained < megabytes + 1024
    )  # the result (and a scalar); the temporary ones() is freed
    assert 2 * megabytes <= peak < 2 * megabytes + 1024  # both at once


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")  # eager flex_attention warns it is slow
def test_flex_attention_alibi_matches_the_float_mask_path() -> None:
    """Section 6's flex_attention comparison, run eagerly and forward only on the CPU (CUDA: compiled)."""
    table = flex_alibi(Setting(CPU, torch.float32, PROFILES["smoke"]), compiled=False)
    if not table.rows:
        pytest.skip(table.notes[0])
    flex = table.rows[1]
    assert flex["path"] == "flex_attention"
    assert flex["max_abs_diff"] < 1e-4
    assert flex["time_ratio_vs_float_mask"] > 0


def test_table_marks_missed_targets() -> None:
    table = Table("t", "T", ["name", "ratio", "target", "met"])
    table.add([("", Target("<=", 1.0), 1.2)], name="slow", ratio=1.2)
    table.add([("", Target(">=", 0.95), 1.0)], name="fast", ratio=1.0)
    table.add(name="free", ratio=3.0)
    assert [row["met"] for row in table.rows] == [False, True, None]
    assert [row["name"] for row in table.missed()] == ["slow"]
    assert "**NO**" in table.markdown() and "| free | 3.000 |  | — |" in table.markdown()
