"""The `distillgate` CLI: config errors name the field (exit 2, no traceback), hash-key, serve under
uvicorn as a real subprocess called with the openai client; the example config covers every field."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from pydantic import BaseModel

from conftest import USER_KEY, sha
from gateway.cli import main
from gateway.config import DistillgateConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _minimal(student_url: str, teacher_url: str) -> dict:
    return {
        "upstreams": {"s": {"base_url": student_url}, "t": {"base_url": teacher_url}},
        "models": {"support": {"student": {"upstream": "s", "model": "stu"}, "teacher": {"upstream": "t", "model": "tea"}}},
        "auth": {"keys": [{"name": "user", "sha256": sha(USER_KEY)}]},
    }


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["models"]["support"]["student"].update(upstream="nope"), "models.support.student.upstream"),
    (lambda d: d["models"]["support"].update(routing={"student_percent": 150}), "models.support.routing.student_percent"),
    (lambda d: d["upstreams"]["s"].update(timeouts={"connect_s": -1}), "upstreams.s.timeouts.connect_s"),
    (lambda d: d["auth"].update(keys=[]), "auth.keys"),
    (lambda d: d.update(servr={}), "servr"),
])
def test_invalid_config_exits_2_naming_the_field(tmp_path, capsys, mutate, field):
    data = _minimal("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
    mutate(data)
    assert main(["--config", str(_write(tmp_path, data)), "check-config"]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err


def test_env_override_error_and_missing_file(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, _minimal("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"))
    assert main(["--config", str(path), "check-config"]) == 0
    assert "config OK" in capsys.readouterr().out
    monkeypatch.setenv("DISTILLGATE__SERVER__PORT", "not-a-port")
    assert main(["--config", str(path), "check-config"]) == 2
    assert "server.port" in capsys.readouterr().err
    monkeypatch.delenv("DISTILLGATE__SERVER__PORT")
    assert main(["--config", str(tmp_path / "missing.yaml"), "check-config"]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_hash_key_reads_stdin():
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "hash-key"], input="sk-secret\n",
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == hashlib.sha256(b"sk-secret").hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_the_gateway(tmp_path, student, teacher):
    path = _write(tmp_path, _minimal(student.url, teacher.url))
    port = _free_port()
    env = {**os.environ, "DISTILLGATE_CONFIG": str(path)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=USER_KEY)
        raw = client.chat.completions.with_raw_response.create(model="support", messages=[{"role": "user", "content": "x"}])
        assert raw.parse().choices[0].message.content == "student says hi"
        assert "server" not in raw.headers  # server.server_header: false by default (uvicorn's would say "uvicorn")
        assert "date" in raw.headers
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        sub = _submodel(f.annotation)
        if sub is not None:
            paths |= _field_paths(sub, path + ".")
    return paths


def _submodel(annotation) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _present_paths(node, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(node, dict):
        for k, v in node.items():
            paths.add(f"{prefix}{k}")
            paths |= _present_paths(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for item in node:
            paths |= _present_paths(item, prefix)
    return paths


def _normalise(paths: set[str], data: dict) -> set[str]:
    """Collapse the user-named keys (upstream, model names) to the model's field paths."""
    out = set()
    for p in paths:
        parts = p.split(".")
        if parts[0] in ("upstreams", "models") and len(parts) > 1:
            parts = [parts[0]] + parts[2:]
        out.add(".".join(parts))
    return out


def _expected_paths() -> set[str]:
    from gateway.config import KeySettings, ModelSettings, UpstreamSettings

    top = {p for p in _field_paths(DistillgateConfig) if not p.startswith(("upstreams.", "models.", "auth.keys."))}
    top |= {f"upstreams.{p}" for p in _field_paths(UpstreamSettings)}
    top |= {f"models.{p}" for p in _field_paths(ModelSettings)}
    top |= {f"auth.keys.{p}" for p in _field_paths(KeySettings)}
    return top


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    config = load_config(path, environ={})
    assert config.models


def test_full_example_documents_every_field():
    path = ROOT / "examples" / "gateway.yaml"
    data = yaml.safe_load(path.read_text())
    present = _normalise(_present_paths(data), data)
    missing = sorted(_expected_paths() - present)
    assert not missing, f"examples/gateway.yaml lacks fields: {missing}"
