"""Usage allocations end to end (docs/marketplaces.md §1.12): a listing naming event properties splits each record
over their combinations — AWS UsageAllocations through boto3 and the AWS emulator, Google userLabels through the
Service Control client and the Google emulator — with each combination's sub-unit remainder kept exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from sqlalchemy import Engine, select
from sqlmodel import Session

from billing_core import SqlEventStore
from billing_core.events import ingest_events
from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import SyncEnv, fresh_env, map_contract, start_of_test_window
from worker import hourly
from worker.metering import UNTAGGED, combination_key, plan_allocations
from worker.persistence.contracts import ListingRow
from worker.persistence.ledger import DimensionSyncRow, LedgerRow

TEAM = [{"tag": "team", "property": "team"}]
_n = iter(range(10**9))


@pytest.fixture
def aws(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    return fresh_env("aws", engine, emulator_servers)


def _allocate(env: SyncEnv, contract: str, entries: list[dict[str, str]]) -> None:
    with Session(env.engine) as session:
        listing = session.get(ListingRow, f"lst_{contract.removeprefix('ctr_')}")
        listing.usage_allocations = entries
        session.add(listing)
        session.commit()


def _use(engine: Engine, customer: str, tokens: int, at: datetime, **properties: str) -> None:
    with Session(engine) as session:
        ingest_events(SqlEventStore(session), [{
            "idempotency_key": f"alloc-{next(_n)}", "customer_id": customer, "event_name": "api_call",
            "timestamp": at.isoformat(), "properties": {"tokens": tokens, **properties},
        }], now=datetime.now(UTC))
        session.commit()


def test_aws_records_carry_allocations_summing_to_the_quantity(aws: SyncEnv) -> None:
    """Three teams' usage (one untagged) over two hours: each record's UsageAllocations sum to its Quantity, each
    team's units are floor(its cost / unit price) to date — its remainder carried exactly — and AWS accepts them."""
    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    _allocate(aws, contract, TEAM)
    # 0.001 per token, units of 0.01: 10 tokens a unit.
    _use(aws.engine, customer, 155, start + timedelta(minutes=5), team="red")     # 15.5 units
    _use(aws.engine, customer, 257, start + timedelta(minutes=6), team="blue")    # 25.7
    _use(aws.engine, customer, 38, start + timedelta(minutes=7))                  # 3.8 untagged
    now = datetime.now(UTC)
    assert hourly.preview(aws.engine, contract, start, now=now)["would_send"] == 43  # the dry run agrees
    first = hourly.prepare(aws.engine, contract, start, now=now)
    assert first.quantity == 15 + 25 + 3  # not floor(45.0): each team keeps its own remainder
    _use(aws.engine, customer, 5, start + timedelta(minutes=65), team="red")      # red: 16.0 in all
    _use(aws.engine, customer, 3, start + timedelta(minutes=66), team="blue")     # blue: 26.0 in all
    assert hourly.preview(aws.engine, contract, start + timedelta(hours=1), now=now)["would_send"] == 2
    second = hourly.prepare(aws.engine, contract, start + timedelta(hours=1), now=now)
    assert second.quantity == 2  # one more unit each for red and blue; untagged still 3.8
    hourly.send_pending(aws.engine, aws.adapter, "aws", now=now)

    records = aws.control("GET", "usage")["records"]
    sent = [(r["quantity"], {tuple(sorted((t["Key"], t["Value"]) for t in a.get("Tags", []))): a["AllocatedUsageQuantity"]
                             for a in r["request"]["UsageAllocations"]}) for r in sorted(records, key=lambda r: r["hour"])]
    assert sent == [(43, {(("team", "red"),): 15, (("team", "blue"),): 25, (): 3}),
                    (2, {(("team", "red"),): 1, (("team", "blue"),): 1})]
    with Session(aws.engine) as session:
        count = session.get(DimensionSyncRow, (contract, "usage_cost"))
        assert count.units_reported == 45
        assert count.allocated == {combination_key([("team", "red")]): 16, combination_key([("team", "blue")]): 26,
                                   UNTAGGED: 3}
        statuses = set(session.execute(select(LedgerRow.status).where(LedgerRow.contract_id == contract)).scalars())
    assert statuses == {"accepted"}
    assert "allocated team=blue: 25, team=red: 15, untagged: 3" in _ledger_cli(aws, contract)


def _ledger_cli(env: SyncEnv, contract: str) -> str:
    """Return what ``marketsync ledger CONTRACT`` prints (the CLI pointed at this test's database)."""
    from click.testing import CliRunner

    from worker.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", str(env.engine.url.render_as_string(hide_password=False)))
        patch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
        answer = CliRunner().invoke(main, ["ledger", contract])
    assert answer.exit_code == 0, answer.output
    return answer.output


def test_a_rejected_allocated_record_uncounts_each_combination(aws: SyncEnv) -> None:
    """A record AWS refuses (a tag value it does not take) is rejected locally; its units leave the counts of each
    combination, so the next record carries them again."""
    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    _allocate(aws, contract, TEAM)
    _use(aws.engine, customer, 100, start + timedelta(minutes=5), team="red")
    _use(aws.engine, customer, 100, start + timedelta(minutes=5), team="bad{value}")
    now = datetime.now(UTC)
    hourly.prepare(aws.engine, contract, start, now=now)
    assert hourly.send_pending(aws.engine, aws.adapter, "aws", now=now) == {"rejected": 1}
    with Session(aws.engine) as session:
        row = session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract)).scalar_one()
        assert "UsageAllocations: tag 'team' value 'bad{value}'" in row.detail
        count = session.get(DimensionSyncRow, (contract, "usage_cost"))
        assert count.units_reported == 0 and set(count.allocated.values()) == {0}


@given(st.lists(st.tuples(st.sampled_from(["[]", '[["t","a"]]', '[["t","b"]]']),
                          st.fractions(min_value=0, max_value=50, max_denominator=1000)), min_size=1, max_size=12))
@hsettings(max_examples=200, deadline=None)
def test_plan_allocations_equals_a_from_scratch_split(steps: list[tuple[str, Fraction]]) -> None:
    """Costs growing hour by hour: the units sent per combination add up to floor(cost / price) of that combination,
    every record's allocations sum to its quantity, and nothing is ever sent negative."""
    price = Decimal("0.25")
    cost: dict[str, Fraction] = {}
    counted: dict[str, int] = {}
    sent: dict[str, int] = {}
    for combo, more in steps:
        cost[combo] = cost.get(combo, Fraction(0)) + more
        plan = plan_allocations(cost, price, counted)
        assert plan.delta == sum(plan.deltas.values()) and all(d > 0 for d in plan.deltas.values())
        for key, units in plan.deltas.items():
            sent[key] = sent.get(key, 0) + units
        counted = plan.reported
    assert sent == {k: int(c / Fraction(price)) for k, c in cost.items() if int(c / Fraction(price))}


@pytest.fixture
def gcp(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    return fresh_env("gcp", engine, emulator_servers)


RESOURCE = "cloudmarketplace.googleapis.com/resource_name"


def test_gcp_reports_one_operation_per_label_set(gcp: SyncEnv) -> None:
    """A Google record split over databases is one checked-then-reported operation per label set (the reserved
    resource_name label), summing to the record's quantity; a resend carries the same operationIds and changes nothing."""
    start = start_of_test_window()
    contract, customer = map_contract(gcp, start=start)
    _allocate(gcp, contract, [{"tag": RESOURCE, "property": "database"}, {"tag": "env", "property": "env"}])
    _use(gcp.engine, customer, 1000, start + timedelta(minutes=5), database="products_db", env="prod")
    _use(gcp.engine, customer, 419, start + timedelta(minutes=6), database="user_profiles_db", env="prod")
    _use(gcp.engine, customer, 90, start + timedelta(minutes=7))
    now = datetime.now(UTC)
    assert hourly.prepare(gcp.engine, contract, start, now=now).quantity == 100 + 41 + 9
    assert hourly.send_pending(gcp.engine, gcp.adapter, "gcp", now=now) == {"accepted": 1}

    usage = gcp.control("GET", "usage")
    labelled = sorted((op["operation"].get("userLabels", {}).get(RESOURCE, ""),
                       int(op["operation"]["metricValueSets"][0]["metricValues"][0]["int64Value"]))
                      for op in usage["operations"])
    assert labelled == [("", 9), ("products_db", 100), ("user_profiles_db", 41)]
    assert [t["quantity"] for t in usage["totals"]] == [150]
    assert len(usage["checks"]) == 1 and usage["checks"][0]["passed"]

    with Session(gcp.engine) as session:
        row = session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract)).scalar_one()
    record = hourly.usage_record(row, _contract(gcp, contract))
    assert gcp.adapter.report([record])[0].status.value == "accepted"  # the same operationIds: stored once
    assert gcp.control("GET", "usage")["totals"][0]["quantity"] == 150


def test_gcp_label_values_google_refuses_reject_the_record_whole(gcp: SyncEnv) -> None:
    """A label value outside Google's syntax (uppercase) rejects the record before any combination is sent."""
    start = start_of_test_window()
    contract, customer = map_contract(gcp, start=start)
    _allocate(gcp, contract, [{"tag": "team", "property": "team"}])
    _use(gcp.engine, customer, 100, start + timedelta(minutes=5), team="red")
    _use(gcp.engine, customer, 100, start + timedelta(minutes=5), team="Blue")
    now = datetime.now(UTC)
    hourly.prepare(gcp.engine, contract, start, now=now)
    assert hourly.send_pending(gcp.engine, gcp.adapter, "gcp", now=now) == {"rejected": 1}
    assert gcp.control("GET", "usage")["operations"] == []


def _contract(env: SyncEnv, contract_id: str) -> Any:
    from worker.persistence.contracts import ContractRow

    with Session(env.engine) as session:
        row = session.get(ContractRow, contract_id)
        session.expunge(row)
        return row


def test_parallel_runs_write_each_combination_once(aws: SyncEnv) -> None:
    """Two runs preparing the same contract and hour at once write one record; each combination's count equals the
    sum of its allocations in the counted ledger rows (recomputed from scratch), hour after hour."""
    import threading

    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    _allocate(aws, contract, TEAM)
    now = datetime.now(UTC)
    for hour in range(3):
        stamp = start + timedelta(hours=hour)
        for team, tokens in (("red", 33 + hour), ("blue", 71), ("", 19)):
            _use(aws.engine, customer, tokens, stamp + timedelta(minutes=10), **({"team": team} if team else {}))
        barrier = threading.Barrier(2)

        def run() -> None:
            barrier.wait()
            hourly.prepare(aws.engine, contract, stamp, now=now)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with Session(aws.engine) as session:
        rows = list(session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract)).scalars())
        count = session.get(DimensionSyncRow, (contract, "usage_cost"))
    assert len(rows) == 3 and all(sum(a["quantity"] for a in r.allocations) == r.quantity for r in rows)
    from_rows: dict[str, int] = {}
    for row in rows:
        for a in row.allocations:
            key = combination_key(tuple(t) for t in a["tags"])
            from_rows[key] = from_rows.get(key, 0) + a["quantity"]
    assert count.allocated == from_rows and count.units_reported == sum(r.quantity for r in rows)
    # red 3.3+3.4+3.5 = 10.2, blue 7.1 x 3 = 21.3, untagged 1.9 x 3 = 5.7 (10 tokens a unit)
    assert from_rows == {combination_key([("team", "red")]): 10, combination_key([("team", "blue")]): 21, UNTAGGED: 5}


def test_the_hourly_fan_out_splits_allocated_listings_and_carries_the_others(aws: SyncEnv) -> None:
    """``prepare_many`` (the hourly job) writes an allocated contract's record split per team next to a plain one's,
    and the next run carries only the plain one's cost forward (the split is read afresh)."""
    start = start_of_test_window()
    split, customer = map_contract(aws, start=start)
    plain, other = map_contract(aws, start=start)
    _allocate(aws, split, TEAM)
    _use(aws.engine, customer, 120, start + timedelta(minutes=5), team="red")
    _use(aws.engine, customer, 80, start + timedelta(minutes=5))
    _use(aws.engine, other, 200, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    out = hourly.prepare_many(aws.engine, [split, plain], start, now=now)
    assert (out[split].quantity, out[plain].quantity) == (20, 20)
    with Session(aws.engine) as session:
        rows = {r.contract_id: r for r in session.execute(select(LedgerRow)).scalars()}
    assert rows[split].allocations == [{"tags": [["team", "red"]], "quantity": 12}, {"tags": [], "quantity": 8}]
    assert rows[plain].allocations is None
    from worker import cost_memo

    carried = cost_memo.reuse(aws.engine, hourly._windows(aws.engine, [split, plain], start + timedelta(hours=1),
                                                           now=now, skipped={}),
                              position=hourly.watermark(aws.engine), until=now)
    assert set(carried) == {plain}


def test_reconciliation_computes_allocated_units_per_combination(aws: SyncEnv) -> None:
    """The month's reconciliation computes an allocated contract's units as the sync does (per team, summed), so a
    fully reported contract shows no discrepancy although floor(total cost / unit price) is higher."""
    from worker import reconcile

    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    _allocate(aws, contract, TEAM)
    _use(aws.engine, customer, 155, start + timedelta(minutes=5), team="red")   # 15.5
    _use(aws.engine, customer, 257, start + timedelta(minutes=5), team="blue")  # 25.7: 41.2 in all, floor 41
    now = datetime.now(UTC)
    assert hourly.prepare(aws.engine, contract, start, now=now).quantity == 40
    hourly.send_pending(aws.engine, aws.adapter, "aws", now=now)
    month = start.strftime("%Y-%m")
    accepted, sources = reconcile.accepted_usage(_Runtime(aws), month, {"aws"})
    result = reconcile.reconcile(aws.engine, month, accepted, now=now, sources=sources)
    lines = [line for line in result.lines if line.contract_id == contract]
    assert lines and not [line for line in lines if line.causes]
    assert [line.computed for line in lines if line.kind == "period"] == [40]


class _Runtime:
    """What ``reconcile.accepted_usage`` reads from a runtime: the engine, settings and the adapter."""

    def __init__(self, env: SyncEnv) -> None:
        self.engine, self.settings, self._env = env.engine, env.settings, env

    def adapter(self, marketplace: str) -> Any:
        return self._env.adapter


@hsettings(max_examples=200, deadline=None)
@given(included=st.integers(min_value=1, max_value=60),
       steps=st.lists(st.dictionaries(st.sampled_from(["a", "b", UNTAGGED]), st.integers(min_value=0, max_value=40),
                                      max_size=3), min_size=1, max_size=6),
       final=st.booleans())
def test_allocated_overage_of_a_contract_with_consumption(included: int, steps: list[dict[str, int]],
                                                         final: bool) -> None:
    """A contract that includes units, on a listing that allocates usage: run after run, the dimension
    reports exactly its overage over every combination (max(0, units − included), from scratch), and
    each record's allocations sum to its quantity."""
    price = Decimal("0.01")
    cost: dict[str, Fraction] = {}
    counted: dict[str, int] = {}
    sent = 0
    for i, grow in enumerate(steps):
        for combo, cents in grow.items():  # usage only grows: each combination's cost never falls
            cost[combo] = cost.get(combo, Fraction(0)) + Fraction(cents, 7)
        last = final and i == len(steps) - 1
        plan = plan_allocations(cost, price, counted, final=last, close_policy="ceil" if last else "floor",
                                included=included)
        assert sum(plan.deltas.values()) == plan.delta and all(n > 0 for n in plan.deltas.values())
        assert plan.over_reported == 0
        sent += plan.delta
        counted = plan.reported
        units = sum(plan_allocations(cost, price, {}, final=last, close_policy="ceil" if last else "floor")
                    .reported.values())
        assert sent == max(units - included, 0) == plan.units_total
        assert sum(counted.values()) == sent
