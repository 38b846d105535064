"""Lifecycle notifications: signed SNS envelopes and EventBridge events POSTed to the receivers."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

import requests

from marketplaces.emulators.aws.state import AwsEmulatorState, Subscription, _redacted_headers
from marketplaces.emulators.aws.wire import (
    CERT_PATH,
    MARKETPLACE_SNS_ACCOUNT,
    SELLER_ACCOUNT,
    _iso,
    sign_envelope,
)


def _topic_arn(state: AwsEmulatorState, kind: str, product: str) -> str:
    region = state.options["region"]
    return f"arn:aws:sns:{region}:{MARKETPLACE_SNS_ACCOUNT}:aws-mp-{kind}-notification-{product}"


def _channels(state: AwsEmulatorState, notify: str | None) -> set[str]:
    if notify is None:
        chosen = set()
        if state.options["receiver_url"]:
            chosen.add("sns")
        if state.options["eventbridge_url"]:
            chosen.add("eventbridge")
        return chosen
    return {"sns", "eventbridge"} if notify == "both" else ({notify} - {"none"})


def _sns_message(sub: Subscription, action: str) -> dict[str, Any]:
    message: dict[str, Any] = {"action": action}
    if sub.customer_identifier:
        message["customer-identifier"] = sub.customer_identifier
    message["product-code"] = sub.product_code
    # Not documented for SNS: we add the Concurrent Agreements identifiers so a receiver can
    # map the message to a license (parsers must not require them).
    message["customer-aws-account-id"] = sub.customer_aws_account_id
    message["license-arn"] = sub.license_arn
    if action in ("subscribe-success", "subscribe-fail"):
        message["offer-identifier"] = sub.offer_id
        message["isFreeTrialTermPresent"] = "true" if sub.free_trial else "false"
    return message


def _notify(
    state: AwsEmulatorState, base: str, sub: Subscription, event: str, notify: str | None
) -> list[dict[str, Any]]:
    """Send the notifications a lifecycle ``event`` produces; return the delivery log entries."""
    channels = _channels(state, notify)
    deliveries: list[dict[str, Any]] = []
    if "sns" in channels:
        action, topic = {
            "created": ("subscribe-success", "subscription"),
            "failed": ("subscribe-fail", "subscription"),
            "canceled": ("unsubscribe-pending", "subscription"),
            "finished": ("unsubscribe-success", "subscription"),
            "modified": ("entitlement-updated", "entitlement"),
        }[event]
        deliveries.append(_deliver_sns(state, base, _notification(state, sub, action, topic), None))
    if "eventbridge" in channels:
        detail_types = {
            "created": ["Purchase Agreement Created - Proposer", "License Updated - Manufacturer"],
            "failed": [],
            "canceled": ["Purchase Agreement Ended - Proposer", "License Deprovisioned - Manufacturer"],
            "finished": [],
            "modified": ["Purchase Agreement Amended - Proposer", "License Updated - Manufacturer"],
        }[event]
        for detail_type in detail_types:
            deliveries.append(_deliver_eventbridge(state, _event(state, sub, detail_type)))
    return deliveries


def _notification(state: AwsEmulatorState, sub: Subscription, action: str, topic_kind: str) -> dict[str, Any]:
    topic = _topic_arn(state, topic_kind, sub.product_code)
    with state.lock:
        now = state.now()
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": json.dumps(_sns_message(sub, action), separators=(",", ":")),
        "Timestamp": _iso(now, millis=True),
        "UnsubscribeURL": None,  # filled in by _deliver_sns (needs the base URL)
    }


def _deliver_sns(
    state: AwsEmulatorState, base: str, envelope: dict[str, Any], version: str | None
) -> dict[str, Any]:
    envelope = dict(envelope)
    if envelope.get("Type") == "Notification":
        envelope["UnsubscribeURL"] = base + "/?" + urlencode(
            {"Action": "Unsubscribe", "SubscriptionArn": f"{envelope['TopicArn']}:{uuid.uuid4()}"}
        )
    signed = sign_envelope(
        state.key, envelope, base + CERT_PATH, str(version or state.options["signature_version"])
    )
    headers = {
        "x-amz-sns-message-type": signed["Type"],
        "x-amz-sns-message-id": signed["MessageId"],
        "x-amz-sns-topic-arn": signed["TopicArn"],
        "Content-Type": "text/plain; charset=UTF-8",
        "User-Agent": "Amazon Simple Notification Service Agent",
    }
    if signed["Type"] == "Notification":
        headers["x-amz-sns-subscription-arn"] = f"{signed['TopicArn']}:{uuid.uuid4()}"
    body = json.dumps(signed, indent=2)
    return _post(state, "sns", state.options["receiver_url"], headers, body)


def _event(state: AwsEmulatorState, sub: Subscription, detail_type: str) -> dict[str, Any]:
    with state.lock:
        now = state.now()
    detail: dict[str, Any] = {
        "requestId": str(uuid.uuid4()),
        "catalog": "AWSMarketplace",
        "agreement": {"id": sub.agreement_id},
        "acceptor": {"accountId": sub.customer_aws_account_id},
        "proposer": {"accountId": SELLER_ACCOUNT},
        "offer": {"id": sub.offer_id},
    }
    if detail_type.startswith("License"):
        detail["product"] = {"code": sub.product_code, "id": "prod-" + sub.product_code[-13:]}
        detail["license"] = {"arn": sub.license_arn}
    elif detail_type.startswith("Purchase Agreement Ended"):
        detail["agreement"]["status"] = "CANCELLED"
    else:
        intent = "AMEND" if "Amended" in detail_type else "NEW"
        detail["agreement"].update(
            {"intent": intent, "status": "ACTIVE", "acceptanceTime": _iso(sub.started_at),
             "startTime": _iso(sub.started_at)}
        )
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.agreement-marketplace",
        "account": SELLER_ACCOUNT,
        "time": _iso(now),
        "region": state.options["region"],
        "resources": [f"arn:aws:aws-marketplace::aws:agreement:{sub.agreement_id}"],
        "detail": detail,
    }


def _deliver_eventbridge(state: AwsEmulatorState, event: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **dict(state.options["eventbridge_headers"] or {})}
    return _post(state, "eventbridge", state.options["eventbridge_url"], headers, json.dumps(event))


def _post(state: AwsEmulatorState, channel: str, url: str | None, headers: dict[str, str], body: str) -> dict[str, Any]:
    # The delivery log is served by the unauthenticated control API: it keeps the headers redacted.
    entry: dict[str, Any] = {"channel": channel, "url": url, "headers": _redacted_headers(state, headers),
                             "body": body, "status": None, "error": None}
    if url:
        try:
            answer = requests.post(url, data=body.encode("utf-8"), headers=headers, timeout=10)
            entry["status"] = answer.status_code
        except requests.RequestException as err:
            entry["error"] = f"{type(err).__name__}: {err}"
    else:
        entry["error"] = "no receiver configured"
    with state.lock:
        state.sent.append(entry)
    return entry


def finish_deprovisioning(state: AwsEmulatorState, base: str) -> list[dict[str, Any]]:
    """Send ``unsubscribe-success`` for every subscription whose final window has closed."""
    with state.lock:
        now, window = state.now(), state.window()
        done = [
            s for s in state.subscriptions.values()
            if s.state(now, window) == "inactive" and not s.unsubscribe_sent
        ]
        for sub in done:
            sub.unsubscribe_sent = True
    deliveries: list[dict[str, Any]] = []
    for sub in done:
        if "sns" in _channels(state, None):
            deliveries += _notify(state, base, sub, "finished", "sns")
    return deliveries
