"""Webhook receivers: verify, store (unique on source + delivery id), enqueue, answer 202 (Azure: 200).

An unverifiable delivery gets 401 and is stored nowhere; a malformed one gets 400 naming the
field; a repeated one is acknowledged and changes nothing. The verification and parsing errors
propagate: ``webhooks.errors`` answers them.
"""

from __future__ import annotations

import hmac
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from marketplaces.base import NotificationKind
from webhooks.api.openapi import documented
from webhooks.api.schemas import ContractWebhook, DeliveryAccepted, MarketplaceNotification
from webhooks.errors import ApiError
from worker import delivery, standard_webhooks
from worker.contract_events import from_notification, parse_normalized
from worker.runtime import Runtime

bp = Blueprint("receivers", __name__, url_prefix="/webhooks")


def _runtime() -> Runtime:
    return current_app.extensions["marketsync"]


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "Authentication error", detail)


@bp.post("/contracts")
@documented(body=ContractWebhook, response=DeliveryAccepted, status=202, security="StandardWebhooks")
def contracts() -> ResponseReturnValue:
    """Receive a normalized contract event signed per Standard Webhooks."""
    runtime = _runtime()
    body = request.get_data(cache=True)
    verified = standard_webhooks.verify(
        request.headers, body, runtime.settings.WEBHOOK_SECRETS, now=int(time.time()),
        tolerance=runtime.settings.WEBHOOK_TOLERANCE_SECONDS,
    )
    event_type, event = parse_normalized(body)
    stored = delivery.accept(runtime, source="contracts", delivery_id=verified.delivery_id,
                             event_type=event_type, body=body, headers=request.headers, event=event,
                             now=datetime.now(timezone.utc))
    return delivery.summary(stored), 202


def _native(marketplace: str, source: str, headers: dict[str, str] | None = None,
            status: int = 202) -> ResponseReturnValue:
    runtime = _runtime()
    body = request.get_data(cache=True)
    adapter = runtime.adapter(marketplace)
    note = adapter.parse_notification(dict(request.headers) if headers is None else headers, body)
    now = datetime.now(timezone.utc)
    if note.kind == NotificationKind.SUBSCRIPTION_CONFIRMATION:
        # Confirm only after the signature checked out (the adapter re-verifies too).
        adapter.confirm_subscription(note)
    event = from_notification(note, received_at=now)
    stored = delivery.accept(runtime, source=source, delivery_id=note.delivery_id, event_type=note.action,
                             body=body, headers=request.headers, event=event, now=now)
    return delivery.summary(stored), status


@bp.post("/aws/sns")
@documented(body=MarketplaceNotification, response=DeliveryAccepted, status=202, security="AwsSnsSignature")
def aws_sns() -> ResponseReturnValue:
    """Receive an AWS Marketplace SNS notification (signature-verified)."""
    if "x-amz-sns-message-type" not in {k.lower() for k in request.headers.keys()}:
        raise _unauthorized("missing x-amz-sns-message-type header: not an SNS delivery")
    return _native("aws", "aws_sns")


@bp.post("/aws/events")
@documented(body=MarketplaceNotification, response=DeliveryAccepted, status=202, security="AwsEventBridgeSecret")
def aws_events() -> ResponseReturnValue:
    """Receive an EventBridge agreement/license event from an API destination (shared-secret header).

    The API destination's connection adds ``Authorization: Bearer <secret>``; the secret is one of
    ``AWS_EVENTBRIDGE_SECRETS`` (the API keys when that is unset), compared in constant time with
    every configured value. The answer never repeats what was sent.
    """
    settings = _runtime().settings
    secrets = settings.AWS_EVENTBRIDGE_SECRETS or settings.API_KEYS
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    presented = token.strip().encode("utf-8", errors="replace")
    matched = False
    for secret in secrets:  # no early exit: the time taken does not tell which entry matched
        matched |= hmac.compare_digest(presented, secret.encode("utf-8"))
    if scheme.lower() != "bearer" or not presented or not matched:
        raise _unauthorized("EventBridge deliveries need 'Authorization: Bearer <secret>' with a secret of "
                            "AWS_EVENTBRIDGE_SECRETS (the API keys when it is unset)")
    # Never let an EventBridge delivery be taken for an SNS one.
    headers = {k: v for k, v in request.headers.items() if k.lower() != "x-amz-sns-message-type"}
    return _native("aws", "aws_events", headers)


@bp.post("/azure")
@documented(body=MarketplaceNotification, response=DeliveryAccepted, status=200, security="AzureJwt")
def azure() -> ResponseReturnValue:
    """Receive an Azure SaaS fulfillment webhook (JWT-verified); stored, then acknowledged with 200."""
    # Microsoft's webhook documentation asks the publisher to answer 200 (docs/marketplaces.md §3.5).
    return _native("azure", "azure", status=200)


@bp.post("/gcp/pubsub")
@documented(body=MarketplaceNotification, response=DeliveryAccepted, status=202, security="GoogleOidc")
def gcp_pubsub() -> ResponseReturnValue:
    """Receive a Google Pub/Sub push (OIDC-verified)."""
    return _native("gcp", "gcp")
