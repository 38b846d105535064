"""The billing gateway over the real billing core: customers, subscriptions, ends and plan changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.subscriptions import SqlSubscriptions
from tests.billing_core.helpers import plan_of, unit
from worker.billing_gateway import CoreBillingGateway
from worker.contracts import BillingUnavailable

START = datetime(2026, 11, 21, 10, tzinfo=UTC)


def _save_plan(engine: Engine, plan_id: str) -> None:
    with Session(engine) as session:
        SqlCatalog(session).save_plan(plan_of(unit("0.01", id=f"{plan_id}_p", metric="m1"), id=plan_id))
        session.commit()


@pytest.fixture
def gateway(any_engine: Engine) -> CoreBillingGateway:
    """Return a gateway on a migrated database (SQLite, then PostgreSQL)."""
    _save_plan(any_engine, "plan_a")
    _save_plan(any_engine, "plan_b")
    return CoreBillingGateway(any_engine)


def test_customer_is_created_once(gateway: CoreBillingGateway) -> None:
    """ensure_customer returns the same customer for the same external id."""
    first = gateway.ensure_customer(external_customer_id="aws:123", name="Acme", email="a@acme.test", currency="USD")
    again = gateway.ensure_customer(external_customer_id="aws:123", name="Acme", email="", currency="USD")
    assert first == again and first.startswith("cus_")


def test_subscription_is_idempotent_and_ends(gateway: CoreBillingGateway) -> None:
    """A retried creation returns the same subscription; ending it sets its end."""
    customer = gateway.ensure_customer(external_customer_id="aws:1", name="A", email="", currency="USD")
    kwargs = dict(idempotency_key="ctr_1", customer_id=customer, plan_id="plan_a", start=START,
                  external_marketplace="aws", reporting_id="ctr_1")
    sub_id = gateway.create_subscription(**kwargs)  # type: ignore[arg-type]
    assert gateway.create_subscription(**kwargs) == sub_id  # type: ignore[arg-type]
    assert gateway.subscription_customer(sub_id) == customer
    end = datetime(2026, 11, 21, 15, tzinfo=UTC)
    gateway.end_subscription(sub_id, at=end, now=end)
    gateway.end_subscription(sub_id, at=end, now=end)  # again: no-op
    with Session(gateway.engine) as session:
        sub = SqlSubscriptions(session).get(sub_id)
    assert sub.end == end and sub.external_marketplace == "aws"


def test_plan_change_from_effective_time(gateway: CoreBillingGateway) -> None:
    """A plan change closes the old prices at the effective instant and opens the new plan's."""
    customer = gateway.ensure_customer(external_customer_id="azure:x", name="B", email="", currency="USD")
    sub_id = gateway.create_subscription(idempotency_key="ctr_2", customer_id=customer, plan_id="plan_a",
                                         start=START, external_marketplace="azure", reporting_id="ctr_2")
    at = datetime(2026, 11, 22, tzinfo=UTC)
    gateway.change_plan(sub_id, plan_id="plan_b", at=at, now=at)
    with Session(gateway.engine) as session:
        sub = SqlSubscriptions(session).get(sub_id)
    assert sub.phases[-1].plan_id == "plan_b"
    assert sub.phase_at(START).plan_id == "plan_a"


def test_missing_plan_is_a_readable_error(gateway: CoreBillingGateway) -> None:
    """A listing pointing at a plan that does not exist gives an operator-readable reason."""
    with pytest.raises(BillingUnavailable, match="plan 'plan_missing' does not exist"):
        gateway.create_subscription(idempotency_key="ctr_3", customer_id="cus_x", plan_id="plan_missing",
                                    start=START, external_marketplace="gcp", reporting_id="ctr_3")
    assert gateway.subscription_customer("sub_nope") is None
