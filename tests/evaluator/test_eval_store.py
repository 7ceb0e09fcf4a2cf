"""PairStore on SQLite and on a real Postgres: migrations, round trips, queries, redaction, retention, drops."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from prometheus_client import CollectorRegistry
from sqlalchemy import inspect

from evaluator.records import Feedback, ShadowPair
from evaluator.settings import RetentionSettings, StoreSettings
from evaluator.store import PairStore
from evaluator.store.migrate import alembic_config
from evaluator.store.schema import metadata

ROOT = Path(__file__).resolve().parents[2]


def test_fresh_database_migrates_to_head_matching_schema(store: PairStore) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == head
        # The migration history builds exactly the tables and columns schema.py declares.
        assert compare_metadata(ctx, metadata) == []
    assert set(metadata.tables) <= set(inspect(store.engine).get_table_names())
    store.migrate()  # idempotent


def test_upgrade_from_first_revision_keeps_rows(store_url: str, make_exchange) -> None:
    from alembic import command

    store = PairStore(store_url, StoreSettings(url=store_url, flush_interval_s=0.02))
    cfg = alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    kept = make_exchange("kept")
    store.put_exchange(kept)
    assert store.flush()
    store.migrate()
    assert store.exchange_by_request_id("kept") == kept
    assert "ix_pairs_shadow_id" in {ix["name"] for ix in inspect(store.engine).get_indexes("pairs")}
    store.close()


def test_pair_round_trip_and_queries(store: PairStore, make_exchange) -> None:
    served = make_exchange("r1", token_logprobs=(-0.1, -0.5), top_logprobs=({"billing": -0.1, "bug": -2.0},))
    teacher = make_exchange("r1", route="teacher", version="teacher-x", text_out="refund")
    assert store.put_exchange(served)
    assert store.put_pair(ShadowPair(served, teacher, {"label": 0.0, "rouge_l": 0.2}, agreed=False))
    other = make_exchange("r2", slice="tier:gold", version="v2")
    assert store.put_pair(ShadowPair(other, make_exchange("r2", route="teacher"), {"label": 1.0}, agreed=True))
    assert store.flush()

    pairs = store.pairs("m")
    assert [p.served.request_id for p in pairs] == ["r1", "r2"]
    assert pairs[0].served == served  # nothing to redact here: the record comes back identical
    assert pairs[0].teacher.response_text == "refund" and pairs[0].scores == {"label": 0.0, "rouge_l": 0.2}
    assert [p.served.request_id for p in store.pairs("m", agreed=True)] == ["r2"]
    assert [p.served.request_id for p in store.pairs("m", version="v2")] == ["r2"]
    assert [p.served.request_id for p in store.pairs("m", slice="tier:gold")] == ["r2"]
    assert [p.served.request_id for p in store.pairs("m", limit=1)] == ["r2"]
    assert store.pairs("other-model") == []
    assert store.pairs("m", since=time.time() + 60) == []
    # The served exchange was stored once (reused by its pair); shadow answers are not served traffic.
    assert [e.request_id for e in store.exchanges("m")] == ["r1", "r2"]
    assert store.count("exchanges") == 4
    assert store.exchange_by_request_id("r1") == served
    assert store.exchange_by_request_id("nope") is None


def test_feedback_and_pending(store: PairStore, make_exchange) -> None:
    now = time.time()
    store.add_feedback(Feedback("r1", "m", "billing", None, "old", None, now))
    store.add_feedback(Feedback("r1", "m", "refund", 1.0, "mail me at x@y.org", "k", now + 1))
    found = store.feedback_for(["r1", "r9"])
    assert set(found) == {"r1"}
    assert found["r1"].label == "refund" and found["r1"].comment == "mail me at [REDACTED]"
    records = [make_exchange(f"p{i}") for i in range(3)]
    store.save_pending(records)
    assert store.take_pending() == records
    assert store.take_pending() == []


def test_redaction_before_storage(store: PairStore, make_exchange) -> None:
    served = make_exchange("r1", prompt="I am jo@example.com, call +1 (555) 123-4567, key sk-abcdefghijklmnop1234",
                           text_out="wrote to jo@example.com")
    store.put_pair(ShadowPair(served, make_exchange("r1", route="teacher"), {"exact": 1.0}, True))
    assert store.flush()
    stored = store.pairs("m")[0].served
    content = stored.request["messages"][0]["content"]
    assert "jo@example.com" not in content and "555" not in content and "sk-abc" not in content
    assert content.count("[REDACTED]") == 3
    assert stored.response_text == "wrote to [REDACTED]"


def test_retention_by_age_and_rows(store_url: str, make_exchange) -> None:
    settings = StoreSettings(url=store_url, flush_interval_s=0.02, retention=RetentionSettings(days=1, max_rows=4))
    store = PairStore(store_url, settings)
    store.migrate()
    now = time.time()
    old = make_exchange("old", created_at=now - 3 * 86400)
    store.put_pair(ShadowPair(old, make_exchange("old", route="teacher", created_at=now - 3 * 86400), {"exact": 1}, True))
    for i in range(5):
        store.put_exchange(make_exchange(f"new{i}", created_at=now))
    assert store.flush()
    deleted = store.apply_retention(now=now)
    assert deleted["pairs"] == 1
    assert store.pairs("m") == []
    # 5 new exchanges remain after the age cut; max_rows=4 removes the oldest of them.
    assert [e.request_id for e in store.exchanges("m")] == ["new1", "new2", "new3", "new4"]
    store.close()


def test_full_queue_drops_are_counted_and_put_never_blocks(tmp_path: Path, make_exchange) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    registry = CollectorRegistry()
    store = PairStore(url, StoreSettings(url=url, queue_size=1, batch_size=1, flush_interval_s=5.0), registry=registry)
    store.migrate()
    # The single writer is busy waiting out its batch window after the first item; later puts find the queue full.
    results = [store.put_exchange(make_exchange(f"r{i}")) for i in range(200)]
    assert results[0] is True
    assert results.count(False) == store.dropped > 0
    assert registry.get_sample_value("distillgate_store_writes_total", {"status": "dropped"}) == store.dropped
    store.close()
    assert store.count("exchanges") == results.count(True)
    assert registry.get_sample_value("distillgate_store_writes_total", {"status": "ok"}) == results.count(True)


def test_served_only_exchanges_are_capped_per_second_but_all_counted(tmp_path: Path, make_exchange,
                                                                  monkeypatch) -> None:
    import types

    import evaluator.store.pairs as pairs

    clock = [1000.0]  # the store's monotonic seconds, moved by hand so the test cannot straddle two
    monkeypatch.setattr(pairs, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    url = f"sqlite:///{tmp_path / 'cap.db'}"
    store = PairStore(url, StoreSettings(url=url, served_sample_rate=1.0, served_max_per_s=3))
    store.migrate()
    stored = [store.put_served(make_exchange(f"s{i}")) for i in range(10)]
    always = store.put_served(make_exchange("fb", route="fallback"))  # fallbacks are always stored
    clock[0] += 1.0
    next_second = [store.put_served(make_exchange(f"n{i}")) for i in range(5)]
    assert stored == [True] * 3 + [False] * 7 and always is True
    assert next_second == [True] * 3 + [False] * 2  # a new second, a new allowance
    store.close()
    assert store.count("exchanges") == 3 + 1 + 3
    counts = store.route_counts("m")
    assert counts["student"]["requests"] == 15 and counts["fallback"]["requests"] == 1  # every request counted


WRITER = textwrap.dedent("""
    import sys
    from evaluator.records import ExchangeRecord, ShadowPair
    from evaluator.settings import StoreSettings
    from evaluator.store import PairStore
    url = sys.argv[1]
    store = PairStore(url, StoreSettings(url=url, batch_size=16, flush_interval_s=0.01))
    store.migrate()
    print("ready", flush=True)
    i = 0
    while True:
        batch = []
        for _ in range(7):
            rid = f"r{i}"; i += 1
            req = {"messages": [{"role": "user", "content": rid}]}
            served = ExchangeRecord(rid, "m", "student", "base", "chat", req, "a")
            store.put_pair(ShadowPair(served, ExchangeRecord(rid, "m", "teacher", "t", "chat", req, "a"), {"exact": 1.0}, True))
            batch.append(rid)
        if store.flush():
            print("ack " + " ".join(batch), flush=True)
""")


def test_acknowledged_pairs_survive_sigkill(store_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, store_url], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            acked += line.split()[1:]
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it keeps writing until killed
    finally:
        proc.kill()
        proc.wait()
    reader = PairStore(store_url, StoreSettings(url=store_url))
    stored = {p.served.request_id for p in reader.pairs("m")}
    reader.close()
    assert set(acked) <= stored
    assert len(stored) >= len(acked)


def test_route_counts_are_written_every_interval_by_the_writer_thread(tmp_path: Path, make_exchange) -> None:
    """Served requests only bump the tally; the started writer thread turns what it gained into rows on its
    own (no flush), one row per route and interval, and a quiet interval writes nothing."""
    url = f"sqlite:///{tmp_path / 'counts.db'}"
    store = PairStore(url, StoreSettings(url=url, served_sample_rate=0.0, flush_interval_s=0.02,
                                         counts_interval_s=0.1))
    store.migrate()
    store.start()
    try:
        for i in range(7):
            store.put_served(make_exchange(f"a{i}"))
        store.put_served(make_exchange("t", route="teacher"))
        deadline = time.monotonic() + 5
        while store.route_counts("m").get("student", {}).get("requests") != 7:
            assert time.monotonic() < deadline, "route counts never written without a flush"
            time.sleep(0.02)
        assert store.route_counts("m")["teacher"]["requests"] == 1
        store.put_served(make_exchange("b"))
        deadline = time.monotonic() + 5
        while store.route_counts("m")["student"]["requests"] != 8:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # quiet intervals: no empty rows
        assert store.count("route_counts") == 3
    finally:
        store.close()
    assert store.route_counts("m")["student"]["requests"] == 8  # close wrote nothing twice
