"""The contract receiver: verify, store before acknowledging, process idempotently, converge."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from tests.conftest import TEST_WEBHOOK_SECRET, burst_worker_class, settle_jobs
from worker import delivery, runtime as runtime_module
from worker.persistence.contracts import ContractRow, InboxRow, ListingRow
from worker.standard_webhooks import signed_headers


class FakeBilling:
    """A billing gateway that records calls (the real one is tested with the billing core)."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, str] = {}
        self.calls: list[tuple[str, Any]] = []

    def ensure_customer(self, *, external_customer_id: str, name: str, email: str, currency: str) -> str:
        return self.customers.setdefault(external_customer_id, f"cus_{len(self.customers) + 1}")

    def create_subscription(self, *, idempotency_key: str, customer_id: str, plan_id: str, start: datetime,
                            external_marketplace: str, reporting_id: str) -> str:
        for sub_id, sub in self.subscriptions.items():
            if sub["key"] == idempotency_key:
                return sub_id
        sub_id = f"sub_{len(self.subscriptions) + 1}"
        self.subscriptions[sub_id] = {"key": idempotency_key, "customer": customer_id, "plan": plan_id,
                                      "start": start, "end": None}
        return sub_id

    def subscription_customer(self, subscription_id: str) -> str | None:
        sub = self.subscriptions.get(subscription_id)
        return sub["customer"] if sub else None

    def end_subscription(self, subscription_id: str, *, at: datetime, now: datetime) -> None:
        self.subscriptions[subscription_id]["end"] = at

    def change_plan(self, subscription_id: str, *, plan_id: str, at: datetime, now: datetime) -> None:
        self.calls.append(("change_plan", (subscription_id, plan_id, at)))


@pytest.fixture
def billing(app, monkeypatch: pytest.MonkeyPatch) -> FakeBilling:  # type: ignore[no-untyped-def]
    """Install a recording billing gateway on the app's runtime."""
    fake = FakeBilling()
    runtime = app.extensions["marketsync"]
    monkeypatch.setattr(runtime, "billing_gateway", lambda: fake)
    runtime_module.install(runtime)
    return fake


def _event(kind: str = "contract.created", contract_id: str = "ctr_123", **data: Any) -> dict[str, Any]:
    body = {
        "contract_id": contract_id, "marketplace": "aws",
        "cloud_identifiers": {"product_code": "prod-abc", "customer_aws_account_id": "123456789012",
                              "license_arn": "arn:aws:license-manager::123456789012:license:l-0a1b"},
        "buyer": {"name": "Acme Corp", "email": "ops@acme.test"},
        "pricing": {"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": "0.01"}]},
        "previous_pricing": None, "effective_at": "2026-11-21T10:00:00Z",
    }
    body.update(data)
    return {"id": f"evt_{kind}_{contract_id}", "type": kind, "occurred_at": "2026-11-21T10:00:00Z", "data": body}


def _post(client, payload: Any, *, delivery_id: str = "msg_1", secret: str = TEST_WEBHOOK_SECRET,
          timestamp: int | None = None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = signed_headers(secret, delivery_id, timestamp or int(time.time()), body)
    headers["Content-Type"] = "application/json"
    return client.post("/webhooks/contracts", data=body, headers=headers)


def _count(engine, model) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()[0]  # type: ignore[call-overload]


def _run_queue(app) -> None:  # type: ignore[no-untyped-def]
    """Process every queued job in this process (a real RQ worker, burst mode)."""
    runtime = app.extensions["marketsync"]
    settle_jobs(runtime, [runtime.queue("urgent"), runtime.queue("contracts")], burst_worker_class())


def _add_listing(engine, product: str = "prod-abc") -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc)
    with Session(engine) as s:
        s.add(ListingRow(id="lst_1", marketplace="aws", product_id=product, billing_plan_id="plan_1",
                         dimension="usage_cost", unit_price="0.01", created_at=now, updated_at=now))
        s.commit()


def test_created_is_stored_then_mapped(app, client, billing) -> None:  # type: ignore[no-untyped-def]
    """A signed contract.created is stored, answered 202, and maps to a subscription when processed."""
    engine = app.extensions["marketsync"].engine
    _add_listing(engine)
    response = _post(client, _event())
    assert response.status_code == 202, response.json
    assert response.json["duplicate"] is False
    _run_queue(app)
    with Session(engine) as s:
        row = s.exec(select(ContractRow)).scalars().one()  # type: ignore[call-overload]
        inbox_row = s.exec(select(InboxRow)).scalars().one()  # type: ignore[call-overload]
    assert row.mapping_status == "mapped" and row.subscription_id == "sub_1"
    assert row.status == "active" and row.license_arn.endswith("l-0a1b")
    assert inbox_row.status == "done" and inbox_row.contract_id == row.id


def test_duplicates_change_nothing(app, client, billing) -> None:  # type: ignore[no-untyped-def]
    """The same delivery three times is acknowledged three times and stored and applied once."""
    engine = app.extensions["marketsync"].engine
    _add_listing(engine)
    answers = [_post(client, _event(), delivery_id="msg_dup") for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json["duplicate"] for a in answers] == [False, True, True]
    _run_queue(app)
    assert _count(engine, InboxRow) == 1
    assert _count(engine, ContractRow) == 1
    assert len(billing.subscriptions) == 1


def test_cancel_before_create_converges(app, client, billing) -> None:  # type: ignore[no-untyped-def]
    """A cancellation delivered before its creation is applied once the contract exists."""
    engine = app.extensions["marketsync"].engine
    _add_listing(engine)
    assert _post(client, _event("contract.canceled", effective_at="2026-11-21T12:00:00Z"), delivery_id="m2").status_code == 202
    _run_queue(app)
    with Session(engine) as s:
        assert s.exec(select(InboxRow)).scalars().one().status == "deferred"  # type: ignore[call-overload]
    assert _post(client, _event(), delivery_id="m1").status_code == 202
    _run_queue(app)
    with Session(engine) as s:
        row = s.exec(select(ContractRow)).scalars().one()  # type: ignore[call-overload]
        statuses = sorted(r.status for r in s.exec(select(InboxRow)).scalars())  # type: ignore[call-overload]
    assert row.status == "canceled"
    assert row.cancel_effective_at.replace(tzinfo=timezone.utc) == datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
    assert billing.subscriptions["sub_1"]["end"] == datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
    assert statuses == ["done", "done"]


def test_unknown_listing_is_unmapped_with_reason(app, client, billing) -> None:  # type: ignore[no-untyped-def]
    """Without a listing the contract is kept, unmapped, with a reason an operator can act on."""
    engine = app.extensions["marketsync"].engine
    _post(client, _event())
    _run_queue(app)
    with Session(engine) as s:
        row = s.exec(select(ContractRow)).scalars().one()  # type: ignore[call-overload]
    assert row.mapping_status == "unmapped"
    assert "no listing for aws product 'prod-abc'" in row.mapping_reason
    assert billing.subscriptions == {}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"raw": b"{not json"}, "body"),
        ({"payload": {"id": "e", "type": "contract.created", "data": {}}}, "occurred_at"),
        ({"payload": _event(marketplace="ibm")}, "data.marketplace"),
        ({"payload": {**_event(), "data": {**_event()["data"], "contract_id": ""}}}, "data.contract_id"),
        ({"payload": _event(pricing={"currency": "USD", "dimensions": [{"name": "d", "unit_price": 0.01}]})},
         "data.pricing.dimensions.0.unit_price"),
        ({"payload": {**_event(), "occurred_at": "2026-11-21T10:00:00"}}, "occurred_at"),
    ],
    ids=["bad-json", "missing-occurred-at", "unknown-marketplace", "empty-contract-id", "float-price", "naive-time"],
)
def test_malformed_is_400_and_stored_nowhere(app, client, billing, kwargs, field) -> None:  # type: ignore[no-untyped-def]
    """A malformed event gets 400 naming the field and nothing is stored."""
    response = _post(client, kwargs.get("payload"), raw=kwargs.get("raw"))
    assert response.status_code == 400, response.json
    assert field in response.json["detail"]
    assert _count(app.extensions["marketsync"].engine, InboxRow) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"secret": "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}, {"timestamp": 1_000_000_000}],
    ids=["wrong-secret", "replayed"],
)
def test_unverified_is_401_and_stored_nowhere(app, client, billing, kwargs) -> None:  # type: ignore[no-untyped-def]
    """A bad signature or a stale timestamp gets 401 and nothing is stored."""
    response = _post(client, _event(), **kwargs)
    assert response.status_code == 401
    assert _count(app.extensions["marketsync"].engine, InboxRow) == 0


def test_unknown_type_is_stored_and_ignored(app, client, billing) -> None:  # type: ignore[no-untyped-def]
    """An unknown event type is acknowledged, stored and marked ignored."""
    response = _post(client, {"id": "e1", "type": "contract.exploded", "occurred_at": "2026-11-21T10:00:00Z", "data": {}})
    assert response.status_code == 202
    assert response.json["status"] == "ignored"


def test_redis_down_still_stores_and_sweeper_recovers(app, client, billing, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With Redis unreachable the delivery is stored and acknowledged; the sweeper enqueues it later."""
    runtime = app.extensions["marketsync"]
    _add_listing(runtime.engine)

    def broken(_name: str):  # type: ignore[no-untyped-def]
        raise ConnectionError("redis down")

    with monkeypatch.context() as m:
        m.setattr(runtime, "queue", broken)
        assert _post(client, _event()).status_code == 202
    assert _count(runtime.engine, InboxRow) == 1
    later = datetime.now(timezone.utc).replace(year=2099)
    assert delivery.sweep(runtime, now=later) == 1
    _run_queue(app)
    with Session(runtime.engine) as s:
        assert s.exec(select(ContractRow)).scalars().one().mapping_status == "mapped"  # type: ignore[call-overload]
