"""AWS lifecycle notifications: SNS signature verification, §7.1 vectors, EventBridge, and live delivery."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from flask import Flask, request

from marketplaces.aws import AwsMarketplace, SnsVerifier, is_sns_url, parse_eventbridge
from marketplaces.base import (
    MalformedNotification,
    Marketplace,
    NotificationKind,
    UnverifiedNotification,
)
from marketplaces.emulators.aws import AwsEmulatorClient, create_aws_emulator
from marketplaces.emulators.server import EmulatorServer

# --- §7.1 vectors (signatures there are placeholders; the emulator re-signs them) ------------

TOPIC = "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-8ab2c4d6e8f0abcdexample01"
AWS_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"

SUBSCRIBE_SUCCESS_ENVELOPE = {
    "Type": "Notification",
    "MessageId": "5b6e3c1a-9f0d-4c51-8d2e-7a4b3c2d1e0f",
    "TopicArn": TOPIC,
    "Message": "{\"action\":\"subscribe-success\",\"customer-identifier\":\"AbCdEf12345\",\"product-code\":\"8ab2c4d6e8f0abcdexample01\",\"offer-identifier\":\"offer-7q3r5t7u9w1y3\",\"isFreeTrialTermPresent\":\"false\"}",
    "Timestamp": "2026-11-21T09:14:07.512Z",
    "SignatureVersion": "2",
    "Signature": "BASE64_SHA256WITHRSA_SIGNATURE_PLACEHOLDER==",
    "SigningCertURL": AWS_CERT_URL,
    "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-8ab2c4d6e8f0abcdexample01:2f9c7a10-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
}

SUBSCRIPTION_CONFIRMATION_ENVELOPE = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d",
    "Token": "2336412f37fb687f5d51e6e2425a8a58ea8e3f4d0d3e2a9b7c6d5e4f3a2b1c0d",
    "TopicArn": TOPIC,
    "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
    "SubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2425a8a58ea8e3f4d0d3e2a9b7c6d5e4f3a2b1c0d",
    "Timestamp": "2026-11-21T09:00:01.002Z",
    "SignatureVersion": "2",
    "Signature": "BASE64_SHA256WITHRSA_SIGNATURE_PLACEHOLDER==",
    "SigningCertURL": AWS_CERT_URL,
}

LICENSE_ARN = "arn:aws:license-manager::294406891311:license:l-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
AGREEMENT = "agmt-7hq2k9x1v0c3b8n5m4l6p2r7s"

LICENSE_UPDATED = {
    "version": "0",
    "id": "6f2d0b7e-1c3a-4d5e-8f90-a1b2c3d4e5f6",
    "detail-type": "License Updated - Manufacturer",
    "source": "aws.agreement-marketplace",
    "account": "999988887777",
    "time": "2026-11-21T09:12:44Z",
    "region": "us-east-1",
    "resources": [f"arn:aws:aws-marketplace::aws:agreement:{AGREEMENT}"],
    "detail": {
        "requestId": "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e",
        "catalog": "AWSMarketplace",
        "agreement": {"id": AGREEMENT},
        "product": {"code": "8ab2c4d6e8f0abcdexample01", "id": "prod-a1b2c3d4e5f6g"},
        "license": {"arn": LICENSE_ARN},
        "acceptor": {"accountId": "111122223333"},
        "proposer": {"accountId": "999988887777"},
        "offer": {"id": "offer-7q3r5t7u9w1y3"},
    },
}

AGREEMENT_ENDED = {
    "version": "0",
    "id": "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a",
    "detail-type": "Purchase Agreement Ended - Proposer",
    "source": "aws.agreement-marketplace",
    "account": "999988887777",
    "time": "2026-11-21T15:03:10Z",
    "region": "us-east-1",
    "resources": [f"arn:aws:aws-marketplace::aws:agreement:{AGREEMENT}"],
    "detail": {
        "requestId": "c7d8e9f0-a1b2-4c3d-8e4f-5a6b7c8d9e0f",
        "catalog": "AWSMarketplace",
        "agreement": {"id": AGREEMENT, "status": "CANCELLED"},
        "acceptor": {"accountId": "111122223333"},
        "proposer": {"accountId": "999988887777"},
        "offer": {"id": "offer-7q3r5t7u9w1y3"},
    },
}

LICENSE_DEPROVISIONED = {
    **LICENSE_UPDATED,
    "id": "1e2f3a4b-5c6d-4e7f-8091-a2b3c4d5e6f7",
    "detail-type": "License Deprovisioned - Manufacturer",
    "time": "2026-11-21T15:04:02Z",
    "detail": {**LICENSE_UPDATED["detail"], "requestId": "d8e9f0a1-b2c3-4d4e-9f5a-6b7c8d9e0f1a"},
}


def _inner(action: str, **extra: str) -> str:
    message = {"action": action, "customer-identifier": "AbCdEf12345", "product-code": "8ab2c4d6e8f0abcdexample01", **extra}
    return json.dumps(message, separators=(",", ":"))


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(create_aws_emulator()) as running:
        yield running


@pytest.fixture
def emu(emulator_server: EmulatorServer) -> AwsEmulatorClient:
    client = AwsEmulatorClient(emulator_server.url)
    client.reset()
    return client


@pytest.fixture
def adapter(emulator_server: EmulatorServer) -> AwsMarketplace:
    """An adapter that trusts only the emulator's certificate (sandbox mode)."""
    return AwsMarketplace(client=None, sns_verifier=SnsVerifier.for_emulator(emulator_server.url))


def _signed(emu: AwsEmulatorClient, envelope: dict[str, Any], version: str = "2", **changes: Any) -> dict[str, Any]:
    return emu.sign({**envelope, **changes}, signature_version=version)


def _sns_headers(envelope: dict[str, Any]) -> dict[str, str]:
    return {
        "x-amz-sns-message-type": envelope["Type"],
        "x-amz-sns-message-id": envelope["MessageId"],
        "x-amz-sns-topic-arn": envelope["TopicArn"],
        "Content-Type": "text/plain; charset=UTF-8",
    }


def _body(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


# --- SNS vectors ------------------------------------------------------------------------------

SNS_VECTORS = [
    pytest.param(
        SUBSCRIBE_SUCCESS_ENVELOPE["Message"], NotificationKind.CREATED, "subscribe-success",
        {"offer_identifier": "offer-7q3r5t7u9w1y3", "free_trial": False}, id="subscribe-success",
    ),
    pytest.param(
        _inner("subscribe-fail", **{"offer-identifier": "offer-7q3r5t7u9w1y3", "isFreeTrialTermPresent": "false"}),
        NotificationKind.IGNORED, "subscribe-fail", {"offer_identifier": "offer-7q3r5t7u9w1y3", "free_trial": False},
        id="subscribe-fail",
    ),
    pytest.param(_inner("unsubscribe-pending"), NotificationKind.CANCELED, "unsubscribe-pending", {}, id="unsubscribe-pending"),
    pytest.param(_inner("unsubscribe-success"), NotificationKind.CANCELED, "unsubscribe-success", {"final": True}, id="unsubscribe-success"),
    pytest.param(_inner("entitlement-updated"), NotificationKind.MODIFIED, "entitlement-updated", {}, id="entitlement-updated"),
]


@pytest.mark.parametrize(("message", "kind", "action", "extra"), SNS_VECTORS)
@pytest.mark.parametrize("version", ["1", "2"], ids=["sha1", "sha256"])
def test_sns_vectors_parse(
    emu: AwsEmulatorClient, adapter: AwsMarketplace, message: str, kind: NotificationKind, action: str,
    extra: dict[str, Any], version: str,
) -> None:
    """Each §7.1 SNS message, signed with SignatureVersion 1 or 2, normalizes as expected."""
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE, version, Message=message)

    note = adapter.parse_notification(_sns_headers(envelope), _body(envelope))

    assert (note.marketplace, note.kind, note.action) == (Marketplace.AWS, kind, action)
    assert note.delivery_id == "5b6e3c1a-9f0d-4c51-8d2e-7a4b3c2d1e0f"
    assert dict(note.identifiers) == {"customer_identifier": "AbCdEf12345", "product_code": "8ab2c4d6e8f0abcdexample01"}
    assert note.effective_at == datetime(2026, 11, 21, 9, 14, 7, 512000, tzinfo=timezone.utc)
    assert {k: note.extra[k] for k in extra} == extra
    assert note.extra["topic_arn"] == TOPIC


def test_capitalized_key_spelling_is_understood(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """The CustomerIdentifier/ProductCode spelling of one AWS page parses like the dashed one."""
    message = json.dumps({"action": "subscribe-success", "CustomerIdentifier": "AbCdEf12345", "ProductCode": "p1", "isFreeTrialTermPresent": "true"})
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE, Message=message)

    note = adapter.parse_notification(_sns_headers(envelope), _body(envelope))

    assert dict(note.identifiers) == {"customer_identifier": "AbCdEf12345", "product_code": "p1"}
    assert note.extra["free_trial"] is True


def test_subscription_confirmation_vector(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """The §7.1 SubscriptionConfirmation parses with its SubscribeURL, which sandbox mode will not call."""
    envelope = _signed(emu, SUBSCRIPTION_CONFIRMATION_ENVELOPE)

    note = adapter.parse_notification(_sns_headers(envelope), _body(envelope))

    assert note.kind == NotificationKind.SUBSCRIPTION_CONFIRMATION
    assert note.extra["subscribe_url"] == SUBSCRIPTION_CONFIRMATION_ENVELOPE["SubscribeURL"]
    with pytest.raises(UnverifiedNotification):
        adapter.confirm_subscription(note)


def test_unsubscribe_confirmation_is_ignored(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """A verified UnsubscribeConfirmation is recorded as IGNORED."""
    envelope = _signed(emu, SUBSCRIPTION_CONFIRMATION_ENVELOPE, Type="UnsubscribeConfirmation")

    note = adapter.parse_notification(_sns_headers(envelope), _body(envelope))

    assert (note.kind, note.action) == (NotificationKind.IGNORED, "UnsubscribeConfirmation")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda e: {**e, "Message": e["Message"].replace("subscribe-success", "unsubscribe-success")}, id="message"),
        pytest.param(lambda e: {**e, "MessageId": "5b6e3c1a-0000-0000-0000-000000000000"}, id="message-id"),
        pytest.param(lambda e: {**e, "Signature": e["Signature"][:-8] + "AAAAAAA="}, id="signature"),
        pytest.param(lambda e: {**e, "Signature": "not base64!"}, id="signature-not-base64"),
        pytest.param(lambda e: {**e, "SignatureVersion": "1"}, id="downgraded-version"),
        pytest.param(lambda e: {**e, "SignatureVersion": "3"}, id="unknown-version"),
        pytest.param(lambda e: {**e, "Subject": "added"}, id="added-subject"),
    ],
)
def test_tampered_envelope_is_unverified(emu: AwsEmulatorClient, adapter: AwsMarketplace, tamper: Any) -> None:
    """Any change to a signed field or to the signature makes the envelope UnverifiedNotification."""
    envelope = tamper(_signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE))

    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification(_sns_headers(envelope), _body(envelope))


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        pytest.param("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", True, id="sns-us-east-1"),
        pytest.param("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", True, id="sns-china"),
        pytest.param("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False, id="suffix-host"),
        pytest.param("http://sns.us-east-1.amazonaws.com/x.pem", False, id="plain-http"),
        pytest.param("https://evil.example/sns.us-east-1.amazonaws.com/x.pem", False, id="host-in-path"),
        pytest.param("https://sns.us-east-1.amazonaws.com@evil.example/x.pem", False, id="userinfo-trick"),
        pytest.param("https://sqs.us-east-1.amazonaws.com/x.pem", False, id="other-service"),
        pytest.param("https://sns.us-east-1.amazonaws.com:8443/x.pem", False, id="other-port"),
    ],
)
def test_live_signing_cert_url_rules(url: str, trusted: bool) -> None:
    """Live mode trusts only HTTPS URLs on sns.<region>.amazonaws.com[.cn]."""
    assert is_sns_url(url) is trusted


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
        "http://sns.us-east-1.amazonaws.com/x.pem",
    ],
)
def test_foreign_cert_host_is_unverified_without_fetching(emu: AwsEmulatorClient, cert_url: str) -> None:
    """A validly signed envelope pointing at a foreign certificate host is refused before any fetch."""
    fetched: list[str] = []
    live = AwsMarketplace(client=None, sns_verifier=SnsVerifier.live(fetch=lambda url: fetched.append(url) or b""))
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE)
    envelope["SigningCertURL"] = cert_url

    with pytest.raises(UnverifiedNotification):
        live.parse_notification(_sns_headers(envelope), _body(envelope))
    assert fetched == []


def test_live_verifier_checks_real_signatures(emu: AwsEmulatorClient, emulator_server: EmulatorServer) -> None:
    """In live mode a trusted SNS URL's certificate is fetched once, cached, and really checked."""
    import requests

    pem = requests.get(emulator_server.url + "/_emulator/sns/cert.pem", timeout=5).content
    fetched: list[str] = []
    live = AwsMarketplace(client=None, sns_verifier=SnsVerifier.live(fetch=lambda url: fetched.append(url) or pem))
    first = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE)
    second = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE, MessageId="second")
    for envelope in (first, second):
        envelope["SigningCertURL"] = AWS_CERT_URL
    # The emulator signed with its SigningCertURL in place, which is not a signed field.

    kinds = [live.parse_notification(_sns_headers(e), _body(e)).kind for e in (first, second)]

    assert kinds == [NotificationKind.CREATED, NotificationKind.CREATED]
    assert fetched == [AWS_CERT_URL]


def test_sandbox_trusts_only_the_emulator_certificate(emu: AwsEmulatorClient, emulator_server: EmulatorServer) -> None:
    """In sandbox mode another loopback URL (even serving the same PEM) is not trusted."""
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE)
    envelope["SigningCertURL"] = emulator_server.url + "/other/cert.pem"
    adapter = AwsMarketplace(client=None, sns_verifier=SnsVerifier.for_emulator(emulator_server.url))

    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification(_sns_headers(envelope), _body(envelope))


def test_sandbox_verifier_refuses_a_non_loopback_emulator() -> None:
    """The sandbox verifier cannot be pointed at a non-loopback host."""
    with pytest.raises(ValueError):
        SnsVerifier.for_emulator("http://sns.example.com:8101")


def test_unexpected_topic_is_unverified(emu: AwsEmulatorClient, emulator_server: EmulatorServer) -> None:
    """With AWS_SNS_TOPIC_ARNS set, a message from another topic is refused."""
    adapter = AwsMarketplace(
        client=None,
        sns_verifier=SnsVerifier.for_emulator(emulator_server.url, topic_arns=["arn:aws:sns:us-east-1:1:other"]),
    )
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE)

    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification(_sns_headers(envelope), _body(envelope))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"Message": "not json"}, "Message", id="message-not-json"),
        pytest.param({"Message": json.dumps({"customer-identifier": "x"})}, "Message.action", id="no-action"),
        pytest.param({"Message": json.dumps({"action": "subscribe-success"})}, "Message.customer-identifier", id="no-customer"),
    ],
)
def test_verified_but_malformed_message(emu: AwsEmulatorClient, adapter: AwsMarketplace, changes: dict[str, str], field: str) -> None:
    """A correctly signed envelope whose marketplace message is unusable is MalformedNotification."""
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE, **changes)

    with pytest.raises(MalformedNotification) as info:
        adapter.parse_notification(_sns_headers(envelope), _body(envelope))
    assert info.value.field == field


def test_header_and_envelope_type_must_agree(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """A message-type header contradicting the signed Type is MalformedNotification."""
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE)

    with pytest.raises(MalformedNotification):
        adapter.parse_notification({"x-amz-sns-message-type": "SubscriptionConfirmation"}, _body(envelope))


def test_sns_body_without_header_is_still_verified(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """An SNS envelope without the SNS headers is still treated (and verified) as SNS."""
    envelope = _signed(emu, SUBSCRIBE_SUCCESS_ENVELOPE)
    envelope["Message"] = _inner("unsubscribe-success")

    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification({"Content-Type": "application/json"}, _body(envelope))


# --- EventBridge ------------------------------------------------------------------------------

EVENTBRIDGE_VECTORS = [
    pytest.param(LICENSE_UPDATED, NotificationKind.CREATED, id="license-updated"),
    pytest.param(AGREEMENT_ENDED, NotificationKind.CANCELED, id="agreement-ended"),
    pytest.param(LICENSE_DEPROVISIONED, NotificationKind.CANCELED, id="license-deprovisioned"),
    pytest.param({**AGREEMENT_ENDED, "detail-type": "Purchase Agreement Created - Proposer",
                  "detail": {**AGREEMENT_ENDED["detail"], "agreement": {"id": AGREEMENT, "intent": "NEW", "status": "ACTIVE"}}},
                 NotificationKind.IGNORED, id="agreement-created"),
    pytest.param({**AGREEMENT_ENDED, "detail-type": "Purchase Agreement Amended - Proposer",
                  "detail": {**AGREEMENT_ENDED["detail"], "agreement": {"id": AGREEMENT, "intent": "AMEND", "status": "ACTIVE"}}},
                 NotificationKind.MODIFIED, id="agreement-amended"),
]


@pytest.mark.parametrize(("event", "kind"), EVENTBRIDGE_VECTORS)
def test_eventbridge_vectors_parse(adapter: AwsMarketplace, event: dict[str, Any], kind: NotificationKind) -> None:
    """Each EventBridge agreement/license event normalizes to its kind, keyed by the event id."""
    note = adapter.parse_notification({"Content-Type": "application/json"}, _body(event))

    assert (note.kind, note.action, note.delivery_id) == (kind, event["detail-type"], event["id"])
    assert note.identifiers["agreement_id"] == AGREEMENT
    assert note.identifiers["customer_aws_account_id"] == "111122223333"
    assert note.effective_at == datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


def test_license_event_identifiers(adapter: AwsMarketplace) -> None:
    """A license event carries the license ARN as given, its l-<hex> id and the product code."""
    note = parse_eventbridge(_body(LICENSE_DEPROVISIONED))

    assert dict(note.identifiers) == {
        "product_code": "8ab2c4d6e8f0abcdexample01",
        "customer_aws_account_id": "111122223333",
        "license_arn": LICENSE_ARN,
        "license_id": "l-0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "agreement_id": AGREEMENT,
    }
    assert note.extra["final"] is True


def test_license_arn_without_arn_prefix_has_the_same_id() -> None:
    """AWS's own example prints the license ARN without 'arn:'; its license_id is unchanged."""
    event = json.loads(json.dumps(LICENSE_UPDATED))
    event["detail"]["license"]["arn"] = "aws:license-manager:us-east-1:123456789012:l-0f1e2d3c4b5a69788796a5b4c3d2e1f0"

    assert parse_eventbridge(_body(event)).identifiers["license_id"] == "l-0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"not json", None, id="not-json"),
        pytest.param(_body({**LICENSE_UPDATED, "source": "aws.ec2"}), "source", id="other-source"),
        pytest.param(_body({k: v for k, v in LICENSE_UPDATED.items() if k != "id"}), "id", id="no-id"),
        pytest.param(_body({**LICENSE_UPDATED, "detail": "x"}), "detail", id="no-detail"),
    ],
)
def test_malformed_eventbridge_events(body: bytes, field: str | None) -> None:
    """Events that are not agreement-marketplace events of the expected shape are malformed."""
    with pytest.raises(MalformedNotification) as info:
        parse_eventbridge(body)
    assert info.value.field == field


# --- the emulator sends real notifications to a receiver --------------------------------------


class Recorder:
    """A tiny receiver app that records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.app = Flask("recorder")

        @self.app.post("/<path:path>")
        def record(path: str) -> tuple[str, int]:
            with self.lock:
                self.requests.append(("/" + path, dict(request.headers), request.get_data()))
            return "", 200

    def take(self) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            out, self.requests = self.requests, []
        return out


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    with EmulatorServer(rec.app) as running:
        yield rec, running.url


@pytest.fixture
def wired(emu: AwsEmulatorClient, recorder: tuple[Recorder, str]) -> Recorder:
    """Point the emulator's SNS and EventBridge deliveries at the recorder."""
    rec, url = recorder
    rec.take()
    emu.set_receiver(url + "/sns", url + "/events", {"X-Marketsync-Secret": "s3cret"})
    return rec


def _received(rec: Recorder, path: str) -> list[tuple[dict[str, str], bytes]]:
    return [(headers, body) for p, headers, body in rec.take() if p == path]


def test_emulator_sends_verifiable_lifecycle(emu: AwsEmulatorClient, adapter: AwsMarketplace, wired: Recorder) -> None:
    """Create, modify and cancel send signed SNS messages the adapter verifies, in lifecycle order."""
    sub = emu.create_customer(product_code="prod-live", dimensions=["a"], notify="sns", free_trial=True)
    emu.update_entitlements(sub["id"], entitlements={"seats": 5}, notify="sns")
    emu.cancel(sub["id"], notify="sns")

    notes = [adapter.parse_notification(h, b) for h, b in _received(wired, "/sns")]

    assert [(n.kind, n.action) for n in notes] == [
        (NotificationKind.CREATED, "subscribe-success"),
        (NotificationKind.MODIFIED, "entitlement-updated"),
        (NotificationKind.CANCELED, "unsubscribe-pending"),
    ]
    assert notes[0].identifiers["license_arn"] == sub["identifiers"]["license_arn"]
    assert notes[0].identifiers["customer_identifier"] == sub["identifiers"]["customer_identifier"]
    assert notes[0].extra["free_trial"] is True
    assert len({n.delivery_id for n in notes}) == 3


def test_unsubscribe_success_follows_the_window(emu: AwsEmulatorClient, adapter: AwsMarketplace, wired: Recorder) -> None:
    """After the deprovisioning window, a tick sends the final unsubscribe-success once."""
    now = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
    emu.set_clock(now)
    sub = emu.create_customer(product_code="prod-live", dimensions=["a"], notify="none")
    emu.cancel(sub["id"], notify="none")
    emu.tick()
    assert _received(wired, "/sns") == []

    emu.set_clock(now + timedelta(hours=1, seconds=1))
    emu.tick()
    emu.tick()

    [(headers, body)] = _received(wired, "/sns")
    note = adapter.parse_notification(headers, body)
    assert (note.kind, note.action, note.extra["final"]) == (NotificationKind.CANCELED, "unsubscribe-success", True)


@pytest.mark.parametrize("version", ["1", "2"], ids=["sha1", "sha256"])
def test_emulator_signature_version_option(emu: AwsEmulatorClient, adapter: AwsMarketplace, wired: Recorder, version: str) -> None:
    """The emulator signs with the configured SignatureVersion and both verify."""
    emu.set_options(signature_version=version)
    emu.create_customer(product_code="prod-live", dimensions=["a"], notify="sns")

    [(headers, body)] = _received(wired, "/sns")

    assert json.loads(body)["SignatureVersion"] == version
    assert adapter.parse_notification(headers, body).kind == NotificationKind.CREATED


def test_emulator_sends_eventbridge_events(emu: AwsEmulatorClient, adapter: AwsMarketplace, wired: Recorder) -> None:
    """EventBridge deliveries carry the configured shared-secret header and parse by license."""
    sub = emu.create_customer(product_code="prod-live", dimensions=["a"], notify="eventbridge")
    emu.cancel(sub["id"], notify="eventbridge")

    received = _received(wired, "/events")
    notes = [adapter.parse_notification(h, b) for h, b in received]

    assert all(h.get("X-Marketsync-Secret") == "s3cret" for h, _ in received)
    assert [(n.action, n.kind) for n in notes] == [
        ("Purchase Agreement Created - Proposer", NotificationKind.IGNORED),
        ("License Updated - Manufacturer", NotificationKind.CREATED),
        ("Purchase Agreement Ended - Proposer", NotificationKind.CANCELED),
        ("License Deprovisioned - Manufacturer", NotificationKind.CANCELED),
    ]
    assert notes[1].identifiers["license_id"] == sub["id"]
    assert notes[2].identifiers["agreement_id"] == sub["agreement_id"]


def test_subscription_confirmation_round_trip(emu: AwsEmulatorClient, adapter: AwsMarketplace, wired: Recorder) -> None:
    """A confirmation sent by the emulator verifies, and confirming GETs its SubscribeURL."""
    emu.send_subscription_confirmation(topic_arn=TOPIC)
    [(headers, body)] = _received(wired, "/sns")

    note = adapter.parse_notification(headers, body)
    adapter.confirm_subscription(note)

    assert note.kind == NotificationKind.SUBSCRIPTION_CONFIRMATION
    [confirmation] = emu.confirmations()
    assert (confirmation["topic_arn"], confirmation["token"]) == (TOPIC, note.extra["token"])


def test_confirm_refuses_a_tampered_stored_confirmation(emu: AwsEmulatorClient, adapter: AwsMarketplace, wired: Recorder) -> None:
    """confirm_subscription re-verifies the stored envelope, so an edited SubscribeURL is not called."""
    emu.send_subscription_confirmation(topic_arn=TOPIC)
    [(headers, body)] = _received(wired, "/sns")
    note = adapter.parse_notification(headers, body)
    forged = type(note)(**{**note.__dict__, "extra": {**note.extra, "envelope": {**note.extra["envelope"], "SubscribeURL": "http://127.0.0.1:1/?Action=ConfirmSubscription"}}})

    with pytest.raises(UnverifiedNotification):
        adapter.confirm_subscription(forged)
    assert emu.confirmations() == []
