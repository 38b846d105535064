"""``/v1/customers``: Orb's customer endpoints (create, fetch, fetch by external id, update, list)."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any, Optional

from flask import current_app, request
from flask.typing import ResponseReturnValue
from pydantic import Field

from billing_core import wire
from billing_core.customers import Customer, create_customer, update_customer
from billing_core import SqlCustomerRepository
from webhooks.api.common import ApiError, Body, api_blueprint, page_limit, paginated, parse_body
from webhooks.api.openapi import documented
from webhooks.api.schemas import CreatedAtQuery, Customer as CustomerShape, Page
from worker.db import session_scope

bp = api_blueprint("customers", __name__)

# Orb fields this service does not implement: refused by name instead of silently dropped.
_UNSUPPORTED = (
    "accounting_sync_configuration", "additional_emails", "auto_collection", "auto_issuance",
    "billing_address", "email_delivery", "hierarchy", "payment_configuration", "payment_provider",
    "payment_provider_id", "reporting_configuration", "shipping_address", "tax_configuration",
    "tax_id", "default_invoice_memo",
)


def utcnow() -> datetime:
    """Read the clock (entry points only)."""
    return datetime.now(timezone.utc)


def iso(instant: datetime | None) -> str | None:
    """Format an instant as ISO-8601 UTC with a ``Z`` suffix."""
    if instant is None:
        return None
    return instant.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    """Return a new random resource id (Orb-style: 22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


def engine() -> Any:
    """Return the process's database engine."""
    return current_app.extensions["marketsync"].engine


def refuse_unsupported(payload: dict[str, Any]) -> None:
    """Answer 400 naming an Orb field this service does not implement."""
    for name in _UNSUPPORTED:
        if payload.get(name) not in (None, [], {}):
            raise ApiError(400, "Request validation error", f"{name}: not supported by this service", field=name)


class CustomerCreate(Body):
    name: str = Field(min_length=1, max_length=500)
    email: str = Field(min_length=3, max_length=320)
    external_customer_id: Optional[str] = Field(default=None, min_length=1, max_length=255)
    currency: Optional[str] = None
    timezone: Optional[str] = None
    metadata: Optional[dict[str, Optional[str]]] = None


class CustomerUpdate(Body):
    name: Optional[str] = Field(default=None, min_length=1, max_length=500)
    email: Optional[str] = Field(default=None, min_length=3, max_length=320)
    external_customer_id: Optional[str] = Field(default=None, min_length=1, max_length=255)
    currency: Optional[str] = None
    metadata: Optional[dict[str, Optional[str]]] = None


def customer_json(customer: Customer) -> dict[str, Any]:
    """Return Orb's customer resource."""
    return {
        "id": customer.id,
        "external_customer_id": customer.external_customer_id,
        "name": customer.name,
        "email": customer.email,
        "currency": customer.currency,
        "timezone": customer.timezone,
        "metadata": dict(customer.metadata),
        "created_at": iso(customer.created_at),
        "additional_emails": [],
        "auto_collection": False,
        "auto_issuance": None,
        "balance": "0.00",
        "billing_address": None,
        "shipping_address": None,
        "email_delivery": False,
        "exempt_from_automated_tax": False,
        "hierarchy": {"children": [], "parent": None},
        "payment_provider": None,
        "payment_provider_id": None,
        "portal_url": None,
        "tax_id": None,
        "accounting_sync_configuration": None,
        "reporting_configuration": None,
    }


def _payload() -> dict[str, Any]:
    from webhooks.api.common import json_body

    payload = json_body()
    if not isinstance(payload, dict):
        raise ApiError(400, "Request validation error", "body must be a JSON object", field="body")
    refuse_unsupported(payload)
    for name in _UNSUPPORTED:
        payload.pop(name, None)
    return payload


@bp.post("/customers")
@documented(body=CustomerCreate, response=CustomerShape, links={
    endpoint: {"customer_id": "$response.body#/id"}
    for endpoint in ("customers.fetch", "customers.update", "billing_subscriptions.customer_costs")})
def create() -> ResponseReturnValue:
    """Create a customer."""
    body = CustomerCreate.model_validate(_payload())
    with session_scope(engine()) as session:
        customer = create_customer(
            SqlCustomerRepository(session),
            customer_id=new_id(),
            now=utcnow(),
            **body.model_dump(),
        )
    return customer_json(customer)


@bp.get("/customers/<customer_id>")
@documented(response=CustomerShape)
def fetch(customer_id: str) -> ResponseReturnValue:
    """Fetch a customer by id."""
    with session_scope(engine()) as session:
        return customer_json(SqlCustomerRepository(session).get(customer_id))


@bp.get("/customers/external_customer_id/<external_customer_id>")
@documented(response=CustomerShape)
def fetch_by_external_id(external_customer_id: str) -> ResponseReturnValue:
    """Fetch a customer by its external id."""
    with session_scope(engine()) as session:
        return customer_json(SqlCustomerRepository(session).get_by_external_id(external_customer_id))


def _update(find: Any) -> ResponseReturnValue:
    payload = _payload()
    body = CustomerUpdate.model_validate(payload)
    changes = body.model_dump(include=set(payload))
    with session_scope(engine()) as session:
        repository = SqlCustomerRepository(session)
        # ``find`` reads under the write lock: concurrent metadata merges keep each other's keys.
        customer = update_customer(repository, find(repository), changes)
    return customer_json(customer)


@bp.put("/customers/<customer_id>")
@documented(body=CustomerUpdate, response=CustomerShape)
def update(customer_id: str) -> ResponseReturnValue:
    """Update a customer's name, email, currency (once), external id (once) or metadata."""
    return _update(lambda repository: repository.get(customer_id, for_update=True))


@bp.put("/customers/external_customer_id/<external_customer_id>")
@documented(body=CustomerUpdate, response=CustomerShape)
def update_by_external_id(external_customer_id: str) -> ResponseReturnValue:
    """Update a customer found by its external id."""
    return _update(lambda repository: repository.get_by_external_id(external_customer_id, for_update=True))


_CREATED_AT_FILTERS = {"created_at[gt]": "gt", "created_at[gte]": "gte", "created_at[lt]": "lt", "created_at[lte]": "lte"}


def list_filters(allowed: tuple[str, ...] = ()) -> dict[str, datetime]:
    """Parse ``cursor``/``limit``/``created_at[..]`` (and ``allowed``) query parameters; 400 on others."""
    created: dict[str, datetime] = {}
    for name, value in request.args.items():
        if name in ("cursor", "limit") or name in allowed:
            continue
        op = _CREATED_AT_FILTERS.get(name)
        if op is None:
            raise ApiError(400, "Request validation error", f"{name}: unknown query parameter", field=name)
        created[op] = wire.parse_instant(value, name)
    return created


@bp.get("/customers")
@documented(query=CreatedAtQuery, response=Page[CustomerShape])
def index() -> ResponseReturnValue:
    """List customers, newest first, with Orb's cursor pagination."""
    created = list_filters()
    limit = page_limit()
    with session_scope(engine()) as session:
        page, cursor = SqlCustomerRepository(session).list(
            limit=limit, cursor=request.args.get("cursor") or None, created_at=created
        )
    return paginated([customer_json(c) for c in page], has_more=cursor is not None, next_cursor=cursor)
