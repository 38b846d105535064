"""Property tests: invoices are deterministic and ignore event order and duplicate deliveries."""

from datetime import timedelta
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from billing_core.costs import costs
from billing_core.invoices import compute_invoice
from billing_core.periods import Period
from billing_core.pricing import rate
from billing_core.subscriptions import create_subscription

from .helpers import bulk, fixed, matrix, package, plan_of, source, t, tiered, tiered_package, unit

JAN = Period(t(2025, 1, 1), t(2025, 2, 1))
PLAN = plan_of(
    unit("0.067", id="u", key="u", metric="tokens"),
    tiered((0, 10, "0.50"), (10, None, "0.10"), id="t", key="t"),
    bulk((10, "0.50"), (1000, "0.40"), id="b", key="b", metric="tokens"),
    package(10, "0.80", id="p", key="p"),
    tiered_package(10, (0, "1.00"), (100, "0.50"), id="tp", key="tp", metric="tokens"),
    matrix(["region"], "0.015", [(["us"], "0.01"), (["eu"], "0.02")], id="mx", key="mx"),
    fixed("9.99", id="fee", key="fee"),
)
SUB = create_subscription(id="s1", customer_id="c1", plan=PLAN, start=t(2025, 1, 1), now=t(2025, 1, 1))

event = st.builds(
    lambda minute, tokens, region: {
        "customer_id": "c1", "event_name": "api_call",
        "timestamp": t(2024, 12, 31) + timedelta(minutes=minute),
        "properties": {k: v for k, v in (("tokens", tokens), ("region", region)) if v is not None},
    },
    st.integers(0, 60 * 24 * 33),
    st.one_of(st.none(), st.integers(0, 5000), st.decimals("0", "100", places=3).map(str)),
    st.sampled_from([None, "us", "eu", "ap"]),
)
batches = st.lists(event, max_size=40).map(
    lambda evs: [dict(e, idempotency_key=f"k{i}") for i, e in enumerate(evs)])


def invoice_json(evs):
    return compute_invoice(SUB, JAN, source(evs), now=t(2025, 2, 1)).to_json()


@settings(max_examples=40, deadline=None)
@given(batches)
def test_same_inputs_same_bytes(evs):
    """Computing the same invoice twice gives byte-identical serialized output."""
    assert invoice_json(evs) == invoice_json([dict(e) for e in evs])


@settings(max_examples=40, deadline=None)
@given(batches, st.randoms(use_true_random=False))
def test_event_order_does_not_matter(evs, rnd):
    """Shuffling the events never changes the invoice."""
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    assert invoice_json(shuffled) == invoice_json(evs)


@settings(max_examples=40, deadline=None)
@given(batches, st.lists(st.integers(0, 39), max_size=20))
def test_duplicates_do_not_matter(evs, picks):
    """Re-delivering events (same idempotency key) never changes the invoice or the costs."""
    dupes = evs + [evs[i % len(evs)] for i in picks] if evs else evs
    assert invoice_json(dupes) == invoice_json(evs)
    assert costs(SUB, JAN.start, JAN.end, source(dupes)) == costs(SUB, JAN.start, JAN.end, source(evs))


@settings(max_examples=60, deadline=None)
@given(st.decimals("0", "200000", places=2))
def test_graduated_rating_is_monotonic_and_matches_sub_lines(q):
    """A graduated price never charges less for more, and its sub-lines add up to the amount."""
    price = tiered((0, 10000, "0.001"), (10000, 100000, "0.0008"), (100000, None, "0.0005"))
    result = rate(price, q)
    assert result.amount == sum((s.amount for s in result.sub_lines), D(0))
    assert rate(price, q + 1).amount >= result.amount


@settings(max_examples=60, deadline=None)
@given(batches, st.integers(1, 31 * 24))
def test_costs_add_up_exactly_what_the_lines_hold(evs, hours):
    """A cost is its charges rated without building lines (``rate_amounts``): per price, it must equal
    the same charges' full lines (``rate_all``) added up: quantities and amounts unrounded, and each
    line's rounded subtotal and amount summed."""
    from billing_core.lines import charges_for_timeframe, fetch_usage, rate_all, usage_key
    from billing_core.money import round_money

    end = JAN.start + timedelta(hours=hours)
    got = costs(SUB, JAN.start, end, source(evs))
    charges = charges_for_timeframe(SUB, JAN.start, end)
    lines = rate_all(SUB, charges, fetch_usage([k for c in charges if (k := usage_key(SUB, c))], source(evs)))
    for cost in got.per_price_costs:
        mine = [line for line in lines if line.price.id == cost.price.id]
        assert cost.quantity == sum((line.quantity for line in mine), D(0))
        assert cost.subtotal_unrounded == sum((line.subtotal_unrounded for line in mine), D(0))
        assert cost.total_unrounded == sum((line.amount_unrounded for line in mine), D(0))
        assert cost.subtotal == sum((line.subtotal for line in mine), round_money(D(0), "USD"))
        assert cost.total == sum((line.amount for line in mine), round_money(D(0), "USD"))
    assert {c.price.id for c in got.per_price_costs} == {line.price.id for line in lines}


@settings(max_examples=80, deadline=None)
@given(st.decimals("0", "200000", places=3), st.lists(st.tuples(st.sampled_from(["us", "eu", "ap"]),
                                                               st.decimals("0", "5000", places=3)), max_size=4))
def test_rating_without_sub_lines_gives_the_same_amount(q, grouped):
    """``rate(..., detail=False)`` (costs) gives every model's amount exactly as the detailed rating."""
    groups = {(region,): value for region, value in grouped}
    for price in PLAN.version(1).prices:
        detailed = rate(price, q, groups)
        assert rate(price, q, groups, detail=False).amount == detailed.amount
