"""Registry on the real schema (SQLite file engine): lineage, audit trail, promotion and rollback."""
import pytest
from sqlalchemy import create_engine

from evaluator.store.schema import metadata
from redistill.registry import InvalidTransition, Registry, UnknownVersion


@pytest.fixture()
def registry(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    metadata.create_all(engine)
    return Registry(engine, canary_percent=25.0)


def _reg(registry, parent=None, **kw):
    return registry.register(model="intent", base_model="/m/base", adapter_path="/a", dataset_manifest_hash="h",
                             gate_report={"passed": True}, parent_id=parent, hyperparameters={"lr": 1e-3}, **kw)


def test_register_keeps_lineage_and_audits(registry):
    v = _reg(registry)
    got = registry.get(v.id)
    assert got.status == "candidate" and got.hyperparameters == {"lr": 1e-3} and got.gate_report == {"passed": True}
    registry.set_status(v.id, "shadow", "gate passed")
    assert [(e.from_status, e.to_status) for e in registry.events(v.id)] == [(None, "candidate"), ("candidate", "shadow")]
    with pytest.raises(UnknownVersion):
        registry.get("nope")
    with pytest.raises(InvalidTransition):
        registry.set_status(v.id, "retired", "not allowed from shadow")


def test_active_promote_and_rollback_chain(registry):
    assert registry.active("intent").live is None
    v1 = _reg(registry)
    registry.promote_live(v1.id, "first")
    v2 = _reg(registry, parent=v1.id)
    registry.set_status(v2.id, "canary", "canary")
    act = registry.active("intent")
    assert act.live.id == v1.id and act.canary.id == v2.id and act.canary_percent == 25.0
    registry.promote_live(v2.id, "canary held")
    assert registry.get(v1.id).status == "retired" and registry.active("intent").live.id == v2.id
    # rollback of the live version restores its predecessor; the rolled-back one can't come back
    act = registry.rollback("intent")
    assert act.live.id == v1.id and registry.get(v2.id).status == "rejected"
    act = registry.rollback("intent")
    assert act.live is None  # back to the base model
    assert [v.id for v in registry.list("intent")] == [v1.id, v2.id]


def test_rollback_rejects_in_flight_canary_first(registry):
    v1 = _reg(registry)
    registry.promote_live(v1.id, "first")
    v2 = _reg(registry)
    registry.set_status(v2.id, "canary", "canary")
    act = registry.rollback("intent", "bad canary")
    assert act.live.id == v1.id and act.canary is None and registry.get(v2.id).status == "rejected"
