"""The AWS APIs' rules (docs/marketplaces.md §2.11): admission, BatchMeterUsage, ResolveCustomer, GetEntitlements,
and the subscriptions the control API creates."""
from __future__ import annotations

import re
import string
import uuid
from datetime import datetime, timedelta
from typing import Any, Mapping

from flask import request

from marketplaces.emulators.aws.state import AwsEmulatorState, Subscription, _license_id
from marketplaces.emulators.aws.wire import (
    _ACCESS_KEY,
    LICENSE_ACCOUNT,
    MAX_QUANTITY,
    AwsError,
    _hour,
    _iso,
    _parse_iso,
    _parse_timestamp,
)


def _admit(state: AwsEmulatorState) -> None:
    """Apply auth, faults and throttling to one API call (raise ``AwsError`` to refuse it)."""
    match = _ACCESS_KEY.search(request.headers.get("Authorization", ""))
    if match and match.group(1) in set(state.options["bad_access_keys"]):
        raise AwsError(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    fault = state.faults.draw()
    if fault == "outage":
        raise AwsError("ServiceUnavailable", "Service Unavailable", 503)
    if fault == "error":
        raise AwsError("InternalServiceErrorException", "An internal error occurred", 500)
    if fault == "throttle":
        raise AwsError("ThrottlingException", "Rate exceeded")
    with state.lock:
        if not state.bucket.take():
            raise AwsError("ThrottlingException", "Rate exceeded")


# --- metering -----------------------------------------------------------------------------------


def _batch_meter_usage(state: AwsEmulatorState, params: Mapping[str, Any]) -> dict[str, Any]:
    records = params.get("UsageRecords")
    if not isinstance(records, list) or not records:
        raise AwsError("ValidationException", "UsageRecords must be a non-empty list")
    if len(records) > state.options["max_records"]:
        raise AwsError(
            "ValidationException",
            f"1 validation error detected: Value at 'usageRecords' failed to satisfy constraint: "
            f"Member must have length less than or equal to {state.options['max_records']}",
        )
    product_code = params.get("ProductCode")
    if not product_code:
        # Without ProductCode (Concurrent Agreements) each record's license names its product;
        # the legacy CustomerIdentifier needs the request's ProductCode.
        for rec in records:
            if isinstance(rec, Mapping) and rec.get("CustomerIdentifier"):
                raise AwsError("ValidationException", "ProductCode is required for records with CustomerIdentifier")
            if isinstance(rec, Mapping) and not rec.get("LicenseArn"):
                raise AwsError("ValidationException", "LicenseArn is required in every record when ProductCode is omitted")
    with state.lock:
        now = state.now()
        # Validate the whole batch first: any request-level problem rejects every record.
        resolved = [_resolve_record(state, product_code, rec, now) for rec in records]
        products = sorted({product for _, product, _ in resolved})
        if len(products) > 1 and state.options["one_product_per_call"]:
            # Each BatchMeterUsage call is for one product: a mixed call fails as a whole.
            raise AwsError("ValidationException",
                           f"a BatchMeterUsage call is for one product; this one mixes {', '.join(products)}")
        results: list[dict[str, Any]] = []
        unprocessed: list[dict[str, Any]] = []
        for rec, (sub, product, timestamp) in zip(records, resolved):
            if state.options["unprocessed_rate"] and state.rng.random() < state.options["unprocessed_rate"]:
                unprocessed.append(rec)
                continue
            results.append(_meter_one(state, rec, sub, product, timestamp, now))
    return {"Results": results, "UnprocessedRecords": unprocessed}


def _resolve_record(
    state: AwsEmulatorState, product_code: str | None, rec: Mapping[str, Any], now: datetime
) -> tuple[Subscription | None, str, datetime]:
    """Check one record against the request-level rules; return (subscription, product, time)."""
    if not isinstance(rec, Mapping):
        raise AwsError("ValidationException", "each usage record must be an object")
    if "Timestamp" not in rec or not rec.get("Dimension"):
        raise AwsError("ValidationException", "Timestamp and Dimension are required")
    identifier = rec.get("CustomerIdentifier")
    account = rec.get("CustomerAWSAccountId")
    license_arn = rec.get("LicenseArn")
    if bool(identifier) == bool(account):
        raise AwsError(
            "ValidationException",
            "exactly one of CustomerIdentifier and CustomerAWSAccountId is required",
        )
    quantity = rec.get("Quantity", 0)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 0 <= quantity <= MAX_QUANTITY:
        raise AwsError("ValidationException", f"Quantity must be an integer in 0..{MAX_QUANTITY}")

    sub: Subscription | None = None
    if identifier:
        sub = state.find_by_identifier(identifier)
        if sub is None:
            raise AwsError(
                "InvalidCustomerIdentifierException", f"unknown customer identifier {identifier}"
            )
        if license_arn and state.find_by_license(license_arn) is not sub:
            raise AwsError("InvalidLicenseException", f"license {license_arn} does not match the customer")
    elif license_arn:
        sub = state.find_by_license(license_arn)
        if sub is None or sub.customer_aws_account_id != account:
            raise AwsError("InvalidLicenseException", f"invalid license {license_arn} for account {account}")
    else:
        product = product_code
        matches = [
            s for s in state.subscriptions.values()
            if s.customer_aws_account_id == account and (product is None or s.product_code == product)
        ]
        if len(matches) > 1:
            raise AwsError("InvalidLicenseException", "LicenseArn is required: the account holds several licenses")
        sub = matches[0] if matches else None

    product = product_code or (sub.product_code if sub else None)
    if not product or product not in state.products:
        raise AwsError("InvalidProductCodeException", f"unknown product code {product!r}")
    if sub is not None and sub.product_code != product:
        if license_arn:
            raise AwsError("InvalidLicenseException", f"license {license_arn} is not for product {product}")
        sub = None  # the customer exists but is not subscribed to this product
    if rec["Dimension"] not in state.products[product]:
        raise AwsError("InvalidUsageDimensionException", f"dimension {rec['Dimension']!r} is not defined for {product}")

    timestamp = _parse_timestamp(rec["Timestamp"])
    max_age = timedelta(seconds=float(state.options["max_age_seconds"]))
    skew = timedelta(seconds=float(state.options["future_skew_seconds"]))
    if timestamp <= now - max_age or timestamp > now + skew:
        raise AwsError("TimestampOutOfBoundsException", "Timestamp is out of the allowed range")
    if sub is not None and license_arn and timestamp < _hour(sub.started_at):
        raise AwsError("InvalidLicenseException", "usage is outside the license activation period")

    allocations = rec.get("UsageAllocations")
    if allocations is not None:
        _check_allocations(allocations, quantity)
    return sub, product, timestamp


def _check_allocations(allocations: Any, quantity: int) -> None:
    if not isinstance(allocations, list) or not 1 <= len(allocations) <= 2500:
        raise AwsError("InvalidUsageAllocationsException", "UsageAllocations must hold 1..2500 items")
    seen: set[tuple[tuple[str, str], ...]] = set()
    total = 0
    for alloc in allocations:
        tags = alloc.get("Tags") or []
        if len(tags) > 5:
            raise AwsError("InvalidTagException", "at most 5 tags per allocation")
        for tag in tags:
            if not re.fullmatch(r"[a-zA-Z0-9+ -=._:/@]{1,256}", str(tag.get("Value", ""))) or not (
                1 <= len(str(tag.get("Key", ""))) <= 100
            ):
                raise AwsError("InvalidTagException", f"invalid tag {tag!r}")
        tag_set = tuple(sorted((t["Key"], t["Value"]) for t in tags))
        if tag_set in seen:
            raise AwsError("InvalidUsageAllocationsException", "each allocation needs a unique tag set")
        seen.add(tag_set)
        total += int(alloc.get("AllocatedUsageQuantity", -1))
    if total != quantity:
        raise AwsError("InvalidUsageAllocationsException", "allocations must sum to Quantity")


def _meter_one(
    state: AwsEmulatorState,
    rec: Mapping[str, Any],
    sub: Subscription | None,
    product: str,
    timestamp: datetime,
    now: datetime,
) -> dict[str, Any]:
    echo = dict(rec)
    if sub is None or sub.state(now, state.window()) == "inactive":
        return {"UsageRecord": echo, "Status": "CustomerNotSubscribed"}
    quantity = int(rec.get("Quantity", 0))
    hour = _hour(timestamp)
    slot = (product, sub.id, rec["Dimension"], hour)
    existing = state.usage.get(slot)
    if existing is not None:
        # First write wins; AWS never accumulates records for one customer/dimension/hour.
        status = (
            state.options["identical_resend_status"]
            if existing["quantity"] == quantity
            else "DuplicateRecord"
        )
        return {"UsageRecord": echo, "MeteringRecordId": existing["metering_record_id"], "Status": status}
    record_id = str(uuid.uuid4())
    entry = {
        "product_code": product,
        "subscription_id": sub.id,
        "customer_aws_account_id": sub.customer_aws_account_id,
        "license_arn": sub.license_arn,
        "customer_identifier": sub.customer_identifier,
        "dimension": rec["Dimension"],
        "hour": hour,
        "quantity": quantity,
        "metering_record_id": record_id,
    }
    state.usage[slot] = entry
    state.accepted.append(
        {**entry, "hour": _iso(hour), "timestamp": _iso(timestamp), "received_at": _iso(now), "request": echo}
    )
    return {"UsageRecord": echo, "MeteringRecordId": record_id, "Status": "Success"}


def _resolve_customer(state: AwsEmulatorState, params: Mapping[str, Any]) -> dict[str, Any]:
    token = params.get("RegistrationToken") or ""
    with state.lock:
        sub = state.subscriptions.get(token)
        if sub is None:
            raise AwsError("InvalidTokenException", "registration token is invalid")
        out = {
            "CustomerAWSAccountId": sub.customer_aws_account_id,
            "ProductCode": sub.product_code,
            "LicenseArn": sub.license_arn,
        }
        if sub.customer_identifier:
            out["CustomerIdentifier"] = sub.customer_identifier
        return out


def _get_entitlements(state: AwsEmulatorState, params: Mapping[str, Any]) -> dict[str, Any]:
    product = params.get("ProductCode")
    if not product:
        raise AwsError("InvalidParameterException", "ProductCode is required")
    filters = params.get("Filter") or {}
    if "CUSTOMER_IDENTIFIER" in filters and "CUSTOMER_AWS_ACCOUNT_ID" in filters:
        raise AwsError(
            "InvalidParameterException",
            "CUSTOMER_IDENTIFIER and CUSTOMER_AWS_ACCOUNT_ID are mutually exclusive",
        )
    page_size = int(params.get("MaxResults") or state.options["entitlement_page_size"])
    if not 1 <= page_size <= 25:
        raise AwsError("InvalidParameterException", "MaxResults must be in 1..25")
    token = params.get("NextToken")
    with state.lock:
        rows = []
        for sub in state.subscriptions.values():
            if sub.product_code != product:
                continue
            for dimension, value in sorted(sub.entitlements.items()):
                row = {
                    "ProductCode": product,
                    "Dimension": dimension,
                    "CustomerAWSAccountId": sub.customer_aws_account_id,
                    "LicenseArn": sub.license_arn,
                    "Value": _entitlement_value(value),
                }
                if sub.customer_identifier:
                    row["CustomerIdentifier"] = sub.customer_identifier
                if sub.expiration:
                    row["ExpirationDate"] = sub.expiration
                if _matches(row, filters):
                    rows.append(row)
        empty_first = state.options["empty_first_entitlement_page"]
    if token is None and empty_first:
        return {"Entitlements": [], "NextToken": "page:0"}
    start = 0
    if token is not None:
        try:
            start = int(str(token).split(":", 1)[1])
        except (IndexError, ValueError):
            raise AwsError("InvalidParameterException", "invalid NextToken") from None
    page = rows[start:start + page_size]
    out: dict[str, Any] = {"Entitlements": page}
    if start + page_size < len(rows):
        out["NextToken"] = f"page:{start + page_size}"
    return out


def _entitlement_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BooleanValue": value}
    if isinstance(value, int):
        return {"IntegerValue": value}
    if isinstance(value, float):
        return {"DoubleValue": value}
    return {"StringValue": str(value)}


def _matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    fields = {
        "CUSTOMER_IDENTIFIER": "CustomerIdentifier",
        "CUSTOMER_AWS_ACCOUNT_ID": "CustomerAWSAccountId",
        "LICENSE_ARN": "LicenseArn",
        "DIMENSION": "Dimension",
    }
    for name, values in filters.items():
        column = fields.get(name)
        if column is None:
            raise AwsError("InvalidParameterException", f"unknown filter {name}")
        if row.get(column) not in set(values or []):
            return False
    return True


# --- lifecycle -----------------------------------------------------------------------------------


def _rand(state: AwsEmulatorState, alphabet: str, size: int) -> str:
    return "".join(state.rng.choice(alphabet) for _ in range(size))


def _create_subscription(state: AwsEmulatorState, body: Mapping[str, Any]) -> Subscription:
    with state.lock:
        product = body.get("product_code") or "prod-emulator"
        dimensions = set(body.get("dimensions") or ["usage_fee"])
        account = body.get("customer_aws_account_id") or _rand(state, string.digits, 12)
        license_arn = body.get("license_arn") or (
            f"arn:aws:license-manager::{LICENSE_ACCOUNT}:license:l-{_rand(state, '0123456789abcdef', 32)}"
        )
        sub_id = _license_id(license_arn)
        if sub_id is None:
            raise AwsError("ValidationException", "license_arn must end with l-<hex>")
        if sub_id in state.subscriptions:
            raise AwsError("ValidationException", f"license {sub_id} already exists")
        identifier = body.get("customer_identifier")
        if identifier is None and body.get("legacy_identifier", True):
            identifier = _rand(state, string.ascii_letters + string.digits, 11)
        now = state.now()
        started = body.get("started_at")
        sub = Subscription(
            id=sub_id,
            product_code=product,
            customer_aws_account_id=account,
            license_arn=license_arn,
            customer_identifier=identifier or None,
            agreement_id="agmt-" + _rand(state, string.ascii_lowercase + string.digits, 25),
            offer_id=body.get("offer_id") or "offer-" + _rand(state, string.ascii_lowercase + string.digits, 13),
            dimensions=dimensions,
            started_at=_parse_iso(started) if started else now - timedelta(days=1),
            entitlements=dict(body.get("entitlements") or {}),
            expiration=_parse_iso(body["expiration"]) if body.get("expiration") else None,
            free_trial=bool(body.get("free_trial", False)),
        )
        state.subscriptions[sub_id] = sub
        state.products.setdefault(product, set()).update(dimensions)
        return sub


def _lookup(state: AwsEmulatorState, sub_id: str) -> Subscription | None:
    return state.subscriptions.get(sub_id) or state.find_by_license(sub_id) or state.find_by_identifier(sub_id)
