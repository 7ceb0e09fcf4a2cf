"""Run every panel query of distillgate's dashboards against a Prometheus and report the empty ones.

    python dashboards/check_queries.py --prometheus http://127.0.0.1:9090 [--dashboard redistill.json]
        [--model support-intent] [--rate-interval 15s] [--range 5m] [--window 60]

Template variables are expanded as Grafana would ($model as a regex, $__rate_interval, $__range).
Exit status: 0 when every query returned at least one series, 1 when some returned none (listed),
2 when a query failed (bad PromQL, Prometheus unreachable). The live tests and the end-to-end test
use `check()`; operators can point it at a production Prometheus after an upgrade.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARD_FILES = ("gateway.json", "distillation-health.json", "redistill.json")


class QueryError(RuntimeError):
    """Prometheus rejected a query or could not be reached; the message names the query."""


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel of a dashboard, including those inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in board["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def panel_queries(dashboards: tuple[str, ...] = DASHBOARD_FILES, directory: Path = HERE) -> list[PanelQuery]:
    out = []
    for name in dashboards:
        for p in panels(json.loads((directory / name).read_text())):
            for t in p.get("targets", []):
                out.append(PanelQuery(name, p["title"], t.get("refId", ""), t.get("expr", ""), bool(t.get("instant"))))
    return out


def substitute(expr: str, *, model: str = ".*", rate_interval: str = "1m", range_: str = "10m") -> str:
    """Expand the Grafana template variables our dashboards use."""
    for var, value in (("$__rate_interval", rate_interval), ("$__range", range_), ("$__interval", rate_interval),
                       ("${model}", model), ("$model", model)):
        expr = expr.replace(var, value)
    if "$" in expr:
        raise ValueError(f"unexpanded template variable in {expr!r}")
    return expr


def query(prometheus: str, expr: str, *, instant: bool, window_s: float = 60.0) -> list[dict[str, Any]]:
    """The result list of an instant query, or of a range query over the last `window_s` seconds."""
    now = time.time()
    if instant:
        path, params = "/api/v1/query", {"query": expr, "time": now}
    else:
        path, params = "/api/v1/query_range", {"query": expr, "start": now - window_s, "end": now, "step": "1s"}
    url = prometheus.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise QueryError(f"{expr}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise QueryError(f"{expr}: cannot reach {prometheus}: {exc}") from None
    if body.get("status") != "success":
        raise QueryError(f"{expr}: {body.get('error', body)}")
    return body["data"]["result"]


def check(prometheus: str, queries: list[PanelQuery], *, model: str = ".*", rate_interval: str = "15s",
          range_: str = "5m", window_s: float = 60.0) -> list[PanelQuery]:
    """The queries that returned no series; raises QueryError on the first one that fails."""
    return [q for q in queries
            if not query(prometheus, substitute(q.expr, model=model, rate_interval=rate_interval, range_=range_),
                         instant=q.instant, window_s=window_s)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", action="append", choices=DASHBOARD_FILES, help="default: all three")
    parser.add_argument("--model", default=".*", help="value of the model variable (a regex; default: all)")
    parser.add_argument("--rate-interval", default="15s")
    parser.add_argument("--range", dest="range_", default="5m")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of history for range queries")
    args = parser.parse_args(argv)
    queries = panel_queries(tuple(args.dashboard or DASHBOARD_FILES))
    try:
        empty = check(args.prometheus, queries, model=args.model, rate_interval=args.rate_interval,
                      range_=args.range_, window_s=args.window)
    except QueryError as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 2
    for q in empty:
        print(f"no series: {q}: {q.expr}")
    print(f"{len(queries) - len(empty)}/{len(queries)} panel queries returned series")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
