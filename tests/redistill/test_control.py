"""Control endpoints on the REAL gateway app under uvicorn: the Alertmanager webhook (through the service
to a Kubernetes Job on a local API server), feedback, versions and rollback."""
import time

import httpx
import pytest
from kubernetes import client

from evaluator.records import ExchangeRecord
from gateway.config import parse_config
from redistill.jobs import JobStore
from redistill.runners import KubernetesRunner
from redistill.service import RedistillService
from redistill.settings import KubernetesRunnerSettings

from fake_kube import FakeKubeAPI
from fakes.gateway_thread import GatewayThread
from test_triggers import PAYLOAD

ADMIN, USER = "sk-admin-0123456789", "sk-user-0123456789"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DG_WEBHOOK", "hook-secret")
    monkeypatch.setenv("DG_ADMIN", ADMIN)
    monkeypatch.setenv("DG_USER", USER)
    config = parse_config({
        "auth": {"keys": [{"name": "ops", "env": "DG_ADMIN", "admin": True},
                          {"name": "app", "env": "DG_USER", "models": ["other"]}]},
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"student": {"upstream": "u", "model": "s"}, "teacher": {"upstream": "u", "model": "t"}}
                   for m in ("intent", "other")},
        "evaluator": {"store": {"url": f"sqlite:///{tmp_path / 'pairs.db'}"}},
        "redistill": {"workdir": str(tmp_path / "work"), "trigger": {"webhook_token_env": "DG_WEBHOOK"}},
    })
    with FakeKubeAPI() as kube:
        api = client.Configuration()
        api.host = kube.url
        runner = KubernetesRunner(KubernetesRunnerSettings(namespace="ml"), api_client=client.ApiClient(api), poll_s=0.05)
        holder = {}

        class LateService:  # the service needs the app's store engine, which exists once the lifespan ran
            def __getattr__(self, name):
                return getattr(holder["svc"], name)

        with GatewayThread(config, redistill=LateService()) as gw:
            engine = gw.app.state.evaluator.store.engine
            holder["svc"] = RedistillService(config.redistill, list(config.models), jobs=JobStore(engine), runner=runner)
            yield gw, kube, engine


def _err(resp, status, code=None):
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    if code:
        assert body["code"] == code


def test_alert_webhook_auth_validation_and_trigger(env):
    gw, kube, engine = env
    url = gw.url + "/v1/distillgate/alerts"
    _err(httpx.post(url, json=PAYLOAD), 401)
    _err(httpx.post(url, json=PAYLOAD, headers={"Authorization": "Bearer wrong"}), 401)
    auth = {"Authorization": "Bearer hook-secret"}
    _err(httpx.post(url, content=b"{not json", headers=auth), 400)
    _err(httpx.post(url, json={"version": "4", "alerts": "nope"}, headers=auth), 400)
    r = httpx.post(url, json=PAYLOAD, headers=auth)
    assert r.status_code == 200, r.text
    [trig] = r.json()["triggers"]
    assert trig["model"] == "intent" and trig["status"] == "accepted"
    assert ("ml", f"distillgate-redistill-{trig['job_id']}".lower()) in kube.jobs
    again = httpx.post(url, json=PAYLOAD, headers=auth).json()["triggers"][0]
    assert again["status"] == "duplicate" and again["job_id"] == trig["job_id"]
    rows = JobStore(engine).triggers("intent")
    assert [(t["source"], t["outcome"]) for t in rows] == [("alertmanager", "job_started"), ("alertmanager", "duplicate")]


def test_feedback_needs_a_key_that_owns_the_model(env):
    gw, _, _ = env
    store = gw.app.state.evaluator.store
    store.put_exchange(ExchangeRecord(request_id="req-1", model="intent", route="student", version="base",
                                      endpoint="chat", request={"messages": []}, response_text="billing"))
    assert store.flush(10)
    url = gw.url + "/v1/distillgate/feedback"
    admin, user = {"Authorization": f"Bearer {ADMIN}"}, {"Authorization": f"Bearer {USER}"}
    _err(httpx.post(url, json={"request_id": "req-1", "label": "refund"}), 401)
    _err(httpx.post(url, json={"request_id": "req-1", "rating": 2}, headers=admin), 400)
    _err(httpx.post(url, json={"request_id": "req-1"}, headers=admin), 400)
    _err(httpx.post(url, json={"request_id": "nope", "label": "x"}, headers=admin), 404)
    _err(httpx.post(url, json={"request_id": "req-1", "label": "x"}, headers=user), 404)  # not its model
    r = httpx.post(url, json={"request_id": "req-1", "label": "refund", "rating": 0.0}, headers=admin)
    assert r.status_code == 200 and r.json()["recorded"] is True
    [fb] = store.feedback(model="intent")
    assert (fb.label, fb.rating, fb.key_name) == ("refund", 0.0, "ops")


def test_feedback_on_an_unstored_request_names_its_model(env):
    gw, _, _ = env
    store = gw.app.state.evaluator.store
    url = gw.url + "/v1/distillgate/feedback"
    admin, user = {"Authorization": f"Bearer {ADMIN}"}, {"Authorization": f"Bearer {USER}"}
    # Not stored (served-only exchanges are sampled): unknown without a model, recorded with one.
    _err(httpx.post(url, json={"request_id": "dg-unsampled", "label": "refund"}, headers=admin), 404)
    _err(httpx.post(url, json={"request_id": "dg-unsampled", "label": "refund", "model": "intent"}, headers=user), 404)
    _err(httpx.post(url, json={"request_id": "dg-unsampled", "label": "refund", "model": "nope"}, headers=admin), 404)
    r = httpx.post(url, json={"request_id": "dg-unsampled", "label": "refund", "model": "intent"}, headers=admin)
    assert r.status_code == 200, r.text
    assert [(f.request_id, f.label) for f in store.feedback(model="intent")] == [("dg-unsampled", "refund")]


def test_versions_and_rollback(env):
    gw, _, _ = env
    registry = gw.app.state.registry
    v1 = registry.register(model="intent", base_model="/m", adapter_path="/a1", dataset_manifest_hash="h1",
                           gate_report={"passed": True, "retention": 0.97, "samples": ["big"]})
    registry.promote_live(v1.id, "first")
    v2 = registry.register(model="intent", base_model="/m", adapter_path="/a2", dataset_manifest_hash="h2",
                           gate_report={"passed": True}, parent_id=v1.id)
    registry.promote_live(v2.id, "second")
    admin, user = {"Authorization": f"Bearer {ADMIN}"}, {"Authorization": f"Bearer {USER}"}
    r = httpx.get(gw.url + "/v1/distillgate/versions", params={"model": "intent"}, headers=admin)
    assert r.status_code == 200
    data = r.json()
    assert data["active"]["live"]["id"] == v2.id and data["active"]["live"]["parent_id"] == v1.id
    assert [v["status"] for v in data["versions"]] == ["retired", "live"]
    assert data["versions"][0]["gate"] == {"passed": True, "retention": 0.97}
    _err(httpx.get(gw.url + "/v1/distillgate/versions", params={"model": "intent"}, headers=user), 404)
    _err(httpx.get(gw.url + "/v1/distillgate/versions", params={"model": "nope"}, headers=admin), 404)
    _err(httpx.get(gw.url + "/v1/distillgate/versions", headers=admin), 400)
    url = gw.url + "/v1/distillgate/rollback"
    _err(httpx.post(url, json={"model": "intent"}, headers=user), 403)
    _err(httpx.post(url, json={"model": "nope"}, headers=admin), 404)
    _err(httpx.post(url, json={"modle": "intent"}, headers=admin), 400)
    r = httpx.post(url, json={"model": "intent", "reason": "bad answers"}, headers=admin)
    assert r.status_code == 200 and r.json()["active"]["live"]["id"] == v1.id
    assert registry.get(v2.id).status == "rejected"
    assert registry.events(v2.id)[-1].reason == "bad answers"
