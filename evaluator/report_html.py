"""Rendering report data as one self-contained HTML file (PNG plots embedded as base64, Agg backend)."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.num{text-align:right;font-variant-numeric:tabular-nums}pre{white-space:pre-wrap;margin:0;max-width:320px}"""


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def agreement_plot(points: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(9, 3))
    xs = [dt.datetime.fromtimestamp((p["start"] + p["end"]) / 2, dt.timezone.utc) for p in points]
    ratios = [p["ratio"] for p in points]
    # Clamped at 0: float rounding can put a Wilson bound a hair past the ratio near 0 or 1.
    lower = [max(0.0, p["ratio"] - p["lower"]) for p in points]
    upper = [max(0.0, p["upper"] - p["ratio"]) for p in points]
    ax.errorbar(xs, ratios, yerr=[lower, upper], fmt="o-", capsize=3)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("agreement (Wilson interval)")
    fig.autofmt_xdate()
    return _png(fig)


def drift_plot(points: list[dict[str, Any]], thresholds: dict[str, float]) -> str:
    fig, ax = plt.subplots(figsize=(9, 3))
    xs = [dt.datetime.fromtimestamp(p["time"], dt.timezone.utc) for p in points]
    ax.plot(xs, [p["input_score"] for p in points], "o-", label="input drift (PSI)")
    ax.plot(xs, [p["output_score"] or 0.0 for p in points], "s-", label="output drift (PSI)")
    ax.plot(xs, [p["auc"] for p in points], "^-", label="classifier AUC")
    ax.axhline(thresholds["psi"], color="grey", linestyle="--", label="PSI threshold")
    ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if isinstance(c, int | float) and not isinstance(c, bool)
                         else f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _model_section(name: str, m: dict[str, Any]) -> str:
    parts = [f"<h2>{html.escape(name)}</h2>"]
    a = m["agreement"]
    parts.append(f"<p>Scorer <b>{html.escape(m['scorer'])}</b>: {a['n']} pairs, agreement {_fmt(a['ratio'])} "
                 f"(interval {_fmt(a['lower'])}–{_fmt(a['upper'])}).</p>")
    parts.append("<h3>Agreement over time</h3>")
    parts.append(agreement_plot(m["agreement_over_time"]) if m["agreement_over_time"] else "<p>No pairs.</p>")
    parts.append("<h3>Agreement per slice</h3>")
    parts.append(_table(["version", "slice", "pairs", "agreed", "ratio", "lower", "upper"],
                        [[s["version"], s["slice"], s["n"], s["agreed"], s["ratio"], s["lower"], s["upper"]]
                         for s in m["slices"]]))
    parts.append("<h3>Drift over time</h3>")
    if m["drift_over_time"]:
        parts.append(drift_plot(m["drift_over_time"], m["drift_thresholds"]))
        parts.append(_table(["window end", "n", "input PSI", "output PSI", "AUC", "drifted"],
                            [[_when(p["time"]), p["n"], p["input_score"], p["output_score"], p["auc"], p["drifted"]]
                             for p in m["drift_over_time"]]))
    else:
        parts.append("<p>Not enough stored requests for a reference and one window.</p>")
    r = m["routes"]
    parts.append("<h3>Routes</h3>")
    parts.append(_table(["route", "requests"], [[k, v] for k, v in r["counts"].items()]))
    parts.append(f"<p>Escalation rate {_fmt(r['escalation_rate'])}, fallback rate {_fmt(r['fallback_rate'])}.</p>")
    c = m["cost"]
    parts.append("<h3>Cost</h3>")
    parts.append(_table(["all-teacher baseline $", "served $", "shadow teacher $", "saved $"],
                        [[c["baseline_dollars"], c["served_dollars"], c["shadow_dollars"], c["saved_dollars"]]]))
    if m["accuracy"]:
        acc = m["accuracy"]
        parts.append("<h3>Accuracy against feedback labels</h3>")
        parts.append(_table(["side", "judged", "correct", "accuracy"],
                            [[side, acc[side]["n"], acc[side]["correct"], acc[side]["accuracy"]]
                             for side in ("student", "teacher")]))
    parts.append("<h3>Top disagreements</h3>")
    parts.append(_table(["request", "version", "slice", "score", "prompt", "student", "teacher"],
                        [[d["request_id"], d["version"], d["slice"], d["score"], d["prompt"], d["student"], d["teacher"]]
                         for d in m["disagreements"]]) if m["disagreements"] else "<p>None.</p>")
    return "\n".join(parts)


def render_html(report: dict[str, Any]) -> str:
    sections = "\n".join(_model_section(name, m) for name, m in report["models"].items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>distillgate report</title><style>{STYLE}</style>"
            f"</head><body><h1>distillgate report</h1><p>{_when(report['since'])} – {_when(report['until'])}</p>"
            f"{sections}</body></html>")
