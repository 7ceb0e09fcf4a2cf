"""The gateway process stays lean: `serve` loads no training, plotting or scorer libraries it does not use.

Runs in a fresh interpreter, since this test process has imported everything already.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "matplotlib", "sklearn", "scipy.stats", "rouge_score", "nltk",
         "sacrebleu", "lxml")

PROBE = """
import asyncio, json, sys
import gateway.app, gateway.cli
from gateway.config import load_config

gateway.cli.build_parser()  # registers every CLI plug-in, as `distillgate serve` does
config = load_config(sys.argv[1])
app = gateway.app.create_app(config)

async def run_lifespan():
    async with app.router.lifespan_context(app):  # builds the evaluator, registry and redistill service
        print(json.dumps({"evaluator": type(app.state.evaluator).__name__,
                          "redistill": type(app.state.redistill).__name__}))

asyncio.run(run_lifespan())
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {h.split(".")[0] for h in %r})))
"""


def test_serving_imports_no_heavy_libraries(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    config.setdefault("evaluator", {})["store"] = {"url": f"sqlite:///{tmp_path / 'pairs.db'}"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "DISTILLGATE_APP_KEY": "sk-test", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    built = json.loads(lines[-2])
    assert built["evaluator"] == "Evaluator"  # the evaluator really started, so its import chain was loaded
    loaded = set(json.loads(lines[-1]))
    offending = sorted(h for h in HEAVY if h in loaded)
    assert not offending, f"the gateway process imported {offending}"
