"""``/v1/customers``: Orb's customer endpoints (create, fetch, fetch by external id, update, list)."""

from __future__ import annotations

from typing import Any, Optional

from flask import request
from flask.typing import ResponseReturnValue
from pydantic import Field

from billing_core import SqlCustomerRepository, create_customer, update_customer
from billing_core.orb_json import customer_json
from webhooks.api.common import (
    Body, api_blueprint, bad, engine, json_body, list_filters, new_id, now, page_limit, paginated,
)
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


def refuse_unsupported(payload: dict[str, Any]) -> None:
    """Answer 400 naming an Orb field this service does not implement."""
    for name in _UNSUPPORTED:
        if payload.get(name) not in (None, [], {}):
            raise bad(name, "not supported by this service")


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


def _payload() -> dict[str, Any]:
    payload = json_body()
    if not isinstance(payload, dict):
        raise bad("body", "must be a JSON object")
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
            now=now(),
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
