"""A few training steps on the tiny student improve agreement; the gate passes it and rejects a broken one."""
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from redistill.gate import HeldoutSet, evaluate_gate, mean_score
from redistill.generate import LocalGenerator
from redistill.settings import GateSettings, TrainSettings
from redistill.train import TrainError, train

from redistill_toy import DRIFTED, label_scorer, examples, make_distilled_student

FAST = dict(learning_rate=5e-3, batch_size=20, epochs=40, max_steps=40, lora_r=8, lora_alpha=16,
            max_length=64, warmup_ratio=0.0, early_stopping_patience=100,
            val_fraction=0.0)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return make_distilled_student(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def trained(student, tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(student)
    out = tmp_path_factory.mktemp("run")
    result = train(examples(tok) + examples(tok, DRIFTED), student, out, TrainSettings(**FAST), progress=False)
    return result, out


def test_training_improves_agreement_and_uses_topk_kd(student, trained):
    result, _ = trained
    assert result.loss == "topk_kd" and result.kd_examples > 0
    assert (result.output_dir / "adapter_config.json").exists()
    gen = LocalGenerator(student, max_new_tokens=4)
    drifted, old = examples(None, DRIFTED), examples()
    before = mean_score(label_scorer(), gen.generate(None, drifted), drifted)
    after = mean_score(label_scorer(), gen.generate(result.output_dir, drifted), drifted)
    assert after > before
    # and over the whole task (old phrasings included), agreement with the teacher went up
    both = drifted + old
    assert mean_score(label_scorer(), gen.generate(result.output_dir, both), both) > mean_score(
        label_scorer(), gen.generate(None, both), both)
    # the base is left clean after an adapter was applied
    assert mean_score(label_scorer(), gen.generate(None, drifted), drifted) == before


def test_resume_from_checkpoint_continues_step_count(student, trained):
    _, out = trained
    more = train(examples(), student, out, TrainSettings(**{**FAST, "max_steps": 42}), progress=False)
    assert more.resumed_from_step == 40 and more.steps == 42 and len(more.history) > len(trained[0].history)


def test_sequence_loss_without_topk_and_topk_required_error(student, tmp_path):
    r = train(examples()[:4], student, tmp_path / "a", TrainSettings(**{**FAST, "max_steps": 2}), progress=False)
    assert r.loss == "sequence"
    with pytest.raises(TrainError, match="topk"):
        train(examples()[:4], student, tmp_path / "b", TrainSettings(**{**FAST, "max_steps": 2, "loss": "topk_kd"}),
              progress=False)


def test_gate_passes_good_candidate_and_rejects_broken_one(student, trained, tmp_path):
    result, _ = trained
    gen = LocalGenerator(student, max_new_tokens=4)
    data = examples(None, DRIFTED)
    settings = GateSettings(retention_threshold=0.5, regression_tolerance=0.1)
    report = evaluate_gate(new_heldout=data, previous=[HeldoutSet("old", examples())], candidate=result.output_dir,
                           current=None, generate=gen.generate, scorer=label_scorer(), settings=settings)
    assert report["passed"], report["reasons"]
    assert report["teacher_score"] == 1.0 and report["retention"] >= 0.5
    assert report["candidate_score"] > report["current_score"] and report["previous_heldout"][0]["n"] == 12

    # A deliberately broken candidate: the same adapter with its LoRA weights scrambled.
    from safetensors.torch import load_file, save_file
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in result.output_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(broken / "adapter_model.safetensors"))
    torch.manual_seed(1)
    save_file({k: torch.randn_like(v) * 5 for k, v in weights.items()}, str(broken / "adapter_model.safetensors"))
    bad = evaluate_gate(new_heldout=data, previous=[], candidate=broken, current=result.output_dir,
                        generate=gen.generate, scorer=label_scorer(), settings=settings)
    assert not bad["passed"]
    assert any("retention" in r for r in bad["reasons"]) and any("current student" in r for r in bad["reasons"])
