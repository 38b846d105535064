"""Alert evaluation over changed usage: each threshold fires once per billing period per
subscription and again in the next; disabling and enabling never re-fires; plan alerts cover every
subscription of the plan; whatever the interleaving of ingest and evaluations, the thresholds fired
are exactly those a from-scratch total reaches."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import Engine, select
from sqlmodel import Session

from billing_core import SqlSubscriptions, billing_period, service_alerts, service_outbox
from billing_core.persistence.alerts import AlertFiringRow
from billing_core.persistence.outbox import WebhookEventRow
from tests.worker.sync_support import ingest, setup_billing
from worker.alerting import evaluate_changes
from worker.billing_gateway import CoreBillingGateway

_seq = itertools.count()


@pytest.fixture
def billing(any_engine: Engine) -> Engine:
    """A plan (tokens at 0.001 each) and an endpoint that takes every event."""
    setup_billing(any_engine)
    with Session(any_engine) as session:
        service_outbox.create_endpoint(session, url="https://hooks.example.test/in", now=datetime.now(UTC),
                                       endpoint_id="we_all", payload_style="standard")
        session.commit()
    return any_engine


def _subscription(engine: Engine, start: datetime) -> tuple[str, str]:
    n = next(_seq)
    gateway = CoreBillingGateway(engine)
    customer = gateway.ensure_customer(external_customer_id=f"alert-c{n}", name=f"C{n}", email=f"c{n}@x.test",
                                       currency="USD")
    sub = gateway.create_subscription(idempotency_key=f"alert-s{n}", customer_id=customer, plan_id="plan_sync",
                                      start=start, external_marketplace="aws", reporting_id=f"r{n}")
    return customer, sub


def _alert(engine: Engine, scope: str, scope_id: str, **body: Any) -> str:
    with Session(engine) as session:
        alert = service_alerts.create_alert(session, scope=scope, scope_id=scope_id, body=body,
                                            now=datetime.now(UTC), alert_id=f"alert_{next(_seq)}")
        session.commit()
    return alert.id


def _fired(engine: Engine, subscription_id: str | None = None) -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        rows = session.execute(select(WebhookEventRow).order_by(WebhookEventRow.seq)).scalars()
        out = []
        for row in rows:
            body = json.loads(row.body)
            if row.type.endswith("_exceeded") and subscription_id in (None, body["subscription"]["id"]):
                props = body["properties"]
                value = props.get("amount_threshold") or str(props.get("quantity_threshold"))
                out.append((row.type, body["subscription"]["id"], value))
        return out


def _start_a_month_ago() -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if today.day > 28:
        pytest.skip("a month back from the 29th is not the same day")
    month, year = (today.month - 1, today.year) if today.month > 1 else (12, today.year - 1)
    return today.replace(year=year, month=month)


def test_fires_once_per_period_and_again_in_the_next(billing: Engine) -> None:
    """A threshold crossed in one period fires once; crossed again in the next period, it fires again."""
    start = _start_a_month_ago()
    customer, sub = _subscription(billing, start)
    _alert(billing, "subscription", sub, type="cost_exceeded", thresholds=[{"value": 1}])
    _alert(billing, "subscription", sub, type="usage_exceeded", metric_id="m_tokens", thresholds=[{"value": 500}])
    with Session(billing) as session:
        current = billing_period(SqlSubscriptions(session).get(sub), datetime.now(UTC)).start
    ingest(billing, customer, 1500, current - timedelta(hours=1))  # 1.50 in the previous period
    before = current - timedelta(minutes=1)
    assert evaluate_changes(billing, now=before)["fired"] == 2
    assert evaluate_changes(billing, now=before)["fired"] == 0  # nothing changed
    ingest(billing, customer, 10, current - timedelta(minutes=30))
    assert evaluate_changes(billing, now=before)["fired"] == 0  # already fired this period
    ingest(billing, customer, 1200, current + timedelta(seconds=1))
    now = datetime.now(UTC)
    assert evaluate_changes(billing, now=now)["fired"] == 2  # the next period
    assert sorted(_fired(billing)) == sorted([  # quantities are exact JSON numbers (500, not 500.0)
        ("subscription.cost_exceeded", sub, "1"), ("subscription.usage_exceeded", sub, "500")] * 2)


def test_disable_enable_does_not_refire(billing: Engine) -> None:
    """A threshold reached while the alert is disabled is recorded silently; enabling it does not fire it."""
    now = datetime.now(UTC)
    customer, sub = _subscription(billing, now - timedelta(days=1))
    alert = _alert(billing, "subscription", sub, type="cost_exceeded", thresholds=[{"value": 1}, {"value": 2}])
    ingest(billing, customer, 1100, now - timedelta(minutes=5))
    evaluate_changes(billing, now=now)
    with Session(billing) as session:
        service_alerts.set_enabled(session, alert, False)
        session.commit()
    ingest(billing, customer, 1000, now - timedelta(minutes=4))  # 2.10: the second threshold, while disabled
    evaluate_changes(billing, now=now)
    with Session(billing) as session:
        service_alerts.set_enabled(session, alert, True)
        session.commit()
    ingest(billing, customer, 1, now - timedelta(minutes=3))
    evaluate_changes(billing, now=now)
    assert _fired(billing) == [("subscription.cost_exceeded", sub, "1")]
    with Session(billing) as session:
        emitted = session.execute(select(AlertFiringRow.threshold, AlertFiringRow.emitted)
                                  .order_by(AlertFiringRow.threshold)).all()
    assert [tuple(r) for r in emitted] == [("1", True), ("2", False)]


def test_plan_alert_covers_every_subscription_of_the_plan(billing: Engine) -> None:
    """An alert on a plan fires for each of its subscriptions whose usage reaches the threshold."""
    now = datetime.now(UTC)
    (c1, s1), (c2, s2), (c3, s3) = (_subscription(billing, now - timedelta(days=1)) for _ in range(3))
    _alert(billing, "plan", "plan_sync", type="usage_exceeded", metric_id="m_tokens", thresholds=[{"value": 100}])
    ingest(billing, c1, 150, now - timedelta(minutes=5))
    ingest(billing, c2, 50, now - timedelta(minutes=5))
    evaluate_changes(billing, now=now)
    ingest(billing, c3, 100, now - timedelta(minutes=5))
    evaluate_changes(billing, now=now)
    assert sorted(s for _, s, _ in _fired(billing)) == sorted([s1, s3])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(st.integers(min_value=1, max_value=900), st.just("evaluate")), min_size=1,
                      max_size=12),
       thresholds=st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=4, unique=True))
def test_fired_thresholds_equal_those_a_fresh_total_reaches(billing: Engine, steps: list[Any],
                                                            thresholds: list[int]) -> None:
    """Any interleaving of ingest and evaluation fires exactly the thresholds the whole usage reaches, once each."""
    now = datetime.now(UTC)
    customer, sub = _subscription(billing, now - timedelta(days=1))
    _alert(billing, "subscription", sub, type="usage_exceeded", metric_id="m_tokens",
           thresholds=[{"value": t} for t in thresholds])
    total = 0
    for step in steps:
        if step == "evaluate":
            evaluate_changes(billing, now=now)
        else:
            total += step
            ingest(billing, customer, step, now - timedelta(minutes=10))
    evaluate_changes(billing, now=now)
    fired = sorted(Decimal(v) for _, _, v in _fired(billing, sub))
    assert fired == sorted(Decimal(t) for t in thresholds if total >= t)


def test_an_alert_created_after_the_usage_fires_at_the_next_evaluation(billing: Engine) -> None:
    """Usage evaluated while no alert existed still counts for an alert created later, at once."""
    now = datetime.now(UTC)
    customer, sub = _subscription(billing, now - timedelta(days=1))
    ingest(billing, customer, 700, now - timedelta(minutes=5))
    assert evaluate_changes(billing, now=now) == {"evaluated": 0, "fired": 0}
    _alert(billing, "subscription", sub, type="usage_exceeded", metric_id="m_tokens", thresholds=[{"value": 500}])
    assert evaluate_changes(billing, now=now)["fired"] == 1
    assert evaluate_changes(billing, now=now)["fired"] == 0
