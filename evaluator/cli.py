"""`distillgate report`: the evaluator's plug-in to the gateway's command line (register(subparsers))."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 30m, 24h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("report", help="write an HTML (or JSON) report of agreement, drift and cost")
    parser.add_argument("--since", type=parse_duration, default=parse_duration("24h"), help="look-back, e.g. 24h, 7d")
    parser.add_argument("--out", default="report.html", help="output file")
    parser.add_argument("--format", choices=["html", "json"], default="html")
    parser.add_argument("--model", action="append", help="logical model (repeatable; default: all in the config)")
    parser.set_defaults(handler=run_report, needs_config=True)


def run_report(args: argparse.Namespace, config: Any) -> int:
    """`config` is the full DistillgateConfig; only its `evaluator` and `models` sections are read."""
    # Imported here, not at module level: registering this plug-in must stay cheap for `distillgate serve`.
    from evaluator.report import build_report
    from evaluator.report_html import render_html
    from evaluator.store import PairStore

    unknown = [m for m in args.model or [] if m not in config.models]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; configured: {', '.join(sorted(config.models))}",
              file=sys.stderr)
        return 2
    settings = config.evaluator
    store = PairStore(settings.store.url, settings.store)
    try:
        store.migrate()  # a fresh install reports on an empty store rather than failing on missing tables
        now = time.time()
        report = build_report(store, config.models, settings, since=now - args.since, until=now, only=args.model)
    finally:
        store.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) if args.format == "json" else render_html(report))
    print(f"wrote {out}")
    return 0
