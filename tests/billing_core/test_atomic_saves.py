"""Timeline edits are compare-and-swap on the revision, and concurrent edits queue instead of losing one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine

from billing_core import service_plans
from billing_core.customers import create_customer
from billing_core.errors import Conflict
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.subscriptions import AddPrice, cancel, create_subscription
from worker.db import session_scope

from .helpers import plan_of, t, unit

PLAN = plan_of(unit("0.01", id="u", key="u"))


def _stored_subscription(engine: Engine):  # type: ignore[no-untyped-def]
    sub = create_subscription(id="s1", customer_id="c1", plan=PLAN, start=t(2025, 1, 1), now=t(2025, 1, 1))
    with session_scope(engine) as s:
        create_customer(SqlCustomerRepository(s), customer_id="c1", name="Acme", email="ops@acme.test",
                        now=t(2024, 12, 1))
        SqlCatalog(s).save_plan(PLAN)
        SqlSubscriptions(s).add(sub)
    return sub


@pytest.mark.postgres
def test_two_saves_from_one_read_store_one(any_engine: Engine) -> None:
    """Two sessions that read the same revision cannot both store an edit: the second gets a Conflict."""
    sub = _stored_subscription(any_engine)
    first = cancel(sub, cancel_option="requested_date", cancellation_date=t(2025, 3, 1), now=t(2025, 1, 5))
    second = cancel(sub, cancel_option="requested_date", cancellation_date=t(2025, 4, 1), now=t(2025, 1, 5))
    with session_scope(any_engine) as s:
        SqlSubscriptions(s).save(first, expected_revision=len(sub.edits))
    with pytest.raises(Conflict), session_scope(any_engine) as s:
        SqlSubscriptions(s).save(second, expected_revision=len(sub.edits))
    with session_scope(any_engine) as s:
        assert SqlSubscriptions(s).get("s1") == first


@pytest.mark.postgres
def test_concurrent_interval_edits_all_apply(any_engine: Engine) -> None:
    """Eight price intervals added at once by eight threads are all stored, none refused or lost."""
    _stored_subscription(any_engine)
    prices = [unit(f"0.0{i + 1}", id=f"p{i}", key=f"k{i}") for i in range(8)]
    with session_scope(any_engine) as s:
        for price in prices:
            SqlCatalog(s).add_price(price, plan_id=None, now=t(2025, 1, 1))
    start = threading.Barrier(len(prices))

    def add(price):  # type: ignore[no-untyped-def]
        start.wait()
        with session_scope(any_engine) as s:
            service_plans.edit_intervals(s, "s1", add=[AddPrice(price, start=t(2025, 2, 1), end=None)], edit=[],
                                         add_adjustments=[], now=t(2025, 1, 10))

    with ThreadPoolExecutor(len(prices)) as pool:
        list(pool.map(add, prices))
    with session_scope(any_engine) as s:
        stored = SqlSubscriptions(s).get("s1")
    assert {p.id for p in prices} <= {interval.price.id for interval in stored.intervals}
    assert len(stored.edits) == 1 + len(prices)
