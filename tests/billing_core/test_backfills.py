"""Backfills: pending events count only when closed; replace retires the window; revert undoes."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from billing_core.backfills import (
    BackfillStateError,
    close_backfill,
    create_backfill,
    ingest_into_backfill,
    revert_backfill,
)
from billing_core.customers import create_customer
from billing_core.errors import InvalidInput
from billing_core.events import EventValidationFailed, ingest_events, validate_batch
from billing_core.metric_definition import MetricDefinition
from billing_core.persistence.backfills import SqlBackfillStore
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.sql_usage import SqlUsageSource
from worker.db import session_scope

NOW = datetime(2026, 12, 15, tzinfo=timezone.utc)
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, tzinfo=timezone.utc)
SUM_N = MetricDefinition("call", "sum", "n")


def ev(key: str, n: int, day: int = 10, customer: str = "acme") -> dict[str, Any]:
    """Return a raw event on November ``day``."""
    return {"idempotency_key": key, "event_name": "call", "external_customer_id": customer,
            "timestamp": f"2026-11-{day:02d}T00:00:00Z", "properties": {"n": n}}


def total(engine: Engine, customer: str = "c1") -> Decimal:
    """Return November's sum of n for the customer."""
    return SqlUsageSource(engine).evaluate(SUM_N, [customer], START, END)[customer].quantity


def setup(engine: Engine, replace: bool, customer_id: str | None = "c1") -> str:
    """Create customers, one live event per customer on Nov 10, and a backfill over Nov 5-15."""
    with session_scope(engine) as session:
        repo = SqlCustomerRepository(session)
        create_customer(repo, customer_id="c1", name="A", email="a@x.test", external_customer_id="acme", now=NOW)
        create_customer(repo, customer_id="c2", name="G", email="g@x.test", external_customer_id="globex", now=NOW)
        ingest_events(SqlEventStore(session), [ev("live", 100), ev("other", 7, customer="globex"),
                                               ev("outside", 1000, day=20)], now=NOW)
        backfill = create_backfill(SqlBackfillStore(session), backfill_id="bf1",
                                   timeframe_start=datetime(2026, 11, 5, tzinfo=timezone.utc),
                                   timeframe_end=datetime(2026, 11, 15, tzinfo=timezone.utc),
                                   now=NOW, customer_id=customer_id, replace_existing_events=replace)
    return backfill.id


def ingest_into(engine: Engine, backfill_id: str, events: list[dict[str, Any]]) -> None:
    """Ingest events into a backfill."""
    with session_scope(engine) as session:
        ingest_into_backfill(SqlEventStore(session), SqlBackfillStore(session), backfill_id,
                             validate_batch(events, now=NOW), sent=len(events))


@pytest.mark.parametrize(
    "replace, pending, closed, reverted",
    [
        pytest.param(False, 1100, 1105, 1100, id="add-to-existing"),
        pytest.param(True, 1100, 1005, 1100, id="replace-existing"),
    ],
)
def test_backfill_lifecycle(any_engine: Engine, replace: bool, pending: int, closed: int, reverted: int) -> None:
    """Pending events do not count; closing adds (or replaces the window's events); reverting restores."""
    backfill_id = setup(any_engine, replace)
    ingest_into(any_engine, backfill_id, [ev("b1", 2, day=6), ev("b2", 3, day=14)])
    assert total(any_engine) == pending
    with session_scope(any_engine) as session:
        assert close_backfill(SqlBackfillStore(session), backfill_id, now=NOW).status == "reflected"
    assert total(any_engine) == closed
    assert total(any_engine, "c2") == 7  # another customer's events are never replaced
    with session_scope(any_engine) as session:
        assert revert_backfill(SqlBackfillStore(session), backfill_id, now=NOW).status == "reverted"
    assert total(any_engine) == reverted


@pytest.mark.parametrize(
    "event, message",
    [
        pytest.param(ev("b1", 1, day=20), "timeframe", id="outside-window"),
        pytest.param(ev("b1", 1, customer="globex"), "customer", id="other-customer"),
    ],
)
def test_events_outside_the_backfill_are_rejected(engine: Engine, event: dict, message: str) -> None:
    """An event outside the backfill's window or customer rejects the batch."""
    backfill_id = setup(engine, False)
    with pytest.raises(EventValidationFailed, match=message):
        ingest_into(engine, backfill_id, [event])


def test_closed_backfills_take_no_events(engine: Engine) -> None:
    """Once closed, a backfill refuses further events."""
    backfill_id = setup(engine, False)
    with session_scope(engine) as session:
        close_backfill(SqlBackfillStore(session), backfill_id, now=NOW)
    with pytest.raises(BackfillStateError):
        ingest_into(engine, backfill_id, [ev("b1", 1)])


@pytest.mark.parametrize(
    "start, end",
    [
        pytest.param(datetime(2026, 11, 15, tzinfo=timezone.utc), datetime(2026, 11, 5, tzinfo=timezone.utc),
                     id="reversed"),
        pytest.param(datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc),
                     id="future"),
    ],
)
def test_invalid_windows_are_refused(engine: Engine, start: datetime, end: datetime) -> None:
    """A backfill window must be non-empty and in the past."""
    with pytest.raises(InvalidInput):
        with session_scope(engine) as session:
            create_backfill(SqlBackfillStore(session), backfill_id="x", timeframe_start=start, timeframe_end=end,
                            now=NOW)
