"""``/v1/contracts``: marketplace contracts, their mapping to subscriptions, custom properties."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from flask import current_app, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, field_validator

from webhooks.api.common import Body, api_blueprint, bad, parse_body
from webhooks.api.openapi import documented
from webhooks.api.schemas import Contract, ContractQuery, NumberedPage
from webhooks.api.paging import page_envelope, page_params
from worker import contracts

bp = api_blueprint("contracts", __name__)


class _MappedObject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=64)


class _Association(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mapped_object: _MappedObject


class _Associations(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    billing: _Association


class ContractPatch(Body):
    external_associations: Optional[_Associations] = None
    custom_properties: Optional[dict[str, Any]] = None

    @field_validator("custom_properties")
    @classmethod
    def _flat(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if value is None:
            return value
        try:
            return contracts.check_properties(value)
        except contracts.InvalidProperties as exc:
            raise ValueError(str(exc).removeprefix("custom_properties: ").removeprefix("custom_properties.")) from None


def _runtime() -> Any:
    return current_app.extensions["marketsync"]


@bp.get("/contracts")
@documented(query=ContractQuery, response=NumberedPage[Contract])
def index() -> ResponseReturnValue:
    """List contracts, filtered by marketplace, status, mapping, listing or any cloud identifier."""
    page, size = page_params()
    filters = {}
    for name, value in request.args.items():
        if name in ("page", "page_size"):
            continue
        if name not in contracts.FILTERS:
            allowed = ", ".join(sorted(contracts.FILTERS))
            raise bad(name, f"unknown filter (use {allowed})")
        filters[name] = value
    rows, total = contracts.list_contracts(_runtime().engine, filters, offset=(page - 1) * size, limit=size)
    return page_envelope(rows, total=total, page=page, size=size)


@bp.get("/contracts/<contract_id>")
@documented(response=Contract)
def fetch(contract_id: str) -> ResponseReturnValue:
    """Fetch a contract with its identifiers, pricing, mapping, custom properties and inbox history."""
    return contracts.get_contract(_runtime().engine, contract_id)


@bp.patch("/contracts/<contract_id>")
@documented(body=ContractPatch, response=Contract)
def patch(contract_id: str) -> ResponseReturnValue:
    """Attach an existing subscription and/or merge custom properties."""
    body = parse_body(ContractPatch)
    if body.external_associations is None and body.custom_properties is None:
        raise bad("body", "give external_associations and/or custom_properties")
    runtime = _runtime()
    subscription_id = body.external_associations.billing.mapped_object.id if body.external_associations else None
    return contracts.patch_contract(runtime.engine, contract_id, runtime.billing_gateway(),
                                    subscription_id=subscription_id, custom_properties=body.custom_properties,
                                    now=datetime.now(timezone.utc))
