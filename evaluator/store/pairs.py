"""PairStore: durable, batched writes of exchanges and shadow pairs, and the queries reports and redistill use."""
from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.sql import Select

from evaluator.metrics import StoreMetrics
from evaluator.records import ALWAYS_STORED_ROUTES, ExchangeRecord, Feedback, ServedExchange, ShadowPair
from evaluator.served_tally import ServedTally
from evaluator.settings import StoreSettings
from evaluator.store import schema
from evaluator.store.counts import RouteCounts
from evaluator.store.engine import create_store_engine
from evaluator.store.migrate import upgrade_to_head
from evaluator.store.redaction import Redactor
from evaluator.store.rows import (
    EXCHANGE_FIELDS,
    exchange_from_json,
    exchange_from_row,
    exchange_to_row,
    primary_score,
    request_hash,
)
from evaluator.store.writer import BatchWriter

_served = schema.exchanges.alias("served")
_shadow = schema.exchanges.alias("shadow")


def _pair_columns() -> list[Any]:
    cols: list[Any] = [schema.pairs.c.scores, schema.pairs.c.agreed]
    cols += [_served.c[name].label("s_" + name) for name in EXCHANGE_FIELDS]
    cols += [_shadow.c[name].label("o_" + name) for name in EXCHANGE_FIELDS]
    return cols


class PairStore:
    """Writes go through a bounded queue to one writer thread (never blocking the caller); reads are sync.

    From async code call the read methods with ``asyncio.to_thread``. ``engine`` is shared with
    redistill's Registry, whose tables live in the same schema and migration history.
    """

    def __init__(self, url: str, settings: StoreSettings | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings or StoreSettings(url=url)
        self.url = url
        self.engine: Engine = create_store_engine(url)
        self._redactor = Redactor(self.settings.redact_patterns)
        # No registry: metrics go to a private one, so read-only users (reports, redistill) register nothing.
        self._metrics = StoreMetrics(registry if registry is not None else CollectorRegistry())
        # Every served request, counted on the event loop; written as route-count rows by the writer thread.
        self.served = ServedTally()
        self._counts = RouteCounts(self.served)
        self._writer = BatchWriter(self.engine, self._write_batch, batch_size=self.settings.batch_size,
                                   flush_interval_s=self.settings.flush_interval_s,
                                   queue_size=self.settings.queue_size, metrics=self._metrics, tick=self._due_counts)
        self._rng = random.Random()
        self._served_second = 0  # the monotonic second the sampled served rows below were counted in
        self._served_in_second = 0

    def _served_budget(self) -> bool:
        """Whether one more sampled served-only exchange fits this second's cap (served_max_per_s)."""
        cap = self.settings.served_max_per_s
        if cap is None:
            return True
        second = int(time.monotonic())
        if second != self._served_second:
            self._served_second, self._served_in_second = second, 0
        if self._served_in_second >= cap:
            return False
        self._served_in_second += 1
        return True

    # -- lifecycle -------------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Brings the database to the newest schema revision (idempotent)."""
        upgrade_to_head(self.engine)

    def start(self) -> None:
        """Starts the writer thread, which also writes route counts every counts_interval_s (without it they
        are written at flush and close only)."""
        self._writer.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Blocks until every record put before the call (and every count) is committed; False if a write
        failed meanwhile."""
        self._put_counts()
        return self._writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flushes what is queued, stops the writer thread and disposes of the engine."""
        self._put_counts()
        self._writer.close(timeout)
        self.engine.dispose()

    @property
    def queue_depth(self) -> int:
        return self._writer.depth

    @property
    def dropped(self) -> int:
        return self._writer.dropped

    @property
    def write_errors(self) -> int:
        return self._writer.errors

    # -- writes (non-blocking) -------------------------------------------------------------------------
    def put_exchange(self, record: ExchangeRecord) -> bool:
        """Queues a served exchange; False (and counted) when the queue is full or the store is closed."""
        return self._writer.put(("exchange", record))

    def put_served(self, record: ServedExchange) -> bool:
        """A served request: always counted per route; its exchange stored when sampled (served_sample_rate)
        or when it must be (escalation, fallback, error). O(1). True when the exchange was queued.

        A served exchange that later becomes a shadow pair is stored with the pair whatever the sample said.
        """
        self.served.add(record.model, record.route, record.prompt_tokens or 0, record.completion_tokens or 0)
        return self.samples_served(record.route, record.status) and self.put_sampled(record)

    def samples_served(self, route: str, status: int = 200) -> bool:
        """Whether a served request's exchange is to be stored (put_served's rule), decided before any record
        is built: by route and status, else by the served_sample_rate draw within served_max_per_s."""
        return (route in ALWAYS_STORED_ROUTES or status != 200
                or (self._rng.random() < self.settings.served_sample_rate and self._served_budget()))

    def put_sampled(self, record: ServedExchange) -> bool:
        """Queues an exchange `samples_served` chose, counting it as stored once accepted."""
        if not self.put_exchange(record.record()):
            return False
        self.served.add_stored(record.model, record.route)
        return True

    def _due_counts(self) -> list[tuple[str, Any]]:
        """The writer thread's tick: route-count rows once counts_interval_s has passed."""
        if not self._counts.due(self.settings.counts_interval_s):
            return []
        rows = self._counts.drain()
        return [("counts", rows)] if rows else []

    def _put_counts(self) -> None:
        rows = self._counts.drain()
        if rows:
            self._writer.put(("counts", rows))

    def put_pair(self, pair: ShadowPair) -> bool:
        """Queues a scored pair; its served exchange is reused if it was already stored by put_exchange."""
        return self._writer.put(("pair", pair))

    def _write_batch(self, conn: Connection, batch: list[tuple[str, Any]]) -> None:
        # Runs of the same kind in one executemany each, in queue order (ids follow arrival; a pair's served
        # exchange, put before it, is there when the pair looks it up).
        for kind, run in itertools.groupby(batch, key=lambda entry: entry[0]):
            items = [item for _, item in run]
            if kind == "exchange":
                conn.execute(insert(schema.exchanges), [self._redacted_row(r) for r in items])
            elif kind == "counts":
                conn.execute(insert(schema.route_counts), [row for rows in items for row in rows])
            else:
                self._insert_pairs(conn, items)

    def _redacted_row(self, record: ExchangeRecord) -> dict[str, Any]:
        row = exchange_to_row(record)
        row["request"] = self._redactor.value(row["request"])
        row["response_text"] = self._redactor.text(row["response_text"])
        return row

    def _insert_pairs(self, conn: Connection, pairs: list[ShadowPair]) -> None:
        """Three statements per batch: find the served exchanges already stored, insert the missing ones and
        every shadow answer (executemany, ids returned in order), insert the pairs."""
        ex = schema.exchanges
        Key = tuple[str, str, str]

        def key(record: ExchangeRecord) -> Key:
            return (record.request_id, record.route, record.model)

        ids: dict[Key, int] = {}
        request_ids = list({p.served.request_id for p in pairs})
        for start in range(0, len(request_ids), 500):
            rows = conn.execute(select(ex.c.id, ex.c.request_id, ex.c.route, ex.c.model)
                                .where(ex.c.request_id.in_(request_ids[start:start + 500])).order_by(ex.c.id))
            for row in rows:
                ids[(row.request_id, row.route, row.model)] = row.id  # the newest wins, as before
        # A served record is reused if stored (or inserted earlier in this batch: a shadow-stage pair's served
        # side is the teacher answer of the pair before it); a shadow answer is always a new row.
        new_rows: list[dict[str, Any]] = []
        slots: list[tuple[int | Key, int | Key]] = []
        pending: dict[Key, int] = {}
        for pair in pairs:
            k = key(pair.served)
            if k in pending:
                served_slot: int | Key = pending[k]
            elif k in ids:
                served_slot = k
            else:
                served_slot = pending[k] = len(new_rows)
                new_rows.append(self._redacted_row(pair.served))
            shadow_slot = len(new_rows)
            pending[key(pair.shadow)] = shadow_slot
            new_rows.append(self._redacted_row(pair.shadow))
            slots.append((served_slot, shadow_slot))
        new_ids = conn.execute(insert(ex).returning(ex.c.id, sort_by_parameter_order=True), new_rows).scalars().all()

        def resolve(slot: int | Key) -> int:
            return new_ids[slot] if isinstance(slot, int) else ids[slot]

        now = time.time()
        conn.execute(insert(schema.pairs), [
            dict(model=pair.served.model, version=pair.student.version, slice=pair.served.slice,
                 served_id=resolve(s), shadow_id=resolve(o), scores=dict(pair.scores), score=primary_score(pair),
                 agreed=bool(pair.agreed), request_hash=request_hash(pair.served.request), created_at=now)
            for pair, (s, o) in zip(pairs, slots)
        ])

    # -- queries ---------------------------------------------------------------------------------------
    def pairs(self, model: str, since: float | None = None, until: float | None = None, version: str | None = None,
              slice: str | None = None, agreed: bool | None = None, limit: int | None = None) -> list[ShadowPair]:
        """Stored pairs of one logical model, oldest first (``limit`` keeps the newest)."""
        p = schema.pairs
        q = (select(*_pair_columns()).select_from(p.join(_served, p.c.served_id == _served.c.id)
                                                   .join(_shadow, p.c.shadow_id == _shadow.c.id))
             .where(p.c.model == model))
        if since is not None:
            q = q.where(p.c.created_at >= since)
        if until is not None:
            q = q.where(p.c.created_at < until)
        if version is not None:
            q = q.where(p.c.version == version)
        if slice is not None:
            q = q.where(p.c.slice == slice)
        if agreed is not None:
            q = q.where(p.c.agreed == agreed)
        q = q.order_by(p.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [ShadowPair(served=exchange_from_row(r, "s_"), shadow=exchange_from_row(r, "o_"),
                           scores=dict(r["scores"]), agreed=bool(r["agreed"])) for r in reversed(rows)]

    def _served_exchanges(self) -> Select[Any]:
        ex = schema.exchanges
        shadow_ids = select(schema.pairs.c.shadow_id)
        return select(ex).where(ex.c.id.not_in(shadow_ids))

    def exchanges(self, model: str, since: float | None = None, until: float | None = None,
                  limit: int | None = None) -> list[ExchangeRecord]:
        """Served exchanges (shadow answers excluded), oldest first."""
        ex = schema.exchanges
        q = self._served_exchanges().where(ex.c.model == model)
        if since is not None:
            q = q.where(ex.c.created_at >= since)
        if until is not None:
            q = q.where(ex.c.created_at < until)
        q = q.order_by(ex.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [exchange_from_row(r) for r in reversed(rows)]

    def exchange_by_request_id(self, request_id: str) -> ExchangeRecord | None:
        """The served exchange for a request id (the newest, if an id was reused)."""
        ex = schema.exchanges
        q = self._served_exchanges().where(ex.c.request_id == request_id).order_by(ex.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return exchange_from_row(row) if row is not None else None

    def route_counts(self, model: str, since: float | None = None, until: float | None = None) -> dict[str, dict[str, int]]:
        """Requests and tokens per served route (every request, stored or not), from the counts rows whose
        period ended in [since, until)."""
        rc = schema.route_counts
        q = (select(rc.c.route, func.sum(rc.c.requests), func.sum(rc.c.stored), func.sum(rc.c.prompt_tokens),
                    func.sum(rc.c.completion_tokens)).where(rc.c.model == model).group_by(rc.c.route))
        if since is not None:
            q = q.where(rc.c.created_at >= since)
        if until is not None:
            q = q.where(rc.c.created_at < until)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return {route: {"requests": int(n), "stored": int(st), "prompt_tokens": int(p), "completion_tokens": int(c)}
                for route, n, st, p, c in rows}

    def models(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(schema.exchanges.c.model).distinct()).scalars())

    # -- feedback --------------------------------------------------------------------------------------
    def add_feedback(self, feedback: Feedback) -> None:
        values = {name: getattr(feedback, name) for name in Feedback.__dataclass_fields__}
        if values["comment"] is not None:
            values["comment"] = self._redactor.text(values["comment"])
        with self.engine.begin() as conn:
            conn.execute(insert(schema.feedback).values(values))

    def feedback_for(self, request_ids: Iterable[str]) -> dict[str, Feedback]:
        """The newest feedback per request id, for those that have any."""
        ids = list(dict.fromkeys(request_ids))
        found: dict[str, Feedback] = {}
        fb = schema.feedback
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):  # keeps IN (...) lists within every backend's limits
                rows = conn.execute(select(fb).where(fb.c.request_id.in_(ids[start:start + 500])).order_by(fb.c.id))
                for row in rows.mappings():
                    found[row["request_id"]] = _feedback(row)
        return found

    def feedback(self, model: str | None = None, since: float | None = None) -> list[Feedback]:
        fb = schema.feedback
        q = select(fb).order_by(fb.c.id)
        if model is not None:
            q = q.where(fb.c.model == model)
        if since is not None:
            q = q.where(fb.c.created_at >= since)
        with self.engine.connect() as conn:
            return [_feedback(r) for r in conn.execute(q).mappings()]

    # -- shadows not done at shutdown ------------------------------------------------------------------
    def save_pending(self, records: Sequence[ExchangeRecord]) -> None:
        if not records:
            return
        now = time.time()
        rows = [{"record": self._redacted_row(r), "created_at": now} for r in records]
        with self.engine.begin() as conn:
            conn.execute(insert(schema.pending_shadows), rows)

    def take_pending(self) -> list[ExchangeRecord]:
        """Removes and returns the persisted pending shadows, oldest first."""
        ps = schema.pending_shadows
        with self.engine.begin() as conn:
            rows = conn.execute(select(ps.c.id, ps.c.record).order_by(ps.c.id)).all()
            if rows:
                conn.execute(delete(ps).where(ps.c.id <= rows[-1].id))
        return [exchange_from_json(r.record) for r in rows]

    # -- retention -------------------------------------------------------------------------------------
    def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Deletes exchanges (and their pairs) older than ``retention.days`` and beyond ``retention.max_rows``."""
        ret = self.settings.retention
        ex, p, fb = schema.exchanges, schema.pairs, schema.feedback
        deleted = {"exchanges": 0, "pairs": 0, "feedback": 0, "route_counts": 0}
        with self.engine.begin() as conn:
            doomed: list[Any] = []
            if ret.days is not None:
                cutoff = (now if now is not None else time.time()) - ret.days * 86400
                doomed.append(ex.c.created_at < cutoff)
                deleted["feedback"] += conn.execute(delete(fb).where(fb.c.created_at < cutoff)).rowcount
                rc = schema.route_counts
                deleted["route_counts"] += conn.execute(delete(rc).where(rc.c.created_at < cutoff)).rowcount
            if ret.max_rows is not None:
                boundary = conn.execute(select(ex.c.id).order_by(ex.c.id.desc()).offset(ret.max_rows).limit(1)).scalar()
                if boundary is not None:
                    doomed.append(ex.c.id <= boundary)
            for condition in doomed:
                old_ids = select(ex.c.id).where(condition)
                touches_old = p.c.served_id.in_(old_ids) | p.c.shadow_id.in_(old_ids)
                # A pair's other exchange goes with it, or a stray shadow answer would look like served traffic.
                partners = [i for row in conn.execute(select(p.c.served_id, p.c.shadow_id).where(touches_old))
                            for i in row]
                deleted["pairs"] += conn.execute(delete(p).where(touches_old)).rowcount
                deleted["exchanges"] += conn.execute(delete(ex).where(condition)).rowcount
                for start in range(0, len(partners), 500):
                    deleted["exchanges"] += conn.execute(
                        delete(ex).where(ex.c.id.in_(partners[start:start + 500]))).rowcount
        return deleted

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(schema.metadata.tables[table])).scalar_one()


def _feedback(row: Any) -> Feedback:
    return Feedback(**{name: row[name] for name in Feedback.__dataclass_fields__})
