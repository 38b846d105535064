"""Duplicate and reordered contract webhooks at volume, processed by the real workers."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import select
from sqlmodel import Session

from tests.conftest import TEST_WEBHOOK_SECRET, LiveServer
from tests.faults.harness import wait_quiet
from worker.persistence.contracts import ContractRow, InboxRow, ListingRow
from worker.standard_webhooks import signed_headers

CONTRACTS = 40


def _event(kind: str, n: int, at: datetime) -> dict:
    account = f"{n:012d}"
    pricing = {"currency": "USD", "dimensions": [{"name": "usage_cost",
                                                  "unit_price": "0.02" if kind != "created" else "0.01"}]}
    return {"id": f"evt_{kind}_{n}", "type": f"contract.{kind}", "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "data": {"contract_id": f"ctr_wh{n}", "marketplace": "aws",
                     "cloud_identifiers": {"product_code": "prod-faults", "customer_aws_account_id": account,
                                           "license_arn": f"arn:aws:license-manager::{account}:license:l-{n}"},
                     "buyer": {"name": f"Buyer {n}", "email": f"b{n}@example.test"},
                     "pricing": pricing, "previous_pricing": None, "effective_at": at.isoformat().replace("+00:00", "Z")}}


@pytest.mark.contracts_per_marketplace(0)
def test_duplicate_and_reordered_deliveries_converge(bed) -> None:  # type: ignore[no-untyped-def]
    """Every event of 40 contracts (created, modified, a third canceled) delivered 3x in shuffled order,
    concurrently, to a live server: one contract each, in its final state; no delivery lost."""
    from webhooks import create_app

    now = datetime.now(UTC)
    with Session(bed.engine) as session:
        session.add(ListingRow(id="lst_faults", marketplace="aws", product_id="prod-faults", billing_plan_id="plan_sync",
                               dimension="usage_cost", unit_price="0.01", created_at=now, updated_at=now))
        session.commit()
    t0 = now - timedelta(minutes=30)
    events = []
    for n in range(CONTRACTS):
        events.append(_event("created", n, t0))
        events.append(_event("modified", n, t0 + timedelta(minutes=1)))
        if n % 3 == 0:
            events.append(_event("canceled", n, t0 + timedelta(minutes=2)))
    deliveries = [e for e in events for _ in range(3)]
    random.Random(bed.seed).shuffle(deliveries)
    app = create_app(bed.runtime.settings)
    server = LiveServer(app)
    try:
        def deliver(event: dict) -> int:
            body = json.dumps(event).encode()
            headers = signed_headers(TEST_WEBHOOK_SECRET, f"msg_{event['id']}", int(time.time()), body)
            return requests.post(f"{server.url}/webhooks/contracts", data=body, timeout=30,
                                 headers={**headers, "Content-Type": "application/json"}).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(deliver, deliveries))
    finally:
        server.stop()
        app.extensions["marketsync"].close()
    assert set(codes) == {202}, codes
    from worker import jobs

    wait_quiet(bed.redis, bed.fleet, time.monotonic() + 60)
    bed.runtime.queue("contracts").enqueue(jobs.sweep_inbox)  # the cron's sweeper, once
    wait_quiet(bed.redis, bed.fleet, time.monotonic() + 60)
    with Session(bed.engine) as session:
        contracts = {c.external_id: c for c in session.execute(select(ContractRow)).scalars()}
        inbox = list(session.execute(select(InboxRow)).scalars())
    assert len(inbox) == len(events), "one stored row per delivery id"
    unsettled = [(r.delivery_id, r.status, r.error) for r in inbox if r.status in ("received", "processing", "failed")]
    assert not unsettled, unsettled[:5]
    assert sorted(contracts) == sorted(f"ctr_wh{n}" for n in range(CONTRACTS))
    for n in range(CONTRACTS):
        contract = contracts[f"ctr_wh{n}"]
        expected = ("canceled", "closed") if n % 3 == 0 else ("active",)
        assert contract.status in expected, (n, contract.status)
        assert contract.mapping_status == "mapped" and contract.subscription_id, (n, contract.mapping_status)
        assert contract.pricing["dimensions"][0]["unit_price"] == "0.02", (n, contract.pricing)
    assert len({c.subscription_id for c in contracts.values()}) == CONTRACTS
    outcomes: dict[str, int] = {}
    for row in inbox:
        outcomes[row.status] = outcomes.get(row.status, 0) + 1
    print(f"webhooks: {len(deliveries)} deliveries of {len(events)} events, inbox {outcomes}")
