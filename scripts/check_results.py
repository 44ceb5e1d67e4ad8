#!/usr/bin/env python
"""``make check-results``: re-run the cheapest committed cell and compare it with the committed numbers.

    python scripts/check_results.py [--results results/quick] [--pe rope] [--seed 0] [--tolerance 10]

Runs one PE and seed of a committed comparison (default: ``rope`` of ``results/quick``, the cheapest cell,
on one thread) with the settings stored in its comparison.json, then compares the exact-match accuracy per
operand length with the committed one:

- *exact*, when the committed comparison.json records an environment (torch threads per run, CPU model and
  vector instructions, torch / transformers / accelerate versions) equal to this one: training on the CPU
  is deterministic for a seed there, so every number must be equal (a commit that moves them must
  regenerate them);
- *within tolerance* otherwise: the overall accuracy may differ by ``--tolerance`` percentage points.
  Floating-point sums in another kernel, thread count or library version round differently, and over
  1,000 training steps those differences can move a tiny model's accuracy on a few hundred problems by
  several points; the default tolerance allows for that (docs/runs.md).

A committed table is made on one machine; ``check_cells.json`` beside its comparison.json holds the same cell
as measured on other machines (``--record`` adds this machine's after a run within tolerance), so that the
check is exact there too: a cell whose environment equals this one is compared number for number.

Exit status 0 when the numbers agree, 1 when they do not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from mathpe.eval.report import percent
from mathpe.train.compare import comparison_environment
from mathpe.train.config import RunConfig
from mathpe.train.run import run_experiment

#: What must be equal for a run to be expected to reproduce a committed number bit for bit.
#: Not the commit: a commit that moves committed numbers must regenerate them, which is what this checks.
ENVIRONMENT_KEYS = (
    ("threads_per_run",),
    ("machine", "cpu"),
    ("machine", "cpu_capability"),
    ("versions", "torch"),
    ("versions", "transformers"),
    ("versions", "accelerate"),
)


def environment_differences(committed: dict | None, current: dict) -> list[str]:
    """``"key: committed -> current"`` for each environment entry that differs (all when none is recorded)."""
    if not committed:
        return ["the committed results record no environment"]
    differences = []
    for path in ENVIRONMENT_KEYS:
        old, new = committed, current
        for key in path:
            old, new = (old or {}).get(key), (new or {}).get(key)
        if old != new:
            differences.append(f"{'.'.join(path)}: {old} -> {new}")
    return differences


def exact_reference(
    comparison: dict, cells: list[dict], pe: str, seed: int, current: dict
) -> tuple[str, dict[str, dict]] | None:
    """Where the committed numbers of ``pe``/``seed`` measured in ``current``'s environment are (``"table"``
    when the table was made here, else ``"cell"``: a recorded cell's) and, per dataset, their
    ``{"overall", "by_length"}``; None when neither was measured here."""
    row = comparison["pes"][pe]
    if not environment_differences(comparison.get("environment"), current):
        seed_index = row["seeds"].index(seed)
        datasets = [name for name, value in row.items() if isinstance(value, dict) and "per_seed" in value]
        return "table", {
            name: {
                "overall": row[name]["per_seed"][seed_index],
                # per-length numbers of one seed exist only when the table has one seed
                "by_length": row[name]["by_length_mean"] if len(row["seeds"]) == 1 else None,
            }
            for name in datasets
        }
    for cell in cells:
        if (
            cell["pe"] == pe
            and cell["seed"] == seed
            and not environment_differences(cell["environment"], current)
        ):
            return "cell", cell["datasets"]
    return None


def recorded_cell(pe: str, seed: int, metrics: dict, environment: dict) -> dict:
    """A ``check_cells.json`` entry: this run's numbers per dataset and the environment they hold in."""
    datasets = {}
    for name, measured in metrics.items():
        headline = measured["headline"]
        by_length = {str(k): v for k, v in measured["by_group"][headline].items()}
        datasets[name] = {"overall": measured[headline], "by_length": by_length}
    return {"pe": pe, "seed": seed, "datasets": datasets, "environment": environment}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/quick"))
    parser.add_argument("--pe", default="rope")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=10.0, help="percentage points, overall accuracy")
    parser.add_argument(
        "--output_dir", type=Path, default=None, help="keep the run here (default: temporary)"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="add this machine's numbers to check_cells.json when they are within tolerance of the table",
    )
    args = parser.parse_args()

    comparison = json.loads((args.results / "comparison.json").read_text())
    cells_path = args.results / "check_cells.json"
    cells = json.loads(cells_path.read_text())["cells"] if cells_path.exists() else []
    committed_environment = comparison.get("environment")
    threads = (committed_environment or {}).get("threads_per_run") or 1
    row = comparison["pes"][args.pe]
    seed_index = row["seeds"].index(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        config = RunConfig.from_dict(
            {
                **comparison["settings"],  # its pe and seed are None: a comparison has several
                "pe": args.pe,
                "seed": args.seed,
                "threads": threads,
                "output_dir": str(args.output_dir or Path(scratch) / "run"),
                "resume": False,
                "overwrite": True,
            }
        )
        torch.set_num_threads(threads)
        current_environment = comparison_environment(threads, 1, sys.argv)
        print(
            f"check-results: {args.pe} seed {args.seed} of {args.results}, {threads} thread(s) ...",
            flush=True,
        )
        metrics = run_experiment(config, progress=False).metrics

    reference = exact_reference(comparison, cells, args.pe, args.seed, current_environment)
    measured_cell = recorded_cell(args.pe, args.seed, metrics, current_environment)
    failures = []
    for dataset, measured in measured_cell["datasets"].items():
        committed_overall = row[dataset]["per_seed"][seed_index]
        now = measured["overall"]
        print(
            f"{dataset} {metrics[dataset]['headline']}: committed {percent(committed_overall)}%, "
            f"now {percent(now)}%"
        )
        if reference is not None:
            expected = reference[1][dataset]
            if now != expected["overall"] or (
                expected["by_length"] and expected["by_length"] != measured["by_length"]
            ):
                failures.append(
                    f"{dataset}: differs in the same environment "
                    f"({expected['by_length']} -> {measured['by_length']})"
                )
        elif abs(now - committed_overall) * 100 > args.tolerance:
            failures.append(f"{dataset}: {percent(committed_overall)}% -> {percent(now)}%")
    if reference is not None:
        source = "the table" if reference[0] == "table" else cells_path
        print(f"mode: exact against {source} (same threads, CPU and torch/transformers/accelerate versions)")
    else:
        print(f"mode: within {args.tolerance:g} percentage points; the environment differs:")
        for difference in environment_differences(committed_environment, current_environment):
            print(f"  {difference}")
    if args.record and reference is not None:
        print("this environment already has exact numbers: nothing recorded")
    elif args.record and not failures:
        cells.append(measured_cell)
        cells_path.write_text(json.dumps({"cells": cells}, indent=2) + "\n")
        print(f"recorded this machine's numbers in {cells_path}")
    print("FAILED: " + "; ".join(failures) if failures else "OK: the committed numbers reproduce")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
