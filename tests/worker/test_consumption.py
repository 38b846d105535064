"""Contracts with consumption (docs/billing-rules.md §12.6): only units above what the contract
includes are reported, per dimension and period, exactly; entitlement changes count from their instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import Engine, select
from sqlmodel import Session

from worker import entitlements, ledger
from worker.contract_events import MalformedEvent, parse_normalized
from worker.entitlements import Entitlement, InvalidEntitlement, included_at, included_quantities, with_change
from worker.ledger import Due, Part
from worker.metering import overage, plan_report, units_for
from worker.persistence.ledger import DimensionSyncRow, LedgerRow

T0 = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cost", "price", "included", "reported", "total", "delta", "over"),
    [
        ("0.5", "0.001", 1000, 0, 0, 0, 0),          # 500 units, all included
        ("1", "0.001", 1000, 0, 0, 0, 0),            # exactly the included 1,000
        ("1.0019", "0.001", 1000, 0, 1, 1, 0),       # 1,001.9 units: one above, 0.9 carried
        ("2.5", "0.001", 1000, 1, 1500, 1499, 0),
        ("2.5", "0.001", 2000, 1500, 500, 0, 1000),  # the entitlement rose after overage was reported
        ("2.5", "0.001", 0, 0, 2500, 2500, 0),       # pay-as-you-go
    ],
    ids=["inside", "exactly", "one-above", "drawn-down", "raised-later", "payg"],
)
def test_plan_report_reports_only_the_overage(cost: str, price: str, included: int, reported: int, total: int,
                                              delta: int, over: int) -> None:
    """The included units are drawn down first; the sub-unit remainder stays in the cost."""
    plan = plan_report(D(cost), D(price), reported, included=included)
    assert (plan.units_total, plan.delta, plan.over_reported) == (total, delta, over)


def test_entitlement_history_takes_effect_at_its_instant() -> None:
    """A snapshot counts from its instant on; an equal one, or one applied twice, adds nothing."""
    history = with_change((), {"api_calls": 1000}, T0)
    history = with_change(history, {"api_calls": 1500, "usage_fee": 10}, T0 + timedelta(days=3))
    assert with_change(history, {"api_calls": 1500, "usage_fee": 10}, T0 + timedelta(days=4)) == history
    assert with_change(history, {"api_calls": 1500, "usage_fee": 10}, T0 + timedelta(days=3)) == history
    assert included_at(history, T0 - timedelta(seconds=1)) == {}
    assert included_at(history, T0 + timedelta(days=3) - timedelta(microseconds=1)) == {"api_calls": 1000}
    assert included_at(history, T0 + timedelta(days=3)) == {"api_calls": 1500, "usage_fee": 10}
    assert entitlements.history(entitlements.as_json(history)) == history
    assert with_change((), {}, T0) == ()


@pytest.mark.parametrize("bad", [{"api_calls": "1.5"}, {"api_calls": True}, {"api_calls": -1}, {"": 3},
                                 {"api_calls": 10**16}], ids=["fraction", "boolean", "negative", "no-name", "huge"])
def test_included_quantities_refuse_what_is_not_whole_units(bad: dict) -> None:
    """An included quantity is a whole number of units in range, and the error names it."""
    with pytest.raises(InvalidEntitlement) as caught:
        included_quantities(bad)
    assert caught.value.field.startswith("entitlements")


def test_the_normalized_webhook_carries_entitlements_and_names_a_bad_one() -> None:
    """``data.entitlements`` of a contract event are whole units per dimension; a bad one is a 400 naming it."""
    body = (b'{"id":"e1","type":"contract.created","occurred_at":"2026-11-02T00:00:00Z","data":{"contract_id":"c",'
            b'"marketplace":"aws","entitlements":{"api_calls":1000,"usage_fee":"20"}}}')
    assert parse_normalized(body)[1].entitlements == {"api_calls": 1000, "usage_fee": 20}
    with pytest.raises(MalformedEvent) as caught:
        parse_normalized(body.replace(b'"20"', b'"x"'))
    assert caught.value.field == "data.entitlements" and "usage_fee" in str(caught.value)


# --- the property: reported overage from scratch -------------------------------------------------------

runs = st.lists(st.one_of(
    # (kind, dimension, cost added in 10^-4 dollars)
    st.tuples(st.just("use"), st.integers(0, 1), st.integers(0, 9000)),
    # (kind, included api_calls, included usage_fee, minutes from the clock it takes effect)
    st.tuples(st.just("entitle"), st.integers(0, 3000), st.integers(0, 300), st.integers(-90, 90)),
    st.tuples(st.just("run"), st.booleans()),
), min_size=1, max_size=30)

PRICES = {"api_calls": D("0.001"), "usage_fee": D("0.01")}


def test_reported_overage_equals_the_overage_from_scratch(engine: Engine) -> None:
    """Over random usage and entitlement changes, the units reported per dimension are the largest
    overage any run measured, max(0, units of the cumulative cost - units included then), and every
    run's owed units are exactly that run's overage; the final run's closing rounding included."""
    counter = iter(range(10**6))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
    @given(history=runs)
    def check(history: list[tuple]) -> None:
        contract_id = f"ctr_cons{next(counter)}"
        cost = {name: D(0) for name in PRICES}
        snapshots: tuple[Entitlement, ...] = ()
        clock, stamp = T0 + timedelta(hours=5), T0
        most = {name: 0 for name in PRICES}
        for step in [*history, ("run", True)]:
            if step[0] == "use":
                name = sorted(PRICES)[step[1]]
                cost[name] += D(step[2]) / 10000
            elif step[0] == "entitle":
                snapshots = with_change(snapshots, {"api_calls": step[1], "usage_fee": step[2]},
                                        clock + timedelta(minutes=step[3]))
            else:
                final = step[1]
                clock += timedelta(hours=1)
                stamp += timedelta(hours=1)
                free = included_at(snapshots, clock)
                due = Due(contract_id=contract_id, marketplace="azure", product="p", close_rounding="ceil",
                          period_start=T0, parts=tuple(Part(name, PRICES[name], cost[name], included=free.get(name, 0))
                                                       for name in sorted(PRICES)))
                ledger.record(engine, [due], stamp, now=clock, kind="final" if final else "hourly", final=final)
                with Session(engine) as session:
                    owed = {r.dimension: r.last_units_total for r in session.execute(select(DimensionSyncRow).where(
                        DimensionSyncRow.contract_id == contract_id)).scalars()}
                for name in PRICES:
                    expected = overage(units_for(cost[name], PRICES[name], "ceil" if final else "floor"),
                                       free.get(name, 0))
                    assert owed[name] == expected, (name, step)
                    most[name] = max(most[name], expected)
        with Session(engine) as session:
            sent: dict[str, int] = {}
            for row in session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract_id)).scalars():
                sent[row.dimension] = sent.get(row.dimension, 0) + row.quantity
        assert {name: sent.get(name, 0) for name in PRICES} == most

    check()
