"""A cost carried forward is the cost computed from scratch: random histories of usage, clocks,
timeline and listing edits, with an hourly run (``prepare_many``) after any step, on SQLite and
PostgreSQL. The run's costs (each dimension's ``last_cost``) must equal ``contract_cost`` every
time, whether the run carried them (``worker/cost_memo.py``) or read usage; with entitlement
changes in the history, each dimension's units owed are the overage from scratch."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import Engine, select, update
from sqlmodel import Session

from billing_core import SqlEventStore, SqlSubscriptions, amend_event, deprecate_event
from billing_core.subscriptions import edit_price_intervals
from billing_core.events import ingest_events
from billing_core.pricing import BillingMode
from billing_core.subscriptions import AddPrice
from tests.billing_core.helpers import fixed, unit
from tests.worker.sync_support import setup_billing, setup_two_dimension_billing
from worker import entitlements, hourly
from worker.billing_gateway import CoreBillingGateway
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.cost_memo import CostMemoRow
from worker.metering import overage, units_for
from worker.persistence.ledger import DimensionSyncRow

from .sync_support import TWO_DIMENSIONS

_ids = itertools.count()
START = datetime(2026, 11, 2, tzinfo=UTC)

steps = st.lists(st.one_of(
    # (kind, customer, seconds from the clock (late, current, ahead by up to 5 minutes), tokens, by external id)
    st.tuples(st.just("ingest"), st.integers(0, 1), st.integers(-2 * 86400, 300), st.integers(1, 900),
              st.booleans()),
    st.tuples(st.just("amend"), st.integers(0, 50), st.integers(1, 900)),
    st.tuples(st.just("deprecate"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.one_of(st.integers(1, 5400), st.integers(3600, 30 * 3600))),
    st.tuples(st.just("run")),
    st.tuples(st.just("run")),
    st.tuples(st.just("price_later"), st.integers(0, 1), st.integers(60, 7200)),
    st.tuples(st.just("listing"), st.integers(0, 1)),
    # (kind, contract, included api_calls, included usage_fee, seconds from the clock it takes effect)
    st.tuples(st.just("entitle"), st.integers(0, 1), st.integers(0, 3000), st.integers(0, 50),
              st.integers(-3 * 3600, 3600)),
), max_size=25)


def _world(engine: Engine, clock: datetime) -> dict[str, Any]:
    """Two contracts (one whose customer's events arrive by external id), on a two-dimension
    listing; the second's plan has an in-arrears fixed fee it reports."""
    n = next(_ids)
    gateway = CoreBillingGateway(engine)
    contracts, customers, externals = [], [], []
    with Session(engine) as session:
        for i in range(2):
            external = f"memo{n}:c{i}"
            customer = gateway.ensure_customer(external_customer_id=external, name="C", email="c@example.test",
                                               currency="USD")
            contract_id = f"ctr_memo{n}_{i}"
            sub_id = gateway.create_subscription(idempotency_key=contract_id, customer_id=customer,
                                                 plan_id="plan_dims", start=START, external_marketplace="azure",
                                                 reporting_id=contract_id)
            if i == 1:
                sub = SqlSubscriptions(session).get(sub_id)
                sub = edit_price_intervals(sub, now=START, add=[AddPrice(
                    fixed("30", id=f"fee{n}", key=f"fee{n}", item_id="item_fee", mode=BillingMode.IN_ARREAR), start=START)])
                SqlSubscriptions(session).save(sub, expected_revision=1)
            listing_id = f"lst_memo{n}_{i}"
            session.add(ListingRow(id=listing_id, marketplace="azure", product_id=f"prod-memo-{n}-{i}",
                                   billing_plan_id="plan_dims", dimension="api_calls", unit_price="0.001",
                                   dimensions=TWO_DIMENSIONS, include_fixed_fees=i == 1,
                                   created_at=clock, updated_at=clock))
            session.add(ContractRow(id=contract_id, source="contracts", external_id=contract_id, marketplace="azure",
                                    status="active", listing_id=listing_id, cloud_identifiers={},
                                    mapping_status="mapped", customer_id=customer, subscription_id=sub_id,
                                    started_at=START, created_at=clock, updated_at=clock,
                                    azure_subscription_id=f"az-{n}-{i}", plan_id="payg", offer_id="offer"))
            contracts.append(contract_id)
            customers.append(customer)
            externals.append(external)
        session.commit()
    return {"contracts": contracts, "customers": customers, "externals": externals, "keys": [], "n": n}



def _tokens(engine: Engine, key: str, customer: str, at: datetime, tokens: int, *, now: datetime) -> None:
    """Ingest one api_call event of ``tokens`` for ``customer`` stamped ``at``."""
    with Session(engine) as session:
        ingest_events(SqlEventStore(session), [{"idempotency_key": key, "customer_id": customer, "event_name": "api_call",
                                                "timestamp": at.isoformat(), "properties": {"tokens": tokens}}], now=now)
        session.commit()

def _fresh(engine: Engine, contract_id: str, stamp: datetime, now: datetime) -> dict[str, Decimal]:
    contract, listing, sub = hourly._load(engine, contract_id)
    return hourly.contract_cost(engine, sub, contract, listing, stamp=stamp, now=now)[0]


def _stored(engine: Engine, contract_id: str) -> dict[str, Decimal]:
    with Session(engine) as session:
        return {r.dimension: Decimal(r.last_cost) for r in session.execute(
            select(DimensionSyncRow).where(DimensionSyncRow.contract_id == contract_id)).scalars()}


def test_a_carried_cost_equals_the_cost_computed_from_scratch(any_engine: Engine) -> None:
    setup_two_dimension_billing(any_engine)
    setup_billing(any_engine)
    seen = {"carried": 0, "runs": 0}

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(history=steps)
    def check(history: list[tuple]) -> None:
        carried, runs = _replay(any_engine, history)
        seen["carried"] += carried
        seen["runs"] += runs

    check()
    # Carrying happened often enough for the comparison to mean something.
    assert seen["carried"] >= seen["runs"] // 5, seen


def _replay(engine: Engine, history: list[tuple]) -> tuple[int, int]:
    """Replay ``history`` on a fresh world; after every run compare its costs with from scratch.
    Return (costs carried, contract runs)."""
    clock = START + timedelta(days=2, minutes=7)
    world = _world(engine, clock)
    stamp = START
    carried = runs = 0
    for step in [*history, ("run",), ("advance", 30), ("run",)]:
        kind = step[0]
        if kind == "ingest":
            _, who, offset, tokens, by_external = step
            key = f"memo{world['n']}-{len(world['keys'])}"
            owner = ({"external_customer_id": world["externals"][who]} if by_external
                     else {"customer_id": world["customers"][who]})
            at = max(clock + timedelta(seconds=offset), START)
            with Session(engine) as session:
                ingest_events(SqlEventStore(session), [{"idempotency_key": key, **owner, "event_name": "api_call",
                                                        "timestamp": at.isoformat(), "properties": {"tokens": tokens}}],
                              now=clock)
                session.commit()
            world["keys"].append(key)
        elif kind in ("amend", "deprecate") and world["keys"]:
            key = world["keys"][step[1] % len(world["keys"])]
            with Session(engine) as session:
                try:
                    if kind == "amend":
                        amend_event(SqlEventStore(session), key, {"properties": {"tokens": step[2]}}, now=clock)
                    else:
                        deprecate_event(SqlEventStore(session), key)
                    session.commit()
                except Exception:  # noqa: BLE001 - deprecated already, or past the amendment window
                    session.rollback()
        elif kind == "advance":
            clock += timedelta(seconds=step[1])
        elif kind == "price_later":
            # A price that starts later, set now: the runs before and after its start differ in structure.
            contract_id = world["contracts"][step[1]]
            with Session(engine) as session:
                sub_id = session.get(ContractRow, contract_id).subscription_id
                subs = SqlSubscriptions(session)
                sub = subs.get(sub_id)
                n = len(sub.intervals)
                sub = edit_price_intervals(sub, now=clock, add=[AddPrice(
                    unit("0.002", id=f"late{world['n']}_{n}", key="calls", item_id="item_calls", metric="m_calls",
                         minimum_amount=Decimal("1.5")),  # a cost from its first instant, usage or not
                    start=clock + timedelta(seconds=step[2]))])
                subs.save(sub, expected_revision=len(sub.edits) - 1)
                session.commit()
        elif kind == "listing":
            contract_id = world["contracts"][step[1]]
            with Session(engine) as session:
                listing_id = session.get(ContractRow, contract_id).listing_id
                listing = session.get(ListingRow, listing_id)
                session.execute(update(ListingRow).where(ListingRow.id == listing_id).values(
                    include_fixed_fees=not listing.include_fixed_fees, updated_at=clock))
                session.commit()
        elif kind == "entitle":
            # A contract with consumption's entitlement changed (the contract row's version unchanged:
            # the memo's basis must see the entitlements themselves).
            _, who, calls, fee, offset = step
            contract_id = world["contracts"][who]
            with Session(engine) as session:
                row = session.get(ContractRow, contract_id)
                changed = entitlements.with_change(entitlements.history(row.entitlements),
                                                   {"api_calls": calls, "usage_fee": fee},
                                                   clock + timedelta(seconds=offset))
                session.execute(update(ContractRow).where(ContractRow.id == contract_id).values(
                    entitlements=entitlements.as_json(changed)))
                session.commit()
        elif kind == "run":
            stamp += timedelta(hours=1)
            with Session(engine) as session:
                before = {r.contract_id: r.computed_at for r in session.execute(select(CostMemoRow).where(
                    CostMemoRow.contract_id.in_(world["contracts"]))).scalars()}
            hourly.prepare_many(engine, world["contracts"], stamp, now=clock)
            with Session(engine) as session:
                after = {r.contract_id: r.computed_at for r in session.execute(select(CostMemoRow).where(
                    CostMemoRow.contract_id.in_(world["contracts"]))).scalars()}
            carried += sum(1 for c in world["contracts"] if c in before and after.get(c) == before[c])
            runs += len(world["contracts"])
            for contract_id in world["contracts"]:
                assert _stored(engine, contract_id) == _fresh(engine, contract_id, stamp, clock), (contract_id, step)
                assert _owed(engine, contract_id) == _owed_from_scratch(engine, contract_id, stamp, clock), contract_id
    return carried, runs


def _owed(engine: Engine, contract_id: str) -> dict[str, int]:
    with Session(engine) as session:
        return {r.dimension: r.last_units_total for r in session.execute(
            select(DimensionSyncRow).where(DimensionSyncRow.contract_id == contract_id)).scalars()}


def _owed_from_scratch(engine: Engine, contract_id: str, stamp: datetime, now: datetime) -> dict[str, int]:
    """Each dimension's units above what the contract includes at the end of the usage measured."""
    contract, listing, sub = hourly._load(engine, contract_id)
    end = hourly.cost_window(sub, contract, listing, stamp=stamp, now=now)[1]
    free = entitlements.included_at(entitlements.history(contract.entitlements), end)
    cost = _fresh(engine, contract_id, stamp, now)
    return {d.name: overage(units_for(cost[d.name], d.unit_price), free.get(d.name, 0))
            for d in hourly.dimensions(contract, listing)}


def test_nothing_changed_no_usage_is_read(engine: Engine, monkeypatch: Any) -> None:
    """A second run with nothing new carries every cost and reads no usage at all."""
    setup_two_dimension_billing(engine)
    setup_billing(engine)
    clock = START + timedelta(days=2, minutes=7)
    world = _world(engine, clock)
    _tokens(engine, "once", world["customers"][0], clock - timedelta(hours=1), 5, now=clock)
    contract = world["contracts"][0]
    hourly.prepare_many(engine, [contract], START + timedelta(hours=1), now=clock)

    def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("usage was read")

    monkeypatch.setattr(hourly, "costs_each", lambda requests, source: [] if not requests else no_read())
    later = clock + timedelta(minutes=50)
    hourly.prepare_many(engine, [contract], START + timedelta(hours=2), now=later)
    assert _stored(engine, contract) == _fresh(engine, contract, START + timedelta(hours=2), later)
    # An event stamped ahead of a run's end (ingest accepts up to 5 minutes ahead), stored before
    # that run: the next run's change log shows nothing new, yet it must count the event.
    _tokens(engine, "ahead", world["customers"][0], later + timedelta(minutes=4), 7, now=later)
    monkeypatch.undo()
    hourly.prepare_many(engine, [contract], START + timedelta(hours=3), now=later)
    assert _stored(engine, contract) == _fresh(engine, contract, START + timedelta(hours=3), later)
    after = later + timedelta(minutes=10)
    hourly.prepare_many(engine, [contract], START + timedelta(hours=4), now=after)
    assert _stored(engine, contract) == _fresh(engine, contract, START + timedelta(hours=4), after)
    assert _stored(engine, contract) != _fresh(engine, contract, START + timedelta(hours=4), later)


def test_a_price_starting_between_two_runs_is_not_carried_over(engine: Engine) -> None:
    """A price set earlier to start later (with a minimum: a cost without usage) changes the cost
    when a run's window first reaches it, though no usage and no edit came in between."""
    setup_two_dimension_billing(engine)
    setup_billing(engine)
    clock = START + timedelta(days=2, minutes=7)
    world = _world(engine, clock)
    contract = world["contracts"][0]
    with Session(engine) as session:
        subs = SqlSubscriptions(session)
        sub = subs.get(session.get(ContractRow, contract).subscription_id)
        sub = edit_price_intervals(sub, now=clock, add=[AddPrice(
            unit("0.002", id="later", key="calls", item_id="item_calls", metric="m_calls", minimum_amount=Decimal("1.5")),
            start=clock + timedelta(minutes=30))])
        subs.save(sub, expected_revision=len(sub.edits) - 1)
        session.commit()
    hourly.prepare_many(engine, [contract], START + timedelta(hours=1), now=clock)
    before = _stored(engine, contract)
    later = clock + timedelta(hours=1)
    hourly.prepare_many(engine, [contract], START + timedelta(hours=2), now=later)
    assert _stored(engine, contract) == _fresh(engine, contract, START + timedelta(hours=2), later) != before


def test_verify_recomputes_what_would_be_carried_and_names_a_difference(engine: Engine) -> None:
    """`marketsync verify`'s second half: a stored cost that no longer equals the events is named."""
    setup_two_dimension_billing(engine)
    setup_billing(engine)
    now = datetime.now(UTC)
    world = _world(engine, now)
    _tokens(engine, "v1", world["customers"][0], now - timedelta(minutes=9), 40, now=now)
    hourly.prepare_many(engine, world["contracts"], hourly.hour_floor(now), now=now)
    checked, wrong = hourly.verify_carried(engine, now=now)
    assert checked >= 1 and wrong == []
    with Session(engine) as session:  # a cache gone wrong (as a bug would leave it)
        session.execute(update(CostMemoRow).where(CostMemoRow.contract_id == world["contracts"][0]).values(
            costs='{"api_calls": "0.0007", "usage_fee": "9.99"}'))
        session.commit()
    checked, wrong = hourly.verify_carried(engine, now=now)
    assert len(wrong) == 1 and world["contracts"][0] in wrong[0] and "9.99" in wrong[0]
