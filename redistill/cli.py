"""`distillgate` subcommands for the loop (plug-in: gateway.cli calls ``register(subparsers)``).

redistill      run a job now, in this process (progress on the terminal), then hand a gated
               candidate to vLLM as a shadow version
redistill-job  what runners launch (internal)
rollback       undo the newest version change of a model
dataset        sample | import-review: human review of the newest dataset
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    m = DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90m, 7d)")
    return float(m.group(1)) * UNITS[m.group(2)]


def register(subparsers: Any) -> None:
    r = subparsers.add_parser("redistill", help="build a dataset, distill, gate and register a new version now")
    r.add_argument("--model", required=True)
    r.add_argument("--since", type=parse_duration, default=None, help="pairs newer than this (e.g. 7d)")
    r.add_argument("--dry-run", action="store_true", help="build and report the dataset only")
    r.add_argument("--no-promote", action="store_true", help="do not load the candidate into vLLM")
    r.set_defaults(handler=_redistill, needs_config=True)

    j = subparsers.add_parser("redistill-job", help="(internal) the job process runners launch")
    j.add_argument("--model", required=True)
    j.add_argument("--job-id", required=True)
    j.add_argument("--since", type=parse_duration, default=None)
    j.add_argument("--dry-run", action="store_true")
    j.set_defaults(handler=_redistill_job, needs_config=True)

    rb = subparsers.add_parser("rollback", help="reject the canary/shadow, else restore the previous live version")
    rb.add_argument("--model", required=True)
    rb.add_argument("--reason", default="manual rollback (cli)")
    rb.set_defaults(handler=_rollback, needs_config=True)

    d = subparsers.add_parser("dataset", help="human review of distillation datasets")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    s = dsub.add_parser("sample", help="write a stratified sample for review")
    s.add_argument("--model", required=True)
    s.add_argument("--dataset", type=Path, default=None, help="dataset dir (default: the model's newest)")
    s.add_argument("--n", type=int, default=50)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(handler=_dataset_sample, needs_config=True)
    i = dsub.add_parser("import-review", help="drop rejected examples into a new dataset version")
    i.add_argument("--model", required=True)
    i.add_argument("--dataset", type=Path, default=None)
    i.add_argument("--file", type=Path, required=True)
    i.set_defaults(handler=_dataset_import, needs_config=True)


def _print(data: dict[str, Any]) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def _redistill(args: argparse.Namespace, config: Any) -> int:
    from redistill.job import run_job

    if args.model not in config.models:
        print(f"error: unknown model {args.model!r}", file=sys.stderr)
        return 2
    job_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    outcome = run_job(config, args.model, job_id, since_s=args.since, dry_run=args.dry_run)
    summary = {"job": job_id, "status": outcome.status, "version": outcome.version_id,
               "dataset": outcome.dataset_dir, "counts": outcome.counts, "error": outcome.error}
    if outcome.gate_report:
        summary["gate"] = {k: outcome.gate_report.get(k) for k in ("passed", "retention", "candidate_score",
                                                                   "current_score", "reasons")}
    if outcome.status == "succeeded" and not args.no_promote:
        summary["promotion"] = asyncio.run(_submit(config, outcome.version_id))
    _print(summary)
    return outcome.exit_code


async def _submit(config: Any, version_id: str | None) -> str:
    from redistill.assemble import admin_factory
    from redistill.promote import AdapterError, PromotionController
    from redistill.registry import Registry
    from evaluator.store.engine import create_store_engine

    engine = create_store_engine(config.evaluator.store.url)
    admins = admin_factory(config)
    controller = PromotionController(Registry(engine), admins, _no_agreement, config.redistill.promote,
                                     list(config.models))
    try:
        version = await controller.submit(str(version_id))
        return f"loaded into vLLM as {version.id}, now {version.status}"
    except (AdapterError, OSError) as exc:
        return f"not loaded: {exc}"
    finally:
        for admin in admins.cache.values():  # type: ignore[attr-defined]
            await admin.close()
        engine.dispose()


def _no_agreement(model: str, version: str) -> Any:
    raise RuntimeError("the CLI does not judge stages; the gateway's controller does")


def _redistill_job(args: argparse.Namespace, config: Any) -> int:
    from redistill.runners import STACK_DUMP_SIGNAL

    # Its stderr is the job's log: a crash in native code leaves a traceback there, and a runner about to stop
    # a job past its deadline first asks for every thread's stack, so a stuck job says where it was stuck
    # (registered before the heavy imports below, which are one place a job has been stuck).
    faulthandler.enable()
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True)
    from redistill.job import run_job
    outcome = run_job(config, args.model, args.job_id, since_s=args.since, dry_run=args.dry_run)
    _print({"job": args.job_id, "status": outcome.status, "version": outcome.version_id, "error": outcome.error})
    return outcome.exit_code


def _rollback(args: argparse.Namespace, config: Any) -> int:
    from redistill.assemble import admin_factory
    from redistill.promote import PromotionController
    from redistill.registry import Registry
    from evaluator.store.engine import create_store_engine

    if args.model not in config.models:
        print(f"error: unknown model {args.model!r}", file=sys.stderr)
        return 2

    async def run() -> Any:
        engine = create_store_engine(config.evaluator.store.url)
        admins = admin_factory(config)
        controller = PromotionController(Registry(engine), admins, _no_agreement, config.redistill.promote,
                                         [args.model], unload_grace_s=0.0)
        try:
            active = await controller.rollback(args.model, args.reason)
            await controller.tick_unloads()
            return active
        finally:
            for admin in admins.cache.values():  # type: ignore[attr-defined]
                await admin.close()
            engine.dispose()

    active = asyncio.run(run())
    _print({"model": args.model, "live": active.live.id if active.live else "base",
            "canary": active.canary.id if active.canary else None})
    return 0


def _dataset_for(args: argparse.Namespace, config: Any) -> Any:
    from redistill.manifest import load_dataset, model_datasets

    if args.dataset is not None:
        return load_dataset(args.dataset)
    found = model_datasets(Path(config.redistill.workdir) / "datasets", args.model)
    if not found:
        raise SystemExit(f"error: no dataset for {args.model} yet (run `distillgate redistill --dry-run`)")
    return found[-1]


def _dataset_sample(args: argparse.Namespace, config: Any) -> int:
    from redistill.review import write_review_file

    ds = _dataset_for(args, config)
    n = write_review_file(ds, args.n, args.out)
    print(f"wrote {n} examples from {ds.directory} to {args.out}; set each line's \"review\" to accept|reject")
    return 0


def _dataset_import(args: argparse.Namespace, config: Any) -> int:
    from redistill.review import ReviewError, import_review

    ds = _dataset_for(args, config)
    try:
        new = import_review(ds, args.file, ds.directory.with_name(ds.directory.name + "-reviewed-" + uuid.uuid4().hex[:4]))
    except ReviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print({"dataset": str(new.directory), "hash": new.hash, "review": new.manifest["review"]})
    return 0
