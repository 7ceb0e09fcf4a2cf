"""Turning measurements into the printed rich table, results JSON and a README-ready markdown table."""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def median_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


@dataclass
class Ratio:
    name: str
    value: float | None
    target: str  # e.g. "<= 1.3"
    limit: float | None
    note: str = ""
    at_least: bool = False  # the limit is a floor (value >= limit passes), not a ceiling

    @property
    def verdict(self) -> str:
        if self.value is None or self.limit is None:
            return "n/a"
        ok = self.value >= self.limit if self.at_least else self.value <= self.limit
        return "PASS" if ok else "MISS"


def safe_div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


@dataclass
class Report:
    name: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def print(self, console: Console) -> None:
        table = Table(title=self.name, show_lines=False)
        for col in self.columns:
            table.add_column(col, justify="left" if col in ("target", "scenario") else "right")
        for row in self.rows:
            table.add_row(*row)
        console.print(table)
        if self.ratios:
            rt = Table(title="ratios (targets from the issue)")
            for col in ("ratio", "value", "target", "verdict", "note"):
                rt.add_column(col, justify="right" if col in ("value",) else "left")
            for r in self.ratios:
                style = {"PASS": "green", "MISS": "red"}.get(r.verdict, "yellow")
                rt.add_row(r.name, fmt(r.value), r.target, f"[{style}]{r.verdict}[/]", r.note)
            console.print(rt)
        for note in self.notes:
            console.print(f"[dim]- {note}[/]")

    def markdown(self) -> str:
        lines = [f"### {self.name}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.ratios:
            lines += ["", "| ratio | value | target | verdict | note |", "|---|---|---|---|---|"]
            lines += [f"| {r.name} | {fmt(r.value)} | {r.target} | {r.verdict} | {r.note} |" for r in self.ratios]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def publish(self, console: Console, stem: str, logs: Path | None = None) -> None:
        """Prints the tables, writes results/<stem>.json and .md and says where (and where the servers logged)."""
        self.print(console)
        json_path, md_path = self.write(stem)
        console.print(f"wrote {json_path} and {md_path}" + (f" (server logs in {logs})" if logs is not None else ""))

    def write(self, stem: str) -> tuple[Path, Path]:
        RESULTS.mkdir(parents=True, exist_ok=True)
        payload = {
            "name": self.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {"machine": platform.machine(), "python": platform.python_version(),
                     "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
            "columns": self.columns,
            "rows": self.rows,
            "ratios": [{"name": r.name, "value": r.value, "target": r.target, "verdict": r.verdict, "note": r.note}
                       for r in self.ratios],
            "notes": self.notes,
            "raw": self.raw,
        }
        json_path = RESULTS / f"{stem}.json"
        md_path = RESULTS / f"{stem}.md"
        json_path.write_text(json.dumps(payload, indent=2))
        md_path.write_text(self.markdown())
        return json_path, md_path
