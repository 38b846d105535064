"""Subscription timelines: creation overrides, cancellation, plan changes and interval edits."""

from decimal import Decimal as D

import pytest

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.periods import BillingAnchor, Cadence, Period
from billing_core.plans import PlanError, add_version, price_lineage, set_default_version
from billing_core.subscriptions import (
    AddAdjustment, AddPrice, IntervalEdit, ReplacePrice, SubscriptionError, billing_period, cancel,
    create_subscription, edit_price_intervals, schedule_plan_change,
)

from .helpers import fixed, plan_of, t, unit

API = unit("0.10", id="api_v1", key="api")
FEE = fixed("50.00", id="fee_v1", key="fee")
PLAN = plan_of(API, FEE)


def sub(**kw):
    kw.setdefault("start", t(2025, 1, 1))
    return create_subscription(id="s1", customer_id="c1", plan=kw.pop("plan", PLAN), now=t(2025, 1, 1), **kw)


def spans(s):
    return sorted((i.price.id, i.start, i.end) for i in s.intervals)


def test_create_opens_plan_prices():
    """A new subscription has one open interval per plan price, anchored on its start date."""
    s = sub(start=t(2025, 1, 31))
    assert spans(s) == [("api_v1", t(2025, 1, 31), None), ("fee_v1", t(2025, 1, 31), None)]
    assert s.anchor == BillingAnchor(31, 1)
    assert billing_period(s, t(2025, 2, 15)) == Period(t(2025, 1, 31), t(2025, 2, 28))
    assert [i.plan_version for i in s.intervals] == [1, 1]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"remove_prices": ["fee"]}, ["api_v1"], id="remove-by-key"),
        pytest.param({"remove_prices": ["fee_v1"]}, ["api_v1"], id="remove-by-id"),
        pytest.param({"replace_prices": [ReplacePrice("api", unit("0.08", id="api_custom", key="api"))]},
                     ["api_custom", "fee_v1"], id="replace"),
        pytest.param({"add_prices": [AddPrice(unit("1", id="extra"))]}, ["api_v1", "extra", "fee_v1"], id="add"),
    ],
)
def test_create_overrides(overrides, expected):
    """add_prices / remove_prices / replace_prices change the subscription without a custom plan."""
    assert sorted(i.price.id for i in sub(**overrides).intervals) == expected


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        pytest.param({"remove_prices": ["nope"]}, "remove_prices", id="remove-unknown"),
        pytest.param({"replace_prices": [ReplacePrice("nope", API)]}, "replace_prices", id="replace-unknown"),
        pytest.param({"end": t(2024, 12, 1)}, "end_date", id="end-before-start"),
        pytest.param({"add_prices": [AddPrice(unit("1", id="eur", currency="EUR"))]}, "currency", id="currency-mismatch"),
    ],
)
def test_create_rejects(overrides, match):
    """Invalid overrides are refused naming the field."""
    with pytest.raises(SubscriptionError, match=match):
        sub(**overrides)


@pytest.mark.parametrize(
    ("option", "date", "now", "end"),
    [
        pytest.param("immediate", None, t(2025, 1, 13, 9), t(2025, 1, 13, 9), id="immediate"),
        pytest.param("requested_date", t(2025, 1, 13), t(2025, 1, 20), t(2025, 1, 13), id="requested-in-past"),
        pytest.param("requested_date", t(2025, 3, 5), t(2025, 1, 20), t(2025, 3, 5), id="requested-in-future"),
        pytest.param("end_of_subscription_term", None, t(2025, 1, 20), t(2025, 2, 1), id="end-of-term"),
        pytest.param("requested_date", t(2024, 6, 1), t(2025, 1, 20), t(2025, 1, 1), id="before-start-clamps"),
    ],
)
def test_cancel(option, date, now, end):
    """Cancellation ends the subscription and every open interval at the effective instant."""
    s = cancel(sub(), cancel_option=option, cancellation_date=date, now=now)
    assert s.end == end
    assert all(i.end == end for i in s.intervals) or (end == s.start and not s.intervals)
    assert s.edits[-1].kind == "cancel" and s.edits[-1].effective_at == end


def test_cancel_requires_date_and_cannot_extend():
    """requested_date needs a date, and a cancellation never moves the end later."""
    with pytest.raises(SubscriptionError, match="cancellation_date"):
        cancel(sub(), cancel_option="requested_date", now=t(2025, 1, 2))
    s = cancel(sub(), cancel_option="requested_date", cancellation_date=t(2025, 2, 1), now=t(2025, 1, 2))
    with pytest.raises(SubscriptionError, match="already ends"):
        cancel(s, cancel_option="requested_date", cancellation_date=t(2025, 3, 1), now=t(2025, 1, 2))


PLAN2 = plan_of(unit("0.05", id="api_v2", key="api"), FEE, id="plan2")


@pytest.mark.parametrize(
    ("option", "date", "now", "at"),
    [
        pytest.param("immediate", None, t(2025, 1, 15, 12), t(2025, 1, 15, 12), id="immediate"),
        pytest.param("requested_date", t(2025, 1, 10), t(2025, 1, 20), t(2025, 1, 10), id="requested-in-past"),
        pytest.param("end_of_subscription_term", None, t(2025, 1, 20), t(2025, 2, 1), id="end-of-term"),
    ],
)
def test_schedule_plan_change(option, date, now, at):
    """A plan change closes the old intervals and opens the new plan's at the effective instant."""
    s = schedule_plan_change(sub(), PLAN2, change_option=option, change_date=date, now=now)
    assert spans(s) == [("api_v1", t(2025, 1, 1), at), ("api_v2", at, None),
                        ("fee_v1", t(2025, 1, 1), at), ("fee_v1", at, None)]
    assert s.phase_at(at).plan_id == "plan2" and s.phase_at(t(2025, 1, 1)).plan_id == "plan1"


def test_plan_change_replaces_scheduled_change():
    """A second plan change before a scheduled one replaces it."""
    s = schedule_plan_change(sub(), PLAN2, change_option="requested_date", change_date=t(2025, 3, 1), now=t(2025, 1, 2))
    s = schedule_plan_change(s, PLAN, change_option="requested_date", change_date=t(2025, 2, 1), now=t(2025, 1, 3))
    assert {i.price.id for i in s.intervals if i.start >= t(2025, 2, 1)} == {"api_v1", "fee_v1"}
    assert not any(i.start == t(2025, 3, 1) for i in s.intervals)


def test_negotiated_rate_from_a_date():
    """A new negotiated rate ends the old interval and starts a new one from the date."""
    s = sub()
    old = next(i for i in s.intervals if i.price.key == "api")
    s = edit_price_intervals(s, now=t(2025, 2, 1), edit=[IntervalEdit(old.id, end=t(2025, 1, 20))],
                             add=[AddPrice(unit("0.07", id="api_deal", key="api"), start=t(2025, 1, 20))])
    assert [(i.price.id, i.start, i.end) for i in s.intervals if i.price.key == "api"] == [
        ("api_v1", t(2025, 1, 1), t(2025, 1, 20)), ("api_deal", t(2025, 1, 20), None)]
    assert s.edits[-1].effective_at == t(2025, 1, 20)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        pytest.param({"edit": [IntervalEdit("s1_pi9", end=t(2025, 2, 1))]}, "price_interval_id", id="unknown-interval"),
        pytest.param({"edit": [IntervalEdit("s1_pi1", end=t(2024, 1, 1))]}, "end_date", id="end-before-start"),
        pytest.param({"add": [AddPrice(API)]}, "start_date", id="add-without-start"),
        pytest.param({"add": [AddPrice(API, start=t(2024, 1, 1))]}, "within", id="add-before-subscription"),
    ],
)
def test_edit_price_intervals_rejects(kw, match):
    """Invalid interval edits are refused naming the field."""
    with pytest.raises(SubscriptionError, match=match):
        edit_price_intervals(sub(), now=t(2025, 1, 2), **kw)


def test_adjustment_intervals_follow_plan():
    """Plan adjustments become adjustment intervals; added ones start where asked."""
    minimum = Adjustment("min", AdjustmentType.MINIMUM, D(10), ("api",))
    s = sub(plan=plan_of(API, adjustments=(minimum,)),
            add_adjustments=[AddAdjustment(Adjustment("off", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.1")), start=t(2025, 1, 5))])
    assert [(a.adjustment.id, a.start, a.plan_version) for a in s.adjustment_intervals] == [
        ("min", t(2025, 1, 1), 1), ("off", t(2025, 1, 5), None)]


def test_plan_versions_are_immutable_and_keep_keys():
    """A plan change is version n+1; keys trace a price across versions; the default can move."""
    plan = add_version(PLAN, prices=[unit("0.09", id="api_v2", key="api"), FEE], now=t(2025, 2, 1))
    assert plan.version(1).prices == PLAN.version(1).prices
    assert plan.default_version == 1 and plan.latest_version == 2
    plan = add_version(plan, prices=[FEE], now=t(2025, 3, 1))
    assert price_lineage(plan, "api") == [(1, "api_v1", "added"), (2, "api_v2", "edited"), (3, "api_v2", "removed")]
    assert set_default_version(plan, 2).default_version == 2
    with pytest.raises(PlanError):
        set_default_version(plan, 7)
    with pytest.raises(PlanError, match="new id"):
        add_version(plan, prices=[unit("0.01", id="api_v1", key="api")], now=t(2025, 4, 1))


def test_billing_cadence_from_prices():
    """The billing cadence is the shortest recurring cadence among the plan's prices."""
    s = sub(plan=plan_of(fixed("100", id="q", cadence=Cadence.QUARTERLY), fixed("5", id="once", cadence=Cadence.ONE_TIME)))
    assert s.cadence == Cadence.QUARTERLY
