"""Azure SaaS lifecycle end to end: the emulator sends real signed webhooks to a live server.

The emulator's Fulfillment API is what the worker confirms every webhook against, activates
pending subscriptions through, and answers ChangePlan / ChangeQuantity operations on. Billing is
the real core: plans are created with its service functions, and the assertions read the
subscriptions' plan timelines and ends from its database.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
import requests
from sqlalchemy import select
from sqlmodel import Session

from billing_core import service_plans
from billing_core import SqlCustomerRepository
from billing_core.persistence.subscriptions import SqlSubscriptions, SubscriptionRow
from billing_core.subscriptions import Subscription
from tests.billing_core.helpers import unit
from tests.conftest import run_jobs
from tests.marketplaces.azure_support import NOW, AzureSandbox
from worker import delivery
from worker.persistence.contracts import InboxRow

OFFER = "analytics-offer"
T_CHANGE_PLAN = datetime(2026, 11, 21, 12, 15, tzinfo=timezone.utc)
T_CHANGE_QUANTITY = datetime(2026, 11, 21, 13, 0, tzinfo=timezone.utc)
T_CANCEL = datetime(2026, 11, 21, 14, 40, tzinfo=timezone.utc)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def sandbox() -> Iterator[AzureSandbox]:
    """Run an Azure emulator on a loopback port (its clock fixed at NOW)."""
    box = AzureSandbox()
    yield box
    box.close()


@pytest.fixture
def app(settings, redis_conn, sandbox):  # type: ignore[no-untyped-def]
    """Build the web app with its sandbox Azure adapter pointed at this test's emulator."""
    from webhooks import create_app

    azure_settings = settings.model_copy(
        update={"AZURE_EMULATOR_PORT": sandbox.server.port, "EMULATOR_HOST": "127.0.0.1"})
    application = create_app(azure_settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["marketsync"].close()


@pytest.fixture
def billing_plans(app) -> None:  # type: ignore[no-untyped-def]
    """Create the billing plans the listings point at, through the billing core's service functions."""
    engine = app.extensions["marketsync"].engine
    with Session(engine) as session:
        item = service_plans.create_item(session, name="Usage", now=NOW, new_id=lambda prefix: f"{prefix}_usage")
        for plan_id, amount in (("bplan_payg", "0.01"), ("bplan_pro", "0.008"), ("bplan_custom", "0.005")):
            service_plans.create_plan_with_prices(
                session, plan_id=plan_id, name=plan_id, currency="USD", adjustments=(), now=NOW,
                prices=[unit(amount, id=f"{plan_id}_usage", item_id=item.id, metric="usage")])
        session.commit()


@pytest.fixture
def receiver(sandbox, live_server) -> str:  # type: ignore[no-untyped-def]
    """Point the emulator's webhooks at the live server; return the receiver URL."""
    url = f"{live_server.url}/webhooks/azure"
    sandbox.control("POST", "receiver", {"url": url})
    return url


# --- helpers ----------------------------------------------------------------------------------

def _listing(client, auth_headers, plan: str | None, billing_plan_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = {"marketplace": "azure", "product_id": OFFER, "plan_id": plan, "billing_plan_id": billing_plan_id,
            "dimension": "usage_fee", "unit_price": "0.01"}
    response = client.post("/v1/listings", json=body, headers=auth_headers)
    assert response.status_code == 201, response.json
    return response.json


def _contract(client, auth_headers, subscription_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/contracts?azure_subscription_id={subscription_id}", headers=auth_headers)
    assert response.status_code == 200, response.json
    results = response.json["results"]
    assert len(results) == 1, results
    return client.get(f"/v1/contracts/{results[0]['id']}", headers=auth_headers).json


def _billing_subscription(app, subscription_id: str) -> Subscription:  # type: ignore[no-untyped-def]
    with Session(app.extensions["marketsync"].engine) as s:
        return SqlSubscriptions(s).get(subscription_id)


def _plans(subscription: Subscription) -> list[tuple[datetime, str]]:
    """Return the subscription's plan timeline as (from, billing plan) pairs."""
    return [(phase.start, phase.plan_id) for phase in subscription.phases]


def _billing_subscription_count(app) -> int:  # type: ignore[no-untyped-def]
    with Session(app.extensions["marketsync"].engine) as s:
        return len(s.exec(select(SubscriptionRow.id)).all())  # type: ignore[call-overload]


def _inbox(app) -> list[InboxRow]:  # type: ignore[no-untyped-def]
    with Session(app.extensions["marketsync"].engine) as s:
        return list(s.exec(select(InboxRow).order_by(InboxRow.id)).scalars())  # type: ignore[call-overload]


def _subscribe(sandbox: AzureSandbox, **body: Any) -> dict[str, Any]:
    """Create a subscription at the emulator (it sends Subscribe when auto-activated)."""
    body.setdefault("offer_id", OFFER)
    body.setdefault("plans", {"payg": ["usage_fee"], "pro": ["usage_fee"], "enterprise": ["usage_fee"]})
    body.setdefault("email", "admin@fabrikam.example")
    body.setdefault("name", "Fabrikam analytics")
    return sandbox.create_subscription(**body)


def _at(sandbox: AzureSandbox, moment: datetime) -> None:
    sandbox.set_clock(moment)


def _delivered(answer: dict[str, Any]) -> dict[str, Any]:
    webhook = answer["webhook"]
    assert webhook.get("status_code") == 200, webhook
    return webhook


def _operation(sandbox: AzureSandbox, operation_id: str) -> dict[str, Any]:
    return sandbox.control("GET", f"operations/{operation_id}")


def _emulated_subscription(sandbox: AzureSandbox, subscription_id: str) -> dict[str, Any]:
    return sandbox.control("GET", f"subscriptions/{subscription_id}")["subscription"]


def _post_signed(sandbox: AzureSandbox, url: str, payload: dict[str, Any], token: str | None = None) -> requests.Response:
    """POST a webhook the way Microsoft does, with a bearer token the emulator signed."""
    token = token or sandbox.token("webhook")
    return requests.post(url, data=json.dumps(payload), timeout=10,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


# --- the lifecycle ----------------------------------------------------------------------------

def test_full_lifecycle(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """Subscribe maps a subscription; plan and quantity changes are applied and acknowledged; suspend,
    reinstate and unsubscribe move the contract, and the subscription ends at the cancellation time."""
    payg = _listing(client, auth_headers, "payg", "bplan_payg")
    pro = _listing(client, auth_headers, "pro", "bplan_pro")

    created = _subscribe(sandbox, plan_id="payg")
    _delivered(created)
    sub_id = created["subscription"]["id"]
    run_jobs(app)
    contract = _contract(client, auth_headers, sub_id)
    assert contract["status"] == "active"
    assert contract["mapping"]["status"] == "mapped", contract["mapping"]
    assert contract["listing_id"] == payg["id"]
    assert contract["buyer"] == {"name": "Fabrikam analytics", "email": "admin@fabrikam.example"}
    assert contract["cloud_identifiers"]["offer_id"] == OFFER
    assert contract["cloud_identifiers"]["plan_id"] == "payg"
    billing_id = contract["mapping"]["subscription_id"]
    subscription = _billing_subscription(app, billing_id)
    assert _plans(subscription) == [(NOW, "bplan_payg")]
    assert subscription.external_marketplace == "azure" and subscription.end is None
    with Session(app.extensions["marketsync"].engine) as s:
        customer = SqlCustomerRepository(s).get(subscription.customer_id)
    assert (customer.external_customer_id, customer.name, customer.email) == (
        f"azure:{sub_id}", "Fabrikam analytics", "admin@fabrikam.example")

    _at(sandbox, T_CHANGE_PLAN)
    changed = sandbox.control("POST", f"subscriptions/{sub_id}/plan", {"plan_id": "pro"})
    _delivered(changed)
    run_jobs(app)
    assert _plans(_billing_subscription(app, billing_id)) == [(NOW, "bplan_payg"), (T_CHANGE_PLAN, "bplan_pro")]
    contract = _contract(client, auth_headers, sub_id)
    assert contract["listing_id"] == pro["id"] and contract["cloud_identifiers"]["plan_id"] == "pro"
    operation = _operation(sandbox, changed["operation_id"])
    assert operation["acknowledged"] == "Success" and operation["status"] == "Succeeded"

    _at(sandbox, T_CHANGE_QUANTITY)
    resized = sandbox.control("POST", f"subscriptions/{sub_id}/quantity", {"quantity": 5})
    _delivered(resized)
    run_jobs(app)
    assert _operation(sandbox, resized["operation_id"])["acknowledged"] == "Success"
    contract = _contract(client, auth_headers, sub_id)
    assert contract["cloud_identifiers"]["quantity"] == "5"
    assert len(_billing_subscription(app, billing_id).phases) == 2  # a quantity change leaves the plan alone

    _delivered(sandbox.control("POST", f"subscriptions/{sub_id}/suspend"))
    run_jobs(app)
    assert _contract(client, auth_headers, sub_id)["status"] == "suspended"
    _delivered(sandbox.control("POST", f"subscriptions/{sub_id}/reinstate"))
    run_jobs(app)
    assert _contract(client, auth_headers, sub_id)["status"] == "active"

    _at(sandbox, T_CANCEL)
    _delivered(sandbox.control("POST", f"subscriptions/{sub_id}/unsubscribe"))
    run_jobs(app)
    contract = _contract(client, auth_headers, sub_id)
    assert contract["status"] == "canceled"
    assert contract["cancel_effective_at"] == "2026-11-21T14:40:00Z"
    assert _billing_subscription(app, billing_id).end == T_CANCEL
    assert [row.status for row in _inbox(app)] == ["done"] * 6
    assert [item["event_type"] for item in contract["inbox"]] == [
        "Subscribe", "ChangePlan", "ChangeQuantity", "Suspend", "Reinstate", "Unsubscribe"]


def test_a_plan_with_included_quantities_is_read_and_a_plan_change_changes_them(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """Through the webhook: Subscribe reads listAvailablePlans and the contract includes its plan's
    base quantities; ChangePlan to a plan including more adds a snapshot from the change's time."""
    _listing(client, auth_headers, "payg", "bplan_payg")
    _listing(client, auth_headers, "pro", "bplan_pro")
    created = _subscribe(sandbox, plan_id="payg", included={"payg": {"usage_fee": 1000}, "pro": {"usage_fee": 5000}})
    _delivered(created)
    sub_id = created["subscription"]["id"]
    run_jobs(app)
    contract = _contract(client, auth_headers, sub_id)
    assert contract["mapping"]["status"] == "mapped", contract["mapping"]
    assert [(e["included"], e["source"]) for e in contract["entitlements"]] == [({"usage_fee": 1000}, "azure")]
    _at(sandbox, T_CHANGE_PLAN)
    _delivered(sandbox.control("POST", f"subscriptions/{sub_id}/plan", {"plan_id": "pro"}))
    run_jobs(app)
    contract = _contract(client, auth_headers, sub_id)
    assert [e["included"] for e in contract["entitlements"]] == [{"usage_fee": 1000}, {"usage_fee": 5000}]
    assert contract["entitlements"][1]["effective_at"].startswith(T_CHANGE_PLAN.strftime("%Y-%m-%dT%H:%M"))


def test_change_to_a_plan_without_listing_is_refused(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """A ChangePlan to a plan no listing bills is PATCHed Failure: Microsoft and the contract keep the old plan."""
    _listing(client, auth_headers, "payg", "bplan_payg")
    created = _subscribe(sandbox, plan_id="payg")
    sub_id = created["subscription"]["id"]
    run_jobs(app)

    changed = sandbox.control("POST", f"subscriptions/{sub_id}/plan", {"plan_id": "enterprise"})
    _delivered(changed)
    run_jobs(app)
    operation = _operation(sandbox, changed["operation_id"])
    assert operation["acknowledged"] == "Failure" and operation["status"] == "Failed"
    assert _emulated_subscription(sandbox, sub_id)["planId"] == "payg"
    contract = _contract(client, auth_headers, sub_id)
    assert contract["cloud_identifiers"]["plan_id"] == "payg"
    assert contract["mapping"]["status"] == "mapped"
    assert _plans(_billing_subscription(app, contract["mapping"]["subscription_id"])) == [(NOW, "bplan_payg")]


def test_pending_subscription_is_activated_once_mapped(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """A Subscribe for a plan without auto-activation maps the contract, then activates it at Microsoft."""
    _listing(client, auth_headers, None, "bplan_payg")  # any plan of the offer
    created = _subscribe(sandbox, plan_id="payg", auto_activate=False, quantity=3)
    sub_id = created["subscription"]["id"]
    assert created["webhook"] is None  # the emulator notifies auto-activated purchases only
    # The webhook a purchase without auto-activation would bring, signed by the emulator's key.
    payload = {**created["subscription"]}
    webhook = {"id": "5d1e0c6a-8a9b-4c3d-9e2f-1a0b9c8d7e6f", "activityId": "5d1e0c6a-8a9b-4c3d-9e2f-1a0b9c8d7e6f",
               "subscriptionId": sub_id, "publisherId": payload["publisherId"], "offerId": OFFER,
               "planId": "payg", "quantity": 3, "timeStamp": "2026-11-21T11:30:00.0000000Z",
               "action": "Subscribe", "status": "Succeeded", "operationRequestSource": "Azure",
               "subscription": payload}
    assert _post_signed(sandbox, receiver, webhook).status_code == 200
    run_jobs(app)
    contract = _contract(client, auth_headers, sub_id)
    assert contract["mapping"]["status"] == "mapped"
    assert _emulated_subscription(sandbox, sub_id)["saasSubscriptionStatus"] == "Subscribed"


def test_pending_subscription_without_listing_stays_pending(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """A pending subscription whose offer has no listing is left unmapped and is not activated."""
    created = _subscribe(sandbox, plan_id="payg", auto_activate=False)
    sub_id = created["subscription"]["id"]
    webhook = {"id": "6e2f1d7b-9b0c-4d4e-8f3a-2b1c0d9e8f7a", "subscriptionId": sub_id, "offerId": OFFER,
               "planId": "payg", "timeStamp": "2026-11-21T11:30:00Z", "action": "Subscribe", "status": "Succeeded"}
    assert _post_signed(sandbox, receiver, webhook).status_code == 200
    run_jobs(app)
    contract = _contract(client, auth_headers, sub_id)
    assert contract["mapping"]["status"] == "unmapped"
    assert OFFER in contract["mapping"]["reason"]
    assert _emulated_subscription(sandbox, sub_id)["saasSubscriptionStatus"] == "PendingFulfillmentStart"
    assert _billing_subscription_count(app) == 0


# --- delivery guarantees ------------------------------------------------------------------------

def test_redelivered_webhook_is_stored_once(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """The same Subscribe delivered four times (three redeliveries) is stored and applied once."""
    _listing(client, auth_headers, "payg", "bplan_payg")
    created = _subscribe(sandbox, plan_id="payg")
    for _ in range(3):
        again = sandbox.control("POST", f"webhooks/{created['operation_id']}/redeliver")
        assert again["status_code"] == 200
    run_jobs(app)
    rows = _inbox(app)
    assert len(rows) == 1 and rows[0].status == "done"
    assert rows[0].delivery_id == created["operation_id"]
    assert _billing_subscription_count(app) == 1
    assert _contract(client, auth_headers, created["subscription"]["id"])["mapping"]["status"] == "mapped"


def test_unsubscribe_before_subscribe_converges(app, client, auth_headers, sandbox, live_server, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """An Unsubscribe processed before its Subscribe waits, then ends the subscription once it exists."""
    _listing(client, auth_headers, "payg", "bplan_payg")
    created = _subscribe(sandbox, plan_id="payg")  # no receiver yet: nothing delivered
    sub_id = created["subscription"]["id"]
    _at(sandbox, T_CANCEL)
    canceled = sandbox.control("POST", f"subscriptions/{sub_id}/unsubscribe")
    sandbox.control("POST", "receiver", {"url": f"{live_server.url}/webhooks/azure"})

    assert sandbox.control("POST", f"webhooks/{canceled['operation_id']}/redeliver")["status_code"] == 200
    run_jobs(app)
    assert [row.status for row in _inbox(app)] == ["deferred"]
    assert sandbox.control("POST", f"webhooks/{created['operation_id']}/redeliver")["status_code"] == 200
    run_jobs(app)

    assert [row.status for row in _inbox(app)] == ["done", "done"]
    contract = _contract(client, auth_headers, sub_id)
    assert contract["status"] == "canceled" and contract["mapping"]["status"] == "mapped"
    subscription = _billing_subscription(app, contract["mapping"]["subscription_id"])
    assert _plans(subscription) == [(NOW, "bplan_payg")] and subscription.end == T_CANCEL


def test_unknown_listing_then_mapping_by_patch(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """A Subscribe for an offer without listing stays unmapped with a reason until an operator maps it."""
    created = _subscribe(sandbox, plan_id="payg")
    _delivered(created)
    run_jobs(app)
    contract = _contract(client, auth_headers, created["subscription"]["id"])
    assert contract["status"] == "active" and contract["mapping"]["status"] == "unmapped"
    assert f"no listing for azure product '{OFFER}' plan 'payg'" in contract["mapping"]["reason"]
    assert _billing_subscription_count(app) == 0

    billing = app.extensions["marketsync"].billing_gateway()
    customer = billing.ensure_customer(external_customer_id="ops-made", name="Fabrikam", email="", currency="USD")
    sub_id = billing.create_subscription(idempotency_key="by-hand", customer_id=customer, plan_id="bplan_custom",
                                         start=NOW, external_marketplace="azure", reporting_id="by-hand")
    body = {"external_associations": {"billing": {"mapped_object": {"id": sub_id}}}}
    response = client.patch(f"/v1/contracts/{contract['id']}", json=body, headers=auth_headers)
    assert response.status_code == 200, response.json
    assert response.json["mapping"] == {"status": "mapped", "reason": None, "customer_id": customer,
                                        "subscription_id": sub_id}

    _at(sandbox, T_CANCEL)
    _delivered(sandbox.control("POST", f"subscriptions/{created['subscription']['id']}/unsubscribe"))
    run_jobs(app)
    assert _billing_subscription(app, sub_id).end == T_CANCEL


def test_bad_token_is_refused_and_nothing_stored(app, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """Webhooks with a token for another app, an expired token or no token get 401 and are not stored."""
    created = _subscribe(sandbox, plan_id="payg")
    payload = created["webhook"]["payload"]
    assert _inbox(app)[0].delivery_id == created["operation_id"]
    unsubscribe = {**payload, "id": "7f3a2e8c-0c1d-4e5f-9a4b-3c2d1e0f9a8b", "action": "Unsubscribe"}
    for token in (sandbox.token("webhook", aud="another-app"), sandbox.token("webhook", ttl=1, exp=1)):
        response = _post_signed(sandbox, receiver, unsubscribe, token=token)
        assert response.status_code == 401, response.text
    response = requests.post(receiver, json=unsubscribe, timeout=10)
    assert response.status_code == 401
    assert len(_inbox(app)) == 1


def test_transient_api_failure_is_retried(app, client, auth_headers, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """When the Fulfillment API is down the delivery fails (the job retries) and applies once it is back."""
    _listing(client, auth_headers, "payg", "bplan_payg")
    runtime = app.extensions["marketsync"]
    sandbox.set_faults(outage=True)
    created = _subscribe(sandbox, plan_id="payg")
    _delivered(created)
    run_jobs(app)
    [row] = _inbox(app)
    assert row.status == "failed" and "TransientMarketplaceError" in row.error
    assert _billing_subscription_count(app) == 0

    sandbox.set_faults(outage=False)
    assert delivery.process(runtime, row.id, now=datetime.now(timezone.utc)) == "done"
    assert _contract(client, auth_headers, created["subscription"]["id"])["mapping"]["status"] == "mapped"


def test_permanent_api_failure_is_recorded_not_retried(app, sandbox, receiver, billing_plans) -> None:  # type: ignore[no-untyped-def]
    """A webhook whose subscription the Fulfillment API does not know (404) is recorded failed with the reason, and the job ends instead of raising for RQ to retry."""
    created = _subscribe(sandbox, plan_id="payg")
    unknown = "5d7b8f1e-0000-4000-8000-000000000404"
    payload = {**created["webhook"]["payload"], "id": "2b9c7d4e-1f0a-4b3c-8d2e-6f5a4b3c2d1e",
               "subscriptionId": unknown, "subscription": {**created["webhook"]["payload"]["subscription"], "id": unknown}}
    assert _post_signed(sandbox, receiver, payload).status_code == 200
    [row] = [r for r in _inbox(app) if r.delivery_id == payload["id"]]

    outcome = delivery.process(app.extensions["marketsync"], row.id, now=datetime.now(timezone.utc))

    assert outcome == "failed"
    [row] = [r for r in _inbox(app) if r.delivery_id == payload["id"]]
    assert row.status == "failed" and "PermanentMarketplaceError" in row.error and "404" in row.error
