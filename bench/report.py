"""Result rows and their rendering as a plain table, Markdown or JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One figure, its reference (the floor or a target value) and the verdict when it has a target."""

    figure: str
    value: float
    unit: str
    reference: float | None = None
    reference_label: str = "floor"
    target: str = ""
    passed: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0 or math.isnan(self.value):
            return None
        return self.value / self.reference


@dataclass
class Report:
    """Everything one bench run found."""

    machine: dict[str, str]
    config: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def write_json(self, path: Path) -> None:
        rows = [{**asdict(r), "ratio": r.ratio} for r in self.rows]
        doc = {"machine": self.machine, "config": self.config, "rows": rows, "notes": self.notes, **self.details}
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


HEADER = ("Figure", "Service", "Reference", "Ratio", "Target", "Result")


def _num(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}".strip()


def _cells(row: Row) -> tuple[str, ...]:
    ref = "" if row.reference is None else f"{_num(row.reference, row.unit)} ({row.reference_label})"
    ratio = "" if row.ratio is None else f"{row.ratio:.3f}x"
    verdict = {True: "PASS", False: "FAIL", None: ""}[row.passed]
    return (row.figure, _num(row.value, row.unit), ref, ratio, row.target, verdict)


def render_text(report: Report) -> str:
    """Machine lines, an aligned table, then the notes."""
    lines = [f"{k}: {v}" for k, v in report.machine.items()]
    table = [HEADER, *(_cells(r) for r in report.rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines.append("")
    for i, cells in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(["", *(f"- {n}" for n in report.notes)])
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    """The same as a Markdown table, for the README."""
    machine = ", ".join(f"{k} {v}" for k, v in report.machine.items())
    lines = [f"Machine: {machine}.", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines.extend("| " + " | ".join(_cells(r)) + " |" for r in report.rows)
    lines.extend(["", *(f"- {n}" for n in report.notes)])
    return "\n".join(lines)
