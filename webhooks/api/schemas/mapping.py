"""The mapping API (listings, contracts, metering reports) and the webhook receivers."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from webhooks.api.schemas.base import Money, Shape, Query, NumberedQuery
from webhooks.api.schemas.catalog import IdRef
from worker.contracts import FILTERS as CONTRACT_FILTERS


# --- the mapping API ------------------------------------------------------------------------------

class ListingDimensionShape(Shape):
    name: str
    unit_price: Money
    prices: Union[Literal["remaining"], list[str]]


class ListingAllocationShape(Shape):
    tag: str
    property: str


class Listing(Shape):
    id: str
    marketplace: Literal["aws", "azure", "gcp"]
    product_id: str
    plan_id: Optional[str]
    name: Optional[str]
    billing_plan_id: str
    dimension: Optional[str] = Field(description="the one dimension (null when the listing meters several)")
    unit_price: Optional[Money] = Field(description="its unit price (null when the listing meters several)")
    dimensions: list[ListingDimensionShape] = Field(description="every dimension with its unit price and prices")
    currency: str
    close_rounding: Literal["floor", "half_up", "ceil"]
    include_fixed_fees: bool
    metering_start_date: Optional[date]
    approve_entitlements: bool
    aws_legacy_identifiers: bool
    aws_concurrent_agreements: bool
    usage_allocations: list[ListingAllocationShape] = Field(
        description="tag or label keys and the event properties giving their values ([]: records are not split)")
    created_at: datetime
    updated_at: datetime


class ListingQuery(NumberedQuery):
    marketplace: Optional[Literal["aws", "azure", "gcp"]] = None


class Buyer(Shape):
    name: Optional[str]
    email: Optional[str]


class ContractMapping(Shape):
    status: str
    reason: Optional[str]
    customer_id: Optional[str]
    subscription_id: Optional[str]


class MappedObject(Shape):
    mapped_object: Optional[IdRef]


class ExternalAssociations(Shape):
    orb: MappedObject = Field(description="the billing subscription this contract reports (null when unmapped)")
    billing: MappedObject = Field(description="alias of orb, same value (kept for existing clients)")


class IncludedSnapshot(Shape):
    effective_at: datetime = Field(description="from this instant on (until the next snapshot)")
    included: dict[str, int] = Field(description="units each dimension includes per billing period; "
                                                 "only usage above them is reported")
    source: str = Field(description="where it was read: aws (GetEntitlements), azure (the plan's included "
                                    "base quantities), gcp (commitments), contracts (the normalized webhook)")


class Contract(Shape):
    id: str
    source: str
    external_id: str
    marketplace: Literal["aws", "azure", "gcp"]
    status: str
    listing_id: Optional[str]
    cloud_identifiers: dict[str, Any]
    buyer: Buyer
    pricing: Optional[dict[str, Any]]
    previous_pricing: Optional[dict[str, Any]]
    custom_properties: dict[str, Any]
    entitlements: list[IncludedSnapshot] = Field(
        description="a contract with consumption: what it includes, oldest first ([] = pay-as-you-go)")
    mapping: ContractMapping
    external_associations: ExternalAssociations
    started_at: Optional[datetime]
    canceled_at: Optional[datetime]
    cancel_effective_at: Optional[datetime]
    closed_at: Optional[datetime]
    created_at: datetime
    updated_at: datetime
    inbox: Optional[list[dict[str, Any]]] = None


ContractQuery = create_model(
    "ContractQuery", __base__=NumberedQuery,
    **{name: (Optional[str], None) for name in sorted(CONTRACT_FILTERS)},  # type: ignore[call-overload]
)


class SyncQueued(Shape):
    job_id: str
    contract_id: str
    hour: datetime


class ReportRow(Shape):
    date: date
    contract_id: str
    marketplace: str
    status: str
    listing_id: Optional[str]
    dimension: str
    unit_price: Optional[Money]
    units_reported: int
    amount: Money
    outcomes: dict[str, int]
    identifiers: dict[str, Any]
    custom_properties: dict[str, Any]


class MeteringReport(Shape):
    month: str
    data: list[ReportRow]


class ReportQuery(Query):
    month: Optional[str] = Field(default=None, pattern=r"^[0-9]{4}-[0-9]{2}$", description="YYYY-MM (default: now)")
    format: Optional[Literal["json", "csv"]] = None


# --- manual true-ups --------------------------------------------------------------------------------

class TrueupRow(Shape):
    line: int = Field(description="the line of the file (1 is the header)")
    contract: str = Field(description="the contract as the file names it (a contract id or external id)")
    contract_id: Optional[str]
    dimension: str
    units: int
    reason: str
    status: Literal["new", "applied", "already_applied"] = Field(
        description="new: applied on confirmation; applied: by this confirmation; already_applied: by an earlier one")


class TrueupError(Shape):
    line: int
    column: Literal["header", "contract", "dimension", "units", "reason"]
    message: str


class TrueupCounts(Shape):
    new: int
    applied: int
    already_applied: int


class TrueupAnswer(Shape):
    """A preview of a true-up file, or what confirming it did."""

    digest: str = Field(description="sha256 of the file: confirm with it (POST /v1/trueups)")
    hour: datetime = Field(description="the hour stamp new adjustments are reported under")
    ok: bool = Field(description="false when the file has errors: it cannot be confirmed")
    rows: list[TrueupRow]
    errors: list[TrueupError]
    applied_ledger_ids: list[int] = Field(description="the usage-ledger rows this confirmation wrote")
    counts: TrueupCounts


class TrueupApplied(Shape):
    contract_id: str
    dimension: str
    units: int
    reason: str
    ledger_id: int
    status: str = Field(description="the status of the ledger row reporting it")
    hour: datetime
    line: int
    file_digest: str
    created_at: datetime


class TrueupList(Shape):
    data: list[TrueupApplied]


# --- receivers ------------------------------------------------------------------------------------

class ContractWebhook(BaseModel):
    """A normalized contract event (``worker.contract_events.parse_normalized``)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=64)
    occurred_at: datetime
    data: dict[str, Any]


class MarketplaceNotification(BaseModel):
    """A marketplace's own notification body (SNS, EventBridge, Azure, Pub/Sub push)."""

    model_config = ConfigDict(extra="allow")


class DeliveryAccepted(Shape):
    id: int
    status: str
    duplicate: bool
