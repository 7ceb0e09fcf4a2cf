"""KubernetesRunner through the official kubernetes client against a real local HTTP API server."""
import asyncio

import pytest
from kubernetes import client

from redistill.runners import JobSpec, KubernetesRunner, job_manifest
from redistill.settings import KubernetesRunnerSettings

from fake_kube import FakeKubeAPI

TEMPLATE = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"labels": {"team": "ml"}},
    "spec": {"template": {"spec": {"containers": [{
        "name": "redistill", "image": "ghcr.io/example/distillgate:1.0", "command": ["distillgate"],
        "args": ["--config", "/etc/distillgate/config.yaml"],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }]}}},
}


@pytest.fixture()
def kube():
    with FakeKubeAPI() as api:
        yield api


def _runner(url):
    cfg = client.Configuration()
    cfg.host = url
    cfg.api_key = {"authorization": "sekret"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    settings = KubernetesRunnerSettings(namespace="ml", job_template=TEMPLATE, in_cluster=False)
    return KubernetesRunner(settings, api_client=client.ApiClient(cfg), poll_s=0.01)


def test_manifest_merges_template_and_run_args():
    m = job_manifest(KubernetesRunnerSettings(namespace="ml", job_template=TEMPLATE),
                     JobSpec("J1", "intent", None, since_s=86400, dry_run=True))
    c = m["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["--config", "/etc/distillgate/config.yaml", "redistill-job", "--model", "intent",
                         "--job-id", "J1", "--since", "86400s", "--dry-run"]
    assert m["metadata"]["name"] == "distillgate-redistill-j1" and m["metadata"]["labels"]["team"] == "ml"
    assert m["spec"]["backoffLimit"] == 0 and m["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert TEMPLATE["spec"]["template"]["spec"]["containers"][0]["args"] == ["--config", "/etc/distillgate/config.yaml"]


def test_create_poll_until_succeeded(kube):
    async def scenario():
        runner = _runner(kube.url)
        handle = await runner.start(JobSpec("abc", "intent", None))
        key = ("ml", "distillgate-redistill-abc")
        assert key in kube.jobs
        assert kube.jobs[key]["spec"]["template"]["spec"]["containers"][0]["args"][-4:] == [
            "--model", "intent", "--job-id", "abc"]
        waiter = asyncio.create_task(handle.wait())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # still running: status has no verdict yet
        kube.jobs[key]["status"] = {"active": 0, "succeeded": 1}
        return await asyncio.wait_for(waiter, 10)

    result = asyncio.run(scenario())
    assert result.code == 0
    assert all(auth == "Bearer sekret" for _, _, auth in kube.requests)
    assert any(p.endswith("/jobs/distillgate-redistill-abc/status") for m, p, _ in kube.requests if m == "GET")


def test_failed_and_deleted_jobs_report_failure(kube):
    async def scenario():
        runner = _runner(kube.url)
        h1 = await runner.start(JobSpec("f1", "intent", None))
        kube.jobs[("ml", "distillgate-redistill-f1")]["status"] = {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "pod OOMKilled"}]}
        r1 = await asyncio.wait_for(h1.wait(), 10)
        h2 = await runner.start(JobSpec("f2", "intent", None))
        await h2.cancel()
        r2 = await asyncio.wait_for(h2.wait(), 10)
        return r1, r2

    r1, r2 = asyncio.run(scenario())
    assert r1.code == 1 and "OOMKilled" in r1.message
    assert r2.code == 1 and "deleted" in r2.message and ("ml", "distillgate-redistill-f2") not in kube.jobs
