"""Run outputs: metrics.json, predictions.jsonl, report.md and the accuracy-by-length plot."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temp file in the same folder, then a rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically, so a killed run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def write_predictions(path: Path, predictions: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(p, default=str) + "\n" for p in predictions))


def length_curves(metrics: Mapping[str, Any]) -> dict[int, float]:
    """``{operand length: accuracy}`` of an arithmetic task's headline metric (empty for other tasks)."""
    per_group = metrics.get("by_group", {}).get(metrics["headline"], {})
    return {int(group): acc for group, acc in per_group.items() if str(group).isdigit()}


def plot_accuracy_by_length(
    curves: Mapping[str, Mapping[int, float]], path: Path, *, title: str, train_max: int | None = None
) -> None:
    """One line per label (a PE, or a dataset) of accuracy against operand length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours: one per PE, the zoo has 13
    for index, (label, curve) in enumerate(curves.items()):
        lengths = sorted(curve)
        axis.plot(
            lengths,
            [100 * curve[n] for n in lengths],
            color=colours[2 * index % 20 + (2 * index // 20) % 2],
            marker="osD^v<>"[index % 7],
            markersize=3,
            label=label,
        )
    if train_max is not None:
        axis.axvline(train_max + 0.5, color="grey", linestyle="--", linewidth=1)
        axis.text(train_max + 0.6, 3, "longer than training", color="grey", fontsize=8)
    axis.set_xlabel("operand length (digits)")
    axis.set_ylabel("exact match (%)")
    axis.set_ylim(-2, 102)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_report(title: str, settings: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> str:
    """report.md of one run: the settings, then a table per dataset (overall and per group)."""
    parts = [
        f"# {title}\n",
        markdown_table(["setting", "value"], [[k, f"`{v}`"] for k, v in settings.items()]),
    ]
    for dataset, metrics in results.items():
        parts.append(f"\n## {dataset} (n={metrics['n']})\n")
        names = [name for name in metrics["by_group"]]
        rows = [["overall", *(percent(metrics[name]) for name in names)]]
        groups = list(metrics["by_group"][names[0]])
        rows += [[group, *(percent(metrics["by_group"][name][group]) for name in names)] for group in groups]
        parts.append(markdown_table(["group", *(f"{name} (%)" for name in names)], rows))
        for name in names:
            if metrics.get(f"{name}_in_distribution") is not None:
                parts.append(
                    f"\n{name}: in-distribution {percent(metrics[f'{name}_in_distribution'])}%, "
                    f"out-of-distribution {percent(metrics.get(f'{name}_out_of_distribution'))}%\n"
                )
    return "".join(parts)
