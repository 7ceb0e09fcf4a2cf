"""Write a copy of distillgate's Prometheus rules with overridden `for:` durations and thresholds.

The committed rules (dashboards/rules/*.yaml) carry production values: alerts wait 10-30 minutes.
The demo and the end-to-end test need the same rules to fire within seconds, so they render a copy:

    python dashboards/render_rules.py OUT_DIR --for 0s --interval 1s --rate-window 30s \
        --threshold StudentAgreementLow=0.9 --for-alert InputDriftHigh=5s

or, from Python (no package import needed):

    import runpy
    render = runpy.run_path("dashboards/render_rules.py")["render_rules"]
    paths = render(out_dir, for_all="0s", thresholds={"StudentAgreementLow": 0.9}, interval="1s")

OUT_DIR receives recording.yaml and alerts.yaml; point Prometheus' `rule_files` at OUT_DIR/*.yaml.
Thresholds are the `<op> <number>` comparisons that end a line of an alert's expression (see the
header of rules/alerts.yaml); an override for an alert without one, or for an unknown alert or
malformed duration, raises ValueError (exit status 2 from the CLI).
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

RULES_DIR = Path(__file__).resolve().parent / "rules"
RULE_FILES = ("recording.yaml", "alerts.yaml")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
# A comparison with a number literal at the end of a line: the alert's threshold.
_THRESHOLD = re.compile(r"(?P<op>[<>]=?|==|!=)\s*(?P<num>-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*$", re.MULTILINE)
_RATE_WINDOW = re.compile(r"\[5m\]")


class _BlockDumper(yaml.SafeDumper):
    """Keeps multi-line PromQL readable in the rendered files (block scalars, not escaped strings)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def _duration(value: str, what: str) -> str:
    if not _DURATION.match(value):
        raise ValueError(f"{what}: {value!r} is not a Prometheus duration (e.g. 0s, 30s, 5m)")
    return value


def _set_threshold(expr: str, alert: str, value: float) -> str:
    if not _THRESHOLD.search(expr):
        raise ValueError(f"{alert}: its expression has no `<op> <number>` threshold to override")
    return _THRESHOLD.sub(lambda m: f"{m.group('op')} {value!r}", expr)


def render_documents(
    documents: Mapping[str, dict[str, Any]],
    *,
    for_all: str | None = None,
    for_by_alert: Mapping[str, str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    interval: str | None = None,
    rate_window: str | None = None,
    runbook_base: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Return rewritten copies of rule documents ({file name: parsed YAML}); inputs are not modified."""
    for_by_alert = dict(for_by_alert or {})
    thresholds = dict(thresholds or {})
    if for_all is not None:
        _duration(for_all, "--for")
    for name, value in for_by_alert.items():
        _duration(value, f"--for-alert {name}")
    if interval is not None:
        _duration(interval, "--interval")
    if rate_window is not None:
        _duration(rate_window, "--rate-window")
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for file_name, doc in documents.items():
        doc = copy.deepcopy(doc)
        for group in doc.get("groups", []):
            if interval is not None:
                group["interval"] = interval
            for rule in group.get("rules", []):
                if rate_window is not None:
                    rule["expr"] = _RATE_WINDOW.sub(f"[{rate_window}]", rule["expr"])
                alert = rule.get("alert")
                if alert is None:
                    continue
                seen.add(alert)
                if alert in for_by_alert:
                    rule["for"] = for_by_alert[alert]
                elif for_all is not None:
                    rule["for"] = for_all
                if alert in thresholds:
                    rule["expr"] = _set_threshold(rule["expr"], alert, thresholds[alert])
                url = rule.get("annotations", {}).get("runbook_url")
                if runbook_base and url and "#" in url:
                    rule["annotations"]["runbook_url"] = runbook_base.rstrip("/") + "#" + url.split("#", 1)[1]
        out[file_name] = doc
    unknown = (set(for_by_alert) | set(thresholds)) - seen
    if unknown:
        raise ValueError(f"unknown alert(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(seen))}")
    return out


def render_rules(out_dir: str | Path, *, rules_dir: str | Path = RULES_DIR, **overrides: Any) -> list[Path]:
    """Render rules_dir's rule files into out_dir with `overrides` (see render_documents); returns the paths."""
    src = Path(rules_dir)
    docs = {name: yaml.safe_load((src / name).read_text()) for name in RULE_FILES}
    rendered = render_documents(docs, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc in rendered.items():
        path = out / name
        path.write_text("# Rendered by dashboards/render_rules.py; edit dashboards/rules/ instead.\n"
                        + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=1000))
        paths.append(path)
    return paths


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected ALERT=VALUE, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write recording.yaml and alerts.yaml into")
    parser.add_argument("--rules-dir", default=str(RULES_DIR), help="source rules (default: %(default)s)")
    parser.add_argument("--for", dest="for_all", help="`for:` for every alert, e.g. 0s")
    parser.add_argument("--for-alert", type=_pair, action="append", default=[], metavar="ALERT=DURATION")
    parser.add_argument("--threshold", type=_pair, action="append", default=[], metavar="ALERT=NUMBER")
    parser.add_argument("--interval", help="evaluation interval of every rule group, e.g. 1s")
    parser.add_argument("--rate-window", help="replace the 5m rate windows, e.g. 30s")
    parser.add_argument("--runbook-base", help="absolute URL of RUNBOOK.md for runbook_url annotations")
    args = parser.parse_args(argv)
    try:
        thresholds = {name: float(value) for name, value in args.threshold}
    except ValueError as exc:
        parser.error(f"--threshold: {exc}")
    try:
        paths = render_rules(
            args.out_dir,
            rules_dir=args.rules_dir,
            for_all=args.for_all,
            for_by_alert=dict(args.for_alert),
            thresholds=thresholds,
            interval=args.interval,
            rate_window=args.rate_window,
            runbook_base=args.runbook_base,
        )
    except ValueError as exc:
        print(f"render_rules: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
