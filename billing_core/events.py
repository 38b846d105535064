"""Usage events: validated at ingest, stored append-only, corrected by read-path overlays.

Rules (docs/billing-rules.md §3):

- at most one event per ``idempotency_key``, for ever: the same key with the same body is a
  no-op; the same key with a different body — inside one batch or against a stored event —
  rejects the whole batch with ``IdempotencyConflict`` naming the key;
- a batch holds at most ``MAX_BATCH`` (500) events and is stored whole or not at all;
- properties are flat: strings, numbers and booleans only;
- timestamps may be at most ``FUTURE_TOLERANCE`` (5 minutes) after ``now``;
- an event names its customer by ``customer_id`` or by ``external_customer_id`` (exactly one);
  an unknown ``external_customer_id`` is kept and attached when the customer appears.

Numbers in properties keep the text they were sent with (parse JSON with
``parse_float=Decimal``) and must lie in the range every aggregation is exact for
(``billing_core.usage``: ``|v| < 10^15``, at most 9 digits after the point and 15 significant
digits); a number outside it fails its event, naming the property.

Corrections never edit a stored body: ``amend`` stores a new version of the event and marks the
previous one superseded, ``deprecate`` marks the current version ignored. Metrics read only
live versions.

``validate_batch`` is deliberately a plain loop over dicts producing tuples: it runs for every
ingested event, so it allocates as little as it can.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Mapping, Protocol, Sequence

from billing_core import errors, wire
from billing_core.usage import VALUE_LIMIT, value_problem

__all__ = [
    "EPOCH",
    "FUTURE_TOLERANCE",
    "MAX_BATCH",
    "RECORD_FIELDS",
    "BatchTooLarge",
    "Event",
    "EventNotFound",
    "EventStore",
    "EventValidationFailed",
    "IdempotencyConflict",
    "IngestResult",
    "amend_event",
    "deprecate_event",
    "from_micros",
    "ingest_events",
    "store_records",
    "same_body",
    "to_micros",
    "validate_batch",
]

MAX_BATCH = 500
FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_KEY_LENGTH = 255
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICRO = timedelta(microseconds=1)

# Order of the fields of a validated record tuple (what the store writes).
RECORD_FIELDS = (
    "idempotency_key",
    "event_name",
    "customer_id",
    "external_customer_id",
    "timestamp_us",
    "properties_json",
)
Record = tuple[str, str, "str | None", "str | None", int, str]

_EVENT_FIELDS = frozenset(
    ("idempotency_key", "event_name", "timestamp", "properties", "customer_id", "external_customer_id")
)


class EventValidationFailed(errors.InvalidInput):
    """Some events of a batch are invalid; ``failures`` lists ``(idempotency_key, [errors])``."""

    def __init__(self, failures: list[tuple[str, list[str]]]):
        self.failures = failures
        first_key, first_errors = failures[0]
        more = f" (and {len(failures) - 1} more events)" if len(failures) > 1 else ""
        super().__init__(f"event {first_key!r}: {first_errors[0]}{more}", field="events")


class BatchTooLarge(errors.InvalidInput):
    """A batch holds more than ``MAX_BATCH`` events."""


class IdempotencyConflict(errors.Conflict):
    """An idempotency key was reused with a different body; nothing of the batch was stored."""

    def __init__(self, key: str, against: str):
        self.key = key
        super().__init__(
            f"idempotency_key {key!r} was already used with a different body ({against}); "
            "the whole batch was rejected",
            field="idempotency_key",
        )


class EventNotFound(errors.NotFound):
    """No event has this id (idempotency key)."""


@dataclass(frozen=True)
class Event:
    """A stored event as read back (its current version)."""

    idempotency_key: str
    event_name: str
    timestamp: datetime
    properties: Mapping[str, Any]
    customer_id: str | None = None
    external_customer_id: str | None = None
    deprecated: bool = False
    version: int = 0


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did: events newly stored and events that were already there."""

    ingested: int
    duplicates: int
    keys: tuple[str, ...] = field(default=())


class EventStore(Protocol):
    """Where events are kept (``billing_core.persistence.events.SqlEventStore``)."""

    def unknown_customer_ids(self, customer_ids: set[str]) -> set[str]: ...

    def append(self, records: list[Record], *, backfill_id: str | None = None) -> int: ...

    def current(self, idempotency_key: str) -> Event: ...

    def amend(self, idempotency_key: str, record: Record) -> Event: ...

    def deprecate(self, idempotency_key: str) -> Event: ...


# Conversions ---------------------------------------------------------------------------------


def to_micros(instant: datetime) -> int:
    """Return microseconds since the Unix epoch (naive datetimes are taken as UTC)."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return (instant - EPOCH) // _ONE_MICRO


def from_micros(micros: int) -> datetime:
    """Return the aware UTC datetime for microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=micros)


def _parse_timestamp(value: object) -> datetime:
    if not isinstance(value, (datetime, str)):
        raise ValueError("timestamp: must be an ISO 8601 string")
    return wire.parse_instant(value, "timestamp")  # an InvalidInstant is a ValueError naming the field


_INF = float("inf")
_LOW, _HIGH = -VALUE_LIMIT, VALUE_LIMIT


def _encode_properties(properties: Mapping[str, Any], checked: bool = True) -> tuple[str, list[str] | None]:
    """Return (JSON text, problems) for flat properties; numbers keep their exact text.

    ``checked`` refuses numbers outside the aggregation range (ingest); stored events are
    written back as they are.
    """
    parts = []
    problems: list[str] | None = None
    for key, value in properties.items():
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is int:
            if checked and not _LOW < value < _HIGH:
                problems = (problems or []) + [f"properties.{key}: {value_problem(Decimal(value))}"]
                continue
            text = int.__repr__(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is Decimal:
            problem = value_problem(value) if checked or not value.is_finite() else None
            if problem is not None:
                problems = (problems or []) + [f"properties.{key}: {problem}"]
                continue
            text = str(value)
        elif kind is float:
            if value != value or value in (_INF, -_INF):
                problems = (problems or []) + [f"properties.{key}: not a finite number"]
                continue
            problem = value_problem(Decimal(repr(value))) if checked else None
            if problem is not None:
                problems = (problems or []) + [f"properties.{key}: {problem}"]
                continue
            text = float.__repr__(value)
        else:
            if isinstance(value, (dict, list, tuple)):
                problem = f"properties.{key}: nested values are not allowed (strings, numbers, booleans only)"
            elif value is None:
                problem = f"properties.{key}: null is not allowed (strings, numbers, booleans only)"
            else:
                problem = f"properties.{key}: unsupported value type {kind.__name__}"
            problems = (problems or []) + [problem]
            continue
        if type(key) is not str or not key:
            problems = (problems or []) + [f"properties: keys must be non-empty strings ({key!r})"]
            continue
        parts.append(_quote(key) + ":" + text)
    return "{" + ",".join(parts) + "}", problems


def properties_json(properties: Mapping[str, Any]) -> str:
    """Serialize flat properties to JSON, keeping numbers' text exactly (Decimals included)."""
    text, problems = _encode_properties(properties, False)
    if problems:
        raise ValueError(problems[0])
    return text


def validate_batch(events: Sequence[Any], *, now: datetime) -> list[Record]:
    """Validate a batch and return one record per distinct event (duplicates of a key dropped).

    Raises ``BatchTooLarge``, ``EventValidationFailed`` (every failing event listed) or
    ``IdempotencyConflict`` (a key repeated with another body inside the batch).
    """
    if not isinstance(events, (list, tuple)):
        raise EventValidationFailed([("", ["events: must be a list"])])
    if len(events) > MAX_BATCH:
        raise BatchTooLarge(
            f"events: {len(events)} events in one request; the limit is {MAX_BATCH}", field="events"
        )
    latest_us = to_micros(now + FUTURE_TOLERANCE)
    failures: list[tuple[str, list[str]]] = []
    records: list[Record] = []
    seen: dict[str, tuple[Record, Mapping[str, Any]]] = {}
    encode = _encode_properties
    for position, raw in enumerate(events):
        if type(raw) is not dict:
            failures.append((f"#{position}", ["event: must be an object"]))
            continue
        problems: list[str] = []
        key = raw.get("idempotency_key")
        if type(key) is not str or not key:
            problems.append("idempotency_key: must be a non-empty string")
            key = f"#{position}"
        elif len(key) > MAX_KEY_LENGTH:
            problems.append(f"idempotency_key: longer than {MAX_KEY_LENGTH} characters")
        if len(raw) > 5 or not _EVENT_FIELDS.issuperset(raw):
            extra = sorted(set(raw) - _EVENT_FIELDS)
            if extra:
                problems.append(f"{extra[0]}: unknown field")
        name = raw.get("event_name")
        if type(name) is not str or not name:
            problems.append("event_name: must be a non-empty string")
        customer_id = raw.get("customer_id")
        external_id = raw.get("external_customer_id")
        if (customer_id is None) == (external_id is None):
            problems.append("customer_id / external_customer_id: give exactly one of them")
        elif customer_id is not None and (type(customer_id) is not str or not customer_id):
            problems.append("customer_id: must be a non-empty string")
        elif external_id is not None and (type(external_id) is not str or not external_id):
            problems.append("external_customer_id: must be a non-empty string")
        timestamp_us = 0
        try:
            timestamp_us = to_micros(_parse_timestamp(raw.get("timestamp")))
            if timestamp_us > latest_us:
                problems.append("timestamp: more than 5 minutes in the future")
        except wire.InvalidInstant as exc:
            problems.append("timestamp: more than 5 minutes in the future" if exc.too_late else str(exc))
        except (ValueError, TypeError, OverflowError):
            problems.append("timestamp: must be an ISO 8601 instant, e.g. 2026-11-21T10:00:00Z")
        properties = raw.get("properties")
        props_text = "{}"
        if type(properties) is not dict:
            problems.append("properties: must be an object")
            properties = {}
        else:
            props_text, prop_problems = encode(properties)
            if prop_problems:
                problems.extend(prop_problems)
        if problems:
            failures.append((key, problems))
            continue
        record: Record = (key, name, customer_id, external_id, timestamp_us, props_text)
        previous = seen.get(key)
        if previous is not None:
            if not same_body(previous[0], previous[1], record, properties):
                raise IdempotencyConflict(key, "repeated in this request")
            continue
        seen[key] = (record, properties)
        records.append(record)
    if failures:
        raise EventValidationFailed(failures)
    return records


def same_body(a: Record, a_props: Mapping[str, Any] | None, b: Record, b_props: Mapping[str, Any] | None) -> bool:
    """Tell whether two records carry the same event (property order and number spelling aside)."""
    if a[1:5] != b[1:5]:
        return False
    if a[5] == b[5]:
        return True
    left = a_props if a_props is not None else json.loads(a[5], parse_float=Decimal)
    right = b_props if b_props is not None else json.loads(b[5], parse_float=Decimal)
    return _normalised(left) == _normalised(right)


def _normalised(props: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in props.items():
        if isinstance(value, float):
            value = Decimal(repr(value))
        out[key] = (type(value) is bool, value)
    return out


# Use cases -----------------------------------------------------------------------------------


def ingest_events(store: EventStore, events: Sequence[Any], *, now: datetime) -> IngestResult:
    """Validate and store a batch: all of it, or nothing (see the module rules)."""
    return store_records(store, validate_batch(events, now=now), sent=len(events))


def store_records(
    store: EventStore, records: list[Record], *, sent: int | None = None, backfill_id: str | None = None
) -> IngestResult:
    """Store records made by ``validate_batch`` (the second half of ``ingest_events``).

    Entry points that serialize writers validate first, outside any lock, then call this.
    """
    named = {r[2] for r in records if r[2] is not None}
    if named:
        unknown = store.unknown_customer_ids(named)
        if unknown:
            raise EventValidationFailed(
                [(r[0], [f"customer_id: no customer {r[2]!r}"]) for r in records if r[2] in unknown]
            )
    if not records:
        inserted = 0
    elif backfill_id is None:
        inserted = store.append(records)
    else:
        inserted = store.append(records, backfill_id=backfill_id)
    total = len(records) if sent is None else sent
    return IngestResult(ingested=inserted, duplicates=total - inserted, keys=tuple(r[0] for r in records))


def amend_event(store: EventStore, idempotency_key: str, body: Mapping[str, Any], *, now: datetime) -> Event:
    """Replace the body of a stored event (the original is kept and no longer counted)."""
    if not isinstance(body, Mapping):
        raise EventValidationFailed([(idempotency_key, ["body: must be an object"])])
    extra = sorted(set(body) - (_EVENT_FIELDS - {"idempotency_key"}))
    if extra:
        raise EventValidationFailed([(idempotency_key, [f"{extra[0]}: unknown field"])])
    (record,) = validate_batch([{**body, "idempotency_key": idempotency_key}], now=now)
    if record[2] is not None and store.unknown_customer_ids({record[2]}):
        raise EventValidationFailed([(idempotency_key, [f"customer_id: no customer {record[2]!r}"])])
    return store.amend(idempotency_key, record)


def deprecate_event(store: EventStore, idempotency_key: str) -> Event:
    """Mark an event ignored by every metric (idempotent)."""
    return store.deprecate(idempotency_key)
