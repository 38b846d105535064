"""Customers: the other party of a billing relationship, known by ``id`` or ``external_customer_id``.

Events may name a customer by ``external_customer_id`` before that customer exists; they are
kept and attached when it appears (``billing_core.sql_usage`` resolves the alias at query
time, so no stored event is ever rewritten).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Mapping, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing_core import errors

__all__ = [
    "Customer",
    "CustomerNotFound",
    "CustomerRepository",
    "DuplicateCustomer",
    "InvalidCustomer",
    "create_customer",
    "merge_metadata",
    "update_customer",
]

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
MAX_ID_LENGTH = 255


class InvalidCustomer(errors.InvalidInput):
    """A customer field is invalid; ``field`` names it."""


class CustomerNotFound(errors.NotFound):
    """No customer has the requested id or external id."""


class DuplicateCustomer(errors.Conflict):
    """Another customer already has this ``external_customer_id``."""


@dataclass(frozen=True)
class Customer:
    """A customer: ``timezone`` defaults to UTC and cannot change after creation."""

    id: str
    name: str
    email: str
    created_at: datetime
    external_customer_id: str | None = None
    currency: str | None = None
    timezone: str = "UTC"
    metadata: Mapping[str, str] = field(default_factory=dict)


class CustomerRepository(Protocol):
    """Where customers are kept (``billing_core.persistence.events.SqlCustomerRepository``)."""

    def add(self, customer: Customer) -> Customer: ...

    def get(self, customer_id: str) -> Customer: ...

    def get_by_external_id(self, external_customer_id: str) -> Customer: ...

    def save(self, customer: Customer) -> Customer: ...

    def list(
        self, *, limit: int, cursor: str | None = None, created_at: Mapping[str, datetime] | None = None
    ) -> tuple[list[Customer], str | None]: ...


def _check_currency(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CURRENCY.match(value.upper()):
        raise InvalidCustomer(f"currency: {value!r} is not an ISO 4217 code", field="currency")
    return value.upper()


def _check_timezone(value: str | None) -> str:
    if value is None:
        return "UTC"
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidCustomer(f"timezone: {value!r} is not an IANA timezone", field="timezone") from None
    return value


def _check_text(value: object, name: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidCustomer(f"{name}: must be a non-empty string", field=name)
    if len(value) > MAX_ID_LENGTH and name in ("external_customer_id", "id"):
        raise InvalidCustomer(f"{name}: longer than {MAX_ID_LENGTH} characters", field=name)
    return value


def _check_email(value: object) -> str:
    text = _check_text(value, "email", required=True)
    assert text is not None
    if not _EMAIL.match(text):
        raise InvalidCustomer(f"email: {text!r} is not an email address", field="email")
    return text


def merge_metadata(current: Mapping[str, str], changes: Mapping[str, Any] | None) -> dict[str, str]:
    """Apply Orb's metadata rule: a key set to ``None`` is removed, ``None`` as a whole clears all."""
    if changes is None:
        return {}
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif not isinstance(value, str):
            raise InvalidCustomer(f"metadata.{key}: values must be strings", field=f"metadata.{key}")
        else:
            merged[key] = value
    return merged


def create_customer(
    repository: CustomerRepository,
    *,
    customer_id: str,
    name: str,
    email: str,
    now: datetime,
    external_customer_id: str | None = None,
    currency: str | None = None,
    timezone: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Customer:
    """Validate and store a new customer (409 if the external id is taken)."""
    customer = Customer(
        id=customer_id,
        name=_check_text(name, "name", required=True) or "",
        email=_check_email(email),
        created_at=now,
        external_customer_id=_check_text(external_customer_id, "external_customer_id", required=False),
        currency=_check_currency(currency),
        timezone=_check_timezone(timezone),
        metadata=merge_metadata({}, metadata or {}),
    )
    return repository.add(customer)


_UPDATABLE = ("name", "email", "currency", "external_customer_id", "metadata")


def update_customer(repository: CustomerRepository, customer: Customer, changes: Mapping[str, Any]) -> Customer:
    """Apply the given changes (only keys present are changed) and store the customer."""
    unknown = set(changes) - set(_UPDATABLE)
    if "timezone" in unknown:
        raise InvalidCustomer("timezone: cannot be changed after creation", field="timezone")
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidCustomer(f"{name}: cannot be updated", field=name)
    updated = customer
    if "name" in changes:
        updated = replace(updated, name=_check_text(changes["name"], "name", required=True) or "")
    if "email" in changes:
        updated = replace(updated, email=_check_email(changes["email"]))
    if "currency" in changes:
        currency = _check_currency(changes["currency"])
        if customer.currency and currency != customer.currency:
            raise InvalidCustomer("currency: cannot be changed once set", field="currency")
        updated = replace(updated, currency=currency or customer.currency)
    if "external_customer_id" in changes:
        ext = _check_text(changes["external_customer_id"], "external_customer_id", required=False)
        if customer.external_customer_id and ext != customer.external_customer_id:
            # Events already attached through the old alias would silently move.
            raise InvalidCustomer(
                "external_customer_id: cannot be changed once set", field="external_customer_id"
            )
        updated = replace(updated, external_customer_id=ext or customer.external_customer_id)
    if "metadata" in changes:
        updated = replace(updated, metadata=merge_metadata(customer.metadata, changes["metadata"]))
    if updated == customer:
        return customer
    return repository.save(updated)
