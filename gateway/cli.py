"""`distillgate` command line: serve, check-config, hash-key, plus subcommands other packages register.

A plug-in module defines `register(subparsers)`; each parser it adds sets defaults `handler=fn` and
`needs_config=True/False`, and is called as `fn(args, config_or_None) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from gateway.auth import hash_key
from gateway.config import ConfigError, DistillgateConfig, load_config

PLUGINS = ("evaluator.cli", "redistill.cli", "gateway.demo.cli")
DEFAULT_CONFIG = "examples/gateway.yaml"


def _serve(args: argparse.Namespace, config: DistillgateConfig) -> int:
    from gateway.app import create_app

    run_server(create_app(config, tune_gc=True), config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def run_server(app: Any, config: DistillgateConfig, *, host: str | None = None, port: int | None = None,
               log_level: str = "info") -> None:
    """Serve `app` (the gateway, or anything wrapping it: bench/proxy_instructions.py) as `serve` does."""
    import uvicorn

    uvicorn.run(
        app,
        host=host or config.server.host,
        port=port or config.server.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the gateway's own sampled access log (server.access_log) replaces uvicorn's
        proxy_headers=config.server.proxy_headers,
        server_header=config.server.server_header,
        log_level=log_level,
        timeout_graceful_shutdown=config.evaluator.drain_timeout_s + 5,
    )


def _check_config(args: argparse.Namespace, config: DistillgateConfig) -> int:
    print(f"config OK: {len(config.models)} model(s) [{', '.join(config.models)}], "
          f"{len(config.upstreams)} upstream(s), auth mode {config.auth.mode}")
    return 0


def _hash_key(args: argparse.Namespace, config: DistillgateConfig | None) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("error: no key on stdin", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillgate", description="Serve a distilled student in place of a teacher, and keep it honest.")
    parser.add_argument("--config", default=os.environ.get("DISTILLGATE_CONFIG", DEFAULT_CONFIG),
                        help="config YAML (default: $DISTILLGATE_CONFIG or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (uvicorn, one worker)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=_serve, needs_config=True)

    check = sub.add_parser("check-config", help="validate the config and exit")
    check.set_defaults(handler=_check_config, needs_config=True)

    hk = sub.add_parser("hash-key", help="print the sha256 of an API key read from stdin (for auth.keys[].sha256)")
    hk.set_defaults(handler=_hash_key, needs_config=False)

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name != name:  # the plug-in exists but is broken: say so, keep the core commands working
                logging.getLogger("distillgate").warning("cli plug-in %s failed to import: %s", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    config = None
    if getattr(args, "needs_config", True):
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return int(args.handler(args, config) or 0)


if __name__ == "__main__":
    sys.exit(main())
