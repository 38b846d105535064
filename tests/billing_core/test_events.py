"""Event ingest rules (docs/billing-rules.md §3): validation, idempotency, corrections, storage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from billing_core.customers import create_customer
from billing_core.events import (
    MAX_BATCH,
    BatchTooLarge,
    EventNotFound,
    EventValidationFailed,
    IdempotencyConflict,
    amend_event,
    deprecate_event,
    ingest_events,
    to_micros,
    validate_batch,
)
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore, events_table
from billing_core.persistence.writes import write_lock
from worker.db import session_scope

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def event(key: str = "k1", **overrides: Any) -> dict[str, Any]:
    """Return a valid raw event with ``overrides`` applied (None removes a field)."""
    body: dict[str, Any] = {
        "idempotency_key": key,
        "event_name": "api_call",
        "external_customer_id": "acme",
        "timestamp": "2026-11-21T11:00:00Z",
        "properties": {"tokens": 10, "model": "gpt-4"},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def ingest(engine: Engine, events: list[dict[str, Any]], now: datetime = NOW):  # type: ignore[no-untyped-def]
    """Ingest one batch in its own transaction."""
    with session_scope(engine) as session:
        return ingest_events(SqlEventStore(session), events, now=now)


def stored_count(engine: Engine) -> int:
    """Return how many event rows are stored."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(events_table)).scalar_one()


INVALID = [
    pytest.param({"properties": {"a": {"b": 1}}}, "properties.a: nested", id="nested-object"),
    pytest.param({"properties": {"a": [1, 2]}}, "properties.a: nested", id="nested-list"),
    pytest.param({"properties": {"a": None}}, "properties.a: null", id="null-property"),
    pytest.param({"properties": "x"}, "properties: must be an object", id="properties-not-object"),
    pytest.param({"properties": None}, "properties: must be an object", id="properties-missing"),
    pytest.param({"timestamp": "2026-11-21T12:05:01Z"}, "future", id="more-than-5-minutes-ahead"),
    pytest.param({"timestamp": "yesterday"}, "timestamp", id="timestamp-not-iso"),
    pytest.param({"timestamp": 1700000000}, "timestamp", id="timestamp-number"),
    pytest.param({"timestamp": None}, "timestamp", id="timestamp-missing"),
    pytest.param({"event_name": ""}, "event_name", id="empty-event-name"),
    pytest.param({"event_name": None}, "event_name", id="missing-event-name"),
    pytest.param({"external_customer_id": None}, "exactly one", id="no-customer"),
    pytest.param({"customer_id": "c1"}, "exactly one", id="both-customer-ids"),
    pytest.param({"external_customer_id": 5}, "external_customer_id", id="customer-not-string"),
    pytest.param({"colour": "red"}, "colour: unknown field", id="unknown-field"),
    pytest.param({"idempotency_key": ""}, "idempotency_key", id="empty-key"),
    pytest.param({"idempotency_key": "x" * 256}, "longer than", id="key-too-long"),
]


@pytest.mark.parametrize("overrides, message", INVALID)
def test_invalid_events_are_rejected_naming_the_problem(overrides: dict, message: str) -> None:
    """Each invalid event fails validation with a message naming the offending field."""
    with pytest.raises(EventValidationFailed) as info:
        validate_batch([event(**overrides)], now=NOW)
    assert any(message in problem for _, problems in info.value.failures for problem in problems)


@pytest.mark.parametrize(
    "timestamp, expected_us",
    [
        pytest.param("2026-11-21T12:05:00Z", to_micros(NOW + timedelta(minutes=5)), id="exactly-5-minutes-ahead"),
        pytest.param("2026-11-21T11:00:00", to_micros(NOW - timedelta(hours=1)), id="naive-is-utc"),
        pytest.param("2026-11-21T13:00:00+02:00", to_micros(NOW - timedelta(hours=1)), id="offset-converted"),
        pytest.param("2000-01-01T00:00:00.000001Z", 946684800000001, id="microseconds-kept"),
    ],
)
def test_valid_timestamps_are_stored_as_utc_microseconds(timestamp: str, expected_us: int) -> None:
    """Timestamps up to 5 minutes ahead are accepted and normalised to UTC."""
    (record,) = validate_batch([event(timestamp=timestamp)], now=NOW)
    assert record[4] == expected_us


@pytest.mark.parametrize(
    "properties, stored",
    [
        pytest.param({"n": Decimal("1.500000000")}, '{"n":1.500000000}', id="decimal-text-kept"),
        pytest.param({"n": Decimal("123456.123456789")}, '{"n":123456.123456789}', id="fifteen-digits"),
        pytest.param({"n": 999999999999999}, '{"n":999999999999999}', id="largest-int"),
        pytest.param({"s": "x", "b": True, "i": -3}, '{"s":"x","b":true,"i":-3}', id="string-bool-int"),
        pytest.param({"s": "é"}, '{"s":"é"}', id="unicode-unescaped"),
    ],
)
def test_numbers_keep_their_text(properties: dict, stored: str) -> None:
    """Properties are stored as JSON text without passing numbers through float."""
    (record,) = validate_batch([event(properties=properties)], now=NOW)
    assert record[5] == stored


def test_batch_over_500_is_rejected() -> None:
    """More than 500 events in one batch is refused before anything is validated or stored."""
    with pytest.raises(BatchTooLarge, match="501"):
        validate_batch([event(f"k{i}") for i in range(MAX_BATCH + 1)], now=NOW)


def test_batch_of_500_is_accepted(engine: Engine) -> None:
    """Exactly 500 events is a valid batch and all are stored."""
    result = ingest(engine, [event(f"k{i}") for i in range(MAX_BATCH)])
    assert (result.ingested, stored_count(engine)) == (MAX_BATCH, MAX_BATCH)


def test_one_invalid_event_rejects_the_whole_batch(engine: Engine) -> None:
    """A batch with one invalid event stores nothing and lists the failing key."""
    with pytest.raises(EventValidationFailed) as info:
        ingest(engine, [event("good"), event("bad", properties={"x": {"y": 1}})])
    assert [key for key, _ in info.value.failures] == ["bad"]
    assert stored_count(engine) == 0


IDEMPOTENCY = [
    pytest.param([[event("k1")], [event("k1")]], 1, None, id="same-key-same-body-later-is-noop"),
    pytest.param([[event("k1"), event("k1")]], 1, None, id="same-key-same-body-in-one-batch"),
    pytest.param(
        [[event("k1", properties={"a": 1, "b": "x"})], [event("k1", properties={"b": "x", "a": 1})]],
        1,
        None,
        id="property-order-does-not-matter",
    ),
    pytest.param(
        [[event("k1", properties={"a": Decimal("1.50")})], [event("k1", properties={"a": Decimal("1.5")})]],
        1,
        None,
        id="same-number-spelled-differently",
    ),
    pytest.param(
        [[event("k1"), event("k1", properties={"tokens": 11})]], 0, "repeated in this request", id="conflict-in-batch"
    ),
    pytest.param(
        [[event("k1")], [event("k2"), event("k1", properties={"tokens": 11})]],
        1,
        "against a stored event",
        id="conflict-with-stored-rejects-whole-batch",
    ),
    pytest.param(
        [[event("k1")], [event("k1", timestamp="2026-11-21T11:00:01Z")]], 1, "stored", id="different-timestamp"
    ),
    pytest.param([[event("k1")], [event("k1", event_name="other")]], 1, "stored", id="different-event-name"),
    pytest.param(
        [[event("k1")], [event("k1", external_customer_id="globex")]], 1, "stored", id="different-customer"
    ),
    pytest.param(
        [[event("k1", properties={"flag": True})], [event("k1", properties={"flag": 1})]],
        1,
        "stored",
        id="boolean-is-not-one",
    ),
]


@pytest.mark.parametrize("batches, stored, conflict", IDEMPOTENCY)
def test_idempotency_keys_are_at_most_once(engine: Engine, batches: list, stored: int, conflict: str | None) -> None:
    """A key is stored once; a repeat with the same body is a no-op, with another body a conflict naming the key."""
    for number, batch in enumerate(batches):
        last = number == len(batches) - 1
        if last and conflict:
            with pytest.raises(IdempotencyConflict, match=conflict) as info:
                ingest(engine, batch)
            assert info.value.key == "k1" and "'k1'" in str(info.value)
        else:
            ingest(engine, batch)
    assert stored_count(engine) == stored


def test_same_key_is_a_noop_after_the_customer_appears(engine: Engine) -> None:
    """Re-sending an event after its alias was resolved to a customer is still the same body."""
    ingest(engine, [event("k1")])
    with session_scope(engine) as session:
        create_customer(SqlCustomerRepository(session), customer_id="c1", name="Acme", email="a@acme.test",
                        external_customer_id="acme", now=NOW)
    ingest(engine, [event("k2")])
    result = ingest(engine, [event("k1"), event("k2")])
    assert (result.ingested, result.duplicates, stored_count(engine)) == (0, 2, 2)


def test_unknown_customer_id_is_rejected(engine: Engine) -> None:
    """An event naming a customer_id that does not exist fails validation."""
    with pytest.raises(EventValidationFailed, match="no customer 'nope'"):
        ingest(engine, [event("k1", external_customer_id=None, customer_id="nope")])


def test_amend_keeps_the_original_and_serves_the_new_body(engine: Engine) -> None:
    """Amending stores a new version; the original row stays and the event reads as amended."""
    ingest(engine, [event("k1")])
    with session_scope(engine) as session:
        amended = amend_event(
            SqlEventStore(session), "k1",
            {"event_name": "api_call", "external_customer_id": "acme", "timestamp": "2026-11-21T11:00:00Z",
             "properties": {"tokens": 99}},
            now=NOW,
        )
    assert (amended.properties, amended.version) == ({"tokens": 99}, 1)
    assert stored_count(engine) == 2
    with session_scope(engine) as session:
        assert SqlEventStore(session).current("k1").properties == {"tokens": 99}


def test_deprecate_is_idempotent_and_blocks_amend(engine: Engine) -> None:
    """A deprecated event reads as deprecated, deprecating again is a no-op, and it cannot be amended."""
    ingest(engine, [event("k1")])
    with session_scope(engine) as session:
        store = SqlEventStore(session)
        assert deprecate_event(store, "k1").deprecated
        assert deprecate_event(store, "k1").deprecated
    with pytest.raises(EventValidationFailed, match="deprecated"):
        with session_scope(engine) as session:
            amend_event(SqlEventStore(session), "k1", {k: v for k, v in event().items() if k != "idempotency_key"},
                        now=NOW)


@pytest.mark.parametrize("operation", ["amend", "deprecate"])
def test_corrections_of_unknown_events_are_not_found(engine: Engine, operation: str) -> None:
    """Amending or deprecating an event that was never ingested is a not-found error."""
    with pytest.raises(EventNotFound):
        with session_scope(engine) as session:
            store = SqlEventStore(session)
            if operation == "amend":
                amend_event(store, "missing", {k: v for k, v in event().items() if k != "idempotency_key"}, now=NOW)
            else:
                deprecate_event(store, "missing")


def test_search_returns_current_versions_in_the_timeframe(engine: Engine) -> None:
    """Search by ids returns each event's current version within [start, end)."""
    ingest(engine, [event("a"), event("b", timestamp="2026-11-20T00:00:00Z"), event("c")])
    with session_scope(engine) as session:
        store = SqlEventStore(session)
        deprecate_event(store, "c")
        found = store.search(["a", "b", "c", "zzz"], start=to_micros(NOW - timedelta(hours=2)), end=to_micros(NOW))
    assert [(e.idempotency_key, e.deprecated) for e in found] == [("a", False), ("c", True)]


def test_sqlite_writers_are_serialized_by_the_write_lock(sqlite_engine: Engine) -> None:
    """Two threads holding the write lock of one SQLite database never overlap."""
    import threading
    import time

    inside: list[int] = []
    overlaps: list[bool] = []

    def writer() -> None:
        for _ in range(5):
            with write_lock(sqlite_engine):
                inside.append(1)
                overlaps.append(len(inside) > 1)
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 15 and not any(overlaps)


def test_group_commit_keeps_each_batch_outcome(engine: Engine) -> None:
    """Batches committed together keep their own outcome: a conflicting batch stores nothing, the others all."""
    import threading

    from billing_core.persistence.events import GroupCommitWriter

    ingest(engine, [event("taken")])
    writer = GroupCommitWriter(engine)
    outcomes: dict[int, object] = {}

    def send(number: int) -> None:
        batch = [event(f"b{number}-{i}") for i in range(50)]
        if number == 3:
            batch.append(event("taken", properties={"tokens": 1}))
        try:
            outcomes[number] = writer.submit(validate_batch(batch, now=NOW), sent=len(batch)).ingested
        except IdempotencyConflict as exc:
            outcomes[number] = exc.key

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == {n: ("taken" if n == 3 else 50) for n in range(8)}
    assert stored_count(engine) == 1 + 7 * 50
