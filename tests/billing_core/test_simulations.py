"""Simulations replay past periods through the invoice engine: swap rules, totals, distribution,
and the property that "current" revenue is the invoices computed from scratch."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from billing_core.invoices import compute_invoice
from billing_core.plans import add_version
from billing_core.simulations import draft_version, periods_within, simulate, simulated_timeline
from billing_core.subscriptions import ReplacePrice, cancel, create_subscription, schedule_plan_change
from billing_core.usage import InMemoryUsageSource
from tests.billing_core.helpers import METRICS, fixed, plan_of, t, unit

NOW = t(2025, 5, 15)


def _plan():
    """v1: calls at 0.10, platform 10.00 in advance; v2: calls at 0.20, a new tokens price."""
    v1 = plan_of(unit("0.10", id="calls", metric="m1"), fixed("10.00", id="platform"))
    return add_version(v1, prices=[unit("0.20", id="calls2", key="calls", metric="m1"),
                                   fixed("10.00", id="platform"),
                                   unit("0.01", id="tok", metric="tokens")], now=t(2025, 1, 1))


def _usage(*customers_calls):
    """Calls on the 3rd of each month from January, per customer."""
    evs = [{"idempotency_key": f"{customer}-{month}-{i}", "customer_id": customer, "event_name": "api_call",
            "timestamp": t(2025, month, 3, 1, i % 60), "properties": {"tokens": 5}}
           for customer, per_month in customers_calls
           for month, calls in enumerate(per_month, start=1) for i in range(calls)]
    return InMemoryUsageSource(METRICS, evs)


def test_version_swap_totals_and_distribution() -> None:
    """Each customer's revenue per price under v1 and v2 over three past months, and the buckets."""
    plan = _plan()
    subs = [create_subscription(id=f"s{c}", customer_id=c, plan=plan, version=1, start=t(2025, 1, 1), now=t(2025, 1, 1))
            for c in ("a", "b", "c")]
    usage = _usage(("a", [100, 100, 100, 100]), ("b", [0, 0, 0]), ("c", [10, 0, 0]))
    result = simulate(plan, plan.version(2), subs, usage, start=t(2025, 2, 1), end=t(2025, 5, 1), now=NOW)
    by = {c.customer_id: c for c in result.customers}
    a = {p.price_key: (p.current, p.simulated) for p in by["a"].prices}
    # February..April: 3 × 100 calls; January's usage is outside the timeframe.
    assert a == {"calls": (D("30.00"), D("60.00")), "platform": (D("30.00"), D("30.00")), "tok": (D("0.00"), D("15.00"))}
    assert by["a"].periods == 3 and by["a"].change_percent == D("75.00")
    assert (by["b"].current, by["b"].simulated) == (D("30.00"), D("30.00"))
    assert (result.current, result.simulated) == (D("120.00"), D("165.00"))
    counts = {b.label: b.customers for b in result.distribution()}
    assert counts["≥ 50%"] == 1 and counts["-1% to 1%"] == 2 and sum(counts.values()) == 3


def test_overrides_stay_and_other_plans_are_left_out() -> None:
    """A negotiated replacement is not swapped; a subscription never on the plan is not replayed."""
    plan = _plan()
    other = plan_of(unit("1.00", id="x", metric="m1"), id="other")
    negotiated = create_subscription(id="s1", customer_id="a", plan=plan, version=1, start=t(2025, 1, 1),
                                     now=t(2025, 1, 1), replace_prices=[ReplacePrice("calls", unit("0.05", id="deal"))])
    elsewhere = create_subscription(id="s2", customer_id="b", plan=other, start=t(2025, 1, 1), now=t(2025, 1, 1))
    swapped = simulated_timeline(negotiated, plan, plan.version(2))
    assert {i.price.id for i in swapped.intervals} == {"deal", "platform", "tok"}
    result = simulate(plan, plan.version(2), [negotiated, elsewhere], _usage(("a", [0, 10, 0])),
                      start=t(2025, 2, 1), end=t(2025, 3, 1), now=NOW)
    assert [c.customer_id for c in result.customers] == ["a"]
    assert {p.price_key: p.simulated for p in result.customers[0].prices}["deal"] == D("0.50")


def test_draft_prices_continue_the_key_they_replace() -> None:
    """A draft price naming the price it replaces is compared with it; a bad name is refused."""
    plan = _plan()
    draft = draft_version(plan, [(unit("0.50", id="new_calls", metric="m1"), "calls")], now=NOW)
    assert [p.key for p in draft.prices] == ["calls"] and draft.version == 3
    with pytest.raises(Exception, match=r"prices\[0\].replaces_price_id"):
        draft_version(plan, [(unit("0.50", id="n"), "nope")], now=NOW)


@st.composite
def _scenario(draw):  # type: ignore[no-untyped-def]
    plan = _plan()
    subs, evs = [], []
    for n in range(draw(st.integers(1, 4))):
        start = t(2025, 1, 1) + timedelta(days=draw(st.integers(0, 70)), hours=draw(st.integers(0, 23)))
        sub = create_subscription(id=f"s{n}", customer_id=f"c{n % 3}", plan=plan, version=draw(st.sampled_from([1, 2])),
                                  start=start, now=start)
        if draw(st.booleans()):
            change = start + timedelta(days=draw(st.integers(1, 60)))
            sub = schedule_plan_change(sub, plan, change_option="requested_date", change_date=change, now=start,
                                       version=draw(st.sampled_from([1, 2])))
        if draw(st.booleans()):
            sub = cancel(sub, cancel_option="requested_date", now=start,
                         cancellation_date=start + timedelta(days=draw(st.integers(61, 120))))
        subs.append(sub)
    for i in range(draw(st.integers(0, 40))):
        when = t(2025, 1, 1) + timedelta(hours=draw(st.integers(0, 24 * 130)))
        evs.append({"idempotency_key": f"e{i}", "customer_id": f"c{draw(st.integers(0, 2))}", "event_name": "api_call",
                    "timestamp": when, "properties": {"tokens": draw(st.integers(0, 500))}})
    return plan, subs, InMemoryUsageSource(METRICS, evs)


@settings(max_examples=60, deadline=None)
@given(_scenario(), st.sampled_from([1, 2]), st.integers(0, 60), st.integers(20, 120))
def test_current_revenue_equals_invoices_from_scratch(scenario, version, lo, length) -> None:  # type: ignore[no-untyped-def]
    """Per customer and price, "current" is the engine's invoices of those periods computed one by one,
    and "simulated" the same invoices of the swapped timeline."""
    plan, subs, usage = scenario
    start = t(2025, 1, 1) + timedelta(days=lo)
    end = start + timedelta(days=length)
    result = simulate(plan, plan.version(version), subs, usage, start=start, end=end, now=NOW, chunk=2)
    expected: dict[str, dict[str, list[D]]] = {}
    for sub in subs:
        swapped = simulated_timeline(sub, plan, plan.version(version))
        for period in periods_within(sub, start, min(end, NOW)):
            acc = expected.setdefault(sub.customer_id, {})
            for which, timeline in ((0, sub), (1, swapped)):
                for line in compute_invoice(timeline, period, usage, now=NOW).line_items:
                    acc.setdefault(line.price.key, [D(0), D(0)])[which] += line.amount
    got = {c.customer_id: {p.price_key: [p.current, p.simulated] for p in c.prices} for c in result.customers}
    assert got == expected
    assert sum(b.customers for b in result.distribution()) == len(result.customers)
