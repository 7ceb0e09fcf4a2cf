"""Where a re-distillation job runs: a local subprocess or a Kubernetes batch/v1 Job.

Both launch the same command, `distillgate --config C redistill-job --model M --job-id J`; the job
process writes its own verdict to the jobs table. A runner only reports how the process ended, so a
crash or kill (no verdict written) is turned into a failed job by the service, never a changed version.
"""
from __future__ import annotations

import asyncio
import copy
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from redistill.settings import KubernetesRunnerSettings

DEFAULT_COMMAND = (sys.executable, "-m", "gateway.cli")
# The job process answers it by writing every thread's stack to its log (faulthandler), and keeps running.
STACK_DUMP_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True, slots=True)
class JobSpec:
    job_id: str
    model: str
    config_path: str | None  # the local runner's job reads this; in-cluster jobs mount their own config
    since_s: float | None = None
    dry_run: bool = False
    log_path: Path | None = None


@dataclass(frozen=True, slots=True)
class JobExit:
    code: int  # 0 = the process ended normally (its verdict is in the jobs table)
    message: str


class JobHandle(Protocol):
    async def wait(self) -> JobExit: ...

    async def cancel(self) -> None: ...

    async def dump_stacks(self) -> None:
        """Ask the job to write where it is into its log (before a stop); a no-op where it cannot."""


class Runner(Protocol):
    name: str

    async def start(self, spec: JobSpec) -> JobHandle: ...


def job_args(spec: JobSpec) -> list[str]:
    """The CLI arguments after the global ones (what the job container's args end with)."""
    args = ["redistill-job", "--model", spec.model, "--job-id", spec.job_id]
    if spec.since_s is not None:
        args += ["--since", f"{int(spec.since_s)}s"]
    if spec.dry_run:
        args.append("--dry-run")
    return args


# -- local ----------------------------------------------------------------------------------------
class LocalHandle:
    def __init__(self, proc: asyncio.subprocess.Process, log: Any) -> None:
        self.proc = proc
        self._log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self) -> JobExit:
        try:
            code = await self.proc.wait()
        finally:
            self._log.close()
        if code < 0:
            return JobExit(code, f"killed by signal {signal.Signals(-code).name}")
        return JobExit(code, "exited normally" if code == 0 else f"exit code {code}")

    async def cancel(self) -> None:
        if self.proc.returncode is not None:
            return
        try:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=10)
            except asyncio.TimeoutError:
                self.proc.kill()
        except ProcessLookupError:  # ended (and was reaped) since the check
            pass

    async def dump_stacks(self) -> None:
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(STACK_DUMP_SIGNAL)
        except ProcessLookupError:
            return
        await asyncio.sleep(1.0)  # faulthandler writes from its signal handler: a moment is plenty


class LocalRunner:
    name = "local"

    def __init__(self, command: Sequence[str] = DEFAULT_COMMAND, *, env: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd

    async def start(self, spec: JobSpec) -> LocalHandle:
        if spec.config_path is None:
            raise ValueError("the local runner needs the job's config file")
        log_path = spec.log_path or Path(os.devnull)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed by the handle when the process ends
        argv = [*self.command, "--config", spec.config_path, *job_args(spec)]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, start_new_session=True,  # the gateway's Ctrl-C does not kill the job
        )
        return LocalHandle(proc, log)


# -- Kubernetes -----------------------------------------------------------------------------------
def job_manifest(settings: KubernetesRunnerSettings, spec: JobSpec) -> dict[str, Any]:
    """job_template (a batch/v1 Job, or just its spec) with this run's name, labels and args."""
    template = copy.deepcopy(settings.job_template)
    job = template if template.get("kind") == "Job" else {"spec": template.get("spec", template)}
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    name = f"distillgate-redistill-{spec.job_id}".lower()[:63].rstrip("-")
    meta = job.setdefault("metadata", {})
    meta["name"] = name
    meta.setdefault("namespace", settings.namespace)
    labels = {"app.kubernetes.io/name": "distillgate", "app.kubernetes.io/component": "redistill",
              "distillgate/job-id": spec.job_id}
    meta["labels"] = {**meta.get("labels", {}), **labels}
    jspec = job.setdefault("spec", {})
    jspec.setdefault("backoffLimit", 0)  # a crashed job is failed, not retried into a second version
    pod = jspec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    containers = pod.setdefault("containers", [])
    if not containers:
        containers.append({"name": "redistill", "image": "distillgate:latest", "command": ["distillgate"]})
    main = containers[0]
    main["args"] = [*main.get("args", []), *job_args(spec)]
    for c in containers:
        # YAML gives `nvidia.com/gpu: 1` as an int; the API (and the client's validation) wants quantity strings.
        for kind in ("limits", "requests"):
            res = c.get("resources", {}).get(kind)
            if isinstance(res, dict):
                c["resources"][kind] = {k: str(v) for k, v in res.items()}
    return job


class KubernetesHandle:
    def __init__(self, api: Any, namespace: str, name: str, poll_s: float) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.poll_s = poll_s

    async def status(self) -> Any:
        return await asyncio.to_thread(self.api.read_namespaced_job_status, self.name, self.namespace)

    async def wait(self) -> JobExit:
        from kubernetes.client.exceptions import ApiException

        while True:
            try:
                job = await self.status()
            except ApiException as exc:
                if exc.status == 404:
                    return JobExit(1, "job deleted before it finished")
                raise
            st = job.status
            if st is not None and (st.succeeded or 0) > 0:
                return JobExit(0, "succeeded")
            if st is not None and (st.failed or 0) > 0:
                reason = next((c.message or c.reason for c in st.conditions or [] if c.type == "Failed"), None)
                return JobExit(1, f"job failed: {reason or 'pod failed'}")
            await asyncio.sleep(self.poll_s)

    async def dump_stacks(self) -> None:
        return None  # the pod is out of reach; its own logs stay with the cluster

    async def cancel(self) -> None:
        from kubernetes.client import V1DeleteOptions

        await asyncio.to_thread(self.api.delete_namespaced_job, self.name, self.namespace,
                                body=V1DeleteOptions(propagation_policy="Background"))


class KubernetesRunner:
    """Creates a batch/v1 Job through the official client. ``api_client`` is injected in tests (a client
    pointed at a local API server); otherwise in-cluster or kubeconfig credentials are loaded."""

    name = "kubernetes"

    def __init__(self, settings: KubernetesRunnerSettings, *, api_client: Any = None, poll_s: float = 5.0) -> None:
        from kubernetes import client, config

        if api_client is None:
            if settings.in_cluster:
                config.load_incluster_config()
            else:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.settings = settings
        self.api = client.BatchV1Api(api_client)
        self.poll_s = poll_s

    async def start(self, spec: JobSpec) -> KubernetesHandle:
        body = job_manifest(self.settings, spec)
        ns = body["metadata"]["namespace"]
        created = await asyncio.to_thread(self.api.create_namespaced_job, ns, body)
        return KubernetesHandle(self.api, ns, created.metadata.name, self.poll_s)
