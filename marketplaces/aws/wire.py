"""AWS wire helpers shared by metering, entitlements and notifications: license ids, boto3 error
translation, JSON and time parsing."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from marketplaces.base import MalformedNotification, PermanentMarketplaceError, TransientMarketplaceError


_LICENSE_ID = re.compile(r"(l-[0-9a-f]+)$")

# Request-level errors caused by the content of a record: isolate the record, send the rest.
RECORD_ERRORS = frozenset(
    {
        "InvalidCustomerIdentifierException",
        "TimestampOutOfBoundsException",
        "InvalidUsageDimensionException",
        "InvalidLicenseException",
        "InvalidTagException",
        "InvalidUsageAllocationsException",
        "ValidationException",
    }
)


TRANSIENT_ERRORS = frozenset(
    {
        "ThrottlingException",
        "InternalServiceErrorException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TooManyRequestsException",
    }
)


def license_id(license_arn: str | None) -> str | None:
    """Return the trailing ``l-<hex>`` id of a license ARN (EventBridge may drop ``arn:``)."""
    match = _LICENSE_ID.search(license_arn or "")
    return match.group(1) if match else None


class RecordLevelError(Exception):
    """AWS refused a whole call because of one of its records."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def call(method: Callable[..., Any], **params: Any) -> Any:
    """Call a boto3 method, translating its errors into ours (``RecordLevelError`` for a bad record)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError as BotoConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        return method(**params)
    except ClientError as err:
        error = err.response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")
        status = int((err.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in RECORD_ERRORS:
            raise RecordLevelError(code, message) from None
        if code in TRANSIENT_ERRORS or status >= 500 or status == 429:
            raise TransientMarketplaceError(f"{code or status}: {message}") from err
        raise PermanentMarketplaceError(f"{code or status}: {message}") from err
    except (NoCredentialsError, PartialCredentialsError) as err:
        raise PermanentMarketplaceError(f"no usable AWS credentials: {err}") from err
    except (BotoConnectionError, HTTPClientError) as err:
        raise TransientMarketplaceError(f"connection to AWS failed: {err}") from err
    except BotoCoreError as err:
        raise PermanentMarketplaceError(f"AWS client error: {err}") from err


def load_json(body: bytes | str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, TypeError):
        raise MalformedNotification("body is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedNotification("body is not a JSON object")
    return document


def first(mapping: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = mapping.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def parse_time(value: Any, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedNotification(f"{field} is not an ISO-8601 time", field=field) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+23:59 has no UTC value
        raise MalformedNotification(f"{field} is out of range", field=field) from None
