"""One re-distillation job, run in its own process: dataset -> train -> gate -> register.

The job writes its verdict to the jobs table itself (succeeded = a gated candidate was registered,
rejected = the gate said no, failed = an error). It never changes which version serves traffic:
loading the adapter and the shadow/canary/live stages belong to the PromotionController.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from evaluator.scorers import build_scorer
from evaluator.store.pairs import PairStore
from redistill.dataset import BuildInputs, build_dataset, teacher_seed_records
from redistill.filters import scorer_validator
from redistill.gate import HeldoutSet, evaluate_gate
from redistill.generate import LocalGenerator
from redistill.jobs import JobStore
from redistill.manifest import model_datasets
from redistill.registry import Registry, new_version_id
from redistill.teacher_client import TeacherClient
from redistill.train import train

log = logging.getLogger(__name__)


class JobError(Exception):
    """The job cannot run as configured; the message says which setting."""


@dataclass(slots=True)
class JobOutcome:
    job_id: str
    model: str
    status: str  # succeeded | rejected | failed | dry_run
    version_id: str | None = None
    dataset_hash: str | None = None
    dataset_dir: str | None = None
    gate_report: dict[str, Any] | None = None
    error: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "failed" else 0


def _seeds(config: Any, model: str) -> list[Any]:
    rs, ms = config.redistill, config.models[model]
    if not rs.dataset.seed_file:
        return []
    upstream = config.upstreams[ms.teacher.upstream]
    if upstream.kind != "openai" or not upstream.base_url:
        raise JobError("seed prompts need an OpenAI-compatible teacher upstream (kind: openai)")

    async def run() -> list[Any]:
        client = TeacherClient(upstream.base_url, ms.teacher.model, api_key=upstream.api_key(), logical_model=model)
        try:
            return await teacher_seed_records(Path(rs.dataset.seed_file), model, client)
        finally:
            await client.close()

    return asyncio.run(run())


def run_job(config: Any, model: str, job_id: str, *, since_s: float | None = None, dry_run: bool = False,
            progress: bool = True, store: PairStore | None = None) -> JobOutcome:
    """Run the pipeline; every outcome (errors included) is recorded in the jobs table and returned."""
    log.info("job %s for %s: libraries loaded, opening the pair store", job_id, model)
    own_store = store is None
    store = store or PairStore(config.evaluator.store.url, config.evaluator.store)
    jobs = JobStore(store.engine)
    outcome = JobOutcome(job_id, model, "failed")
    try:
        store.migrate()
        try:
            jobs.get(job_id)
        except KeyError:  # started from the CLI, not by the service
            jobs.create(job_id, model, "cli", status="running")
        jobs.update(job_id, "running")
        log.info("job %s for %s running: building the dataset", job_id, model)
        _pipeline(config, model, outcome, store, since_s=since_s, dry_run=dry_run, progress=progress)
    except Exception as exc:  # the verdict must be written whatever broke
        log.exception("job %s failed", job_id)
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        jobs.update(job_id, "failed", error=outcome.error + "\n" + traceback.format_exc(limit=5))
    else:
        status = "succeeded" if outcome.status == "dry_run" else outcome.status
        jobs.update(job_id, status, version_id=outcome.version_id,
                    error="dry run: no training" if outcome.status == "dry_run" else None)
    finally:
        if own_store:
            store.close()
    return outcome


def _pipeline(config: Any, model: str, outcome: JobOutcome, store: PairStore, *, since_s: float | None,
              dry_run: bool, progress: bool) -> None:
    if model not in config.models:
        raise JobError(f"unknown model {model!r} (configured: {', '.join(config.models)})")
    rs, ms = config.redistill, config.models[model]
    workdir = Path(rs.workdir)
    now = time.time()
    pairs = store.pairs(model, since=now - (since_s if since_s is not None else rs.dataset.since_s))
    # Candidate pairs (a shadow-stage version vs the teacher) repeat the teacher's answers and would skew
    # the disagreement flags: the dataset is about the live student's traffic.
    pairs = [p for p in pairs if not p.is_candidate]
    feedback = store.feedback_for(p.served.request_id for p in pairs)
    labels = {rid: fb.label for rid, fb in feedback.items() if fb.label}
    scorer = build_scorer(ms.scorer)
    dataset = build_dataset(
        BuildInputs(model=model, pairs=pairs, labels=labels, seeds=_seeds(config, model),
                    is_valid=scorer_validator(scorer)),
        rs.dataset, workdir / "datasets", now=now,
    )
    outcome.dataset_hash, outcome.dataset_dir = dataset.hash, str(dataset.directory)
    outcome.counts = dict(dataset.manifest["counts"])
    log.info("dataset %s: %s", dataset.directory, outcome.counts)
    if dry_run:
        outcome.status = "dry_run"
        return
    base = rs.base_models.get(model)
    if not base:
        raise JobError(f"redistill.base_models.{model} is not set (the student's base weights dir)")
    registry = Registry(store.engine)
    live = registry.active(model).live
    version_id = new_version_id(model, now)
    out_dir = workdir / "versions" / model / version_id
    # Each stage's start and length in the log: a job that runs long says which stage it is in.
    started = time.monotonic()
    log.info("training %s (%s, %s loss) on %s", version_id, rs.train.method, rs.train.loss, rs.train.device)
    result = train(dataset.train(), Path(base), out_dir, rs.train, progress=progress)
    log.info("trained in %.0fs: %d steps on %d examples, best validation loss %s", time.monotonic() - started,
             result.steps, result.examples, result.best_val_loss)

    started = time.monotonic()
    log.info("gate: generating with the candidate and the live version on the held-out set")
    generator = LocalGenerator(Path(base), device=rs.train.device, dtype=rs.train.dtype,
                               batch_size=rs.train.batch_size, max_new_tokens=rs.dataset.max_completion_tokens)
    previous = [HeldoutSet(d.hash, d.heldout()) for d in model_datasets(workdir / "datasets", model)
                if d.directory != dataset.directory]
    report = evaluate_gate(
        new_heldout=dataset.heldout(), previous=previous, candidate=result.output_dir,
        current=Path(live.adapter_path) if live and live.adapter_path else None,
        generate=generator.generate, scorer=scorer, settings=rs.gate,
    )
    log.info("gate %s in %.0fs: retention %s%s", "passed" if report["passed"] else "failed",
             time.monotonic() - started, report.get("retention"),
             "" if report["passed"] else " (" + "; ".join(report["reasons"]) + ")")
    (out_dir / "gate_report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    status = "candidate" if report["passed"] else "rejected"
    registry.register(
        model=model, base_model=base, adapter_path=str(result.output_dir.resolve()),
        dataset_manifest_hash=dataset.hash, gate_report=report, status=status,
        parent_id=live.id if live else None, version_id=version_id,
        hyperparameters={"train": rs.train.model_dump(), "result": result.as_dict(),
                         "dataset_dir": str(dataset.directory)},
        reason="gate passed" if report["passed"] else "gate failed: " + "; ".join(report["reasons"]),
    )
    outcome.version_id, outcome.gate_report = version_id, report
    outcome.status = "succeeded" if report["passed"] else "rejected"
