"""Invoices and costs: lines per interval, proration, corrections and the worked examples."""

from decimal import Decimal as D

import pytest

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.costs import costs, costs_bulk, usage_by_day
from billing_core.invoices import compute_invoice, issue_invoice, upcoming_invoice
from billing_core.periods import BillingAnchor, Cadence, Period
from billing_core.pricing import BillingMode
from billing_core.subscriptions import AddPrice, IntervalEdit, cancel, create_subscription, edit_price_intervals, schedule_plan_change

from .helpers import events, fixed, matrix, plan_of, source, t, tiered, unit

JAN = Period(t(2025, 1, 1), t(2025, 2, 1))


def sub_on(*prices, start=t(2025, 1, 1), adjustments=(), **kw):
    return create_subscription(id="s1", customer_id="c1", plan=plan_of(*prices, adjustments=adjustments),
                               start=start, now=start, **kw)


def calls(n, day=t(2025, 1, 10), customer="c1", **props):
    return events(customer, *[(day, dict(props)) for _ in range(n)])


def amounts(invoice):
    return [(line.price.id, str(line.amount)) for line in invoice.line_items]


@pytest.mark.parametrize(
    ("quantity", "subtotal", "total"),
    [pytest.param(9, "22.50", "50.00", id="q9"), pytest.param(19, "47.50", "50.00", id="q19"),
     pytest.param(20, "50.00", "50.00", id="q20"), pytest.param(28, "70.00", "70.00", id="q28"),
     pytest.param(36, "90.00", "90.00", id="q36")],
)
def test_example_5_costs_with_minimum(quantity, subtotal, total):
    """Example 5: unit 2.50 with minimum 50 — cumulative subtotal and total per quantity."""
    s = sub_on(unit("2.50", minimum_amount=D("50.00")))
    result = costs(s, t(2025, 1, 1), t(2025, 1, 20), source(calls(quantity)))
    assert (str(result.subtotal), str(result.total)) == (subtotal, total)
    assert (str(result.per_price_costs[0].subtotal), str(result.per_price_costs[0].total)) == (subtotal, total)


def test_example_7_matrix_invoice_sub_lines():
    """Example 7: a matrix line of 2.15 with three region sub-lines, usage grouped by region."""
    s = sub_on(matrix(["region"], "0.015", [(["us-east"], "0.01"), (["eu"], "0.02")]))
    evs = calls(100, region="us-east") + events("c1", *[(t(2025, 1, 2), {"region": "eu"})] * 50) \
        + events("c1", *[(t(2025, 1, 3), {"region": "ap"})] * 10)
    # keys must be unique across the three batches
    for i, e in enumerate(evs):
        e["idempotency_key"] = f"k{i}"
    inv = compute_invoice(s, JAN, source(evs), now=t(2025, 2, 1))
    (line,) = inv.line_items
    assert line.amount == D("2.15") and inv.total == D("2.15")
    assert [(s.name, s.quantity) for s in line.sub_lines] == [("region: ap", 10), ("region: eu", 50), ("region: us-east", 100)]


def test_example_9_line_rounds_half_up():
    """Example 9: 55 × 0.067 = 3.685 is invoiced as 3.69."""
    inv = compute_invoice(sub_on(unit("0.067")), JAN, source(calls(55)), now=t(2025, 2, 1))
    assert inv.line_items[0].amount_unrounded == D("3.685") and inv.total == D("3.69")


def test_example_10_adjustments_on_a_plan():
    """Example 10: 200 h at 0.10 with 10 % off, minimum 50, maximum 500 invoices 50.00."""
    adjustments = (Adjustment("off", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.1")),
                   Adjustment("min", AdjustmentType.MINIMUM, D(50)), Adjustment("max", AdjustmentType.MAXIMUM, D(500)))
    inv = compute_invoice(sub_on(unit("0.10"), adjustments=adjustments), JAN, source(calls(200)), now=t(2025, 2, 1))
    line = inv.line_items[0]
    assert (line.subtotal, line.amount) == (D("20.00"), D("50.00"))
    assert [a.adjustment_type.value for a in line.adjustments] == ["percentage_discount", "minimum"]


def test_example_11_cancellation_refund():
    """Example 11: 50.00 in advance, canceled effective Jan 13 — a correction of −30.65."""
    s = sub_on(fixed("50.00"))
    jan = issue_invoice(compute_invoice(s, JAN, source(), now=t(2025, 1, 1)), id="inv1", now=t(2025, 1, 1))
    assert jan.total == D("50.00")
    s = cancel(s, cancel_option="requested_date", cancellation_date=t(2025, 1, 13), now=t(2025, 1, 20))
    # The corrected January is computed as used Jan 1–12: 12/31 × 50.
    assert compute_invoice(s, JAN, source(), now=t(2025, 1, 20)).total == D("19.35")
    feb = compute_invoice(s, Period(t(2025, 2, 1), t(2025, 3, 1)), source(), now=t(2025, 2, 1), issued=[jan])
    (correction,) = feb.line_items
    assert (correction.kind, correction.amount, correction.corrects_invoice_id) == ("correction", D("-30.65"), "inv1")


def test_example_12_correction_of_issued_usage():
    """Example 12: 5 units invoiced at 10.00, now 8 — the next invoice has +3 units = 30.00."""
    s = sub_on(unit("10.00"))
    jan = issue_invoice(compute_invoice(s, JAN, source(calls(5)), now=t(2025, 2, 1)), id="inv1", now=t(2025, 2, 1))
    late = events("c1", *[(t(2025, 1, 31, 23), {})] * 3)
    for e in late:
        e["idempotency_key"] = "late-" + e["idempotency_key"]
    feb = compute_invoice(s, Period(t(2025, 2, 1), t(2025, 3, 1)), source(calls(5), late), now=t(2025, 3, 1), issued=[jan])
    corrections = [l for l in feb.line_items if l.kind == "correction"]
    assert [(l.quantity, l.amount) for l in corrections] == [(D(3), D("30.00"))]
    # Once the February invoice with the correction is issued, March sees nothing more to correct.
    feb = issue_invoice(feb, id="inv2", now=t(2025, 3, 1))
    mar = compute_invoice(s, Period(t(2025, 3, 1), t(2025, 4, 1)), source(calls(5), late), now=t(2025, 4, 1), issued=[jan, feb])
    assert [l for l in mar.line_items if l.kind == "correction"] == []


def test_plan_change_mid_period_splits_usage():
    """Usage before a plan change is priced by the old plan, after it by the new one."""
    s = sub_on(unit("1.00", id="old", key="api"))
    s = schedule_plan_change(s, plan_of(unit("0.50", id="new", key="api"), id="plan2"),
                             change_option="requested_date", change_date=t(2025, 1, 15), now=t(2025, 1, 20))
    evs = calls(10, day=t(2025, 1, 10)) + [dict(e, idempotency_key="b" + e["idempotency_key"], timestamp=t(2025, 1, 20)) for e in calls(4)]
    inv = compute_invoice(s, JAN, source(evs), now=t(2025, 2, 1))
    assert amounts(inv) == [("old", "10.00"), ("new", "2.00")]
    assert [(l.trace.plan_id, l.trace.plan_version, l.trace.event_count) for l in inv.line_items] == [
        ("plan1", 1, 10), ("plan2", 1, 4)]
    assert inv.line_items[0].trace.timeframe_end == t(2025, 1, 15)


def test_negotiated_rate_in_the_past():
    """A negotiated rate effective in the past re-prices usage after that date only."""
    s = sub_on(unit("1.00", id="list", key="api"))
    old = s.intervals[0]
    s = edit_price_intervals(s, now=t(2025, 1, 25), edit=[IntervalEdit(old.id, end=t(2025, 1, 15))],
                             add=[AddPrice(unit("0.10", id="deal", key="api"), start=t(2025, 1, 15))])
    evs = calls(10, day=t(2025, 1, 10)) + [dict(e, idempotency_key="b" + e["idempotency_key"], timestamp=t(2025, 1, 20)) for e in calls(10)]
    assert amounts(compute_invoice(s, JAN, source(evs), now=t(2025, 2, 1))) == [("list", "10.00"), ("deal", "1.00")]


@pytest.mark.parametrize(
    ("start", "anchor", "period", "amount"),
    [
        pytest.param(t(2025, 1, 15), BillingAnchor(1), Period(t(2025, 1, 15), t(2025, 2, 1)), "27.42", id="partial-first-17-of-31"),
        pytest.param(t(2024, 2, 15), BillingAnchor(1), Period(t(2024, 2, 15), t(2024, 3, 1)), "25.86", id="leap-feb-15-of-29"),
        pytest.param(t(2025, 2, 15), BillingAnchor(1), Period(t(2025, 2, 15), t(2025, 3, 1)), "25.00", id="feb-14-of-28"),
        pytest.param(t(2025, 1, 15), None, Period(t(2025, 1, 15), t(2025, 2, 15)), "50.00", id="aligned-to-start"),
        pytest.param(t(2025, 1, 31), None, Period(t(2025, 2, 28), t(2025, 3, 31)), "50.00", id="jan31-anchor-march"),
    ],
)
def test_fixed_fee_proration(start, anchor, period, amount):
    """A fixed fee in a partial period is prorated by days in service over days in period."""
    s = sub_on(fixed("50.00"), start=start, anchor=anchor)
    inv = compute_invoice(s, period, source(), now=period.start)
    assert amounts(inv) == [("p1", amount)]


def test_in_advance_and_in_arrear_fixed_fees():
    """In-advance fees bill in the period they start, in-arrear fees in the period they end."""
    s = sub_on(fixed("10", id="adv"), fixed("20", id="arr", mode=BillingMode.IN_ARREAR),
               fixed("300", id="qtr", cadence=Cadence.QUARTERLY), fixed("5", id="setup", cadence=Cadence.ONE_TIME))
    jan = compute_invoice(s, JAN, source(), now=t(2025, 1, 1))
    feb = compute_invoice(s, Period(t(2025, 2, 1), t(2025, 3, 1)), source(), now=t(2025, 2, 1))
    apr = compute_invoice(s, Period(t(2025, 4, 1), t(2025, 5, 1)), source(), now=t(2025, 4, 1))
    assert sorted(amounts(jan)) == [("adv", "10.00"), ("arr", "20.00"), ("qtr", "300.00"), ("setup", "5.00")]
    assert sorted(amounts(feb)) == [("adv", "10.00"), ("arr", "20.00")]
    assert sorted(amounts(apr)) == [("adv", "10.00"), ("arr", "20.00"), ("qtr", "300.00")]


def test_total_is_sum_of_rounded_lines():
    """Each line rounds once and the invoice total is the sum of rounded lines (not rounded sum)."""
    s = sub_on(unit("0.005", id="a", key="a"), unit("0.005", id="b", key="b"), unit("0.005", id="c", key="c"))
    inv = compute_invoice(s, JAN, source(calls(1)), now=t(2025, 2, 1))
    assert [l.amount for l in inv.line_items] == [D("0.01")] * 3 and inv.total == D("0.03")


def test_tier_sub_lines_and_trace():
    """A tiered line shows tier sub-lines and traces metric, window, events and price version."""
    s = sub_on(tiered((0, 10, "0.50"), (10, None, "0.10")))
    inv = compute_invoice(s, JAN, source(calls(15)), now=t(2025, 2, 1))
    line = inv.line_items[0]
    assert [(sl.quantity, sl.amount) for sl in line.sub_lines] == [(D(10), D("5.00")), (D(5), D("0.50"))]
    trace = line.trace.to_dict()
    assert trace == {"price_id": "p1", "price_key": "p1", "price_interval_id": "s1_pi1", "plan_id": "plan1",
                     "plan_version": 1, "metric_id": "m1", "timeframe_start": "2025-01-01T00:00:00Z",
                     "timeframe_end": "2025-02-01T00:00:00Z", "event_count": 15, "skipped": 0,
                     "answered_by": {"fragments": 0, "raw_events": 15}}


def test_upcoming_and_serialization_are_stable():
    """The upcoming invoice is the period containing now and serializes byte-identically."""
    s = sub_on(unit("0.067"), fixed("9.99", id="fee"))
    a = upcoming_invoice(s, source(calls(55)), now=t(2025, 1, 20))
    b = upcoming_invoice(s, source(list(reversed(calls(55)))), now=t(2025, 1, 20))
    assert a.period == JAN and a.status == "upcoming"
    assert a.to_json() == b.to_json()
    assert a.to_dict()["total"] == "13.68"


def test_costs_unrounded_and_in_arrear_accrual():
    """Costs give unrounded and rounded totals; in-arrear fees accrue by elapsed days."""
    s = sub_on(unit("0.067"), fixed("31.00", id="arr", mode=BillingMode.IN_ARREAR))
    c = costs(s, t(2025, 1, 1), t(2025, 1, 11), source(calls(55)))
    assert (c.total_unrounded, c.total) == (D("13.685"), D("13.69"))


def test_costs_bulk_matches_single_and_batches_usage():
    """Bulk costs equal one-by-one costs and ask the usage source once per metric and window."""
    subs = [create_subscription(id=f"s{i}", customer_id=f"c{i}", plan=plan_of(unit("0.5")), start=t(2025, 1, 1), now=t(2025, 1, 1))
            for i in range(5)]
    src = source(*[calls(i + 1, customer=f"c{i}") for i in range(5)])
    seen = []
    original = src.usage_bulk

    def counting(*args, **kw):
        seen.append(args[0])
        return original(*args, **kw)

    src.usage_bulk = counting
    bulk = costs_bulk([(s, t(2025, 1, 1), t(2025, 1, 20)) for s in subs], src)
    assert seen == ["m1"]
    assert [c.total for c in bulk] == [costs(s, t(2025, 1, 1), t(2025, 1, 20), src).total for s in subs]
    assert [str(c.total) for c in bulk] == ["0.50", "1.00", "1.50", "2.00", "2.50"]


def test_usage_by_day():
    """Usage per metric per day covers each UTC day of the timeframe."""
    s = sub_on(unit("1"))
    later = [dict(e, idempotency_key="d11-" + e["idempotency_key"]) for e in calls(2, day=t(2025, 1, 11))]
    days = usage_by_day(s, t(2025, 1, 9), t(2025, 1, 12), source(calls(3), later))
    assert [(d.timeframe_start.day, d.quantity) for d in days[0].usage] == [(9, 0), (10, 3), (11, 2)]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param((), {"api": "9.00", "storage": "4.50"}, id="names-none-applies-to-all"),
        pytest.param(("api",), {"api": "9.00", "storage": "5.00"}, id="by-key-only-that-line"),
        pytest.param(("storage_v1",), {"api": "10.00", "storage": "4.50"}, id="by-price-id"),
    ],
)
def test_plan_adjustment_applies_to_named_lines(names, expected):
    """A plan-level adjustment changes only the lines it names (or every line when it names none)."""
    off = Adjustment("off", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.1"), names)
    s = sub_on(unit("1.00", id="api_v1", key="api"), unit("0.50", id="storage_v1", key="storage"), adjustments=(off,))
    inv = compute_invoice(s, JAN, source(calls(10)), now=t(2025, 2, 1))
    assert {l.price.key: str(l.amount) for l in inv.line_items} == expected


def test_subscription_level_adjustment_from_a_date():
    """A subscription-level minimum added mid-period applies to the periods it is active in."""
    from billing_core.subscriptions import AddAdjustment
    s = sub_on(unit("1.00"), add_adjustments=[AddAdjustment(Adjustment("min", AdjustmentType.MINIMUM, D(100)),
                                                            start=t(2025, 2, 1))])
    jan = compute_invoice(s, JAN, source(calls(10)), now=t(2025, 2, 1))
    feb = compute_invoice(s, Period(t(2025, 2, 1), t(2025, 3, 1)), source(calls(10)), now=t(2025, 3, 1))
    assert (jan.total, feb.total) == (D("10.00"), D("100.00"))


def test_usage_discount_on_a_line():
    """A usage discount removes units before rating and is traced as a negative amount."""
    free = Adjustment("free", AdjustmentType.USAGE_DISCOUNT, D(4))
    inv = compute_invoice(sub_on(unit("0.50"), adjustments=(free,)), JAN, source(calls(10)), now=t(2025, 2, 1))
    line = inv.line_items[0]
    assert (line.quantity, line.amount, line.adjustments[0].amount) == (D(6), D("3.00"), D("-2.00"))
