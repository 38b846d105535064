"""What every outward-facing parser accepts: strict JSON numbers and instants in one range.

JSON: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259 §6) and a number whose
float overflows (``1e400``) cannot be stored or answered as JSON again, so both are refused;
``loads(data, exact=True)`` keeps fractions as ``Decimal`` (ingest), where ``1e400`` is an exact
value and the caller's own ranges apply.

Instants: from ``EARLIEST`` (1970-01-01T00:00:00Z, included) to ``LATEST``
(2200-01-01T00:00:00Z, excluded). Outside that range Python's datetime arithmetic overflows
(``0001-01-01T00:00:00+23:59`` has no UTC value) and billing periods cannot be computed, so
API fields, query filters and webhook payloads are checked here, once, and refused naming the
field.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from billing_core.errors import InvalidInput

__all__ = ["EARLIEST", "LATEST", "InvalidInstant", "InvalidJson", "check_date", "check_instant", "loads",
           "parse_instant"]

EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)
RANGE_TEXT = "between 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z"


class InvalidJson(ValueError):
    """The text is not JSON this service stores (malformed, or a non-finite number)."""


class InvalidInstant(InvalidInput, ValueError):
    """An instant is malformed or outside [EARLIEST, LATEST); ``field`` names it.

    ``too_late`` tells an instant at or after ``LATEST`` (a caller with a nearer bound of its
    own, such as ingest's future window, reports that one instead).
    """

    def __init__(self, message: str, *, field: str | None = None, too_late: bool = False):
        super().__init__(message, field=field)
        self.too_late = too_late


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise InvalidJson(f"number {text[:40]} is out of range")
    return value


def loads(data: bytes | str, *, exact: bool = False) -> Any:
    """Parse JSON, refusing NaN/Infinity and (unless ``exact``) numbers beyond a float's range.

    Raise ``InvalidJson`` with the reason (``ValueError`` and ``RecursionError`` pass through
    from the parser for malformed or too deeply nested text).
    """
    if exact:
        return json.loads(data, parse_float=Decimal, parse_constant=_refuse_constant)
    return json.loads(data, parse_float=_finite_float, parse_constant=_refuse_constant)


def check_instant(value: datetime, field: str) -> datetime:
    """Return ``value`` in UTC if it lies in the accepted range (naive means UTC), else raise."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    # Compared before converting: astimezone itself overflows at the ends of datetime's range.
    if not EARLIEST <= aware < LATEST:
        raise InvalidInstant(f"{field}: {_show(value)} is out of range (instants are {RANGE_TEXT})", field=field,
                             too_late=aware >= LATEST)
    return aware.astimezone(timezone.utc)


def check_date(value: date, field: str) -> date:
    """Return ``value`` if its UTC midnight lies in the accepted range, else raise."""
    check_instant(datetime(value.year, value.month, value.day), field)
    return value


def parse_instant(value: object, field: str, *, require_offset: bool = False) -> datetime:
    """Parse an ISO-8601 instant (``Z`` or an offset; a date means midnight UTC) and check its range.

    Naive instants are UTC unless ``require_offset``. Raise ``InvalidInstant`` naming ``field``.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidInstant(f"{field}: {value[:64]!r} is not an ISO-8601 date-time", field=field) from None
    else:
        raise InvalidInstant(f"{field}: expected an ISO-8601 date-time", field=field)
    if require_offset and parsed.tzinfo is None:
        raise InvalidInstant(f"{field}: must carry a timezone (e.g. 2026-11-21T10:00:00Z)", field=field)
    return check_instant(parsed, field)


def _show(value: datetime) -> str:
    return value.isoformat()
