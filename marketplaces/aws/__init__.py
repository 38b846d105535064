"""AWS Marketplace adapter: BatchMeterUsage, GetEntitlements, SNS and EventBridge lifecycle feeds.

``AwsMarketplace`` takes its boto3 clients in the constructor; ``build_aws_adapter(settings)``
builds them (pointed at the emulator in sandbox mode, at AWS in live mode).

Reporting (docs/marketplaces.md §2.2-§2.5): records are grouped by product code and sent in chunks of at most
25. Per-record statuses become ``Outcome`` values; ``UnprocessedRecords`` are resent a few
times, then come back ``FAILED``. A request-level error that concerns a record (bad dimension,
timestamp out of window, bad license, ...) rejects the whole call, so the chunk is split in
halves until the bad records are isolated and the good ones go through. Throttling, 5xx,
timeouts and connection errors raise ``TransientMarketplaceError`` (after botocore's own
retries); configuration and auth errors raise ``PermanentMarketplaceError``.

Notifications (docs/marketplaces.md §2.7-§2.9): SNS HTTP envelopes are verified (SignatureVersion 1 or 2
against the signing certificate, whose URL must be on an SNS host; in sandbox mode only the
emulator's certificate URL is trusted). EventBridge events carry no signature: the receiver
authenticates them (shared-secret header) before calling ``parse_eventbridge``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence

from marketplaces.base import MarketplaceRules, Marketplace
from marketplaces.aws.allocations import tag_keys_problem
from marketplaces.aws.entitlements import AwsEntitlement, Entitlements
from marketplaces.aws.metering import MAX_BATCH, Metering
from marketplaces.aws.notifications import (
    Notifications,
    SnsVerifier,
    is_sns_url,
    parse_eventbridge,
    string_to_sign,
)
from marketplaces.aws.wire import call, license_id


class AwsMarketplace(Metering, Entitlements, Notifications):
    """The AWS Marketplace adapter (metering, entitlements, lifecycle notifications)."""

    marketplace = Marketplace.AWS

    def __init__(
        self,
        client: Any,
        *,
        product_code: str | None = None,
        entitlement_client: Any = None,
        sns_verifier: SnsVerifier | None = None,
        max_batch: int = MAX_BATCH,
        unprocessed_retries: int = 3,
        backoff_seconds: Sequence[float] = (0.2, 0.5, 1.0),
        sleep: Callable[[float], None] = time.sleep,
        http_get: Callable[[str], Any] | None = None,
        pace: Callable[[], None] | None = None,
    ):
        """``pace`` is called before every BatchMeterUsage call and may block: the caller's way
        to keep all its processes under the per-account rate limit (10 calls/s) rather than
        spend the calls on ``ThrottlingException`` and backoff."""
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}")
        self.client = client
        self.product_code = product_code
        self.entitlement_client = entitlement_client
        self.sns_verifier = sns_verifier or SnsVerifier.live()
        self.max_batch = max_batch
        self.unprocessed_retries = unprocessed_retries
        self.backoff_seconds = tuple(backoff_seconds) or (0.0,)
        self._sleep = sleep
        self._http_get = http_get
        self._pace = pace


    def _call(self, method: Callable[..., Any], **params: Any) -> Any:
        return call(method, **params)


# --- composition ------------------------------------------------------------------------------


def build_aws_adapter(settings: Any, **overrides: Any) -> AwsMarketplace:
    """Build the adapter from settings: emulator endpoints in sandbox mode, AWS in live mode.

    ``overrides`` may replace constructor arguments (``client``, ``entitlement_client``,
    ``sns_verifier``, ``product_code``, ...) and tune the clients: ``max_attempts`` (botocore
    attempts per call including the first, default 3), ``connect_timeout``/``read_timeout`` (seconds) and, in
    sandbox mode, ``aws_access_key_id``/``aws_secret_access_key``.
    """
    import boto3
    from botocore.config import Config

    max_attempts = int(overrides.pop("max_attempts", 3))
    config = Config(
        # botocore retries throttling and 5xx itself first; what is left becomes transient.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=float(overrides.pop("connect_timeout", 5)),
        read_timeout=float(overrides.pop("read_timeout", 20)),
    )
    access_key = overrides.pop("aws_access_key_id", "sandbox")
    secret_key = overrides.pop("aws_secret_access_key", "sandbox")
    sandbox = settings.MARKETPLACE_MODE == "sandbox"
    if sandbox:
        endpoint = settings.emulator_url("aws")
        common = {
            "endpoint_url": endpoint,
            "region_name": settings.AWS_REGION,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "config": config,
        }
        metering = dict(common)
        entitlement = dict(common)
    else:
        metering = {"region_name": settings.AWS_REGION, "config": config}
        # The Entitlement Service exists only in us-east-1.
        entitlement = {"region_name": "us-east-1", "config": config}
    if "client" not in overrides:
        overrides["client"] = boto3.client("meteringmarketplace", **metering)
    if "entitlement_client" not in overrides:
        overrides["entitlement_client"] = boto3.client("marketplace-entitlement", **entitlement)
    if "sns_verifier" not in overrides:
        topics = tuple(settings.AWS_SNS_TOPIC_ARNS)
        overrides["sns_verifier"] = (
            SnsVerifier.for_emulator(settings.emulator_url("aws"), topic_arns=topics)
            if sandbox
            else SnsVerifier.live(topic_arns=topics)
        )
    client = overrides.pop("client")
    return AwsMarketplace(client, **overrides)


__all__ = [
    "AwsEntitlement",
    "AwsMarketplace",
    "SnsVerifier",
    "build_aws_adapter",
    "is_sns_url",
    "license_id",
    "parse_eventbridge",
    "string_to_sign",
]


def _aws_record_identifiers(columns: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, str]:
    """The identifiers of a usage record (docs/marketplaces.md §2.1): exactly one kind, never both.

    ``columns`` are the contract's columns plus its listing's flags (``aws_legacy_identifiers``,
    ``aws_concurrent_agreements``). A legacy listing meters by ``CustomerIdentifier`` when the
    contract has one (else by account + license, the only handle it has); every other listing by
    ``CustomerAWSAccountId`` + ``LicenseArn`` only. A record missing its kind's identifiers is
    rejected by the adapter before sending. ``concurrent_agreements`` ("true") tells the adapter to
    send no request-level ``ProductCode``; ``product_code`` stays, to group records per product.
    """
    def value(name: str) -> str:
        return str(columns.get(name) or ids.get(name) or "")

    if columns.get("aws_legacy_identifiers") and value("customer_identifier"):
        identifiers = {"product_code": value("product_code"), "customer_identifier": value("customer_identifier")}
    else:
        identifiers = {"product_code": value("product_code"), "customer_aws_account_id": value("customer_aws_account_id"),
                       "license_arn": value("license_arn")}
        if columns.get("aws_concurrent_agreements") and not columns.get("aws_legacy_identifiers"):
            identifiers["concurrent_agreements"] = "true"
    return {name: text for name, text in identifiers.items() if text}


RULES = MarketplaceRules(
    marketplace=Marketplace.AWS,
    batch_size=25,  # BatchMeterUsage takes at most 25 records
    # Usage is accepted for one hour after the license is deprovisioned (docs/marketplaces.md §2.10):
    # from the event's own time, so a delivery that arrives late does not lengthen the hour.
    final_usage_window=timedelta(hours=1),
    window_opens_at_cancellation=True,
    hourly_zero_record=True,  # AWS asks for a record every hour, zero included
    flush_lookback_hours=0,
    # EventBridge prints ARNs without "arn:"; the l-<hex> license id is stable across both feeds.
    contract_key_fields=("license_id", "license_arn", "customer_identifier"),
    product_fields=("product_code", "product_id"),
    record_identifiers=_aws_record_identifiers,
    # One billing customer per license, not per account: under Concurrent Agreements one account
    # holds several agreements, and a customer per account would bill each of them the usage of
    # all (docs/marketplaces.md §1.8).
    customer_identity=lambda ids: (license_id(ids.get("license_id") or ids.get("license_arn"))
                                   or ids.get("customer_identifier")),
    # BatchMeterUsage takes no record 6 hours or more after its hour (current API reference).
    report_window=timedelta(hours=6),
    allocation_keys_problem=tag_keys_problem,  # UsageAllocations: at most 5 tag keys (§2.12)
)
