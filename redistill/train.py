"""Fine-tuning the student (LoRA via peft, or full) on a distillation dataset. Runs in the job process only.

Produces a PEFT adapter directory vLLM loads at runtime (`--enable-lora`, rank <= --max-lora-rank), or a
full model directory for method=full. Checkpoints every epoch so a killed job resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from redistill.encode import Encoded, encode
from redistill.losses import IGNORE, sequence_ce, topk_kd_loss
from redistill.records import Example
from redistill.settings import TrainSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoint"


class TrainError(Exception):
    pass


@dataclass(slots=True)
class TrainResult:
    output_dir: Path  # the adapter dir (lora) or model dir (full) to serve
    method: str
    loss: str  # what was actually used: sequence | topk_kd
    steps: int
    best_val_loss: float | None
    train_loss_last: float | None
    kd_examples: int
    examples: int
    resumed_from_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in
                ((f, getattr(self, f)) for f in self.__dataclass_fields__)}


def _val_split(examples: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Validation by request hash, so an oversampled prompt never sits on both sides."""
    train, val = [], []
    for ex in examples:
        bucket = int(hashlib.sha256(("val:" + ex.request_hash).encode()).hexdigest()[:8], 16) / 0x1_0000_0000
        (val if bucket < fraction else train).append(ex)
    if not val or not train:  # tiny datasets: no early stopping signal, validate on train
        return list(examples), list(examples)
    return train, val


def _collate(batch: Sequence[Encoded], pad_id: int, with_topk: bool) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    k = max((len(ids) for e in batch if e.topk_ids for ids in e.topk_ids), default=0)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    if with_topk and k:
        t_ids = torch.zeros((len(batch), width, k), dtype=torch.long)
        t_lps = torch.zeros((len(batch), width, k))
        t_mask = torch.zeros((len(batch), width, k), dtype=torch.bool)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attn[i, :n] = 1
        if with_topk and k and e.topk_ids:
            for t, (tid, tlp) in enumerate(zip(e.topk_ids, e.topk_logprobs or [], strict=True)):
                if tid:
                    t_ids[i, t, : len(tid)] = torch.tensor(tid)
                    t_lps[i, t, : len(tlp)] = torch.tensor(tlp)
                    t_mask[i, t, : len(tid)] = True
    out.update(input_ids=ids, labels=labels, attention_mask=attn)
    if with_topk and k:
        out.update(topk_ids=t_ids, topk_logprobs=t_lps, topk_mask=t_mask)
    return out


def _batch_loss(model: Any, batch: dict[str, torch.Tensor], settings: TrainSettings, device: str) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    # logits[t] predicts token t+1: shift once here, the loss functions take aligned tensors.
    logits = logits[:, :-1]
    labels = batch["labels"][:, 1:].to(device)
    if "topk_ids" not in batch:
        return sequence_ce(logits, labels)
    return topk_kd_loss(
        logits, labels, batch["topk_ids"][:, 1:].to(device), batch["topk_logprobs"][:, 1:].to(device),
        batch["topk_mask"][:, 1:].to(device), temperature=settings.kd_temperature, alpha=settings.kd_alpha,
    )


@torch.no_grad()
def _val_loss(model: Any, encoded: Sequence[Encoded], pad_id: int, settings: TrainSettings, device: str) -> float:
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(encoded), settings.batch_size):
        chunk = encoded[start:start + settings.batch_size]
        b = _collate(chunk, pad_id, with_topk=False)
        total += float(_batch_loss(model, b, settings, device)) * len(chunk)
        n += len(chunk)
    model.train()
    return total / max(n, 1)


def load_student(base_dir: Path, settings: TrainSettings, init_adapter: Path | None = None) -> tuple[Any, Any]:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=DTYPES[settings.dtype]).to(settings.device)
    if settings.method == "lora":
        if init_adapter is not None:
            model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        else:
            model = get_peft_model(model, LoraConfig(
                r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                target_modules=list(settings.lora_target_modules), task_type="CAUSAL_LM",
            ))
    return model, tokenizer


def _save(model: Any, tokenizer: Any, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def train(
    examples: Sequence[Example],
    base_dir: Path,
    out_dir: Path,
    settings: TrainSettings,
    *,
    init_adapter: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    if not examples:
        raise TrainError("no training examples")
    from transformers import get_linear_schedule_with_warmup

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    device = settings.device
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_student(base_dir, settings, init_adapter)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    want_topk = settings.loss in ("auto", "topk_kd")
    train_ex, val_ex = _val_split(examples, settings.val_fraction)
    enc_train = [encode(tokenizer, e, settings.max_length, use_topk=want_topk) for e in train_ex]
    enc_val = [encode(tokenizer, e, settings.max_length, use_topk=False) for e in val_ex]
    kd_examples = sum(1 for e in enc_train if e.topk_ids is not None)
    if settings.loss == "topk_kd" and kd_examples == 0:
        raise TrainError("loss=topk_kd but no example has teacher top-k logprobs aligned to the student's tokenizer")
    use_topk = want_topk and kd_examples > 0

    per_epoch = math.ceil(len(enc_train) / settings.batch_size / settings.grad_accumulation)
    total_steps = settings.max_steps or per_epoch * settings.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)

    ckpt = out_dir / CHECKPOINT_DIR
    state = {"step": 0, "best": None, "bad_evals": 0, "history": []}
    if (ckpt / "state.pt").exists():
        saved = torch.load(ckpt / "state.pt", weights_only=False)
        if settings.method == "lora":
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(ckpt / "weights.safetensors")))
        else:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(ckpt / "weights.safetensors")), strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
    resumed = int(state["step"])
    best_dir = out_dir / (ADAPTER_DIR if settings.method == "lora" else MODEL_DIR)

    model.train()
    step = resumed
    last_loss: float | None = None
    bar = tqdm(total=total_steps, initial=step, desc="distill", disable=not progress, dynamic_ncols=True)
    stop = False
    epoch = step // max(per_epoch, 1)
    while step < total_steps and not stop:
        order = list(range(len(enc_train)))
        random.Random(settings.seed + epoch).shuffle(order)
        micro = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        skip = (step - epoch * per_epoch) * settings.grad_accumulation  # resuming mid-epoch
        micro = micro[max(skip, 0):]
        for i in range(0, len(micro), settings.grad_accumulation):
            optimizer.zero_grad(set_to_none=True)
            group = micro[i:i + settings.grad_accumulation]
            for idx in group:
                b = _collate([enc_train[j] for j in idx], pad_id, with_topk=use_topk)
                loss = _batch_loss(model, b, settings, device) / len(group)
                loss.backward()
                last_loss = float(loss.detach()) * len(group)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if step >= total_steps:
                break
        epoch += 1
        val = _val_loss(model, enc_val, pad_id, settings, device)
        state["history"].append({"step": step, "val_loss": val, "train_loss": last_loss or 0.0})
        if state["best"] is None or val < state["best"]:
            state["best"], state["bad_evals"] = val, 0
            _save(model, tokenizer, best_dir)
        else:
            state["bad_evals"] += 1
            stop = state["bad_evals"] >= settings.early_stopping_patience
        state["step"] = step
        _checkpoint(model, optimizer, scheduler, state, ckpt, settings)
    bar.close()
    if not best_dir.exists():
        _save(model, tokenizer, best_dir)
    return TrainResult(
        output_dir=best_dir, method=settings.method, loss="topk_kd" if use_topk else "sequence", steps=step,
        best_val_loss=state["best"], train_loss_last=last_loss, kd_examples=kd_examples, examples=len(enc_train),
        resumed_from_step=resumed, history=list(state["history"]),
    )


def _checkpoint(model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], ckpt: Path,
                settings: TrainSettings) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if settings.method == "lora":
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(model)
    else:
        weights = model.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state,
                "rng": torch.get_rng_state()}, tmp / "state.pt")
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.replace(ckpt)
