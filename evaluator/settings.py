"""The evaluator's sections of the one distillgate config (composed in gateway.config)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScorerSettings(_Strict):
    """How a logical model's student and teacher answers are compared."""

    kind: Literal["exact", "normalized", "label", "json", "rouge_l", "chrf", "token_f1", "embedding", "judge"] = "normalized"
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="score >= threshold counts as agreement")
    label_pattern: str | None = Field(None, description="regex with one group extracting the label (kind=label)")
    labels: list[str] = Field(default_factory=list, description="known labels; anything else is 'invalid'")
    json_fields: list[str] = Field(default_factory=list, description="fields compared (kind=json); empty = all")
    judge_rubric: str | None = None
    judge_max_per_minute: int = Field(30, ge=1)
    judge_cache_size: int = Field(10_000, ge=0)
    embedding_model: str | None = Field(None, description="local HF model dir or hub id (kind=embedding)")


class ShadowSettings(_Strict):
    """Per logical model: which served requests are also sent to the other model."""

    rate: float = Field(0.1, ge=0.0, le=1.0)
    direction: Literal["student_to_teacher", "teacher_to_student"] = "student_to_teacher"
    deterministic: bool = Field(False, description="sample by request-id hash (reproducible) instead of at random")
    always_on_escalation: bool = True
    always_below_confidence: float | None = Field(None, description="always shadow when mean token logprob < this")
    always_for_keys: list[str] = Field(default_factory=list)
    always_for_slices: list[str] = Field(default_factory=list)
    teacher_tokens_per_hour: int | None = Field(None, ge=1, description="spend cap; sampling backs off past it")


class SliceRule(_Strict):
    name: str
    header: str | None = None  # slice = this header's value if it is in `values`
    metadata_key: str | None = None  # or the request body's metadata[key]
    values: list[str] = Field(default_factory=list)


class PriceSettings(_Strict):
    """Dollars per million tokens, for teacher spend and the all-teacher baseline."""

    teacher_prompt: float = 2.5
    teacher_completion: float = 10.0
    student_prompt: float = 0.05
    student_completion: float = 0.2


class DriftSettings(_Strict):
    reference_size: int = Field(200, ge=20, description="first N requests if no distillation reference is stored")
    window_size: int = Field(200, ge=20)
    min_samples: int = Field(50, ge=10, description="fewest reference items accepted from set_reference")
    psi_threshold: float = 0.25
    ks_alpha: float = 0.001
    classifier_auc_threshold: float = 0.75
    hashed_features: int = 256
    every_n: int = Field(25, ge=1, description="recompute drift after this many new requests (once the window is full)")
    psi_bins: int = Field(8, ge=2, description="quantile bins per numeric feature")
    cv_folds: int = Field(4, ge=2, description="folds of the reference-vs-current classifier's cross-validation")
    min_interval_s: float = Field(
        15.0, ge=0.0,
        description="at most one recomputation per model this often: a comparison costs ~25 ms of CPU (200 vs "
                    "200 requests), and at 2000 req/s every_n alone would run it 80 times a second on the "
                    "gateway's core. 15 s is a usual Prometheus scrape interval: the drift gauges are not read "
                    "more often, and the drift alerts wait 30 minutes anyway",
    )
    isolation: Literal["process", "thread"] = Field(
        "process",
        description="where comparisons run: a child process (the serving process never loads scipy/sklearn, "
                    "~95 MB, and their CPU bursts never hold its GIL) or the drift thread (one process, e.g. "
                    "where spawning is not allowed)",
    )
    max_observed_per_s: float | None = Field(
        20.0, gt=0,
        description="above this request rate only every k-th request enters the drift windows (k follows the "
                    "rate, once a second), so a window spans at least window_size/this seconds instead of a few "
                    "milliseconds of a busy gateway, and the hot path stops paying for keeping every request "
                    "(measured ~8 us/request at 8000 req/s). About window_size / min_interval_s (200 / 15 s) is "
                    "what comparisons can use: 20 makes a window the last 10 s before each comparison, where 100 "
                    "made it the last 2 s and kept five times as many requests that no comparison ever saw. "
                    "None: every request",
    )
    max_reference_sample: int = Field(1000, ge=20, description="a larger (distillation) reference is compared "
                                                               "through a fixed random sample of this size")


class AgreementSettings(_Strict):
    window_size: int = Field(200, ge=10, description="most recent pairs per model/version/slice")
    min_samples: int = Field(30, ge=1, description="no agreement number is exported below this")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)


class RetentionSettings(_Strict):
    days: float | None = 30.0
    max_rows: int | None = 1_000_000


class StoreSettings(_Strict):
    url: str = Field("sqlite:///.distillgate/pairs.db", description="SQLAlchemy URL; postgresql+psycopg://... at scale")
    batch_size: int = Field(64, ge=1)
    flush_interval_s: float = Field(
        1.0, gt=0,
        description="the writer thread commits what is queued this often (at once when batch_size records wait). "
                    "Each wake-up with rows is a commit (an fsync with SQLite), and the writer's SQLAlchemy work "
                    "pushes the serving thread's data out of the core's caches: at 0.2 s, five commits a second "
                    "measured ~1.8 % more gateway CPU per request at ~1,000 req/s (bench/paired_cpu.py's method). "
                    "Records wait in memory either way: a crash loses at most this much of the sampled ones, a "
                    "clean stop none (the writer drains)",
    )
    queue_size: int = Field(10_000, ge=1, description="records waiting for the writer thread; beyond it, drops are counted")
    served_sample_rate: float = Field(
        0.05, ge=0.0, le=1.0,
        description="fraction of served-only exchanges stored (shadow pairs, escalations, fallbacks and errors "
                    "always are; every request is still counted per route, so report rates and cost stay exact). "
                    "Measured (bench/evaluator_hot_path.py, one core): each stored exchange costs the gateway "
                    "process ~0.06 ms of CPU (record, redaction, insert and commit in the writer thread), so 1.0 "
                    "would cost more than the rest of the evaluator; 0.05, capped by served_max_per_s, is plenty "
                    "for drift-over-time and spot checks",
    )
    served_max_per_s: float | None = Field(
        10.0, gt=0,
        description="at most this many sampled served-only exchanges stored per second (none: no cap), so the "
                    "store's size and the writer's CPU stop growing with traffic; past the cap, the first sampled "
                    "exchanges of each second are kept. 10/s is ~860,000 rows a day: more would push shadow pairs "
                    "(the teacher answers re-distillation trains on) out of the default retention.max_rows sooner, "
                    "and at 50/s the writer took ~3 ms of the serving process's CPU every second",
    )
    counts_interval_s: float = Field(10.0, gt=0, description="how often per-route request counts are written")
    retention_interval_s: float = Field(3600.0, gt=0, description="how often the evaluator applies retention")
    retention: RetentionSettings = RetentionSettings()
    redact_patterns: list[str] = Field(
        default_factory=lambda: [
            r"[\w.+-]+@[\w-]+\.[\w.-]+",  # e-mail
            r"\+?\d[\d\s().-]{7,}\d",  # phone
            r"sk-[A-Za-z0-9_-]{16,}",  # API keys
        ]
    )


class EvaluatorSettings(_Strict):
    enabled: bool = Field(True, description="false: the gateway serves as a plain router, without shadow calls, "
                                            "the pair store, drift or agreement metrics, and so without "
                                            "re-distillation, which trains on the teacher answers that store keeps")
    queue_size: int = Field(1000, ge=1)
    workers: int = Field(4, ge=1)
    drain_timeout_s: float = 10.0
    store: StoreSettings = StoreSettings()
    agreement: AgreementSettings = AgreementSettings()
    drift: DriftSettings = DriftSettings()


class ModelEvalSettings(_Strict):
    """The per-model fields the evaluator reads; gateway.config.ModelSettings extends this."""

    shadow: ShadowSettings = ShadowSettings()
    scorer: ScorerSettings = ScorerSettings()
    slices: list[SliceRule] = Field(default_factory=list)
    prices: PriceSettings = PriceSettings()
