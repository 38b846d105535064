"""Catalog, subscription and invoice persistence: exact round trips and immutability."""

from decimal import Decimal as D

import pytest
from sqlalchemy import Engine

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.customers import create_customer
from billing_core.errors import Conflict, NotFound
from billing_core.invoices import compute_invoice, issue_invoice
from billing_core.periods import Period
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.plans import Item, add_version
from billing_core.subscriptions import cancel, create_subscription
from worker.db import session_scope

from .helpers import bulk, fixed, matrix, package, plan_of, source, t, tiered, tiered_package, unit

PRICES = (
    unit("0.067", id="u", key="u"), tiered((0, 10, "0.50"), (10, None, "0.10"), id="t", key="t"),
    bulk((10, "0.50"), (None, "0.40"), id="b", key="b"), package(10, "0.80", id="p", key="p"),
    tiered_package(10, (0, "1.00"), (100, "0.50"), id="tp", key="tp"),
    matrix(["region", "model"], "0.015", [(["us", None], "0.01")], id="mx", key="mx"),
    fixed("9.99", id="fee", key="fee", minimum_amount=D("1"), maximum_amount=D("100")),
)
PLAN = plan_of(*PRICES, adjustments=(Adjustment("off", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.1"), ("u",)),))


def _customer(session):
    create_customer(SqlCustomerRepository(session), customer_id="c1", name="Acme", email="ops@acme.test",
                    now=t(2024, 12, 1))


@pytest.mark.postgres
def test_plan_round_trip_and_versions(any_engine: Engine):
    """A plan and its versions read back equal; stored versions are never rewritten."""
    with session_scope(any_engine) as s:
        SqlCatalog(s).add_item(Item("item1", "API calls", t(2024, 12, 1)))
        SqlCatalog(s).save_plan(PLAN)
    with session_scope(any_engine) as s:
        assert SqlCatalog(s).get_plan("plan1") == PLAN
        v2 = add_version(PLAN, prices=[unit("0.05", id="u2", key="u")], now=t(2025, 1, 1), make_default=True)
        SqlCatalog(s).save_plan(v2)
    with session_scope(any_engine) as s:
        stored = SqlCatalog(s).get_plan("plan1")
        assert stored.default_version == 2 and stored.version(1) == PLAN.version(1)
        assert SqlCatalog(s).get_price("u2").key == "u"
        with pytest.raises(NotFound):
            SqlCatalog(s).get_plan("nope")


@pytest.mark.postgres
def test_subscription_and_invoice_round_trip(any_engine: Engine):
    """A subscription timeline, its edit log and an issued invoice read back exactly."""
    sub = create_subscription(id="s1", customer_id="c1", plan=PLAN, start=t(2025, 1, 1), now=t(2025, 1, 1))
    with session_scope(any_engine) as s:
        _customer(s)
        SqlCatalog(s).save_plan(PLAN)
        SqlSubscriptions(s).add(sub)
    canceled = cancel(sub, cancel_option="requested_date", cancellation_date=t(2025, 3, 1), now=t(2025, 1, 5))
    with session_scope(any_engine) as s:
        SqlSubscriptions(s).save(canceled, expected_revision=1)
        with pytest.raises(Conflict):
            SqlSubscriptions(s).save(canceled, expected_revision=1)
    invoice = compute_invoice(canceled, Period(t(2025, 1, 1), t(2025, 2, 1)), source(), now=t(2025, 2, 1))
    issued = issue_invoice(invoice, id="inv1", now=t(2025, 2, 1))
    with session_scope(any_engine) as s:
        assert SqlSubscriptions(s).get("s1") == canceled
        SqlSubscriptions(s).add_invoice(issued)
    with session_scope(any_engine) as s:
        back = SqlSubscriptions(s).get_invoice("inv1")
        assert back.to_json() == issued.to_json() and back.total == D("9.99")
        with pytest.raises(Conflict):
            SqlSubscriptions(s).add_invoice(issue_invoice(invoice, id="inv2", now=t(2025, 2, 2)))
