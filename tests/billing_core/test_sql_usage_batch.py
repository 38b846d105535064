"""The batched SQL usage source gives exactly what metric-by-metric evaluation gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from billing_core.customers import create_customer
from billing_core.events import ingest_events, to_micros
from billing_core.metrics import create_metric
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.persistence.metrics import SqlMetricRepository
from billing_core.sql_usage import SqlUsageSource
from billing_core.sql_usage_batch import BatchSqlUsageSource
from billing_core.usage import UsageRequest
from worker.db import session_scope

T0 = datetime(2026, 3, 1, tzinfo=UTC)
METRICS = {
    "calls": "SELECT COUNT(*) FROM events WHERE event_name = 'api_call'",
    "tokens": "SELECT SUM(tokens) FROM events WHERE event_name = 'api_call'",
    "peak": "SELECT MAX(tokens) FROM events WHERE event_name = 'api_call'",
    "gpt4": "SELECT SUM(tokens) FROM events WHERE event_name = 'api_call' AND model = 'gpt-4'",
    "users": "SELECT COUNT(DISTINCT user) FROM events WHERE event_name = 'api_call'",
    "storage": "SELECT SUM(gb) FROM events WHERE event_name = 'storage'",
}
REQUESTS = [
    UsageRequest("calls"), UsageRequest("calls", ("region",)), UsageRequest("tokens"),
    UsageRequest("tokens", ("region", "model")), UsageRequest("peak", ("model",)), UsageRequest("gpt4"),
    UsageRequest("users"), UsageRequest("storage"), UsageRequest("storage", ("region",)),
]
PROPS = [
    {"tokens": 10, "region": "us", "model": "gpt-4", "user": "u1"},
    {"tokens": 2.5, "region": "eu", "model": "gpt-4", "user": "u2"},
    {"tokens": "7", "region": "us", "model": "claude", "user": "u1"},
    {"region": True, "model": "claude"},
    {"tokens": 0.000000001, "model": "gpt-4"},
    {"tokens": 123456, "region": 5, "user": "u3"},
    {"tokens": -3.75, "region": "eu", "model": False},
    {"tokens": 1.123456789, "region": "ap", "model": "gpt-4", "user": "u4"},
]


@pytest.mark.postgres
def test_batch_equals_one_by_one(any_engine: Engine):
    """Every request answered in a batch equals the same metric asked alone, for every customer."""
    with session_scope(any_engine) as s:
        for i in range(3):
            create_customer(SqlCustomerRepository(s), customer_id=f"c{i}", name=f"C{i}", email=f"c{i}@x.test",
                            external_customer_id=f"ext{i}", now=T0)
        for metric_id, sql in METRICS.items():
            create_metric(SqlMetricRepository(s), metric_id=metric_id, name=metric_id, sql=sql, now=T0)
        events = []
        for n in range(60):
            who = {"customer_id": f"c{n % 3}"} if n % 4 else {"external_customer_id": f"ext{n % 3}"}
            events.append({"idempotency_key": f"k{n}", "event_name": "storage" if n % 7 == 0 else "api_call",
                           "timestamp": (T0 + timedelta(hours=n)).isoformat(), "properties": dict(PROPS[n % len(PROPS)], gb=n),
                           **who})
        ingest_events(SqlEventStore(s), events, now=T0 + timedelta(days=30))
    ids = ["c0", "c1", "c2", "c9"]
    start, end = T0 + timedelta(hours=3), T0 + timedelta(hours=50)
    with session_scope(any_engine) as s:
        batch = BatchSqlUsageSource(s).usage_bulk_many(REQUESTS, ids, start, end)
        plain = SqlUsageSource(s)
        for request in REQUESTS:
            expected = plain.usage_bulk(request.metric_id, ids, start, end, request.group_by)
            assert batch[request] == expected, request
        alone = BatchSqlUsageSource(s).usage_bulk_many([UsageRequest("calls")], ids, start, end)
        assert alone[UsageRequest("calls")] == plain.usage_bulk("calls", ids, start, end)
        # Past 1,000 customers the scan is by event name and keeps the asked ones: through the
        # customer index for a narrow window, in storage order for a window holding much of the table.
        many = ids + [f"absent{i}" for i in range(1001)]
        narrow = (T0 + timedelta(hours=3), T0 + timedelta(hours=9))
        for lo, hi, storage_order in ((start, end, True), (*narrow, False)):
            assert BatchSqlUsageSource._storage_order(s, "api_call", to_micros(lo), to_micros(hi)) is storage_order
            big = BatchSqlUsageSource(s).usage_bulk_many(REQUESTS[:4], many, lo, hi)
            for request in REQUESTS[:4]:
                expected = plain.usage_bulk(request.metric_id, many, lo, hi, request.group_by)
                assert {c: big[request][c] for c in ids} == {c: expected[c] for c in ids}, request


def test_storage_order_on_an_empty_table(engine: Engine):
    """No events at all: the customer index is used (nothing to count)."""
    with session_scope(engine) as s:
        assert BatchSqlUsageSource._storage_order(s, "api_call", 0, to_micros(T0)) is False
