"""Simulating a plan version swaps the plan's adjustments as it swaps its prices (by stable key), keeps
subscription-level adjustments, and equals the invoices of a timeline built on the tried version by hand."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.errors import InvalidInput
from billing_core.invoices import compute_invoice
from billing_core.money import round_money
from billing_core.plans import Plan, add_version
from billing_core.simulations import Simulation, draft_version, periods_within, simulate, simulated_timeline
from billing_core.subscriptions import (
    AddAdjustment, Subscription, cancel, create_subscription, edit_price_intervals, schedule_plan_change,
)
from billing_core.usage import InMemoryUsageSource
from tests.billing_core.helpers import METRICS, fixed, plan_of, t, unit

NOW = t(2025, 5, 15)
CALLS = unit("0.10", id="calls", metric="m1")
FEE = fixed("10.00", id="platform")
MIN5 = Adjustment("min5", AdjustmentType.MINIMUM, D("5.00"), applies_to_price_ids=("calls",))
OFF = Adjustment("off", AdjustmentType.AMOUNT_DISCOUNT, D("1.00"), applies_to_price_ids=("platform",))
TEN = Adjustment("ten", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.10"))
MIN8 = Adjustment("min8", AdjustmentType.MINIMUM, D("8.00"), applies_to_price_ids=("calls",))


def _plan() -> Plan:
    """v1: calls 0.10 (minimum 5.00), platform 10.00 (1.00 off); v2 adds 10% off everything; v3 edits the
    minimum to 8.00; v4 removes the platform discount. The prices never change."""
    v1 = plan_of(CALLS, FEE, adjustments=(MIN5, OFF))
    v2 = add_version(v1, prices=[CALLS, FEE], adjustments=[MIN5, OFF, TEN], now=t(2025, 1, 1))
    v3 = add_version(v2, prices=[CALLS, FEE], adjustments=[MIN8, OFF, TEN], replaced_adjustments={"min8": "min5"},
                     now=t(2025, 1, 1))
    return add_version(v3, prices=[CALLS, FEE], adjustments=[MIN8, TEN], now=t(2025, 1, 1))


PLAN = _plan()


def _usage(**calls_per_month: int) -> InMemoryUsageSource:
    """The same number of calls on the 3rd of every month from January, per customer."""
    return InMemoryUsageSource(METRICS, [
        {"idempotency_key": f"{customer}-{month}-{i}", "customer_id": customer, "event_name": "api_call",
         "timestamp": t(2025, month, 3, 1, i % 60), "properties": {}}
        for customer, calls in calls_per_month.items() for month in range(1, 6) for i in range(calls)])


def _sub(customer: str, version: int, **kw) -> Subscription:  # type: ignore[no-untyped-def]
    return create_subscription(id=f"s_{customer}", customer_id=customer, plan=PLAN, version=version,
                               start=t(2025, 1, 1), now=t(2025, 1, 1), **kw)


def _run(version: int, *subs: Subscription) -> dict[str, dict[str, tuple[D, D]]]:
    """Simulate February to April under ``version``; per customer and price key (current, simulated)."""
    result = simulate(PLAN, PLAN.version(version), subs, _usage(a=100, b=20), start=t(2025, 2, 1),
                      end=t(2025, 5, 1), now=NOW)
    return {c.customer_id: {p.price_key: (p.current, p.simulated) for p in c.prices} for c in result.customers}


def test_version_that_adds_a_percentage_discount() -> None:
    """v2's new 10% discount is added over the phase and discounts every line before the minimum applies."""
    swapped = simulated_timeline(_sub("a", 1), PLAN, PLAN.version(2))
    assert sorted((a.adjustment.id, a.plan_version, a.start, a.end) for a in swapped.adjustment_intervals) == [
        ("min5", 2, t(2025, 1, 1), None), ("off", 2, t(2025, 1, 1), None), ("ten", 2, t(2025, 1, 1), None)]
    got = _run(2, _sub("a", 1), _sub("b", 1))
    # a: 100 calls = 10.00 -> 9.00; platform 10 - 1 = 9.00 -> 8.10. b: 20 calls = 2.00 -> 1.80 -> minimum 5.00.
    assert got["a"] == {"calls": (D("30.00"), D("27.00")), "platform": (D("27.00"), D("24.30"))}
    assert got["b"] == {"calls": (D("15.00"), D("15.00")), "platform": (D("27.00"), D("24.30"))}


def test_adjustments_show_in_the_totals() -> None:
    """Per customer and in total, what adjustments did to the lines (included in the revenue) as billed and simulated."""
    result = simulate(PLAN, PLAN.version(2), [_sub("a", 1), _sub("b", 1)], _usage(a=100, b=20), start=t(2025, 2, 1),
                      end=t(2025, 5, 1), now=NOW)
    by = {c.customer_id: (c.current_adjustments, c.simulated_adjustments) for c in result.customers}
    # a: platform -1.00 a month; v2: calls -1.00, platform -1.90. b: calls +3.00 to the minimum either way.
    assert by == {"a": (D("-3.00"), D("-8.70")), "b": (D("6.00"), D("3.30"))}
    answer = result.to_dict(2)
    assert (answer["current_adjustments"], answer["simulated_adjustments"]) == ("3.00", "-5.40")
    assert (answer["customers"][0]["current_adjustments"], answer["customers"][0]["simulated_adjustments"]) == (
        "-3.00", "-8.70")
    assert (answer["current_total"], answer["simulated_total"]) == ("99.00", "90.60")


def test_version_that_edits_a_minimum() -> None:
    """v3's minimum (the same key as v1's, edited) takes the place of the old one in its interval."""
    original = _sub("b", 2)
    swapped = simulated_timeline(original, PLAN, PLAN.version(3))
    before = {a.id: a.adjustment.id for a in original.adjustment_intervals}
    after = {a.id: a.adjustment.id for a in swapped.adjustment_intervals}
    assert before.keys() == after.keys() and sorted(after.values()) == ["min8", "off", "ten"]
    got = _run(3, _sub("a", 2), original)
    # b: 1.80 after 10% is raised to 8.00 instead of 5.00; a's 9.00 is above both minimums.
    assert got["b"]["calls"] == (D("15.00"), D("24.00")) and got["a"]["calls"] == (D("27.00"), D("27.00"))
    assert got["b"]["platform"] == (D("24.30"), D("24.30"))


def test_version_that_removes_an_adjustment() -> None:
    """v4 has no platform discount: the subscription's interval of it is dropped."""
    swapped = simulated_timeline(_sub("a", 3), PLAN, PLAN.version(4))
    assert sorted(a.adjustment.id for a in swapped.adjustment_intervals) == ["min8", "ten"]
    got = _run(4, _sub("a", 3))
    assert got["a"] == {"calls": (D("27.00"), D("27.00")), "platform": (D("24.30"), D("27.00"))}


def test_subscription_level_adjustments_stay() -> None:
    """A negotiated discount stays as it is, and a plan adjustment the subscription removed is not brought back."""
    deal = Adjustment("deal", AdjustmentType.AMOUNT_DISCOUNT, D("2.00"), applies_to_price_ids=("calls",))
    own = _sub("a", 1, add_adjustments=[AddAdjustment(deal)], remove_adjustments=["off"])
    later = Adjustment("later", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.50"), applies_to_price_ids=("platform",))
    own = edit_price_intervals(own, now=t(2025, 1, 1), add_adjustments=[AddAdjustment(later, start=t(2025, 4, 1))])
    swapped = simulated_timeline(own, PLAN, PLAN.version(3))
    kept = [a for a in own.adjustment_intervals if a.plan_version is None]
    assert [a for a in swapped.adjustment_intervals if a.plan_version is None] == kept and len(kept) == 2
    assert sorted(a.adjustment.id for a in swapped.adjustment_intervals) == ["deal", "later", "min8", "ten"]
    got = _run(3, own)
    # calls: 10.00 - 2.00 = 8.00 now; 8.00 - 10% = 7.20, raised to the 8.00 minimum under v3.
    # platform (no discount of the plan's): 10.00 in February and March, 5.00 in April; v3 takes 10% first.
    assert got["a"] == {"calls": (D("24.00"), D("24.00")), "platform": (D("25.00"), D("22.50"))}


def test_another_plans_adjustments_stay() -> None:
    """Only the phases on the simulated plan are swapped, even when another plan's adjustment shares an id."""
    other = plan_of(unit("1.00", id="x", metric="m1"), id="other", adjustments=(
        Adjustment("off", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.50")),))
    moved = create_subscription(id="s_a", customer_id="a", plan=other, start=t(2025, 1, 1), now=t(2025, 1, 1))
    moved = schedule_plan_change(moved, PLAN, change_option="requested_date", change_date=t(2025, 3, 1),
                                 version=1, now=t(2025, 1, 1))
    swapped = simulated_timeline(moved, PLAN, PLAN.version(4))
    assert sorted((a.adjustment.id, a.start) for a in swapped.adjustment_intervals) == [
        ("min8", t(2025, 3, 1)), ("off", t(2025, 1, 1)), ("ten", t(2025, 3, 1))]
    assert next(a for a in swapped.adjustment_intervals if a.adjustment.id == "off").adjustment.adjustment_type \
        is AdjustmentType.PERCENTAGE_DISCOUNT
    left = create_subscription(id="s_b", customer_id="b", plan=PLAN, version=1, start=t(2025, 1, 1), now=t(2025, 1, 1))
    left = schedule_plan_change(left, other, change_option="requested_date", change_date=t(2025, 3, 1), now=t(2025, 1, 1))
    swapped = simulated_timeline(left, PLAN, PLAN.version(4))
    assert sorted((a.adjustment.id, a.start, a.end) for a in swapped.adjustment_intervals) == [
        ("min8", t(2025, 1, 1), t(2025, 3, 1)), ("off", t(2025, 3, 1), None), ("ten", t(2025, 1, 1), t(2025, 3, 1))]


def test_draft_adjustments_continue_the_key_they_replace() -> None:
    """A draft adjustment naming a plan adjustment (any version, by id or key) is compared with it; left out,
    the default version's adjustments are kept; bad names and two replacing one key are refused."""
    deeper = Adjustment("min20", AdjustmentType.MINIMUM, D("20.00"), applies_to_price_ids=("calls",))
    draft = draft_version(PLAN, [(CALLS, "calls")], adjustments=[(deeper, "min5"), (TEN, None)], now=NOW)
    assert draft.adjustments_by_key() == {"min5": deeper, "ten": TEN} and draft.version == 5
    kept = draft_version(PLAN, [(CALLS, "calls")], now=NOW)
    assert kept.adjustments_by_key() == {"min5": MIN5, "off": OFF}  # the default version is v1
    off_again = draft_version(PLAN, [(CALLS, "calls")], adjustments=[(deeper, "off")], now=NOW)
    assert off_again.adjustments_by_key() == {"off": deeper}  # v4 removed it: a key from an older version
    swapped = simulated_timeline(_sub("b", 1), PLAN, draft)
    assert sorted(a.adjustment.id for a in swapped.adjustment_intervals) == ["min20", "ten"]
    assert _run_draft(draft)["b"]["calls"] == (D("15.00"), D("60.00"))
    with pytest.raises(InvalidInput, match=r"^adjustments\[0\].replaces_adjustment_id"):
        draft_version(PLAN, [(CALLS, None)], adjustments=[(deeper, "nope")], now=NOW)
    with pytest.raises(InvalidInput, match=r"^adjustments\[1\].replaces_adjustment_id"):
        draft_version(PLAN, [(CALLS, None)], adjustments=[(deeper, "min5"), (MIN8, "min8")], now=NOW)


def _run_draft(draft) -> dict[str, dict[str, tuple[D, D]]]:  # type: ignore[no-untyped-def]
    result = simulate(PLAN, draft, [_sub("b", 1)], _usage(b=20), start=t(2025, 2, 1), end=t(2025, 5, 1), now=NOW)
    return {c.customer_id: {p.price_key: (p.current, p.simulated) for p in c.prices} for c in result.customers}


# --- the property: simulated = invoices of a timeline built on the tried version by hand ------------------------

_KINDS = [AdjustmentType.AMOUNT_DISCOUNT, AdjustmentType.PERCENTAGE_DISCOUNT, AdjustmentType.MINIMUM,
          AdjustmentType.MAXIMUM, AdjustmentType.USAGE_DISCOUNT]
_VALUES = {AdjustmentType.PERCENTAGE_DISCOUNT: ["0.1", "0.25", "0.5", "1"]}


@st.composite
def _adjustment(draw, id: str) -> Adjustment:  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(_KINDS))
    value = draw(st.sampled_from(_VALUES.get(kind, ["0", "0.5", "3", "7.25", "40"])))
    names = draw(st.sampled_from([(), ("calls",), ("platform",), ("tok",), ("calls", "tok")]))
    return Adjustment(id, kind, D(value), applies_to_price_ids=names)


@st.composite
def _plan_versions(draw) -> Plan:  # type: ignore[no-untyped-def]
    """Two to four versions; each keeps, edits (new id, same key), adds or removes prices and adjustments."""
    amounts = st.sampled_from(["0.01", "0.10", "0.25", "1.00"])
    def prices(v: int):  # type: ignore[no-untyped-def]
        chosen = [unit(draw(amounts), id=f"calls_{v}", key="calls", metric="m1"),
                  fixed(draw(st.sampled_from(["0", "10.00", "12.50"])), id=f"platform_{v}", key="platform"),
                  unit(draw(amounts), id=f"tok_{v}", key="tok", metric="tokens")]
        return [p for p in chosen if draw(st.booleans())] or chosen[:1]

    plan = plan_of(*prices(1), adjustments=[draw(_adjustment(f"a{k}_1")) for k in range(draw(st.integers(0, 3)))])
    for v in range(2, draw(st.integers(2, 4)) + 1):
        latest = plan.version(plan.latest_version)
        adjustments, replaced = [], {}
        for old in latest.adjustments:
            change = draw(st.sampled_from(["keep", "edit", "remove"]))
            if change == "keep":
                adjustments.append(old)
            elif change == "edit":
                new = draw(_adjustment(f"{old.id}_e{v}"))
                adjustments.append(new)
                replaced[new.id] = old.id
        adjustments += [draw(_adjustment(f"n{k}_{v}")) for k in range(draw(st.integers(0, 2)))]
        plan = add_version(plan, prices=prices(v), adjustments=adjustments, replaced_adjustments=replaced,
                           now=t(2025, 1, 1))
    return plan


@st.composite
def _scenario(draw):  # type: ignore[no-untyped-def]
    """Subscriptions built by a list of edits, so each can be rebuilt with the tried version in place of its own."""
    plan = draw(_plan_versions())
    other = plan_of(unit("1.00", id="x", metric="m1"), id="other",
                    adjustments=(Adjustment("a0_1", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.5")),))
    versions = st.sampled_from([v.version for v in plan.versions])
    recipes = []
    for n in range(draw(st.integers(1, 3))):
        start = t(2025, 1, 1) + timedelta(days=draw(st.integers(0, 40)), hours=draw(st.integers(0, 23)))
        own = [AddAdjustment(draw(_adjustment(f"own{n}_{k}"))) for k in range(draw(st.integers(0, 1)))]
        recipe = {"id": f"s{n}", "customer": f"c{n % 2}", "start": start, "first": draw(st.sampled_from(["plan", "other"])),
                  "version": draw(versions), "own": own, "change": None, "cancel": None, "later": None}
        if recipe["first"] == "other" or draw(st.booleans()):
            recipe["change"] = (start + timedelta(days=draw(st.integers(1, 50))), draw(versions))
        if draw(st.booleans()):
            when = start + timedelta(days=draw(st.integers(0, 90)))
            recipe["later"] = AddAdjustment(draw(_adjustment(f"later{n}")), start=when,
                                            end=when + timedelta(days=draw(st.integers(1, 60))))
        if draw(st.booleans()):
            recipe["cancel"] = start + timedelta(days=draw(st.integers(55, 120)))
        recipes.append(recipe)
    evs = [{"idempotency_key": f"e{i}", "customer_id": f"c{draw(st.integers(0, 1))}", "event_name": "api_call",
            "timestamp": t(2025, 1, 1) + timedelta(hours=draw(st.integers(0, 24 * 130))),
            "properties": {"tokens": draw(st.integers(0, 500))}} for i in range(draw(st.integers(0, 30)))]
    return plan, other, recipes, InMemoryUsageSource(METRICS, evs)


def _build(recipe: dict, plan: Plan, other: Plan, tried: int | None) -> Subscription:  # type: ignore[type-arg]
    """Build a subscription from its recipe; with ``tried``, every phase on ``plan`` is on that version instead."""
    def on(version: int) -> int:
        return version if tried is None else tried

    start = recipe["start"]
    if recipe["first"] == "plan":
        sub = create_subscription(id=recipe["id"], customer_id=recipe["customer"], plan=plan, version=on(recipe["version"]),
                                  start=start, now=start, add_adjustments=recipe["own"])
    else:
        sub = create_subscription(id=recipe["id"], customer_id=recipe["customer"], plan=other, start=start, now=start,
                                  add_adjustments=recipe["own"])
    if recipe["change"] is not None:
        when, version = recipe["change"]
        sub = schedule_plan_change(sub, plan, change_option="requested_date", change_date=when, now=start,
                                   version=on(version))
    if recipe["later"] is not None and (sub.end is None or recipe["later"].start < sub.end):
        sub = edit_price_intervals(sub, now=start, add_adjustments=[recipe["later"]])
    if recipe["cancel"] is not None:
        sub = cancel(sub, cancel_option="requested_date", now=start, cancellation_date=recipe["cancel"])
    return sub


def _by_price(result: Simulation) -> dict[str, dict[str, list[D]]]:
    """Per customer and price key: [current, simulated, their adjustments current, simulated]."""
    return {c.customer_id: {p.price_key: [p.current, p.simulated, p.current_adjustments, p.simulated_adjustments]
                            for p in c.prices} for c in result.customers}


@settings(max_examples=80, deadline=None)
@given(_scenario(), st.data())
def test_simulated_equals_a_timeline_built_on_the_tried_version(scenario, data) -> None:  # type: ignore[no-untyped-def]
    """Per customer and price, "simulated" equals the invoices computed from scratch of the same subscriptions
    built by hand with the tried version in place of theirs (its prices and adjustments), and "current" those
    of the subscriptions themselves."""
    plan, other, recipes, usage = scenario
    tried = data.draw(st.sampled_from([v.version for v in plan.versions]), label="tried")
    start = t(2025, 1, 1) + timedelta(days=data.draw(st.integers(0, 60), label="lo"))
    end = start + timedelta(days=data.draw(st.integers(20, 120), label="length"))
    subs = [_build(r, plan, other, None) for r in recipes]
    result = simulate(plan, plan.version(tried), subs, usage, start=start, end=end, now=NOW, chunk=2)
    expected: dict[str, dict[str, list[D]]] = {}
    for recipe, sub in zip(recipes, subs):
        by_hand = _build(recipe, plan, other, tried)
        assert (by_hand.cadence, by_hand.anchor, by_hand.window()) == (sub.cadence, sub.anchor, sub.window())
        for period in periods_within(sub, start, min(end, NOW)):
            acc = expected.setdefault(sub.customer_id, {})
            for which, timeline in ((0, sub), (1, by_hand)):
                for line in compute_invoice(timeline, period, usage, now=NOW).line_items:
                    entry = acc.setdefault(line.price.key, [D(0)] * 4)
                    entry[which] += line.amount
                    entry[2 + which] += line.amount - line.subtotal + _usage_discount(line)
    assert _by_price(result) == expected


def _usage_discount(line) -> D:  # type: ignore[no-untyped-def]
    """Return the usage discount's effect on a line, rounded as the line is (zero without one)."""
    before = line.subtotal_unrounded - sum((a.amount for a in line.adjustments
                                            if a.adjustment_type is AdjustmentType.USAGE_DISCOUNT), D(0))
    return line.subtotal - round_money(before, line.currency)
