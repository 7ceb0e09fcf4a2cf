"""The demo's outputs: the live status panel, the final summary table, and demo-report.html (a
self-contained page with the accuracy/agreement timeline as an embedded PNG, plus the evaluator's own
report of the pair store next to it)."""
from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from rich.panel import Panel
from rich.table import Table

from gateway.demo.observe import Snapshot
from gateway.demo.traffic import Outcome, TrafficLog

STAGES = ("before", "drift", "redistill", "recovery")


@dataclass(frozen=True, slots=True)
class StageSummary:
    stage: str
    requests: int
    errors: int
    accuracy: float | None  # student/served answers vs the ticket's true label
    after_share: float | None  # share of drifted (after-world) tickets
    routes: dict[str, int]
    median_latency_ms: float | None


def summarize(log: TrafficLog) -> list[StageSummary]:
    rows = []
    for stage in STAGES:
        items = log.for_stage(stage)
        if not items:
            continue
        ok = [o for o in items if o.error is None]
        rows.append(StageSummary(
            stage=stage, requests=len(items), errors=len(items) - len(ok),
            accuracy=log.accuracy(ok) if ok else None,
            after_share=sum(o.phase == "after" for o in items) / len(items),
            routes=dict(Counter(o.route or "?" for o in ok)),
            median_latency_ms=median(o.latency_s for o in ok) * 1000 if ok else None,
        ))
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def summary_table(rows: list[StageSummary]) -> Table:
    table = Table(title="distillgate demo — summary", show_lines=False)
    for col in ("stage", "requests", "errors", "drifted tickets", "correct answers", "routes", "median latency"):
        table.add_column(col, justify="right" if col not in ("stage", "routes") else "left")
    for r in rows:
        routes = ", ".join(f"{k} {v}" for k, v in sorted(r.routes.items()))
        lat = "—" if r.median_latency_ms is None else f"{r.median_latency_ms:.0f} ms"
        table.add_row(r.stage, str(r.requests), str(r.errors), _pct(r.after_share), _pct(r.accuracy), routes, lat)
    return table


def status_panel(stage: str, snap: Snapshot | None, log: TrafficLog, started: float, monitoring: str) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("stage", f"{stage}   ({time.time() - started:.0f}s elapsed)")
    grid.add_row("requests", f"{len(log.outcomes)} sent, {log.errors()} errors, recent correct {_pct(log.accuracy())}")
    if snap is not None:
        agreement = ", ".join(f"{v or 'base'}/{s}: {_pct(r)}" for (v, s), r in sorted(snap.agreement.items())) or "—"
        grid.add_row("agreement", agreement)
        grid.add_row("input drift", "—" if snap.input_drift is None else f"{snap.input_drift:.3f}")
        grid.add_row("alerts" if monitoring == "prometheus" else "watcher", ", ".join(snap.alerts) or "none firing")
        jobs = {k.split("=")[1].rstrip("}"): int(v) for k, v in snap.counters.items() if "redistill_jobs" in k}
        grid.add_row("re-distill jobs", ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none")
        grid.add_row("live version", snap.live_version or "base student")
    return Panel(grid, title="distillgate demo", subtitle=monitoring)


def _timeline_png(outcomes: list[Outcome], snapshots: list[Snapshot], marks: dict[str, float | None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    if outcomes:
        t0 = outcomes[0].at
        window = 30
        xs, ys = [], []
        for i in range(len(outcomes)):
            chunk = outcomes[max(0, i - window + 1): i + 1]
            xs.append(outcomes[i].at - t0)
            ys.append(sum(o.correct for o in chunk) / len(chunk))
        ax.plot(xs, ys, label=f"served answers correct (rolling {window})", color="tab:blue")
        pts = [(s.at - t0, s.overall_agreement()) for s in snapshots if s.overall_agreement() is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label="agreement with teacher (gateway gauge)",
                    color="tab:green", linestyle="--")
        for name, at in marks.items():
            if at is not None:
                ax.axvline(at - t0, color="grey", linestyle=":")
                ax.text(at - t0, 1.02, name, rotation=0, fontsize=8, ha="center", transform=ax.get_xaxis_transform())
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("seconds since first request")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(path: Path, *, rows: list[StageSummary], outcomes: list[Outcome], snapshots: list[Snapshot],
                 marks: dict[str, float | None], facts: dict[str, str], evaluator_report: Path | None) -> Path:
    png = base64.b64encode(_timeline_png(outcomes, snapshots, marks)).decode()
    head = "".join(f"<th>{h}</th>" for h in ("stage", "requests", "errors", "drifted", "correct", "routes", "median latency"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r.stage, r.requests, r.errors, _pct(r.after_share), _pct(r.accuracy),
            ", ".join(f"{k} {v}" for k, v in sorted(r.routes.items())),
            "—" if r.median_latency_ms is None else f"{r.median_latency_ms:.0f} ms")) + "</tr>"
        for r in rows)
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    link = (f'<p>Evaluator report of the pair store: <a href="{html.escape(evaluator_report.name)}">'
            f"{html.escape(evaluator_report.name)}</a></p>" if evaluator_report else "")
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>distillgate demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>distillgate demo report</h1>
<p>A tiny student serves support-ticket intents in place of the teacher; traffic drifts to a product line it
never saw; the gateway's shadow comparisons show agreement falling; the alert triggers re-distillation on the
stored teacher answers; the new LoRA version is gated, promoted and loaded into vLLM; answers recover.</p>
<h2>Timeline</h2><img alt="accuracy and agreement over time" src="data:image/png;base64,{png}">
<h2>Stages</h2><table><tr>{head}</tr>{body}</table>
<h2>Run</h2><table>{fact_rows}</table>{link}
</body></html>""")
    return path


# --- the loop: agreement per stage, delays, gate retention, spend, wall times ------------------------

AGREEMENT_STAGES = (("before", "before drift"), ("drift", "during drift"), ("recovery", "after re-distillation"))
SPEND = "distillgate_teacher_spend_dollars_total"
SAVED = "distillgate_saved_dollars_total"
JOB_SUM = "distillgate_redistill_job_duration_seconds_sum"
JOB_COUNT = "distillgate_redistill_job_duration_seconds_count"


@dataclass(frozen=True, slots=True)
class Interval:
    """The gateway's agreement gauge with its Wilson bounds (None: that gauge was absent)."""

    ratio: float
    lower: float | None
    upper: float | None


@dataclass(frozen=True, slots=True)
class Spend:
    spend: float
    saved: float

    @property
    def ratio(self) -> float | None:
        """Teacher spend as a share of the all-teacher baseline (spend + saved)."""
        baseline = self.spend + self.saved
        return self.spend / baseline if baseline > 0 else None


def agreement_at(snap: Snapshot) -> Interval | None:
    key = snap.overall_key()
    if key is None:
        return None
    return Interval(snap.agreement[key], snap.agreement_lower.get(key), snap.agreement_upper.get(key))


def stage_agreement(snapshots: list[Snapshot], window: tuple[float, float] | None) -> Interval | None:
    """The last agreement reading taken inside the stage's [start, end] window."""
    if window is None:
        return None
    inside = [s for s in snapshots if window[0] <= s.at <= window[1] and s.overall_key() is not None]
    return agreement_at(inside[-1]) if inside else None


def agreement_by_stage(snapshots: list[Snapshot], windows: dict[str, tuple[float, float]]) -> dict[str, Interval | None]:
    return {stage: stage_agreement(snapshots, windows.get(stage)) for stage, _ in AGREEMENT_STAGES}


def seconds_between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _last_counter(snapshots: list[Snapshot], name: str) -> float | None:
    for snap in reversed(snapshots):
        if name in snap.counters:
            return snap.counters[name]
    return None


def job_duration_s(snapshots: list[Snapshot]) -> float | None:
    """Mean re-distillation job wall time from the gateway's histogram (sum / count)."""
    total, count = _last_counter(snapshots, JOB_SUM), _last_counter(snapshots, JOB_COUNT)
    return total / count if total is not None and count else None


def spend_of(snapshots: list[Snapshot]) -> Spend | None:
    spend, saved = _last_counter(snapshots, SPEND), _last_counter(snapshots, SAVED)
    if spend is None and saved is None:
        return None
    return Spend(spend or 0.0, saved or 0.0)


def promoted_gate(versions: tuple[dict[str, Any], ...] | list[dict[str, Any]], version_id: str | None) -> dict[str, Any] | None:
    """The gate report of the promoted version (versions[].gate from the control API)."""
    for v in versions:
        if version_id is not None and v.get("id") == version_id:
            return v.get("gate") or None
    return None


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}s"


def _interval(i: Interval | None) -> str:
    if i is None:
        return "—"
    bounds = f" (Wilson {_pct(i.lower)}–{_pct(i.upper)})" if i.lower is not None and i.upper is not None else ""
    return _pct(i.ratio) + bounds


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "—"


def _gate(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "—"
    return (f"{_pct(gate.get('retention')) if isinstance(gate.get('retention'), (int, float)) else '—'} "
            f"(candidate {_num(gate.get('candidate_score'))}, teacher {_num(gate.get('teacher_score'))}, "
            f"previous {_num(gate.get('current_score'))}, n={gate.get('n', '—')})")


def _spend(s: Spend | None) -> str:
    if s is None:
        return "—"
    return f"${s.spend:.4f} spent, ${s.saved:.4f} saved: {_pct(s.ratio)} of all-teacher"


@dataclass(frozen=True, slots=True)
class LoopInputs:
    snapshots: list[Snapshot]
    windows: dict[str, tuple[float, float]]  # traffic stage -> (start, end)
    phases: dict[str, float]  # phase -> wall seconds, in order
    drift_started: float | None
    alert_fired: float | None
    trigger_accepted: float | None
    promoted: float | None
    versions: tuple[dict[str, Any], ...]
    promoted_version: str | None


def loop_rows(x: LoopInputs) -> list[tuple[str, str]]:
    """(what, value) rows for the terminal's "loop" table and the report's facts; "—" when unknown."""
    agreement = agreement_by_stage(x.snapshots, x.windows)
    rows = [(f"agreement {label}", _interval(agreement[stage])) for stage, label in AGREEMENT_STAGES]
    rows += [
        ("detection delay (drift → alert)", _secs(seconds_between(x.drift_started, x.alert_fired))),
        ("re-distillation (trigger → live)", _secs(seconds_between(x.trigger_accepted, x.promoted))),
        ("re-distillation job (own duration)", _secs(job_duration_s(x.snapshots))),
        ("retention vs teacher (held-out gate)", _gate(promoted_gate(x.versions, x.promoted_version))),
        ("teacher spend", _spend(spend_of(x.snapshots))),
    ]
    rows += [(f"wall time: {name}", _secs(secs)) for name, secs in x.phases.items()]
    return rows


def loop_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="distillgate demo — loop", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, value)
    return table
