"""AWS Marketplace emulator: Metering and Entitlement services plus SNS/EventBridge lifecycle feeds.

It speaks the real wire protocols so the unmodified boto3 clients run against it:

- ``POST /`` with ``X-Amz-Target: AWSMPMeteringService.BatchMeterUsage`` (AWS JSON 1.1);
  ``AWSMPMeteringService.ResolveCustomer`` and ``AWSMPEntitlementService.GetEntitlements``
  are answered on the same path.
- ``POST /service/AWSMPEntitlementService/operation/GetEntitlements`` (Smithy RPC v2 CBOR,
  which is what current botocore sends for ``marketplace-entitlement``).

SigV4 is not checked; only the access key id is read from the ``Authorization`` header so a
configured "bad" key can be refused with ``UnrecognizedClientException``.

Rules (docs/marketplaces.md §2.11), each an option with the real default so tests can shrink them:
subscriptions keyed by (product, account id, license ARN) and by legacy customer identifier;
states active -> deprovisioning (``deprovision_window_seconds``) -> inactive; first write wins
per (product, subscription, dimension, hour) (identical resend answers
``identical_resend_status``, a different quantity ``DuplicateRecord``); at most
``max_records`` records and ``max_body_bytes`` per call; unknown dimension, bad license,
unknown customer identifier and out-of-window timestamps reject the whole batch; token-bucket
throttling at ``rate_limit_rps``; injected faults and ``UnprocessedRecords``.

Lifecycle: creating, modifying and canceling a subscription through the control API sends the
real notification: an SNS HTTP envelope signed with the emulator's own RSA key (its
self-signed certificate is served at ``/_emulator/sns/cert.pem``) and/or the EventBridge event
JSON, to the configured receiver URLs.

Control API: the shared one (``marketplaces.emulators.control``: reset, faults, clock, receiver
``{"url", "eventbridge_url", "eventbridge_headers"}``, usage, notifications) plus
``GET|POST /_emulator/options``, ``GET|POST /_emulator/customers``,
``POST /_emulator/customers/<id>/cancel``, ``POST /_emulator/customers/<id>/entitlements``,
``POST /_emulator/tick``, ``GET /_emulator/sns/cert.pem``, ``POST /_emulator/sns/sign``,
``POST /_emulator/sns/subscription-confirmation``, ``GET /_emulator/sns/confirmations``.
``AwsEmulatorClient`` wraps them for tests. The control API needs no credentials, so it never
echoes one: ``eventbridge_headers`` and the headers of sent notifications (``Authorization`` and
the like) are shown as ``***``.

Modules: ``wire`` (codecs, errors, SNS signing), ``state``, ``operations`` (the API rules),
``notifications`` (SNS and EventBridge deliveries), ``routes``, ``client``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from marketplaces.emulators.aws.client import AwsEmulatorClient
from marketplaces.emulators.aws.notifications import finish_deprovisioning
from marketplaces.emulators.aws.routes import extras, wire
from marketplaces.emulators.aws.state import DEFAULT_OPTIONS, AwsEmulatorState
from marketplaces.emulators.aws.wire import cbor_decode, cbor_encode, sign_envelope, sns_string_to_sign
from marketplaces.emulators.control import EXTENSION, control


def create_app(**options: Any) -> Flask:
    """Build the AWS Marketplace emulator app; ``options`` override ``DEFAULT_OPTIONS``."""
    app = Flask("aws_marketplace_emulator")
    state = AwsEmulatorState(options)
    state.close_windows = finish_deprovisioning
    app.extensions[EXTENSION] = app.extensions["aws_emulator"] = state
    app.register_blueprint(wire)
    app.register_blueprint(control)
    app.register_blueprint(extras)
    return app


create_aws_emulator = create_app

__all__ = [
    "AwsEmulatorClient",
    "AwsEmulatorState",
    "DEFAULT_OPTIONS",
    "cbor_decode",
    "cbor_encode",
    "create_app",
    "create_aws_emulator",
    "sign_envelope",
    "sns_string_to_sign",
]
