"""AWS lifecycle through EventBridge (docs/marketplaces.md §2.9, §2.10): the API destination's shared
secret, strict parsing (a 400 naming the field, nothing stored), one application of a change that
arrives by SNS and by EventBridge, and the final report inside the hour after deprovisioning.

The AWS emulator sends real EventBridge events (and signed SNS envelopes) to a live server; the
worker maps contracts to real billing subscriptions and reports through boto3 to the emulator."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
import requests
from sqlalchemy import select
from sqlmodel import Session

from config import Settings
from marketplaces import rules
from marketplaces.emulators.aws import AwsEmulatorClient, create_aws_emulator
from marketplaces.emulators.server import EmulatorServer
from tests.conftest import TEST_API_KEY, run_jobs
from tests.worker.sync_support import ingest, setup_billing
from worker import cancellation, jobs, queueing
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow, InboxRow
from worker.persistence.ledger import LedgerRow

PRODUCT = "8ab2c4d6e8f0abcdexample01"
SECRET = "eb-shared-secret-0123456789abcdefghij"
EB_AUTH = {"Authorization": f"Bearer {SECRET}"}
API = {"Authorization": f"Bearer {TEST_API_KEY}"}
EVENTS = "/webhooks/aws/events"


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(create_aws_emulator(rate_limit_rps=0)) as server:
        yield server


@pytest.fixture
def settings(settings: Settings, emulator: EmulatorServer) -> Settings:
    """Sandbox AWS against the emulator; EventBridge deliveries carry their own secret."""
    return settings.model_copy(update={"MARKETPLACE_MODE": "sandbox", "EMULATOR_HOST": "127.0.0.1",
                                       "AWS_EMULATOR_PORT": emulator.port, "AWS_EVENTBRIDGE_SECRETS": (SECRET,)})


@pytest.fixture
def engine(app: Any) -> Any:
    return app.extensions["marketsync"].engine


@pytest.fixture
def aws(emulator: EmulatorServer, live_server: Any) -> AwsEmulatorClient:
    """The emulator, sending EventBridge events (with the API destination's header) to the live server."""
    client = AwsEmulatorClient(emulator.url)
    client.reset()
    client.set_options(public_url=emulator.url)
    client.set_receiver(url=live_server.url + "/webhooks/aws/sns", eventbridge_url=live_server.url + EVENTS,
                        eventbridge_headers=EB_AUTH)
    return client


@pytest.fixture
def listing(engine: Any, live_server: Any) -> dict[str, Any]:
    """tokens at 0.001 each (plan_sync), reported in units of 0.01 of the usage_fee dimension."""
    setup_billing(engine)
    answer = requests.post(live_server.url + "/v1/listings", headers=API, timeout=10, json={
        "marketplace": "aws", "product_id": PRODUCT, "billing_plan_id": "plan_sync",
        "dimension": "usage_fee", "unit_price": "0.01"})
    assert answer.status_code == 201, answer.text
    return answer.json()


# --- helpers -------------------------------------------------------------------------------------------

def _contract(engine: Any, external_id: str) -> ContractRow:
    with Session(engine) as session:
        rows = session.execute(select(ContractRow).where(ContractRow.external_id == external_id)).scalars().all()
    assert len(rows) == 1, rows
    return rows[0]


def _inbox(engine: Any) -> list[InboxRow]:
    with Session(engine) as session:
        return list(session.execute(select(InboxRow).order_by(InboxRow.id)).scalars())


def _ledger(engine: Any, contract_id: str) -> list[LedgerRow]:
    with Session(engine) as session:
        return list(session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract_id)
                                    .order_by(LedgerRow.id)).scalars())


def _sent(aws: AwsEmulatorClient, detail_type: str) -> dict[str, Any]:
    for entry in reversed(aws.notifications()):
        body = json.loads(entry["body"])
        if entry["channel"] == "eventbridge" and body["detail-type"] == detail_type:
            return body
    raise AssertionError(f"the emulator sent no {detail_type!r}")


def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _usage_total(aws: AwsEmulatorClient) -> int:
    return sum(int(row["quantity"]) for row in aws.usage()["totals"])


# --- the lifecycle end to end ----------------------------------------------------------------------

def test_lifecycle_through_eventbridge_reports_the_final_usage_inside_the_hour(
        app: Any, aws: AwsEmulatorClient, live_server: Any, engine: Any, listing: dict[str, Any]) -> None:
    """License Updated maps the contract; the hourly run reports; License Deprovisioned cancels it,
    the final flush is planned inside the hour after the deprovisioning and AWS accepts the exact total."""
    now = datetime.now(timezone.utc)
    aws.set_clock(now - timedelta(hours=3))  # subscribed three hours ago
    customer = aws.create_customer(product_code=PRODUCT, notify="eventbridge")
    aws.set_clock(None)
    assert [n["status"] for n in customer["notifications"]] == [202, 202]  # Agreement Created, License Updated
    run_jobs(app)
    contract = _contract(engine, customer["id"])
    assert (contract.status, contract.mapping_status, contract.listing_id) == ("active", "mapped", listing["id"])
    assert contract.license_arn == customer["identifiers"]["license_arn"]
    assert contract.customer_aws_account_id == customer["identifiers"]["customer_aws_account_id"]

    ingest(engine, contract.customer_id, 1500, now - timedelta(hours=3) + timedelta(minutes=5))
    stamp = hour_floor(now) - timedelta(hours=1)
    jobs.run_hourly_sync(stamp.isoformat())
    run_jobs(app)
    assert _usage_total(aws) == 150

    ingest(engine, contract.customer_id, 733, datetime.now(timezone.utc) - timedelta(seconds=30))
    aws.cancel(customer["id"], notify="eventbridge")
    ended = _sent(aws, "Purchase Agreement Ended - Proposer")
    deprovisioned = _sent(aws, "License Deprovisioned - Manufacturer")
    run_jobs(app)  # applies both (the second finds the contract canceled) and runs a flush now, if planned
    contract = _contract(engine, customer["id"])
    assert contract.status in ("canceled", "closed")
    assert _utc(contract.cancel_effective_at) == _time(ended)  # the first cancellation applied
    deadline = cancellation.deadline_for(contract)
    assert deadline == _time(ended) + timedelta(hours=1) <= _time(deprovisioned) + timedelta(hours=1)
    final_at = datetime.fromisoformat(app.extensions["marketsync"].redis.get(
        queueing.FLUSHES_SCHEDULED + contract.id).decode())
    assert final_at <= deadline - rules("aws").final_flush_lead  # planned well inside the hour

    result = jobs.flush_cancellation(contract.id, True)  # the final flush, as the scheduler runs it
    assert _usage_total(aws) == 150 + 73  # exact: floor(0.733 / 0.01) more units, nothing twice
    rows = _ledger(engine, contract.id)
    assert {r.status for r in rows} == {"accepted"}
    assert all(_utc(r.sent_at) < deadline for r in rows)
    if result["outcome"] != "wait":  # no flush ran in this hour before: the final one closed the contract
        assert result["closed"] is True and _contract(engine, customer["id"]).status == "closed"
    assert [r.status for r in _inbox(engine)] == ["ignored", "done", "done", "done"]


def test_one_cancellation_by_sns_and_by_eventbridge_applies_once(
        app: Any, aws: AwsEmulatorClient, live_server: Any, engine: Any, listing: dict[str, Any]) -> None:
    """unsubscribe-pending, Purchase Agreement Ended and License Deprovisioned of one purchase cancel one
    contract once, at the first one's time; its flushes are scheduled once; redeliveries are duplicates."""
    customer = aws.create_customer(product_code=PRODUCT, notify="both")
    run_jobs(app)
    aws.cancel(customer["id"], notify="both")
    run_jobs(app)
    contract = _contract(engine, customer["id"])
    assert contract.status == "canceled"
    cancels = [r for r in _inbox(engine) if r.event_type in (
        "unsubscribe-pending", "Purchase Agreement Ended - Proposer", "License Deprovisioned - Manufacturer")]
    assert len(cancels) == 3 and {r.status for r in cancels} == {"done"}
    assert {r.contract_id for r in cancels} == {contract.id}
    scheduled = queueing.schedule_flushes(app.extensions["marketsync"], contract.id, grace_seconds=600)
    assert scheduled["scheduled"] is False  # the first cancellation scheduled them; no one does again
    again = requests.post(live_server.url + EVENTS, data=json.dumps(_sent(aws, "License Deprovisioned - Manufacturer")),
                          headers={**EB_AUTH, "Content-Type": "application/json"}, timeout=10)
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert len(_inbox(engine)) == len(aws.notifications())


# --- the shared secret -------------------------------------------------------------------------------

def test_the_secret_is_required_compared_and_never_echoed(
        app: Any, aws: AwsEmulatorClient, live_server: Any, engine: Any, caplog: Any, capsys: Any) -> None:
    """Only 'Authorization: Bearer <AWS_EVENTBRIDGE_SECRETS entry>' is accepted (not the API key, once the
    setting is set); the secret appears in no answer, log line, stored header or emulator view."""
    caplog.set_level(logging.DEBUG)
    aws.set_receiver(url=None, eventbridge_url=None)
    aws.create_customer(product_code=PRODUCT, notify="eventbridge")
    event = _sent(aws, "License Updated - Manufacturer")
    body = json.dumps(event)
    answers = []
    for authorization in (None, f"Bearer {TEST_API_KEY}", f"Bearer {SECRET}x", SECRET, f"Basic {SECRET}",
                          f"Bearer {SECRET[:-1]}", "Bearer "):
        headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
        answer = requests.post(live_server.url + EVENTS, data=body, headers=headers, timeout=10)
        assert answer.status_code == 401, authorization
        answers.append(answer.text + json.dumps(dict(answer.headers)))
    assert _inbox(engine) == []
    answer = requests.post(live_server.url + EVENTS, data=body, headers={**EB_AUTH, "Content-Type": "application/json"},
                           timeout=10)
    assert answer.status_code == 202
    answers.append(answer.text + json.dumps(dict(answer.headers)))
    run_jobs(app)
    stored = _inbox(engine)
    assert len(stored) == 1 and "authorization" not in {k.lower() for k in (stored[0].headers or {})}
    logs = capsys.readouterr()
    seen = "".join(answers) + logs.out + logs.err + caplog.text + json.dumps(aws.notifications()) \
        + json.dumps(requests.get(aws.base_url + "/_emulator/options", timeout=10).json())
    assert SECRET not in seen
    assert app.extensions["marketsync"].settings.redacted()["AWS_EVENTBRIDGE_SECRETS"] == "***"


def test_without_the_setting_the_api_keys_are_accepted(settings: Settings, redis_conn: Any) -> None:
    """AWS_EVENTBRIDGE_SECRETS unset: the API keys authenticate EventBridge deliveries (the earlier rule)."""
    from webhooks import create_app

    app = create_app(settings.model_copy(update={"AWS_EVENTBRIDGE_SECRETS": ()}))
    client = app.test_client()
    body = json.dumps({**LICENSE_EVENT, "id": "eb-api-key-1"})
    assert client.post(EVENTS, data=body, headers={"Authorization": f"Bearer {SECRET}"}).status_code == 401
    assert client.post(EVENTS, data=body, headers=API).status_code == 202
    app.extensions["marketsync"].close()


# --- bad bodies --------------------------------------------------------------------------------------

LICENSE_EVENT: dict[str, Any] = {
    "version": "0", "id": "7c1e2a9b-0d3f-4e5a-8b6c-1d2e3f4a5b6c", "detail-type": "License Deprovisioned - Manufacturer",
    "source": "aws.agreement-marketplace", "account": "999988887777", "time": "2026-11-21T15:04:02Z",
    "region": "us-east-1", "resources": ["arn:aws:aws-marketplace::aws:agreement:agmt-7hq2k9x1v0c3b8n5m4l6p2r7s"],
    "detail": {"requestId": "d8e9f0a1-b2c3-4d4e-9f5a-6b7c8d9e0f1a", "catalog": "AWSMarketplace",
               "agreement": {"id": "agmt-7hq2k9x1v0c3b8n5m4l6p2r7s"},
               "product": {"code": PRODUCT, "id": "prod-a1b2c3d4e5f6g"},
               "license": {"arn": "arn:aws:license-manager::294406891311:license:l-0f1e2d3c4b5a69788796a5b4c3d2e1f0"},
               "acceptor": {"accountId": "111122223333"}, "proposer": {"accountId": "999988887777"},
               "offer": {"id": "offer-7q3r5t7u9w1y3"}},
}


def _without(path: str) -> dict[str, Any]:
    event = json.loads(json.dumps(LICENSE_EVENT))
    *parents, last = path.split(".")
    node = event
    for name in parents:
        node = node[name]
    del node[last]
    return event


def _with(path: str, value: Any) -> dict[str, Any]:
    event = json.loads(json.dumps(LICENSE_EVENT))
    *parents, last = path.split(".")
    node = event
    for name in parents:
        node = node[name]
    node[last] = value
    return event


BAD_BODIES = [
    pytest.param(b"{not json", "body", id="not-json"),
    pytest.param(b"[1, 2]", "body", id="not-an-object"),
    pytest.param(_without("id"), "id", id="no-id"),
    pytest.param(_with("id", 42), "id", id="id-not-a-string"),
    pytest.param(_with("id", "x" * 256), "id", id="id-too-long"),
    pytest.param(_without("detail-type"), "detail-type", id="no-detail-type"),
    pytest.param(_with("source", "aws.ec2"), "source", id="other-source"),
    pytest.param(_without("time"), "time", id="no-time"),
    pytest.param(_with("time", "yesterday"), "time", id="time-not-iso"),
    pytest.param(_with("time", "9999-12-31T23:59:59Z"), "time", id="time-out-of-range"),
    pytest.param(_with("detail", "x"), "detail", id="detail-not-an-object"),
    pytest.param(_without("detail"), "detail", id="no-detail"),
    pytest.param(_with("detail.license", "l-1"), "detail.license", id="license-not-an-object"),
    pytest.param(_without("detail.license"), "detail.license.arn", id="no-license"),
    pytest.param(_with("detail.license.arn", "arn:aws:license-manager::1:license:nothing"), "detail.license.arn",
                 id="arn-without-license-id"),
    pytest.param(_with("detail.license.arn", ["arn"]), "detail.license.arn", id="arn-not-a-string"),
    pytest.param(_without("detail.product"), "detail.product.code", id="no-product"),
    pytest.param(_with("detail.acceptor", 7), "detail.acceptor", id="acceptor-not-an-object"),
    pytest.param(_with("detail.acceptor.accountId", 111122223333), "detail.acceptor.accountId",
                 id="account-not-a-string"),
    pytest.param({**_with("detail-type", "Purchase Agreement Ended - Proposer"),
                  "detail": {"agreement": {"status": "CANCELLED"}}}, "detail.agreement.id", id="ended-no-agreement"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_bodies_get_400_naming_the_field_and_change_nothing(app: Any, engine: Any, body: Any, field: str) -> None:
    """A malformed EventBridge event is a 400 whose validation error names the field; nothing is stored."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = app.test_client().post(EVENTS, data=raw, headers={**EB_AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.get_data(as_text=True)
    problem = answer.get_json()
    named = [e.get("field") for e in problem.get("validation_errors") or []]
    assert field in named or field in problem["detail"], problem
    assert SECRET not in answer.get_data(as_text=True)
    assert _inbox(engine) == []


def test_unknown_detail_type_is_stored_and_ignored(app: Any, engine: Any) -> None:
    """An agreement-marketplace event of a type marketsync does not act on is acknowledged and ignored."""
    event = {**LICENSE_EVENT, "detail-type": "Purchase Agreement Renewal Terms Finalized - Proposer",
             "detail": {"agreement": {"id": "agmt-1"}}}
    answer = app.test_client().post(EVENTS, data=json.dumps(event), headers=EB_AUTH)
    assert answer.status_code == 202
    assert [(r.event_type, r.status) for r in _inbox(engine)] == [(event["detail-type"], "ignored")]


# --- the deadline watchdog -------------------------------------------------------------------------

def test_watchdog_alerts_when_the_final_report_cannot_land(
        app: Any, aws: AwsEmulatorClient, live_server: Any, engine: Any, listing: dict[str, Any]) -> None:
    """AWS down after the deprovisioning: nothing is accepted, the contract stays open, and the watchdog
    alerts 15 minutes before the hour ends (then again never), counting a miss once the hour is over."""
    now = datetime.now(timezone.utc)
    aws.set_clock(now - timedelta(hours=2))
    customer = aws.create_customer(product_code=PRODUCT, notify="eventbridge")
    aws.set_clock(None)
    run_jobs(app)
    contract = _contract(engine, customer["id"])
    ingest(engine, contract.customer_id, 990, now - timedelta(minutes=10))
    aws.set_faults(outage=True)
    aws.cancel(customer["id"], notify="eventbridge")
    run_jobs(app)  # applies the cancellation; a flush now, if planned, meets the outage (and is retried)
    try:
        jobs.flush_cancellation(contract.id, True)
    except Exception:  # noqa: BLE001 - the marketplace is down: the job fails and RQ retries it
        pass
    contract = _contract(engine, customer["id"])
    assert contract.status == "canceled" and _usage_total(aws) == 0
    deadline = cancellation.deadline_for(contract)
    assert deadline == _utc(contract.cancel_effective_at) + timedelta(hours=1)
    redis = app.extensions["marketsync"].redis
    assert cancellation.watch_deadlines(engine, redis, now=deadline - timedelta(minutes=20)) == []
    alerts = cancellation.watch_deadlines(engine, redis, now=deadline - timedelta(minutes=14))
    assert [(a["contract_id"], a["missed"]) for a in alerts] == [(contract.id, False)]
    assert int(redis.get(cancellation.DEADLINE_ALERTS)) == 1
    again = cancellation.watch_deadlines(engine, redis, now=deadline + timedelta(minutes=1))
    assert [a["missed"] for a in again] == [True] and int(redis.get(cancellation.DEADLINE_ALERTS)) == 1  # once

    aws.set_faults(outage=False)  # back inside the hour: what is pending goes out, exact
    jobs.sweep_ledger()
    jobs.flush_cancellation(contract.id, True)
    assert _usage_total(aws) == 99
