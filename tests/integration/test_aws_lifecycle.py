"""AWS contract lifecycle end to end: the AWS emulator sends real signed SNS notifications and
EventBridge events to the live server; the worker maps contracts to real billing subscriptions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
import requests
from sqlalchemy import func, select
from sqlmodel import Session

from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.subscriptions import SqlSubscriptions
from config import Settings
from marketplaces.aws import AwsEntitlement
from marketplaces.aws.entitlements import entitlement_state
from marketplaces.emulators.aws import AwsEmulatorClient, create_aws_emulator
from marketplaces.emulators.server import EmulatorServer
from tests.billing_core.helpers import plan_of, unit
from tests.conftest import TEST_API_KEY, run_jobs
from worker.billing_gateway import CoreBillingGateway
from worker.persistence.contracts import ContractRow, InboxRow

PRODUCT = "8ab2c4d6e8f0abcdexample01"
PLAN = "plan_aws_usage"
AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    """Run the AWS Marketplace emulator on a free loopback port (reset before each test)."""
    with EmulatorServer(create_aws_emulator(rate_limit_rps=0)) as server:
        yield server


@pytest.fixture
def settings(settings: Settings, emulator: EmulatorServer) -> Settings:
    """Point the sandbox AWS adapter (GetEntitlements, trusted SNS certificate) at the emulator."""
    return settings.model_copy(update={"MARKETPLACE_MODE": "sandbox", "EMULATOR_HOST": "127.0.0.1",
                                       "AWS_EMULATOR_PORT": emulator.port})


@pytest.fixture
def aws(emulator: EmulatorServer, live_server: Any) -> AwsEmulatorClient:
    """Return the emulator's control client, wired to deliver to the live server's receivers."""
    client = AwsEmulatorClient(emulator.url)
    client.reset()
    client.set_options(public_url=emulator.url)
    client.set_receiver(url=live_server.url + "/webhooks/aws/sns",
                        eventbridge_url=live_server.url + "/webhooks/aws/events", eventbridge_headers=AUTH)
    return client


@pytest.fixture
def engine(app: Any) -> Any:
    """Return the live app's database engine."""
    return app.extensions["marketsync"].engine


@pytest.fixture
def listing(engine: Any, live_server: Any) -> dict[str, Any]:
    """Put a usage plan in the billing core and list the product through POST /v1/listings."""
    with Session(engine) as session:
        SqlCatalog(session).save_plan(plan_of(unit("0.01", id=f"{PLAN}_p", metric="m1"), id=PLAN))
        session.commit()
    answer = requests.post(live_server.url + "/v1/listings", headers=AUTH, timeout=10, json={
        "marketplace": "aws", "product_id": PRODUCT, "billing_plan_id": PLAN,
        "dimension": "usage_fee", "unit_price": "0.01",
    })
    assert answer.status_code == 201, answer.text
    return answer.json()


# --- helpers -------------------------------------------------------------------------------------------

def _contracts(live_server: Any, **filters: str) -> list[dict[str, Any]]:
    answer = requests.get(live_server.url + "/v1/contracts", params=filters, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


def _only_contract(live_server: Any, **filters: str) -> dict[str, Any]:
    found = _contracts(live_server, **filters)
    assert len(found) == 1, found
    return found[0]


def _inbox(engine: Any, source: str | None = None) -> list[InboxRow]:
    query = select(InboxRow).order_by(InboxRow.id)
    if source:
        query = query.where(InboxRow.source == source)
    with Session(engine) as session:
        return list(session.execute(query).scalars().all())


def _count_contracts(engine: Any) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(ContractRow)).scalar_one())


def _subscription(engine: Any, subscription_id: str) -> Any:
    with Session(engine) as session:
        return SqlSubscriptions(session).get(subscription_id)


def _sent(aws: AwsEmulatorClient, action: str) -> dict[str, Any]:
    """Return the emulator's last delivery of an SNS ``action`` (or EventBridge detail-type)."""
    for entry in reversed(aws.notifications()):
        body = json.loads(entry["body"])
        if entry["channel"] == "sns" and json.loads(body["Message"]).get("action") == action:
            return entry
        if entry["channel"] == "eventbridge" and body["detail-type"] == action:
            return entry
    raise AssertionError(f"the emulator sent no {action!r}")


def _sent_at(entry: dict[str, Any]) -> datetime:
    body = json.loads(entry["body"])
    stamp = body.get("Timestamp") or body["time"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _repost(live_server: Any, entry: dict[str, Any], *, body: str | None = None,
            headers: dict[str, str] | None = None) -> requests.Response:
    """Deliver an emulator notification (again) to the receiver it was meant for."""
    path = "/webhooks/aws/sns" if entry["channel"] == "sns" else "/webhooks/aws/events"
    if headers is None:  # the emulator shows the Authorization it sent as "***": add the real one back
        headers = {**entry["headers"], **(AUTH if entry["channel"] == "eventbridge" else {})}
    return requests.post(live_server.url + path, data=(body or entry["body"]).encode(), headers=headers, timeout=10)


def _aware(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _signed_sns(aws: AwsEmulatorClient, message: dict[str, Any], topic: str = "subscription") -> tuple[str, dict[str, str]]:
    """Return a Notification envelope carrying ``message``, signed by the emulator's SNS key."""
    import uuid

    envelope = {
        "Type": "Notification", "MessageId": str(uuid.uuid4()),
        "TopicArn": f"arn:aws:sns:us-east-1:287250355862:aws-mp-{topic}-notification-{PRODUCT}",
        "Message": json.dumps(message), "Timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    signed = aws.sign(envelope)
    return json.dumps(signed), {"x-amz-sns-message-type": "Notification", "Content-Type": "text/plain; charset=UTF-8"}


# --- tests -------------------------------------------------------------------------------------------

def test_full_lifecycle_over_sns(app: Any, aws: AwsEmulatorClient, live_server: Any, engine: Any,
                                 listing: dict[str, Any]) -> None:
    """subscribe-success maps a real subscription; entitlement-updated reads GetEntitlements;
    unsubscribe-pending ends the subscription at its time; unsubscribe-success changes nothing."""
    customer = aws.create_customer(product_code=PRODUCT, entitlements={"users": 10}, notify="sns")
    assert [n["status"] for n in customer["notifications"]] == [202]
    assert [r.status for r in _inbox(engine)] == ["received"]
    run_jobs(app)

    ids = customer["identifiers"]
    contract = _only_contract(live_server, license_arn=ids["license_arn"])
    assert contract["external_id"] == customer["id"]  # the license id l-<hex>
    assert contract["status"] == "active" and contract["listing_id"] == listing["id"]
    assert contract["mapping"]["status"] == "mapped"
    for name in ("product_code", "customer_aws_account_id", "license_arn", "customer_identifier"):
        assert contract["cloud_identifiers"][name] == ids[name]  # what BatchMeterUsage needs later
    subscription = _subscription(engine, contract["mapping"]["subscription_id"])
    assert subscription.end is None and subscription.external_marketplace == "aws"

    aws.update_entitlements(customer["id"], entitlements={"users": 25}, notify="sns")
    run_jobs(app)
    contract = _only_contract(live_server, license_arn=ids["license_arn"])
    assert contract["cloud_identifiers"]["quantity"] == "25"
    assert json.loads(contract["cloud_identifiers"]["entitlements"]) == {"users": 25}
    assert contract["status"] == "active"

    aws.cancel(customer["id"], notify="sns")
    pending_at = _sent_at(_sent(aws, "unsubscribe-pending"))
    run_jobs(app)
    contract = _only_contract(live_server, license_arn=ids["license_arn"])
    assert contract["status"] == "canceled"
    assert _aware(contract["cancel_effective_at"]) == pending_at
    assert _aware(_subscription(engine, contract["mapping"]["subscription_id"]).end) == pending_at

    # The final-usage window closes an hour later: unsubscribe-success arrives and changes nothing.
    moved = aws.set_clock(datetime.now(timezone.utc) + timedelta(hours=2))
    assert [n["status"] for n in moved["notifications"]] == [202]
    run_jobs(app)
    after = _only_contract(live_server, license_arn=ids["license_arn"])
    assert after["status"] == "canceled" and after["cancel_effective_at"] == contract["cancel_effective_at"]
    assert _aware(_subscription(engine, contract["mapping"]["subscription_id"]).end) == pending_at
    assert [r.status for r in _inbox(engine)] == ["done"] * 4
    assert _count_contracts(engine) == 1


def test_a_contract_with_pay_as_you_go_shows_what_it_includes(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                              engine: Any, listing: dict[str, Any]) -> None:
    """Through the receivers: subscribe-success reads GetEntitlements, and the contract includes its
    integer entitlement of the metered dimension; entitlement-updated adds a snapshot from its time."""
    customer = aws.create_customer(product_code=PRODUCT, dimensions=["usage_fee"], notify="sns",
                                   entitlements={"usage_fee": 1000, "tier": "gold", "sso": True})
    run_jobs(app)
    ids = customer["identifiers"]
    contract = _only_contract(live_server, license_arn=ids["license_arn"])
    assert contract["mapping"]["status"] == "mapped"
    assert [(e["included"], e["source"]) for e in contract["entitlements"]] == [({"usage_fee": 1000}, "aws")]
    aws.update_entitlements(customer["id"], entitlements={"usage_fee": 1500, "tier": "gold", "sso": True},
                            notify="sns")
    updated_at = _sent_at(_sent(aws, "entitlement-updated"))
    run_jobs(app)
    contract = _only_contract(live_server, license_arn=ids["license_arn"])
    assert [e["included"] for e in contract["entitlements"]] == [{"usage_fee": 1000}, {"usage_fee": 1500}]
    assert _aware(contract["entitlements"][1]["effective_at"]) == updated_at


def test_sns_and_eventbridge_land_on_one_contract(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                  engine: Any, listing: dict[str, Any]) -> None:
    """Both feeds of one purchase reach one contract; the first cancellation wins, the rest are no-ops."""
    customer = aws.create_customer(product_code=PRODUCT, entitlements={"users": 5}, notify="both")
    assert [n["status"] for n in customer["notifications"]] == [202, 202, 202]
    run_jobs(app)
    assert _count_contracts(engine) == 1
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["mapping"]["status"] == "mapped"
    assert contract["cloud_identifiers"]["agreement_id"].startswith("agmt-")

    # Legacy SNS naming only the customer identifier: GetEntitlements finds the license.
    body, headers = _signed_sns(aws, {"action": "entitlement-updated", "product-code": PRODUCT,
                                      "customer-identifier": customer["identifiers"]["customer_identifier"]},
                                topic="entitlement")
    aws.update_entitlements(customer["id"], entitlements={"users": 7}, notify="none")
    assert requests.post(live_server.url + "/webhooks/aws/sns", data=body, headers=headers, timeout=10).status_code == 202
    run_jobs(app)
    assert _count_contracts(engine) == 1
    assert _only_contract(live_server, external_id=customer["id"])["cloud_identifiers"]["quantity"] == "7"

    aws.cancel(customer["id"], notify="both")
    first_at = _sent_at(_sent(aws, "unsubscribe-pending"))
    run_jobs(app)
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["status"] == "canceled" and _aware(contract["cancel_effective_at"]) == first_at
    assert _aware(_subscription(engine, contract["mapping"]["subscription_id"]).end) == first_at
    assert _count_contracts(engine) == 1
    # Purchase Agreement Ended names only the agreement and still reached this contract.
    ended = [r for r in _inbox(engine, "aws_events") if r.event_type.startswith("Purchase Agreement Ended")]
    assert [(r.status, r.contract_id) for r in ended] == [("done", contract["id"])]


@pytest.mark.parametrize("first", ["Purchase Agreement Ended - Proposer", "License Deprovisioned - Manufacturer"])
def test_eventbridge_cancellation_alone(app: Any, aws: AwsEmulatorClient, live_server: Any, engine: Any,
                                        listing: dict[str, Any], first: str) -> None:
    """Without SNS, whichever EventBridge cancellation is applied first cancels at its own time."""
    aws.set_receiver(url=None, eventbridge_url=live_server.url + "/webhooks/aws/events", eventbridge_headers=AUTH)
    customer = aws.create_customer(product_code=PRODUCT)
    run_jobs(app)
    aws.set_receiver(url=None, eventbridge_url=None)
    aws.cancel(customer["id"], notify="eventbridge")
    entry = _sent(aws, first)
    assert _repost(live_server, entry).status_code == 202
    run_jobs(app)
    other = _sent(aws, ({"Purchase Agreement Ended - Proposer", "License Deprovisioned - Manufacturer"} - {first}).pop())
    assert _repost(live_server, other).status_code == 202
    run_jobs(app)
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["status"] == "canceled" and _aware(contract["cancel_effective_at"]) == _sent_at(entry)
    assert _aware(_subscription(engine, contract["mapping"]["subscription_id"]).end) == _sent_at(entry)


def test_expired_entitlement_cancels_at_expiration(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                   engine: Any, listing: dict[str, Any]) -> None:
    """entitlement-updated whose GetEntitlements shows an expired entitlement cancels at the expiration date."""
    aws.set_clock(datetime.now(timezone.utc) - timedelta(hours=5))  # subscribed five hours ago
    customer = aws.create_customer(product_code=PRODUCT, entitlements={"users": 3}, notify="sns")
    aws.set_clock(None)
    run_jobs(app)
    expired = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)
    aws.update_entitlements(customer["id"], expiration=expired.isoformat(), notify="sns")
    run_jobs(app)
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["status"] == "canceled" and _aware(contract["cancel_effective_at"]) == expired
    assert _aware(_subscription(engine, contract["mapping"]["subscription_id"]).end) == expired


def test_same_message_three_times_is_stored_once(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                 engine: Any, listing: dict[str, Any]) -> None:
    """The same SNS MessageId delivered three times is stored and applied once."""
    customer = aws.create_customer(product_code=PRODUCT, notify="sns")
    entry = _sent(aws, "subscribe-success")
    again = [_repost(live_server, entry) for _ in range(2)]
    assert [a.status_code for a in again] == [202, 202] and all(a.json()["duplicate"] for a in again)
    assert len(_inbox(engine)) == 1
    run_jobs(app)
    assert _count_contracts(engine) == 1
    assert _only_contract(live_server, external_id=customer["id"])["mapping"]["status"] == "mapped"


def test_cancel_processed_before_create_converges(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                  engine: Any, listing: dict[str, Any]) -> None:
    """unsubscribe-pending applied before subscribe-success waits, then the contract ends canceled."""
    aws.set_receiver(url=None)  # hold the deliveries; the test sends them in the wrong order
    customer = aws.create_customer(product_code=PRODUCT, notify="sns")
    aws.cancel(customer["id"], notify="sns")
    created, canceled = _sent(aws, "subscribe-success"), _sent(aws, "unsubscribe-pending")
    assert _repost(live_server, canceled).status_code == 202
    run_jobs(app)
    assert _count_contracts(engine) == 0 and [r.status for r in _inbox(engine)] == ["deferred"]
    assert _repost(live_server, created).status_code == 202
    run_jobs(app)
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["status"] == "canceled" and contract["mapping"]["status"] == "mapped"
    assert _aware(contract["cancel_effective_at"]) == _sent_at(canceled)
    assert _aware(_subscription(engine, contract["mapping"]["subscription_id"]).end) == _sent_at(canceled)
    assert [r.status for r in _inbox(engine)] == ["done", "done"]


def test_legacy_cancel_before_create_converges(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                               engine: Any, listing: dict[str, Any]) -> None:
    """Legacy messages (customer identifier only) deferred under one key still meet their contract."""
    customer = aws.create_customer(product_code=PRODUCT, entitlements={"users": 1}, notify="none")
    who = {"product-code": PRODUCT, "customer-identifier": customer["identifiers"]["customer_identifier"]}
    cancel_body, headers = _signed_sns(aws, {"action": "unsubscribe-pending", **who})
    create_body, _ = _signed_sns(aws, {"action": "subscribe-success", **who})
    requests.post(live_server.url + "/webhooks/aws/sns", data=cancel_body, headers=headers, timeout=10)
    run_jobs(app)
    requests.post(live_server.url + "/webhooks/aws/sns", data=create_body, headers=headers, timeout=10)
    run_jobs(app)
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["status"] == "canceled" and contract["mapping"]["status"] == "mapped"
    assert contract["cloud_identifiers"]["license_arn"] == customer["identifiers"]["license_arn"]
    assert [r.status for r in _inbox(engine)] == ["done", "done"]


def test_unknown_listing_then_mapping_by_patch(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                               engine: Any) -> None:
    """A contract with no listing is unmapped with a reason; PATCH attaches a subscription, and the
    cancellation then ends it."""
    customer = aws.create_customer(product_code="prod-unlisted", notify="sns")
    run_jobs(app)
    contract = _only_contract(live_server, external_id=customer["id"])
    assert contract["mapping"]["status"] == "unmapped" and "prod-unlisted" in contract["mapping"]["reason"]

    with Session(engine) as session:
        SqlCatalog(session).save_plan(plan_of(unit("0.02", id="manual_p", metric="m1"), id="plan_manual"))
        session.commit()
    gateway = CoreBillingGateway(engine)
    owner = gateway.ensure_customer(external_customer_id="crm:42", name="Acme", email="", currency="USD")
    started = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    subscription_id = gateway.create_subscription(idempotency_key="manual-1", customer_id=owner, plan_id="plan_manual",
                                                  start=started, external_marketplace="aws", reporting_id="manual-1")
    answer = requests.patch(live_server.url + f"/v1/contracts/{contract['id']}", headers=AUTH, timeout=10,
                            json={"external_associations": {"billing": {"mapped_object": {"id": subscription_id}}}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["mapping"]["status"] == "mapped"

    aws.cancel(customer["id"], notify="sns")
    run_jobs(app)
    canceled_at = _sent_at(_sent(aws, "unsubscribe-pending"))
    assert _aware(_subscription(engine, subscription_id).end) == canceled_at


def test_subscribe_fail_is_recorded_and_ignored(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                engine: Any, listing: dict[str, Any]) -> None:
    """subscribe-fail is stored as ignored and creates no contract."""
    body, headers = _signed_sns(aws, {"action": "subscribe-fail", "product-code": PRODUCT,
                                      "customer-identifier": "AbCdEf12345", "isFreeTrialTermPresent": "false"})
    assert requests.post(live_server.url + "/webhooks/aws/sns", data=body, headers=headers, timeout=10).status_code == 202
    run_jobs(app)
    assert [(r.event_type, r.status) for r in _inbox(engine)] == [("subscribe-fail", "ignored")]
    assert _count_contracts(engine) == 0


def test_tampered_signature_is_refused_and_not_stored(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                      engine: Any) -> None:
    """A signed SNS envelope whose message was altered gets 401 and is stored nowhere."""
    aws.set_receiver(url=None)
    aws.create_customer(product_code=PRODUCT, notify="sns")
    entry = _sent(aws, "subscribe-success")
    envelope = json.loads(entry["body"])
    envelope["Message"] = envelope["Message"].replace(PRODUCT, "prod-someone-else")
    answer = _repost(live_server, entry, body=json.dumps(envelope))
    assert answer.status_code == 401, answer.text
    assert _inbox(engine) == []


def test_eventbridge_without_the_key_is_refused(app: Any, aws: AwsEmulatorClient, live_server: Any,
                                                engine: Any) -> None:
    """An EventBridge event without 'Authorization: Bearer <api key>' gets 401 and is stored nowhere."""
    aws.set_receiver(url=None, eventbridge_url=None)
    aws.create_customer(product_code=PRODUCT, notify="eventbridge")
    entry = _sent(aws, "License Updated - Manufacturer")
    for authorization in (None, "Bearer wrong-key", TEST_API_KEY, f"Basic {TEST_API_KEY}"):
        headers = {"Content-Type": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        assert _repost(live_server, entry, headers=headers).status_code == 401, authorization
    assert _inbox(engine) == []
    assert _repost(live_server, entry, headers={"Content-Type": "application/json", **AUTH}).status_code == 202


T = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)


def _row(dimension: str, value: Any, expires: datetime | None = None) -> AwsEntitlement:
    return AwsEntitlement(product_code=PRODUCT, dimension=dimension, value=value, expiration_date=expires)


@pytest.mark.parametrize(("rows", "expected"), [
    pytest.param([], {"values": {}, "expires_at": None, "expired": False, "quantity": None}, id="none"),
    pytest.param([_row("users", 10)], {"values": {"users": 10}, "expires_at": None, "expired": False, "quantity": 10},
                 id="one-dimension"),
    pytest.param([_row("users", 10), _row("admins", 2)],
                 {"values": {"users": 10, "admins": 2}, "expires_at": None, "expired": False, "quantity": None},
                 id="two-dimensions-no-quantity"),
    pytest.param([_row("sso", True)], {"values": {"sso": True}, "expires_at": None, "expired": False, "quantity": None},
                 id="boolean-is-no-quantity"),
    pytest.param([_row("users", 5, T - timedelta(hours=1))],
                 {"values": {"users": 5}, "expires_at": T - timedelta(hours=1), "expired": True, "quantity": 5},
                 id="expired"),
    pytest.param([_row("users", 5, T)], {"values": {"users": 5}, "expires_at": T, "expired": True, "quantity": 5},
                 id="expires-at-the-notification"),
    pytest.param([_row("users", 5, T - timedelta(days=1)), _row("admins", 1, T + timedelta(days=30))],
                 {"values": {"users": 5, "admins": 1}, "expires_at": T + timedelta(days=30), "expired": False,
                  "quantity": None}, id="one-row-still-running"),
    pytest.param([_row("users", 5, T - timedelta(days=1)), _row("admins", 1)],
                 {"values": {"users": 5, "admins": 1}, "expires_at": None, "expired": False, "quantity": None},
                 id="a-row-without-expiration-never-expires"),
])
def test_entitlement_state(rows: list[AwsEntitlement], expected: dict[str, Any]) -> None:
    """GetEntitlements rows summarize to values, latest expiration, expiry at the notification and quantity."""
    assert entitlement_state(rows, at=T) == expected
