"""Contract events: the normalized webhook of docs/marketplaces.md §5 and the marketplaces' native messages,
brought to one shape, ``ContractEvent``, that the contract use cases apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from billing_core import wire
from billing_core.money import InvalidAmount, parse_unit_price
from marketplaces import rules
from marketplaces.base import ContractNotification
from worker.entitlements import InvalidEntitlement, included_quantities

EVENT_TYPES = ("contract.created", "contract.modified", "contract.canceled", "contract.renewed")
IDENTIFIER_FIELDS = (
    "product_code", "customer_aws_account_id", "license_arn", "customer_identifier",
    "azure_subscription_id", "offer_id", "plan_id", "gcp_entitlement_id", "gcp_account_id",
    "usage_reporting_id", "product_id",
)


class MalformedEvent(ValueError):
    """The event body is not a valid contract event; ``field`` names what is wrong."""

    def __init__(self, message: str, field: str = "body"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ContractEvent:
    """One contract lifecycle event, whatever its source."""

    kind: str  # created modified canceled renewed suspended reinstated ignored
    source: str  # contracts, aws, azure, gcp
    contract_key: str  # the sender's stable contract id
    marketplace: str
    occurred_at: datetime
    effective_at: datetime
    identifiers: Mapping[str, str] = field(default_factory=dict)
    buyer_name: str = ""
    buyer_email: str = ""
    pricing: Mapping[str, Any] | None = None
    previous_pricing: Mapping[str, Any] | None = None
    plan: str | None = None
    quantity: int | None = None
    action: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # marketplace specifics (Azure operation id, ...)
    # Contracts with consumption: the included units per dimension read for this event, in effect
    # from ``effective_at`` (None: not read, nothing changes; {}: includes nothing any more).
    entitlements: Mapping[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (instants as ISO-8601 UTC)."""
        # Field by field, not dataclasses.asdict: that deep-copies, and this runs for every delivery.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["occurred_at"] = self.occurred_at.isoformat()
        data["effective_at"] = self.effective_at.isoformat()
        data["identifiers"] = dict(self.identifiers)
        data["extra"] = dict(self.extra)
        for name in ("pricing", "previous_pricing", "entitlements"):
            if data[name] is not None:
                data[name] = dict(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ContractEvent":
        """Rebuild an event stored with ``to_json``."""
        values = dict(data)
        values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
        values["effective_at"] = datetime.fromisoformat(values["effective_at"])
        return cls(**values)


# --- the normalized webhook (docs/marketplaces.md §5) ------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Dimension(_Strict):
    name: str = Field(min_length=1, max_length=255)
    unit_price: str

    @field_validator("unit_price", mode="before")
    @classmethod
    def _decimal(cls, value: object) -> str:
        try:
            return str(parse_unit_price(value, "unit_price"))
        except InvalidAmount as exc:
            raise ValueError(str(exc).removeprefix("unit_price: ")) from None


class _Pricing(_Strict):
    currency: str = Field(default="USD", min_length=3, max_length=3)
    dimensions: list[_Dimension] = Field(default_factory=list, max_length=100)


class _Buyer(_Strict):
    name: str = Field(default="", max_length=255)
    email: str = Field(default="", max_length=255)


class _Data(_Strict):
    contract_id: str = Field(min_length=1, max_length=255)
    marketplace: Literal["aws", "azure", "gcp"]
    cloud_identifiers: dict[str, str] = Field(default_factory=dict)
    buyer: _Buyer = Field(default_factory=_Buyer)
    pricing: _Pricing | None = None
    previous_pricing: _Pricing | None = None
    effective_at: datetime | None = None
    plan: str | None = Field(default=None, max_length=255)
    quantity: int | None = Field(default=None, ge=0)
    # A contract with consumption: the units each dimension includes per period, from effective_at.
    entitlements: dict[str, int] | None = None

    @field_validator("entitlements", mode="before")
    @classmethod
    def _included(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("must be an object of dimension: units")
        try:
            return included_quantities(value, "entitlements")
        except InvalidEntitlement as exc:
            raise ValueError(str(exc).removeprefix("entitlements.").removeprefix("entitlements: ")) from None

    @field_validator("cloud_identifiers", mode="before")
    @classmethod
    def _identifiers(cls, value: object) -> object:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(item, str):
                    raise ValueError(f"{key}: must be a string")
                if len(item) > 512:
                    raise ValueError(f"{key}: longer than 512 characters")
        return value


class _Envelope(_Strict):
    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=64)
    occurred_at: datetime
    data: dict[str, Any]


def _aware(value: datetime, field_name: str) -> datetime:
    if value.tzinfo is None:
        raise MalformedEvent(f"{field_name}: must carry a timezone (e.g. 2026-11-21T10:00:00Z)", field_name)
    return in_range(value, field_name)


def in_range(value: datetime, field_name: str) -> datetime:
    """Return ``value`` in UTC if it is in the accepted instant range, else raise ``MalformedEvent``."""
    try:
        return wire.check_instant(value, field_name)
    except wire.InvalidInstant as exc:
        raise MalformedEvent(str(exc), field_name) from None


def parse_normalized(body: bytes) -> tuple[str, ContractEvent | None]:
    """Parse a normalized contract webhook; return its type and the event (None if unknown type).

    Raise ``MalformedEvent`` naming the first offending field.
    """
    try:
        payload = wire.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedEvent("body: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise MalformedEvent("body must be a JSON object")
    try:
        envelope = _Envelope.model_validate(payload)
    except ValidationError as exc:
        raise _malformed(exc, prefix="") from None
    if envelope.type not in EVENT_TYPES:
        return envelope.type, None
    try:
        data = _Data.model_validate(envelope.data)
    except ValidationError as exc:
        raise _malformed(exc, prefix="data.") from None
    occurred = _aware(envelope.occurred_at, "occurred_at")
    effective = _aware(data.effective_at, "data.effective_at") if data.effective_at else occurred
    identifiers = {k: v for k, v in data.cloud_identifiers.items() if v}
    return envelope.type, ContractEvent(
        kind=envelope.type.removeprefix("contract."),
        source="contracts",
        contract_key=data.contract_id,
        marketplace=data.marketplace,
        occurred_at=occurred,
        effective_at=effective,
        identifiers=identifiers,
        buyer_name=data.buyer.name,
        buyer_email=data.buyer.email,
        pricing=data.pricing.model_dump() if data.pricing else None,
        previous_pricing=data.previous_pricing.model_dump() if data.previous_pricing else None,
        plan=data.plan,
        quantity=data.quantity,
        action=envelope.type,
        entitlements=data.entitlements,
    )


def _malformed(exc: ValidationError, prefix: str) -> MalformedEvent:
    err = exc.errors()[0]
    field_name = prefix + ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    return MalformedEvent(f"{field_name}: {message}", field_name.rstrip(".") or "body")


# --- native notifications --------------------------------------------------------------------------

def from_notification(note: ContractNotification, *, received_at: datetime) -> ContractEvent:
    """Bring a verified marketplace notification to a ``ContractEvent``."""
    marketplace = note.marketplace.value
    marketplace_rules = rules(marketplace)
    ids = {k: str(v) for k, v in note.identifiers.items() if v not in (None, "")}
    key = marketplace_rules.contract_key(ids)
    identifiers = marketplace_rules.event_identifiers(ids)
    kind = marketplace_rules.event_kind(note, key)
    effective = in_range(note.effective_at, "effective_at") if note.effective_at else received_at
    return ContractEvent(
        kind=kind,
        source=marketplace,
        contract_key=key,
        marketplace=marketplace,
        occurred_at=received_at,
        effective_at=effective,
        identifiers=identifiers,
        plan=note.plan,
        quantity=note.quantity,
        action=note.action,
        extra=dict(note.extra),
    )
