"""The promotion "shadow" stage gets traffic: the real gateway (uvicorn) with the real Evaluator, a real
Registry holding a version in `shadow` status, fake OpenAI-compatible upstreams as real HTTP servers, and
the official openai client. Sampled requests are answered by the live student; the evaluator also asks
the candidate's adapter and scores it against the teacher, so the candidate's agreement fills up while
no user ever sees its answers.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import openai

import httpx
from fakes.gateway_thread import GatewayThread, metric_value
from fakes.openai_server import FakeOpenAI
from gateway.config import parse_config
from redistill.promote import PromotionController
from redistill.settings import PromoteSettings

CANDIDATE = "support-v2"
KEY = "sk-shadow-stage-test-key"
PROMPTS = [f"ticket {i}" for i in range(10)]
LIVE_WRONG = {"ticket 1", "ticket 4", "ticket 7"}  # the live student disagrees with the teacher here
CANDIDATE_WRONG = {"ticket 4"}  # the candidate only here


class PerModelFake(FakeOpenAI):
    """The student's vLLM: the base model and each LoRA adapter (by request `model`) answer differently."""

    def __init__(self, by_model: dict[str, Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.by_model = by_model

    def _answer_for(self, prompt: str) -> str:  # the model is set per request in _reply below
        return self._current(prompt)

    def _reply(self, body: dict[str, Any], id_: str):  # noqa: ANN202 - the fake's own tuple
        self._current = self.by_model.get(body.get("model"), self.by_model["*"])
        return super()._reply(body, id_)


def _wait(predicate, timeout_s: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_shadow_stage_version_is_scored_against_the_teacher_with_zero_exposure(tmp_path) -> None:  # noqa: ANN001
    live = {"*": lambda p: "other" if p in LIVE_WRONG else f"label {p}",
            CANDIDATE: lambda p: "wrong" if p in CANDIDATE_WRONG else f"label {p}"}
    with PerModelFake(live) as student, FakeOpenAI(answers=lambda p: f"label {p}") as teacher:
        config = parse_config({
            "server": {"registry_poll_s": 0.05},
            "upstreams": {"vllm": {"base_url": student.url}, "teacher": {"base_url": teacher.url}},
            "models": {"support": {"student": {"upstream": "vllm", "model": "student-served"},
                                   "teacher": {"upstream": "teacher", "model": "teacher-served"},
                                   "routing": {"student_percent": 100},
                                   "shadow": {"rate": 1.0}}},
            "auth": {"keys": [{"name": "user", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
            "evaluator": {"store": {"url": f"sqlite:///{tmp_path / 'pairs.db'}", "flush_interval_s": 0.02},
                          "agreement": {"min_samples": 5}},
        }, environ={})
        with GatewayThread(config, redistill=False) as g:
            ev, registry = g.app.state.evaluator, g.app.state.registry
            registry.register(model="support", base_model="student-served", adapter_path="/adapters/v2",
                              dataset_manifest_hash="h", gate_report={"passed": True}, version_id=CANDIDATE)
            registry.set_status(CANDIDATE, "shadow", "gate passed, adapter loaded")
            _wait(lambda: getattr(g.app.state.poller.active("support"), "shadow", None) is not None)

            client = openai.OpenAI(base_url=g.url + "/v1", api_key=KEY, max_retries=0)
            answers = {}
            for prompt in PROMPTS:
                raw = client.chat.completions.with_raw_response.create(
                    model="support", messages=[{"role": "user", "content": prompt}])
                assert raw.headers["x-distillgate-route"] == "student"
                answers[prompt] = raw.parse().choices[0].message.content
            # Users got the live student, never the candidate.
            assert answers == {p: ("other" if p in LIVE_WRONG else f"label {p}") for p in PROMPTS}

            _wait(lambda: ev.agreement("support", version=CANDIDATE).n == 10 and ev.agreement("support").n == 10)
            candidate, base, model_wide = (ev.agreement("support", version=CANDIDATE),
                                           ev.agreement("support", version="base"), ev.agreement("support"))
            assert (candidate.n, candidate.agreed) == (10, 9)
            assert (base.n, base.agreed) == (10, 7)
            assert (model_wide.n, model_wide.agreed) == (10, 7)  # the candidate served nobody: not in it

            # The candidate's adapter was asked once per sampled request, as a shadow call.
            asked = [(body, headers) for body, headers in zip(student.requests, student.headers)
                     if body["model"] == CANDIDATE]
            assert len(asked) == 10 and all(h.get("x-distillgate-shadow") == "1" for _, h in asked)
            assert not any(body.get("stream") for body, _ in asked)

            metrics = httpx.get(g.url + "/metrics").text
            assert metric_value(metrics, "distillgate_agreement_samples", model="support", version=CANDIDATE,
                           slice="all") == 10
            assert metric_value(metrics, "distillgate_agreement_ratio", model="support", version=CANDIDATE,
                           slice="all") == 0.9

            store = ev.store
            assert store.flush(10)
            pairs = store.pairs("support", version=CANDIDATE)
            assert len(pairs) == 10
            assert {(p.student.route, p.student.version, p.teacher.route) for p in pairs} == {
                ("candidate", CANDIDATE, "teacher")}
            assert sorted(p.served.request_id for p in pairs) == sorted(
                p.served.request_id for p in store.pairs("support", version="base"))
            # Neither the candidate's nor the teacher's shadow answers count as served traffic.
            served = store.exchanges("support")
            assert len(served) == 10 and {e.route for e in served} == {"student"}

            # The promotion controller judges the shadow stage on that evidence: 0.9 >= 0.7 -> canary.
            controller = PromotionController(registry, admin_for=lambda model: None,
                                             agreement=lambda model, version: ev.agreement(model, version),
                                             settings=PromoteSettings(shadow_min_samples=10), models=["support"])
            changes = asyncio.run(controller.tick())
            assert [(c.version, c.to) for c in changes] == [(CANDIDATE, "canary")]
            assert registry.get(CANDIDATE).status == "canary"
