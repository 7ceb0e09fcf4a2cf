"""Generate distillgate's Grafana dashboards (gateway.json, distillation-health.json, redistill.json).

    python dashboards/generate.py            # (re)write the JSON next to this file (`make dashboards`)
    python dashboards/generate.py --check    # exit 1 if the committed JSON differs from a fresh build

It also refreshes the Helm chart's copies (helm/distillgate/files/): the dashboards and rules/*.yaml,
which the chart's ConfigMaps and PrometheusRule read with .Files (a chart cannot read outside itself).

Built with grafana-foundation-sdk (Grafana 11.6 schema). Every query reads the Prometheus datasource
chosen by the `datasource` template variable and filters on the `model` variable; metric names come
from the team catalog and the recording rules in rules/recording.yaml (tests/ops keeps them in sync).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash
from grafana_foundation_sdk.models import prometheus

OUT_DIR = Path(__file__).resolve().parent
CHART_FILES = OUT_DIR.parent / "helm" / "distillgate" / "files"
RULE_FILES = ("recording.yaml", "alerts.yaml")
DS = dash.DataSourceRef(type_val="prometheus", uid="${datasource}")
M = 'model=~"$model"'  # the model filter every query carries
RATE = "$__rate_interval"
RANGE = "$__range"
TAGS = ["distillgate"]
TOKENS_PER_S = "suffix: tok/s"


@dataclass(frozen=True)
class Q:
    """One Prometheus query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False  # one row per series, labels as columns


@dataclass
class Grid:
    """Lays panels left to right, 24 columns wide, wrapping to a new line."""

    x: int = 0
    y: int = 0
    row_h: int = 0
    next_id: int = 1

    def place(self, w: int, h: int) -> tuple[dash.GridPos, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = dash.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        pid = self.next_id
        self.next_id += 1
        return pos, pid

    def new_row(self) -> tuple[dash.GridPos, int]:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = dash.GridPos(h=1, w=24, x=0, y=self.y)
        self.y += 1
        pid = self.next_id
        self.next_id += 1
        return pos, pid


def _targets(queries: tuple[Q, ...]) -> list[prom_b.Dataquery]:
    out = []
    for i, q in enumerate(queries):
        t = prom_b.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DS)
        t = t.legend_format(q.legend or "__auto")
        if q.table:
            t = t.format(prometheus.PromQueryFormat.TABLE)
        out.append(t.instant() if q.instant else t.range())
    return out


def _thresholds(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return (dash_b.ThresholdsConfig().mode(dash.ThresholdsMode.ABSOLUTE)
            .steps([dash.Threshold(value=v, color=c) for v, c in steps]))


class Board:
    """A dashboard under construction: rows and panels placed on a grid."""

    def __init__(self, uid: str, title: str, description: str, model_metric: str) -> None:
        self.grid = Grid()
        self.builder = (
            dash_b.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .refresh("30s").time("now-6h", "now").timezone("browser").editable()
            .tooltip(dash.DashboardCursorSync.CROSSHAIR)
            .with_variable(dash_b.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
            .with_variable(
                dash_b.QueryVariable("model").label("Model").datasource(DS)
                .query({"qryType": 1, "query": f"label_values({model_metric}, model)", "refId": "PrometheusVariableQueryEditor-VariableQuery"})
                .refresh(dash.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dash.VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True).all_value(".*")
            )
        )
        self.extra_annotations: list[dict] = []

    def row(self, title: str) -> None:
        pos, pid = self.grid.new_row()
        self.builder = self.builder.with_row(dash_b.Row(title).grid_pos(pos).id(pid))

    def timeseries(self, title: str, unit: str, *queries: Q, description: str = "", w: int = 12, h: int = 8,
                   style: Callable[[ts_b.Panel], ts_b.Panel] | None = None) -> None:
        pos, pid = self.grid.place(w, h)
        p = (ts_b.Panel().id(pid).title(title).description(description).datasource(DS).grid_pos(pos)
             .unit(unit).targets(_targets(queries)).line_width(1).fill_opacity(10)
             .legend(common_b.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"]))
             .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)))
        if style is not None:
            p = style(p)
        self.builder = self.builder.with_panel(p)

    def stat(self, title: str, unit: str, *queries: Q, description: str = "", w: int = 6, h: int = 5,
             thresholds: dash_b.ThresholdsConfig | None = None) -> None:
        pos, pid = self.grid.place(w, h)
        p = (stat_b.Panel().id(pid).title(title).description(description).datasource(DS).grid_pos(pos)
             .unit(unit).targets(_targets(queries))
             .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .graph_mode(common.BigValueGraphMode.AREA).color_mode(common.BigValueColorMode.VALUE))
        if thresholds is not None:
            p = p.thresholds(thresholds)
        self.builder = self.builder.with_panel(p)

    def table(self, title: str, *queries: Q, description: str = "", w: int = 12, h: int = 6) -> None:
        pos, pid = self.grid.place(w, h)
        p = (table_b.Panel().id(pid).title(title).description(description).datasource(DS).grid_pos(pos)
             .unit("none").targets(_targets(queries)))
        self.builder = self.builder.with_panel(p)

    def annotation(self, name: str, color: str, expr: str, title: str, text: str) -> None:
        self.builder = self.builder.annotation(
            dash_b.AnnotationQuery().name(name).datasource(DS).enable(True).icon_color(color).expr(expr))
        # Prometheus annotation fields the SDK's model lacks; added to the JSON by `build`.
        self.extra_annotations.append({"name": name, "titleFormat": title, "textFormat": text,
                                       "step": "60s", "useValueForTime": False, "tagKeys": "model,status"})

    def build(self) -> dict:
        data = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder))
        by_name = {a["name"]: a for a in self.extra_annotations}
        for ann in data.get("annotations", {}).get("list", []):
            ann.update({k: v for k, v in by_name.get(ann.get("name"), {}).items() if k != "name"})
        return data


def _threshold_line(value: float) -> Callable[[ts_b.Panel], ts_b.Panel]:
    def style(p: ts_b.Panel) -> ts_b.Panel:
        return (p.thresholds(_thresholds((None, "green"), (value, "red")))
                .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)))
    return style


def _counter_moved(selector: str) -> str:
    """Series whose counter went up in the last 2 minutes, including one born already at 1
    (the first promotion of a model), which `changes()` alone cannot see."""
    return f"changes({selector}[2m]) > 0 or ({selector} unless {selector} offset 2m)"


def _bars(p: ts_b.Panel) -> ts_b.Panel:
    return p.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)


def _quantiles(metric: str, by: str, label: str) -> tuple[Q, Q]:
    return (
        Q(f"histogram_quantile(0.5, sum by ({by}, le) (rate({metric}_bucket{{{M}}}[{RATE}])))", f"p50 {label}"),
        Q(f"histogram_quantile(0.99, sum by ({by}, le) (rate({metric}_bucket{{{M}}}[{RATE}])))", f"p99 {label}"),
    )


def gateway() -> dict:
    b = Board("distillgate-gateway", "distillgate / Gateway",
              "Traffic, latency, throughput and reliability of the distillgate gateway.", "distillgate_requests_total")
    b.row("Traffic")
    b.timeseries("Requests by route", "reqps",
                 Q(f"model_route:distillgate_requests:rate5m{{{M}}}", "{{model}} {{route}}"),
                 description="Requests answered per second (5-minute rate), by the side that answered (student or teacher).")
    b.timeseries("Requests by status", "reqps",
                 Q(f"sum by (model, status) (model_route_status:distillgate_requests:rate5m{{{M}}})", "{{model}} {{status}}"),
                 description="HTTP status codes returned to clients, including gateway errors (401, 413, 429, 502, 504).")
    b.timeseries("Requests by model", "reqps",
                 Q(f"model:distillgate_requests:rate5m{{{M}}}", "{{model}}"), w=8)
    b.timeseries("Server error ratio (5xx)", "percentunit",
                 Q(f"model_route:distillgate_request_errors:ratio_rate5m{{{M}}}", "{{model}} {{route}}"), w=8,
                 description="Share of requests ending in a 5xx over 5 minutes; StudentErrorRateHigh fires above 5% on the student route.",
                 style=_threshold_line(0.05))
    b.stat("In-flight requests", "short",
           Q(f"sum by (model) (distillgate_in_flight_requests{{{M}}})", "{{model}}"), w=8, h=8)
    b.row("Latency")
    b.timeseries("End-to-end latency", "s",
                 Q(f"model_route:distillgate_request_duration_seconds:p50_5m{{{M}}}", "p50 {{model}} {{route}}"),
                 Q(f"model_route:distillgate_request_duration_seconds:p99_5m{{{M}}}", "p99 {{model}} {{route}}"),
                 description="Time from request received to last byte sent (5-minute window).")
    b.timeseries("Gateway overhead", "s",
                 Q(f"model:distillgate_overhead_seconds:p50_5m{{{M}}}", "p50 {{model}}"),
                 Q(f"model:distillgate_overhead_seconds:p99_5m{{{M}}}", "p99 {{model}}"),
                 description="Total minus upstream time: what the gateway itself adds. GatewayOverheadHigh fires above 50 ms at p99.",
                 style=_threshold_line(0.05))
    b.timeseries("Time to first token (streams)", "s", *_quantiles("distillgate_ttft_seconds", "model, route", "{{model}} {{route}}"))
    b.timeseries("Inter-token latency (streams)", "s", *_quantiles("distillgate_inter_token_seconds", "model, route", "{{model}} {{route}}"))
    b.row("Throughput")
    b.timeseries("Tokens per second", TOKENS_PER_S,
                 Q(f"sum by (model, route) (rate(distillgate_prompt_tokens_total{{{M}}}[{RATE}]))", "prompt {{model}} {{route}}"),
                 Q(f"sum by (model, route) (rate(distillgate_completion_tokens_total{{{M}}}[{RATE}]))", "completion {{model}} {{route}}"),
                 w=24)
    b.row("Reliability")
    b.timeseries("Fallbacks to the teacher", "reqps",
                 Q(f"sum by (model) (rate(distillgate_fallbacks_total{{{M}}}[{RATE}]))", "{{model}}"), w=8,
                 description="Requests the teacher answered because the student failed or its breaker was open.")
    b.timeseries("Upstream retries", "reqps",
                 Q(f"sum by (model, route) (rate(distillgate_retries_total{{{M}}}[{RATE}]))", "{{model}} {{route}}"), w=8)
    b.timeseries("Rate-limited requests", "reqps",
                 Q(f"sum by (model) (rate(distillgate_rate_limited_total{{{M}}}[{RATE}]))", "{{model}}"), w=8)

    def breaker_style(p: ts_b.Panel) -> ts_b.Panel:
        return (p.min(0).max(2).line_interpolation(common.LineInterpolation.STEP_AFTER)
                .mappings([dash.ValueMap(options={
                    "0": dash.ValueMappingResult(text="closed", color="green"),
                    "1": dash.ValueMappingResult(text="half-open", color="orange"),
                    "2": dash.ValueMappingResult(text="open", color="red")})]))

    b.timeseries("Circuit breaker state", "none",
                 Q(f"max by (model, route) (distillgate_breaker_state{{{M}}})", "{{model}} {{route}}"),
                 description="0 = closed, 1 = half-open, 2 = open (requests skip this upstream).", w=24, style=breaker_style)
    return b.build()


def distillation_health() -> dict:
    b = Board("distillgate-distillation-health", "distillgate / Distillation health",
              "How closely the student follows the teacher on live traffic, drift, the shadow pipeline and cost.",
              "distillgate_requests_total")
    b.row("Agreement")

    def band_style(p: ts_b.Panel) -> ts_b.Panel:
        # Bounds drawn thin and dashed around the solid point estimate: the confidence band.
        dashed = [dash.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [4, 4]}),
                  dash.DynamicConfigValue(id_val="custom.fillOpacity", value=0)]
        return (p.min(0).max(1).fill_opacity(0).line_width(2)
                .override_by_query("B", dashed).override_by_query("C", dashed))

    b.timeseries("Agreement by version and slice (95% interval)", "percentunit",
                 Q(f"distillgate_agreement_ratio{{{M}}}", "{{model}} {{version}} {{slice}}"),
                 Q(f"distillgate_agreement_lower_bound_ratio{{{M}}}", "lower {{model}} {{version}} {{slice}}"),
                 Q(f"distillgate_agreement_upper_bound_ratio{{{M}}}", "upper {{model}} {{version}} {{slice}}"),
                 description="Rolling agreement with the teacher per model, version and slice; dashed lines are the Wilson interval.",
                 w=16, h=9, style=band_style)
    b.stat("Serving version: agreement lower bound", "percentunit",
           Q(f"model:distillgate_agreement_lower_bound_ratio:min_live{{{M}}}", "{{model}}"),
           description="Worst slice of the version serving traffic; StudentAgreementLow fires below 80% for 15 minutes.",
           w=8, h=9, thresholds=_thresholds((None, "red"), (0.8, "green")))
    b.timeseries("Scored pairs", "ops",
                 Q(f"sum by (model, version, status) (rate(distillgate_pairs_total{{{M}}}[{RATE}]))", "{{model}} {{version}} {{status}}"),
                 description="Shadow pairs scored per second, agreeing and disagreeing.")
    b.timeseries("Pairs in the agreement window", "short",
                 Q(f"distillgate_agreement_samples{{{M}}}", "{{model}} {{version}} {{slice}}"))
    b.row("Drift")
    b.timeseries("Drift scores (PSI)", "none",
                 Q(f"max by (model) (distillgate_input_drift_score{{{M}}})", "input {{model}}"),
                 Q(f"max by (model) (distillgate_output_drift_score{{{M}}})", "output {{model}}"),
                 description="0 = no drift; InputDriftHigh / OutputDriftHigh fire above 0.25 for 30 minutes.",
                 w=8, style=_threshold_line(0.25))
    b.timeseries("Drift test p-values", "none",
                 Q(f"min by (model) (distillgate_input_drift_p_value{{{M}}})", "input {{model}}"),
                 Q(f"min by (model) (distillgate_output_drift_p_value{{{M}}})", "output {{model}}"), w=8,
                 style=lambda p: p.scale_distribution(common_b.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)))
    b.timeseries("Drift classifier AUC", "none",
                 Q(f"max by (model) (distillgate_drift_classifier_auc{{{M}}})", "{{model}}"), w=8,
                 description="0.5 = current traffic indistinguishable from the reference.")
    b.row("Shadow pipeline")
    b.timeseries("Shadow sampling rate", "percentunit",
                 Q(f"sum by (model) (rate(distillgate_shadow_sampled_total{{{M}}}[{RATE}])) / sum by (model) (rate(distillgate_shadow_offered_total{{{M}}}[{RATE}]))", "{{model}}"),
                 description="Share of served requests also sent to the other model.", w=8)
    b.timeseries("Shadow queue depth", "short",
                 Q("sum(distillgate_shadow_queue_depth)", "shadow queue"),
                 Q("sum(distillgate_store_queue_depth)", "store queue"), w=8,
                 description="Work waiting for evaluator workers and for the store writer (all models).")
    b.timeseries("Shadow drops by reason", "ops",
                 Q(f"sum by (model, status) (rate(distillgate_shadow_dropped_total{{{M}}}[{RATE}]))", "{{model}} {{status}}"), w=8,
                 description="queue_full drops bias the sample (ShadowQueueDropping); spend_cap drops are the teacher budget working.")
    b.timeseries("Shadow calls completed", "ops",
                 Q(f"sum by (model, status) (rate(distillgate_shadow_completed_total{{{M}}}[{RATE}]))", "{{model}} {{status}}"))
    b.timeseries("Cascade escalation rate", "percentunit",
                 Q(f"model:distillgate_escalations:ratio_rate5m{{{M}}}", "{{model}}"),
                 description="Share of cascade checks that escalated the request to the teacher.")
    b.row("Cost")
    b.timeseries("Teacher spend", "currencyUSD",
                 Q(f"sum by (model) (rate(distillgate_teacher_spend_dollars_total{{{M}}}[{RATE}])) * 3600", "{{model}} $/h"),
                 description="Dollars per hour spent on the teacher (served and shadow traffic).", w=8)
    b.timeseries("Teacher tokens", TOKENS_PER_S,
                 Q(f"sum by (model) (rate(distillgate_teacher_tokens_total{{{M}}}[{RATE}]))", "{{model}}"), w=8)
    b.stat("Dollars saved in range", "currencyUSD",
           Q(f"sum by (model) (increase(distillgate_saved_dollars_total{{{M}}}[{RANGE}]))", "{{model}}", instant=True),
           description="Versus sending every request to the teacher, over the dashboard's time range.", w=8, h=8)
    return b.build()


def redistill() -> dict:
    b = Board("distillgate-redistill", "distillgate / Re-distillation",
              "Triggers, re-distillation jobs, gate results and version promotions.", "distillgate_requests_total")
    b.annotation("Promotions", "green", _counter_moved(f'distillgate_promotions_total{{{M},status="live"}}'),
                 "Promoted to live: {{model}}", "A new version of {{model}} went live")
    b.annotation("Rollbacks", "red", _counter_moved(f'distillgate_promotions_total{{{M},status="rolled_back"}}'),
                 "Rolled back: {{model}}", "{{model}} was rolled back to its previous version")
    b.row("Versions")
    b.table("Active versions",
            Q(f"max by (model, version, status) (distillgate_model_version_info{{{M}}}) == 1", "{{model}} {{version}} {{status}}", instant=True, table=True),
            description="Live and canary versions per model (from the registry).")
    b.timeseries("Promotions by stage", "short",
                 Q(f"sum by (model, status) (increase(distillgate_promotions_total{{{M}}}[{RATE}]))", "{{model}} {{status}}"),
                 description="Version moves: shadow, canary, live, rolled_back.", style=_bars)
    b.row("Triggers and jobs")
    b.timeseries("Triggers", "short",
                 Q(f"sum by (model, status) (increase(distillgate_redistill_triggers_total{{{M}}}[{RATE}]))", "{{model}} {{status}}"),
                 description="Alerts, watcher and manual triggers: accepted, or why not (duplicate, cooldown, skipped).", w=8, style=_bars)
    b.timeseries("Jobs by state", "short",
                 Q(f"sum by (model, status) (increase(distillgate_redistill_jobs_total{{{M}}}[{RATE}]))", "{{model}} {{status}}"),
                 Q(f"max by (model) (distillgate_redistill_job_running{{{M}}})", "running {{model}}"), w=8, style=_bars)
    b.stat("Jobs in range", "short",
           Q(f"sum by (status) (increase(distillgate_redistill_jobs_total{{{M}}}[{RANGE}]))", "{{status}}", instant=True), w=8, h=8)
    b.timeseries("Job duration", "s",
                 Q(f"sum by (model) (rate(distillgate_redistill_job_duration_seconds_sum{{{M}}}[{RANGE}])) / sum by (model) (rate(distillgate_redistill_job_duration_seconds_count{{{M}}}[{RANGE}]))", "mean {{model}}"),
                 Q(f"histogram_quantile(0.9, sum by (model, le) (rate(distillgate_redistill_job_duration_seconds_bucket{{{M}}}[{RANGE}])))", "p90 {{model}}"),
                 description="Over the dashboard's time range: jobs are rare.")
    b.stat("Gate results in range", "short",
           Q(f"sum by (model, status) (increase(distillgate_gate_results_total{{{M}}}[{RANGE}]))", "{{model}} {{status}}", instant=True),
           description="Candidates that passed or failed the gate against the teacher.", w=12, h=8,
           thresholds=_thresholds((None, "blue")))
    return b.build()


DASHBOARDS: dict[str, Callable[[], dict]] = {
    "gateway.json": gateway,
    "distillation-health.json": distillation_health,
    "redistill.json": redistill,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=True) + "\n"


def expected_files(out: Path, chart_files: Path | None) -> dict[Path, str]:
    """Every file this script owns, with the text it should have."""
    files = {out / name: render(name) for name in DASHBOARDS}
    if chart_files is not None:
        files.update({chart_files / "dashboards" / name: render(name) for name in DASHBOARDS})
        files.update({chart_files / "rules" / name: (OUT_DIR / "rules" / name).read_text() for name in RULE_FILES})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate distillgate's Grafana dashboards.")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: dashboards/)")
    parser.add_argument("--chart-files", type=Path, default=CHART_FILES,
                        help="the Helm chart's files/ directory to refresh (default: %(default)s)")
    parser.add_argument("--no-chart", action="store_true", help="do not touch the Helm chart's copies")
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)
    files = expected_files(args.out, None if args.no_chart else args.chart_files)
    stale = []
    for path, text in files.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path)
    if stale:
        print(f"stale files (run `make dashboards`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
