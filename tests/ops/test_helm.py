"""The Helm chart, linted and rendered by the real Helm library (helm-python-sdk), every rendered
manifest validated offline with kubernetes-validate --strict against the Kubernetes schemas.

No cluster is involved. The prometheus-operator kinds (ServiceMonitor, PrometheusRule,
AlertmanagerConfig) have no schema in kubernetes-validate: they are checked against the small
schemas below (written from the operator's API reference for the fields this chart uses) and the
PrometheusRule's rules go through `promtool check rules`.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.config import parse_config

from .conftest import DASHBOARD_FILES, DASHBOARDS, ROOT, RULES

CHART = ROOT / "helm" / "distillgate"
NAMESPACE = "ml"
RELEASE = "dg"
PROD_VALUES = yaml.safe_load((CHART / "values-production.yaml").read_text())
ALL_MONITORING = {"monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                                 "alertmanagerConfig": {"enabled": True}}}
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schema available.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": _LABELS,
             "annotations": _LABELS, "namespace": {"type": "string"}}, "additionalProperties": False}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
                "selector": {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": _LABELS}, "additionalProperties": False},
                "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}, "additionalProperties": False},
                "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["port"], "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "path": {"type": "string"}, "interval": _DURATION}}}}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False, "properties": {"groups": {
                "type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "rules"], "additionalProperties": False, "properties": {
                    "name": {"type": "string"}, "interval": _DURATION, "rules": {"type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False, "properties": {
                            "record": {"type": "string"}, "alert": {"type": "string"}, "expr": {"type": "string"}, "for": _DURATION,
                            "labels": _LABELS, "annotations": _LABELS}}}}}}}}}},
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {"apiVersion": {}, "kind": {}, "metadata": _METADATA, "spec": {
            "type": "object", "additionalProperties": False, "properties": {
                "route": {"type": "object", "required": ["receiver"], "additionalProperties": False, "properties": {
                    "receiver": {"type": "string"}, "groupBy": {"type": "array", "items": {"type": "string"}},
                    "groupWait": _DURATION, "groupInterval": _DURATION, "repeatInterval": _DURATION,
                    "matchers": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                        "name": {"type": "string"}, "value": {"type": "string"}, "matchType": {"enum": ["=", "!=", "=~", "!~"]}}}}}},
                "receivers": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                    "name": {"type": "string"}, "webhookConfigs": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
                        "url": {"type": "string"}, "sendResolved": {"type": "boolean"}, "httpConfig": {"type": "object", "additionalProperties": False, "properties": {
                            "authorization": {"type": "object", "additionalProperties": False, "properties": {
                                "type": {"type": "string"}, "credentials": {"type": "object", "required": ["name", "key"], "additionalProperties": False,
                                                                            "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}}}}}}}}}}}}}}},
}


def _render(values: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)


def _docs(rendered: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(text) if d)
    return out


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


RENDERINGS = {
    "default": {},
    "default+monitoring": ALL_MONITORING,
    "production": PROD_VALUES,
}


@pytest.fixture(scope="module", params=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _docs(_render(RENDERINGS[request.param]))


def test_lint_is_clean() -> None:
    for values in RENDERINGS.values():
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_lint_reports_a_broken_chart(tmp_path: Path) -> None:
    """The lint above can fail: a template with a syntax error is reported."""
    with helm.Chart.load(CHART) as chart:
        copy = Path(chart.save_dir(tmp_path))
    (copy / "templates" / "broken.yaml").write_text("{{ if }}\n")
    report = helm.lint(copy)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3]


def test_every_manifest_validates_strictly(rendering: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendering
    assert len(docs) >= 10
    for doc in docs:
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            jsonschema.validate(doc, schema)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} invalid for Kubernetes {version}: {exc.message}")


def test_strict_validation_rejects_an_unknown_field() -> None:
    """kubernetes-validate --strict is really strict: a typo in a Deployment is an error."""
    deployment = _one(_docs(_render()), "Deployment", f"{RELEASE}-distillgate")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_crd_schemas_reject_unknown_fields() -> None:
    monitor = _one(_docs(_render(ALL_MONITORING)), "ServiceMonitor", f"{RELEASE}-distillgate")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = _one(docs, "ConfigMap", f"{RELEASE}-distillgate-config")
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_configmap_carries_a_valid_distillgate_config(rendering: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendering
    data = _config(docs)
    config = parse_config(data, environ={})  # the gateway's own validation
    assert config.server.host == "0.0.0.0" and config.server.port == 8080
    assert config.upstreams["student"].base_url == f"http://{RELEASE}-distillgate-student:8000/v1"
    assert config.redistill.trigger.webhook_token_env == "DISTILLGATE_WEBHOOK_TOKEN"
    gateway = _one(docs, "Deployment", f"{RELEASE}-distillgate")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert "/etc/distillgate/config.yaml" in container["args"]
    if name == "production":
        assert "url" not in data["evaluator"]["store"]
        env = {e["name"]: e for e in container["env"]}
        ref = env["DISTILLGATE__EVALUATOR__STORE__URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "distillgate-postgres", "key": "url"}
        # The env override the gateway applies at start-up does reach the store URL.
        url = "postgresql+psycopg://u:p@db:5432/dg"
        assert parse_config(data, environ={"DISTILLGATE__EVALUATOR__STORE__URL": url}).evaluator.store.url == url
    else:
        assert config.evaluator.store.url == "sqlite:////var/lib/distillgate/pairs.db"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/var/lib/distillgate" in mounts
        assert gateway["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("values,message", [
    ({"gateway": {"replicas": 2}}, "sqlite supports exactly one gateway replica"),
    ({"gateway": {"autoscaling": {"enabled": True}}}, "sqlite supports exactly one gateway replica"),
    ({"store": {"type": "postgres"}}, "store.postgres.existingSecret"),
    ({"redistill": {"runner": "kubernetes"}}, "needs store.type=postgres"),
    ({"student": {"replicas": 2}}, "student.replicas > 1"),
])
def test_chart_refuses_unsafe_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as exc:
        _render(values)
    assert message in str(exc.value)


def test_postgres_allows_many_replicas() -> None:
    docs = _docs(_render(_merged(PROD_VALUES, {"gateway": {"autoscaling": {"enabled": False}, "replicas": 5}})))
    assert _one(docs, "Deployment", f"{RELEASE}-distillgate")["spec"]["replicas"] == 5
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"].endswith("-pairs")]


def test_role_only_grants_jobs_in_the_release_namespace() -> None:
    docs = _docs(_render(PROD_VALUES))
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    role = _one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert len(role["rules"]) == 1
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["batch"] and rule["resources"] == ["jobs"]
    assert set(rule["verbs"]) <= {"create", "get", "list", "watch", "delete"}
    assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    binding = _one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    (subject,) = binding["subjects"]
    gateway_pod = _one(docs, "Deployment", f"{RELEASE}-distillgate")["spec"]["template"]["spec"]
    assert subject == {"kind": "ServiceAccount", "name": gateway_pod["serviceAccountName"], "namespace": NAMESPACE}
    assert gateway_pod["automountServiceAccountToken"] is True
    # The jobs themselves get an identity with no API access.
    job = _config(docs)["redistill"]["runner"]["kubernetes"]["job_template"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] != gateway_pod["serviceAccountName"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_local_runner_renders_no_rbac_and_no_token() -> None:
    docs = _docs(_render())
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}]
    assert _one(docs, "Deployment", f"{RELEASE}-distillgate")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_job_template_is_a_valid_gpu_job() -> None:
    runner = _config(_docs(_render(PROD_VALUES)))["redistill"]["runner"]
    job = runner["kubernetes"]["job_template"]
    # One deadline: Kubernetes stops the pod at the same age at which the gateway gives up on the job.
    assert runner["job_timeout_s"] == job["spec"]["activeDeadlineSeconds"] == 21600
    job = _merged(job, {"metadata": {"name": "redistill-support-intent-1"}})
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]} >= {"config", "data"}


def test_gateway_probes_termination_pdb_and_hpa() -> None:
    docs = _docs(_render(PROD_VALUES))
    gateway = _one(docs, "Deployment", f"{RELEASE}-distillgate")
    pod = gateway["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert "replicas" not in gateway["spec"]  # the HPA owns it
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    selector = gateway["spec"]["selector"]["matchLabels"]
    assert _one(docs, "PodDisruptionBudget")["spec"] == {"minAvailable": 2, "selector": {"matchLabels": selector}}
    hpa = _one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": gateway["metadata"]["name"]}
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] == 12
    service = _one(docs, "Service", f"{RELEASE}-distillgate")
    assert service["spec"]["selector"] == selector
    # Default values: a PDB that never blocks a drain of the single replica, no HPA.
    default = _docs(_render())
    assert _one(default, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not [d for d in default if d["kind"] == "HorizontalPodAutoscaler"]


def test_config_change_rolls_the_gateway() -> None:
    def checksum(values: dict[str, Any]) -> str:
        d = _one(_docs(_render(values)), "Deployment", f"{RELEASE}-distillgate")
        return d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"evaluator": {"workers": 8}}})


def test_vllm_student_serves_runtime_lora_on_a_gpu() -> None:
    docs = _docs(_render(PROD_VALUES))
    student = _one(docs, "Deployment", f"{RELEASE}-distillgate-student")
    pod = student["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "--enable-lora" in c["args"]
    assert "--served-model-name=student" in c["args"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in c["env"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"distillgate-student-weights", f"{RELEASE}-distillgate-data"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    svc = _one(docs, "Service", f"{RELEASE}-distillgate-student")
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_existing_secret_replaces_the_chart_secret() -> None:
    docs = _docs(_render(PROD_VALUES))
    assert not [d for d in docs if d["kind"] == "Secret"]
    pod = _one(docs, "Deployment", f"{RELEASE}-distillgate")["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "distillgate-secrets"}}]
    created = _one(_docs(_render({"secrets": {"data": {"DISTILLGATE_WEBHOOK_TOKEN": "t0k"}}})), "Secret")
    assert created["stringData"]["DISTILLGATE_WEBHOOK_TOKEN"] == "t0k"


def test_chart_copies_of_rules_and_dashboards_are_in_sync() -> None:
    for name in ("recording.yaml", "alerts.yaml"):
        assert (CHART / "files" / "rules" / name).read_text() == (RULES / name).read_text(), f"run `make dashboards` ({name})"
    for name in DASHBOARD_FILES:
        assert (CHART / "files" / "dashboards" / name).read_text() == (DASHBOARDS / name).read_text(), f"run `make dashboards` ({name})"


def test_prometheus_rule_carries_the_rules_and_promtool_accepts_them(tmp_path: Path, prometheus_bin: dict[str, str]) -> None:
    docs = _docs(_render(PROD_VALUES))
    rule = _one(docs, "PrometheusRule")
    expected = [g for f in ("recording.yaml", "alerts.yaml") for g in yaml.safe_load((RULES / f).read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    path = tmp_path / "from-chart.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    res = subprocess.run([prometheus_bin["promtool"], "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 19 rules found" in res.stdout


def test_service_monitor_scrapes_the_gateway_service() -> None:
    docs = _docs(_render(ALL_MONITORING))
    monitor = _one(docs, "ServiceMonitor", f"{RELEASE}-distillgate")
    service = _one(docs, "Service", f"{RELEASE}-distillgate")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_alertmanager_config_routes_retraining_alerts_to_the_webhook() -> None:
    docs = _docs(_render(ALL_MONITORING))
    amc = _one(docs, "AlertmanagerConfig")["spec"]
    (matcher,) = amc["route"]["matchers"]
    assert set(matcher["value"].split("|")) == {"StudentAgreementLow", "InputDriftHigh", "OutputDriftHigh"}
    (hook,) = amc["receivers"][0]["webhookConfigs"]
    assert hook["url"] == f"http://{RELEASE}-distillgate.{NAMESPACE}.svc:8080/v1/distillgate/alerts"
    assert hook["httpConfig"]["authorization"]["credentials"] == {"name": f"{RELEASE}-distillgate-secrets", "key": "DISTILLGATE_WEBHOOK_TOKEN"}
    secret = _one(docs, "Secret")
    assert "DISTILLGATE_WEBHOOK_TOKEN" in secret["stringData"]


def test_dashboard_configmaps_for_the_grafana_sidecar() -> None:
    docs = _docs(_render())
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(maps) == len(DASHBOARD_FILES)
    for cm in maps:
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((DASHBOARDS / key).read_text())
    assert not [d for d in _docs(_render({"monitoring": {"dashboards": {"enabled": False}}}))
                if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]]


def test_notes_render() -> None:
    notes = _render(PROD_VALUES)["distillgate/templates/NOTES.txt"]
    assert f"http://{RELEASE}-distillgate.{NAMESPACE}.svc:8080/v1" in notes
    assert "postgres" in notes and "kubernetes" in notes


def test_runbook_base_url_rewrites_alert_annotations() -> None:
    base = "https://git.example.com/distillgate/blob/main/dashboards/RUNBOOK.md"
    values = _merged(ALL_MONITORING, {"monitoring": {"prometheusRule": {"runbookBaseUrl": base}}})
    rule = _one(_docs(_render(values)), "PrometheusRule")
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert urls["StudentAgreementLow"] == base + "#studentagreementlow"
    assert all(u.startswith(base + "#") for u in urls.values())


def test_runner_builds_a_valid_job_from_the_chart_template() -> None:
    """The kubernetes runner's own job_manifest() on the chart's template: a valid Job in the namespace."""
    from redistill.runners import JobSpec, job_manifest

    config = parse_config(_config(_docs(_render(PROD_VALUES))), environ={})
    settings = config.redistill.runner.kubernetes
    assert config.redistill.runner.kind == "kubernetes" and settings.namespace == NAMESPACE
    job = job_manifest(settings, JobSpec(job_id="abc123", model="support-intent", config_path=None))
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    assert job["metadata"]["namespace"] == NAMESPACE
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["distillgate"]
    assert container["args"][:3] == ["redistill-job", "--model", "support-intent"]
    # The job's CLI finds the mounted config through DISTILLGATE_CONFIG (the CLI's --config default).
    assert {"name": "DISTILLGATE_CONFIG", "value": "/etc/distillgate/config.yaml"} in container["env"]
    assert {"name": "config", "mountPath": "/etc/distillgate", "readOnly": True} in container["volumeMounts"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
