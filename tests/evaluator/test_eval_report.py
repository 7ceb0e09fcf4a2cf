"""Reports from a populated store: JSON numbers, self-contained HTML with plots, and the CLI sub-command."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evaluator.records import ExchangeRecord, Feedback, ShadowPair
from evaluator.report import build_report
from evaluator.report_html import render_html
from evaluator.settings import (DriftSettings, EvaluatorSettings, ModelEvalSettings, PriceSettings, ScorerSettings,
                                StoreSettings)
from evaluator.store import PairStore

ROOT = Path(__file__).resolve().parents[2]
SCORER = ScorerSettings(kind="label", label_pattern=r"intent:\s*(\w+)", labels=["billing", "refund", "account"])
PRICES = PriceSettings(teacher_prompt=1000.0, teacher_completion=2000.0, student_prompt=10.0, student_completion=20.0)
TOPICS = ["card charged twice", "refund not received", "cannot log in", "invoice is wrong"]


def rec(i: int, route: str, text: str, t: float, slice_: str = "default", prompt: str | None = None) -> ExchangeRecord:
    return ExchangeRecord(request_id=f"r{i}", model="support", route=route,
                          version="base" if route == "student" else "teacher-1", endpoint="chat",
                          request={"messages": [{"role": "user", "content": prompt or f"{TOPICS[i % 4]} #{i}"}]},
                          response_text=text, prompt_tokens=100, completion_tokens=10, slice=slice_, created_at=t)


@pytest.fixture
def populated(tmp_path: Path) -> tuple[str, EvaluatorSettings]:
    url = f"sqlite:///{tmp_path / 'report.db'}"
    settings = EvaluatorSettings(store=StoreSettings(url=url, flush_interval_s=0.02),
                                 drift=DriftSettings(reference_size=40, window_size=40, min_samples=10))
    store = PairStore(url, settings.store)
    store.migrate()
    now = time.time()
    start = now - 3600
    # 120 served requests over the last hour: 100 student, 10 teacher, 6 fallback, 4 cascade.
    routes = ["student"] * 100 + ["teacher"] * 10 + ["fallback"] * 6 + ["cascade"] * 4
    def slice_of(i: int) -> str:
        return "tier:gold" if i < 10 else "default"

    def prompt_of(i: int) -> str | None:
        return "write to me at jo@example.com" if i == 19 else None

    for i, route in enumerate(routes):
        store.put_exchange(rec(i, route, "intent: billing", start + i * 25, slice_of(i), prompt_of(i)))
    # 20 pairs on the first 20 student requests: slice gold agrees 8/10, default 5/10.
    for i in range(20):
        slice_, prompt = slice_of(i), prompt_of(i)
        agreed = i < 8 or 10 <= i < 15
        served = rec(i, "student", "intent: billing", start + i * 25, slice_, prompt)
        teacher = rec(i, "teacher", "intent: billing" if agreed else "intent: refund", start + i * 25, slice_, prompt)
        store.put_pair(ShadowPair(served, teacher, {"label": 1.0 if agreed else 0.0}, agreed))
    assert store.flush()
    for i in (0, 1, 8, 9):  # ground truth "refund" on 8 and 9 (where the teacher said refund)
        store.add_feedback(Feedback(f"r{i}", "support", "refund" if i >= 8 else "billing", None, None, None, now))
    store.close()
    return url, settings


MODELS = {"support": ModelEvalSettings(scorer=SCORER, prices=PRICES)}


def test_report_numbers(populated: tuple[str, EvaluatorSettings]) -> None:
    url, settings = populated
    store = PairStore(url, settings.store)
    report = build_report(store, MODELS, settings, since=time.time() - 7200)
    store.close()
    m = report["models"]["support"]
    assert (m["agreement"]["n"], m["agreement"]["agreed"], m["agreement"]["ratio"]) == (20, 13, 0.65)
    rows = {(s["version"], s["slice"]): (s["n"], s["agreed"]) for s in m["slices"]}
    assert rows == {("base", "tier:gold"): (10, 8), ("base", "default"): (10, 5), ("base", "all"): (20, 13)}
    assert sum(p["n"] for p in m["agreement_over_time"]) == 20
    assert m["routes"]["total"] == 120
    assert m["routes"]["counts"] == {"cascade": 4, "fallback": 6, "student": 100, "teacher": 10}
    assert m["routes"]["escalation_rate"] == pytest.approx(4 / 120)
    assert m["routes"]["fallback_rate"] == pytest.approx(6 / 120)
    # Per request: teacher 100*1000/1e6 + 10*2000/1e6 = 0.12 $; student 0.0012 $.
    c = m["cost"]
    assert c["baseline_dollars"] == pytest.approx(120 * 0.12)
    assert c["served_dollars"] == pytest.approx(100 * 0.0012 + 20 * 0.12)
    assert c["shadow_dollars"] == pytest.approx(20 * 0.12)
    assert c["saved_dollars"] == pytest.approx(120 * 0.12 - 100 * 0.0012 - 40 * 0.12)
    # Student said billing everywhere: right on r0, r1 (billing), wrong on r8, r9 (refund); teacher right on all 4.
    acc = m["accuracy"]
    assert acc["student"] == {"n": 4, "correct": 2, "accuracy": 0.5}
    assert acc["teacher"] == {"n": 4, "correct": 4, "accuracy": 1.0}
    assert len(m["disagreements"]) == 7 and all(d["score"] == 0.0 for d in m["disagreements"])
    # 80 observations after a 40-request reference: windows ending at 40, 60, 80.
    assert [p["n"] for p in m["drift_over_time"]] == [40, 40, 40]


def test_html_is_self_contained_with_plots_and_tables(populated: tuple[str, EvaluatorSettings]) -> None:
    url, settings = populated
    store = PairStore(url, settings.store)
    page = render_html(build_report(store, MODELS, settings, since=time.time() - 7200))
    store.close()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # agreement over time, drift over time
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere
    assert "<td>tier:gold</td><td class=\"num\">10</td><td class=\"num\">8</td><td class=\"num\">0.800</td>" in page
    assert "jo@example.com" not in page and "[REDACTED]" in page  # examples come redacted from the store
    assert '<td class="num">0.500</td>' in page  # student accuracy vs feedback


def write_config(tmp_path: Path, url: str) -> Path:
    config = {
        "auth": {"mode": "none"},
        "upstreams": {"local": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"support": {"student": {"upstream": "local", "model": "s"},
                               "teacher": {"upstream": "local", "model": "t"},
                               "scorer": SCORER.model_dump(), "prices": PRICES.model_dump()}},
        "evaluator": {"store": {"url": url}, "drift": {"reference_size": 40, "window_size": 40, "min_samples": 10}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_report_json_and_html(populated: tuple[str, EvaluatorSettings], tmp_path: Path) -> None:
    url, _ = populated
    config = write_config(tmp_path, url)
    cli = [sys.executable, "-m", "gateway.cli", "--config", str(config), "report"]
    out_json = tmp_path / "r.json"
    done = subprocess.run(cli + ["--since", "2h", "--format", "json", "--out", str(out_json), "--model", "support"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(out_json.read_text())
    assert data["models"]["support"]["agreement"]["agreed"] == 13
    out_html = tmp_path / "r.html"
    done = subprocess.run(cli + ["--since", "2h", "--out", str(out_html)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert out_html.read_text().count("data:image/png;base64,") == 2
    bad = subprocess.run(cli + ["--model", "nope", "--out", str(tmp_path / "x.html")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown model" in bad.stderr
    bad = subprocess.run(cli + ["--since", "yesterday"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid duration" in bad.stderr


def test_sampled_storage_keeps_route_rates_and_cost_exact(tmp_path: Path) -> None:
    """Only a sample of served-only exchanges is stored; every request is counted, so reports are unbiased,
    and a shadow-stage candidate's pairs stay out of the model-wide agreement."""
    url = f"sqlite:///{tmp_path / 'sampled.db'}"
    settings = EvaluatorSettings(store=StoreSettings(url=url, flush_interval_s=0.02, served_sample_rate=0.1,
                                                     served_max_per_s=None))
    store = PairStore(url, settings.store)
    store.migrate()
    start = time.time()
    routes = ["student"] * 400 + ["teacher"] * 40 + ["fallback"] * 6 + ["cascade"] * 4
    stored = [store.put_served(rec(i, route, "intent: billing", start)) for i, route in enumerate(routes)]
    teacher = rec(0, "teacher", "intent: refund", start)
    store.put_pair(ShadowPair(rec(0, "student", "intent: billing", start), teacher, {"label": 0.0}, False))
    candidate = ExchangeRecord(request_id="r0", model="support", route="candidate", version="v2", endpoint="chat",
                               request=teacher.request, response_text="intent: refund", created_at=start)
    store.put_pair(ShadowPair(teacher, candidate, {"label": 1.0}, True))
    assert store.flush(10)
    # Fallbacks and escalations are always stored; the rest is a sample.
    assert all(stored[-10:]) and 10 < sum(stored) < 150
    report = build_report(store, {"support": ModelEvalSettings(scorer=SCORER, prices=PRICES)}, settings,
                          since=start - 60, until=time.time() + 60)
    store.close()
    m = report["models"]["support"]
    assert m["routes"]["counts"] == {"cascade": 4, "fallback": 6, "student": 400, "teacher": 40}
    assert m["routes"]["fallback_rate"] == pytest.approx(6 / 450)
    assert m["cost"]["baseline_dollars"] == pytest.approx(450 * 0.12)
    assert m["cost"]["served_dollars"] == pytest.approx(400 * 0.0012 + 50 * 0.12)
    assert m["agreement"]["n"] == 1 and m["agreement"]["agreed"] == 0  # the live student's pair only
    by_version = {(s["version"], s["slice"]): s["n"] for s in m["slices"]}
    assert by_version[("v2", "all")] == 1 and by_version[("base", "all")] == 1
