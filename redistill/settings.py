"""The re-distillation sections of the one distillgate config (composed in gateway.config)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WatcherSettings(_Strict):
    enabled: bool = True
    threshold: float = Field(0.8, description="agreement lower bound below this ...")
    for_s: float = Field(60.0, description="... for this long fires")
    recover_margin: float = Field(0.05, description="hysteresis: re-arms only above threshold + margin")
    min_samples: int = 30
    cooldown_s: float = 600.0
    interval_s: float = 5.0


class TriggerSettings(_Strict):
    webhook_token_env: str = Field("DISTILLGATE_WEBHOOK_TOKEN", description="bearer token Alertmanager sends")
    alert_names: list[str] = Field(default_factory=lambda: ["StudentAgreementLow", "InputDriftHigh", "OutputDriftHigh"])
    watcher: WatcherSettings = WatcherSettings()
    schedule: str | None = Field(None, description="cron expression for periodic re-distillation")
    min_new_pairs: int = 50


class DatasetSettings(_Strict):
    since_s: float = 7 * 24 * 3600
    max_examples: int = 5000
    seed_file: str | None = None
    max_completion_tokens: int = 256
    min_teacher_mean_logprob: float | None = None
    dedup: Literal["exact", "minhash", "none"] = "minhash"
    minhash_threshold: float = 0.9
    disagreement_oversample: float = 2.0
    heldout_fraction: float = 0.15


class TrainSettings(_Strict):
    device: str = "cpu"  # "cuda", "cuda:0", ...
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    method: Literal["lora", "full"] = "lora"
    loss: Literal["auto", "sequence", "topk_kd"] = "auto"
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    learning_rate: float = 3e-3
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    grad_accumulation: int = 1
    max_length: int = 128
    warmup_ratio: float = 0.05
    early_stopping_patience: int = 2
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="by request hash, for early stopping; 0 = validate on train")
    seed: int = 0


class GateSettings(_Strict):
    retention_threshold: float = Field(0.95, gt=0.0)
    regression_tolerance: float = 0.02
    max_examples: int = 300


class PromoteSettings(_Strict):
    canary_percent: float = Field(10.0, ge=0.0, le=100.0)
    shadow_min_samples: int = 30
    canary_min_samples: int = 30
    stage_timeout_s: float = 900.0
    skip_shadow: bool = False
    interval_s: float = Field(5.0, gt=0, description="how often stage progress (shadow/canary verdicts, timeouts) is checked")


class KubernetesRunnerSettings(_Strict):
    namespace: str = "default"
    job_template: dict[str, Any] = Field(default_factory=dict, description="batch/v1 Job spec merged with the run's args")
    in_cluster: bool = True


class RunnerSettings(_Strict):
    kind: Literal["local", "kubernetes"] = "local"
    job_timeout_s: float = Field(
        14400.0, gt=0,
        description="a job still running after this long is stopped (a local job's thread stacks dumped into its log first) and failed",
    )
    kubernetes: KubernetesRunnerSettings = KubernetesRunnerSettings()


class RedistillSettings(_Strict):
    workdir: str = ".distillgate/redistill"
    base_models: dict[str, str] = Field(
        default_factory=dict,
        description="logical model -> the student's base weights dir (what vLLM serves); training and the gate load it",
    )
    trigger: TriggerSettings = TriggerSettings()
    dataset: DatasetSettings = DatasetSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    promote: PromoteSettings = PromoteSettings()
    runner: RunnerSettings = RunnerSettings()
