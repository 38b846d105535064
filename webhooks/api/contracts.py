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
from worker.entitlements import InvalidEntitlement, included_quantities

bp = api_blueprint("contracts", __name__)


class _MappedObject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=64)


class _Association(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mapped_object: Optional[_MappedObject] = Field(
        description="the subscription to attach, or null to detach the contract from its subscription")


class _Associations(BaseModel):
    """``orb`` as Clazar's Orb integration guide writes it; ``billing`` is the older alias of the same thing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    orb: Optional[_Association] = None
    billing: Optional[_Association] = Field(default=None, description="alias of orb (kept for existing clients)")


def _mapping(associations: _Associations) -> _Association:
    """Return the one association the body gives (``orb``, or its alias ``billing``); 400 when they disagree."""
    orb, alias = associations.orb, associations.billing
    if orb is None and alias is None:
        raise bad("external_associations.orb",
                  'required: {"orb": {"mapped_object": {"id": "<subscription id>"}}} (or null to unmap)')
    if orb is not None and alias is not None and orb != alias:
        raise bad("external_associations.billing",
                  "differs from external_associations.orb (billing is an alias of orb: give one, or the same value)")
    return orb if orb is not None else alias  # type: ignore[return-value]


class _Entitlement(BaseModel):
    """What a contract with consumption includes, set by an operator (docs/billing-rules.md §12.6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    included: dict[str, Any] = Field(description="whole units each dimension includes per billing period ({} = none)")
    effective_at: datetime = Field(description="from when (with a time zone); usage measured after it draws on it")

    @field_validator("included")
    @classmethod
    def _units(cls, value: dict[str, Any]) -> dict[str, int]:
        try:
            return included_quantities(value, "included")
        except InvalidEntitlement as exc:
            raise ValueError(str(exc).removeprefix("included.").removeprefix("included: ")) from None

    @field_validator("effective_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone (e.g. 2026-11-21T10:00:00Z)")
        return value.astimezone(timezone.utc)


class ContractPatch(Body):
    external_associations: Optional[_Associations] = None
    custom_properties: Optional[dict[str, Any]] = None
    entitlements: Optional[_Entitlement] = Field(
        default=None, description="set what the contract includes from an instant (where the marketplace says "
                                  "nothing the adapter can read, e.g. a Google commitment)")

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
    """Attach an existing subscription (or detach it with ``mapped_object: null``), merge custom properties,
    and/or set what a contract with consumption includes from an instant."""
    body = parse_body(ContractPatch)
    if body.external_associations is None and body.custom_properties is None and body.entitlements is None:
        raise bad("body", "give external_associations, custom_properties and/or entitlements")
    runtime = _runtime()
    subscription_id, unmap = None, False
    if body.external_associations is not None:
        mapped = _mapping(body.external_associations).mapped_object
        subscription_id, unmap = (mapped.id, False) if mapped is not None else (None, True)
    return contracts.patch_contract(runtime.engine, contract_id, runtime.billing_gateway(),
                                    subscription_id=subscription_id, unmap=unmap,
                                    custom_properties=body.custom_properties, now=datetime.now(timezone.utc),
                                    included=(body.entitlements.included, body.entitlements.effective_at)
                                    if body.entitlements is not None else None)
