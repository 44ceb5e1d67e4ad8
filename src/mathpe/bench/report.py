"""Result tables of the benchmark: Markdown for the terminal, plain dicts for the JSON file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mathpe.eval.report import markdown_table


@dataclass(frozen=True)
class Target:
    """A bound a figure should meet, e.g. ``Target("<=", 1.15)``."""

    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">=", "<"):
            raise ValueError(f"unknown target operator {self.op!r}")

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the bound."""
        if self.op == "<=":
            return value <= self.bound
        if self.op == "<":
            return value < self.bound
        return value >= self.bound


#: A row's check: the label of the figure checked ("" when the table has one), its target, its value.
Check = tuple[str, Target, float]


@dataclass
class Table:
    """One section's results: ``rows`` are dicts keyed by ``columns``; ``notes`` explain how to read them.

    Columns named ``*ratio*`` hold ratios; ``target`` / ``met`` say which bound a row is held to and whether
    the measured figure meets it (no target: empty / None).
    """

    key: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, checks: Sequence[Check] = (), **row: Any) -> None:
        """Append a row; ``checks`` (figure label, target, value) fill its ``target`` and ``met`` columns."""
        row["target"] = "; ".join(f"{label} {target}".strip() for label, target, _ in checks)
        row["met"] = all(target.met(value) for _, target, value in checks) if checks else None
        self.rows.append(row)

    def missed(self) -> list[dict[str, Any]]:
        """Rows whose target is not met."""
        return [row for row in self.rows if row.get("met") is False]

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.rows:
            cells = [[_cell(row.get(column)) for column in self.columns] for row in self.rows]
            lines.append(markdown_table(self.columns, cells))
        lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines).rstrip() + "\n"

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
