"""Contracts with consumption end to end, on each marketplace: its emulator serves what the
contract includes per dimension (AWS GetEntitlements, Azure listAvailablePlans, Google's
commitments), the lifecycle hooks read it through the real SDK clients on created and on a
change, and the hourly reports and the final flush send only the overage, exact per dimension.

A two-dimension listing (``api_calls`` at 0.001, ``usage_fee`` at 0.01; sync_support's plan):
the contract includes 5 api_calls and 100 usage_fee per period, and from 100 minutes in only
1 api_call (an entitlement change that counts from its instant)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlmodel import Session

from marketplaces import rules
from tests.worker.sync_support import TWO_DIMENSIONS, SyncEnv, ingest, mark_canceled, start_of_test_window
# The environment of each marketplace (emulator, adapter, two-price plan), SQLite then PostgreSQL.
from tests.worker.test_dimensions import env  # noqa: F401
from worker import cancellation, hourly, lifecycle
from worker.billing_gateway import CoreBillingGateway
from worker.contract_events import ContractEvent
from worker.contracts import apply_event, contract_as_dict
from worker.persistence.contracts import ContractRow, ListingRow

_ACTION = {"aws": "subscribe-success", "azure": "Subscribe", "gcp": "ENTITLEMENT_ACTIVE"}


def _contract_key(env: SyncEnv, ids: dict[str, str]) -> str:
    """The key the emulator knows the contract by (license id, SaaS subscription id, entitlement id)."""
    if env.marketplace == "aws":
        return ids["license_arn"].rsplit("/", 1)[-1]
    return ids["azure_subscription_id"] if env.marketplace == "azure" else ids["gcp_entitlement_id"]


def _event(env: SyncEnv, kind: str, ids: dict[str, str], at: datetime) -> ContractEvent:
    ids = dict(ids)
    if env.marketplace == "azure":
        ids["subscription_id"] = ids["azure_subscription_id"]
    if env.marketplace == "aws":
        ids.pop("customer_identifier", None)  # a current (non-legacy) purchase: account + license
    return ContractEvent(kind=kind, source=env.marketplace, contract_key=rules(env.marketplace).contract_key(ids)
                         or _contract_key(env, ids), marketplace=env.marketplace, occurred_at=at, effective_at=at,
                         identifiers=ids, action=_ACTION[env.marketplace] if kind == "created" else "")


def _apply(env: SyncEnv, event: ContractEvent, *, listing: bool = False) -> str:
    """Run the marketplace's lifecycle hook (its reads through the SDK), then apply the event."""
    runtime = SimpleNamespace(engine=env.engine, adapter=lambda marketplace: env.adapter)
    event = lifecycle.before_apply(runtime, event)
    if listing:
        product = next(event.identifiers[f] for f in rules(env.marketplace).product_fields if event.identifiers.get(f))
        now = datetime.now(UTC)
        with Session(env.engine) as session:
            session.add(ListingRow(id=f"lst_cons_{env.marketplace}_{product[-12:]}", marketplace=env.marketplace,
                                   product_id=product, plan_id=event.plan or "", billing_plan_id="plan_dims",
                                   dimension="api_calls", unit_price="0.001", dimensions=TWO_DIMENSIONS,
                                   close_rounding="ceil", created_at=now, updated_at=now))
            session.commit()
    applied = apply_event(env.engine, event, CoreBillingGateway(env.engine), now=datetime.now(UTC))
    assert applied.contract_id, applied
    return applied.contract_id


def _calls(env: SyncEnv, customer: str, at: datetime, *tokens: int) -> None:
    for n, amount in enumerate(tokens):
        ingest(env.engine, customer, amount, at + timedelta(seconds=n))


def test_only_the_overage_is_reported_exact_per_dimension(env: SyncEnv) -> None:
    """Included units are drawn down first, a lowered entitlement counts from its instant, the final
    flush rounds each dimension's overage: the emulator holds exactly max(0, units - included)."""
    start = start_of_test_window()
    ids = env.new_identifiers("prod-consumption", ["api_calls", "usage_fee"])
    key = _contract_key(env, ids)
    env.control("POST", "included", {"contract": key, "included": {"api_calls": 5, "usage_fee": 100}})
    contract = _apply(env, _event(env, "created", ids, start), listing=True)
    with Session(env.engine) as session:
        row = session.get(ContractRow, contract)
        assert row.mapping_status == "mapped", row.mapping_reason
        customer = row.customer_id
        shown = contract_as_dict(row)["entitlements"]
    assert [e["included"] for e in shown] == [{"api_calls": 5, "usage_fee": 100}]

    # Hour 0: 3 calls (2 api_calls, all included), 1245 tokens (124 usage_fee: 24 above the 100).
    _calls(env, customer, start + timedelta(minutes=5), 1234, 1, 10)
    first = hourly.report_contract(env.engine, env.adapter, contract, start, now=start + timedelta(minutes=59))
    assert first["dimensions"] == {"usage_fee": 24}, first

    # From minute 100 the contract includes 1 api_call (the marketplace changed it; the change is read).
    env.control("POST", "included", {"contract": key, "included": {"api_calls": 1, "usage_fee": 100}})
    _apply(env, _event(env, "modified", ids, start + timedelta(minutes=100)))
    # Hour 1: 5 calls (3 api_calls: 2 above 1), 1250 tokens (125: one more above 100).
    _calls(env, customer, start + timedelta(minutes=65), 4, 1)
    second = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1),
                                    now=start + timedelta(minutes=119))
    assert second["dimensions"] == {"api_calls": 2, "usage_fee": 1}, second
    # Hour 2: 14 calls (9 api_calls: 8 above 1, 6 more).
    _calls(env, customer, start + timedelta(minutes=125), *[0] * 9)
    third = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=2),
                                   now=start + timedelta(minutes=179))
    assert third["dimensions"] == {"api_calls": 6}, third

    # The final flush (ceil): 15 calls = 0.0105 -> 11 api_calls, 10 above; 1251 tokens -> 126, 26 above.
    _calls(env, customer, start + timedelta(minutes=150), 1)
    now = datetime.now(UTC)
    mark_canceled(env.engine, contract, now)
    final = cancellation.flush(env.engine, env.adapter, contract, now=now, final=True)
    assert final["dimensions"] == {"api_calls": 2, "usage_fee": 1} and final["closed"] is True, final
    assert env.totals_by_dimension() == {"api_calls": 10, "usage_fee": 26}

    # The emulator's check: against what the buyer consumed, nothing reported dips into the included units.
    env.control("POST", "included", {"contract": key, "consumed": {"api_calls": 11, "usage_fee": 126}})
    [view] = env.control("GET", "included")["included"]
    assert view["reported"] == {"api_calls": 10, "usage_fee": 26} and view["flags"] == [], view
    # Had the buyer used 120 usage_fee, 26 would bill 6 of the included 100: flagged.
    env.control("POST", "included", {"contract": key, "consumed": {"usage_fee": 120}})
    [view] = env.control("GET", "included")["included"]
    assert [(f["dimension"], f["reported"], f["overage"]) for f in view["flags"]] == [("usage_fee", 26, 20)]


def test_the_control_api_names_a_bad_entitlement(env: SyncEnv) -> None:
    """Setting what an unknown contract includes, or a fractional quantity, is a 400 naming it."""
    import requests

    answer = requests.post(f"{env.server.url}/_emulator/included", json={"contract": "nope", "included": {"a": 1}},
                           timeout=10)
    assert answer.status_code == 400 and "nope" in answer.json()["error"]
    ids = env.new_identifiers("prod-consumption", ["api_calls"])
    answer = requests.post(f"{env.server.url}/_emulator/included",
                           json={"contract": _contract_key(env, ids), "included": {"api_calls": "1.5"}}, timeout=10)
    assert answer.status_code == 400 and "included.api_calls" in answer.json()["error"]


def _batch(env: SyncEnv, customer: str, at: datetime, calls: int, tokens: int) -> None:
    """Store ``calls`` api_call events carrying ``tokens`` tokens in all, in one ingest."""
    from billing_core import SqlEventStore
    from billing_core.events import ingest_events

    events = [{"idempotency_key": f"readme-{customer}-{at.isoformat()}-{n}", "customer_id": customer,
               "event_name": "api_call", "timestamp": (at + timedelta(milliseconds=n)).isoformat(),
               "properties": {"tokens": tokens if n == 0 else 0}} for n in range(calls)]
    for chunk in range(0, len(events), 500):  # ingest's batch limit
        with Session(env.engine) as session:
            ingest_events(SqlEventStore(session), events[chunk:chunk + 500], now=datetime.now(UTC))
            session.commit()


@pytest.mark.parametrize("env", ["aws"], indirect=True)
def test_the_readme_worked_example(env: SyncEnv) -> None:
    """README "Contracts with consumption": 1,000 api_calls included; the table's rows, the dry
    run's line and AWS's totals (401 api_calls, 100 usage_fee) are what the code does."""
    start = start_of_test_window()
    ids = env.new_identifiers("prod-api", ["api_calls", "usage_fee"])
    env.control("POST", "included", {"contract": _contract_key(env, ids), "included": {"api_calls": 1000}})
    contract = _apply(env, _event(env, "created", ids, start), listing=True)
    with Session(env.engine) as session:
        customer = session.get(ContractRow, contract).customer_id
    _batch(env, customer, start + timedelta(minutes=1), 1000, 500)
    first = hourly.report_contract(env.engine, env.adapter, contract, start, now=start + timedelta(minutes=59))
    assert first["dimensions"] == {"usage_fee": 50}, first
    _batch(env, customer, start + timedelta(minutes=61), 500, 0)
    line = next(d for d in hourly.preview(env.engine, contract, start + timedelta(hours=1),
                                          now=start + timedelta(minutes=119))["dimensions"] if d["dimension"] == "api_calls")
    assert (f"  {line['dimension']}  cost {line['cost']}  at {line['unit_price']}  included {line['included']}"
            f"  units {line['units_total']}  reported {line['units_reported']}  would send {line['would_send']}"
            ) == "  api_calls  cost 1.0500  at 0.001  included 1000  units 50  reported 0  would send 50", line
    second = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1),
                                    now=start + timedelta(minutes=119))
    assert second["dimensions"] == {"api_calls": 50}, second
    _batch(env, customer, start + timedelta(minutes=121), 501, 500)
    third = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=2),
                                   now=start + timedelta(minutes=179))
    assert third["dimensions"] == {"api_calls": 350, "usage_fee": 50}, third
    now = datetime.now(UTC)
    mark_canceled(env.engine, contract, now)
    final = cancellation.flush(env.engine, env.adapter, contract, now=now, final=True)
    assert final["dimensions"] == {"api_calls": 1}, final
    assert env.totals_by_dimension() == {"api_calls": 401, "usage_fee": 100}
