"""Promotion and rollback against the session's real vLLM server (runtime LoRA on): adapters trained here
are loaded, served by version name, walked through shadow -> canary -> live, rejected, unloaded."""
import asyncio

import openai
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from evaluator.agreement import AgreementSnapshot
from evaluator.store.schema import metadata
from redistill.metrics import RedistillMetrics
from redistill.promote import AdapterError, PromotionController, VLLMAdmin
from redistill.registry import Registry
from redistill.settings import PromoteSettings, TrainSettings
from redistill.train import train

from redistill_toy import SYSTEM, examples

pytestmark = pytest.mark.vllm
EMPTY = AgreementSnapshot(n=0, agreed=0, ratio=None, lower=None, upper=None)


def snap(n, ratio, lower, upper):
    return AgreementSnapshot(n=n, agreed=int(n * ratio), ratio=ratio, lower=lower, upper=upper)


@pytest.fixture(scope="module")
def adapters(vllm_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    s = TrainSettings(max_steps=2, batch_size=12, lora_r=8, max_length=64, val_fraction=0.0)
    return [str(train(examples(), vllm_student.model_dir, out / f"a{i}", s.model_copy(update={"seed": i}),
                      progress=False).output_dir.resolve()) for i in range(2)]


def test_promote_canary_live_reject_and_rollback(vllm_student, adapters, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    metadata.create_all(engine)
    registry = Registry(engine, canary_percent=20)
    prom = CollectorRegistry()
    snaps = {"base": snap(60, 0.7, 0.58, 0.8)}
    admin = VLLMAdmin(vllm_student.base_url)
    controller = PromotionController(registry, lambda m: admin, lambda m, v: snaps.get(v, EMPTY),
                                     PromoteSettings(shadow_min_samples=5, canary_min_samples=5), ["intent"],
                                     metrics=RedistillMetrics(prom), unload_grace_s=0.0)
    oai = openai.AsyncOpenAI(base_url=vllm_student.base_url, api_key="unused")
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "where is my parcel"}]

    async def scenario():
        v1 = registry.register(model="intent", base_model=str(vllm_student.model_dir), adapter_path=adapters[0],
                               dataset_manifest_hash="h1", gate_report={"passed": True})
        assert (await controller.submit(v1.id)).status == "shadow"
        assert v1.id in await admin.models()
        reply = await oai.chat.completions.create(model=v1.id, messages=msgs, max_tokens=3, temperature=0)
        assert reply.model == v1.id and reply.choices[0].finish_reason in ("stop", "length")

        snaps[v1.id] = snap(6, 0.83, 0.44, 0.97)  # enough samples, not worse than base
        assert [c.to for c in await controller.tick()] == ["canary"]
        assert registry.active("intent").canary.id == v1.id and registry.active("intent").canary_percent == 20
        assert [c.to for c in await controller.tick()] == ["live"]
        assert registry.active("intent").live.id == v1.id
        assert prom.get_sample_value("distillgate_model_version_info",
                                     {"model": "intent", "version": v1.id, "status": "live"}) == 1

        # a worse candidate is rejected in shadow and unloaded: its name then 404s
        snaps[v1.id] = snap(60, 0.8, 0.68, 0.88)
        v2 = registry.register(model="intent", base_model=str(vllm_student.model_dir), adapter_path=adapters[1],
                               dataset_manifest_hash="h2", gate_report={"passed": True}, parent_id=v1.id)
        await controller.submit(v2.id)
        snaps[v2.id] = snap(8, 0.25, 0.07, 0.59)
        assert [c.to for c in await controller.tick()] == ["rolled_back"]
        assert registry.get(v2.id).status == "rejected" and registry.active("intent").live.id == v1.id
        assert v2.id not in await admin.models()
        with pytest.raises(openai.NotFoundError):
            await oai.chat.completions.create(model=v2.id, messages=msgs, max_tokens=2)

        # hot swap behind the same name, then a bad path is refused and the server stays up
        await admin.load(v1.id, adapters[1], inplace=True)
        v3 = registry.register(model="intent", base_model="x", adapter_path=str(tmp_path / "missing"),
                               dataset_manifest_hash=None, gate_report=None)
        with pytest.raises(AdapterError) as err:
            await controller.submit(v3.id)
        assert err.value.status in (400, 404) and registry.get(v3.id).status == "failed"

        # manual rollback: back to the base model, the old live adapter unloaded
        active = await controller.rollback("intent", "operator")
        assert active.live is None and registry.get(v1.id).status == "rejected"
        await controller.tick()
        assert v1.id not in await admin.models()
        base = await oai.chat.completions.create(model=vllm_student.served_name, messages=msgs, max_tokens=2)
        assert base.choices
        assert prom.get_sample_value("distillgate_promotions_total", {"model": "intent", "status": "rolled_back"}) == 2
        await admin.close()
        await oai.close()

    asyncio.run(scenario())
