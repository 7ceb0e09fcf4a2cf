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
