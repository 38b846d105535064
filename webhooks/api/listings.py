"""``/v1/listings``: which billing plan, dimensions and unit prices each marketplace product maps to."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any, Literal, Optional, Union

from flask import current_app, request
from flask.typing import ResponseReturnValue
from pydantic import Field, field_validator

from billing_core import wire
from billing_core.money import InvalidAmount, parse_unit_price
from webhooks.api.common import Body, api_blueprint, bad, parse_body
from webhooks.api.openapi import documented
from webhooks.api.schemas import Listing, ListingQuery, NumberedPage
from webhooks.api.paging import page_envelope, page_params
from worker import listings

bp = api_blueprint("listings", __name__)


def _decimal(value: object) -> str:
    # The bounds of billing prices: a listing's price rates the same usage.
    try:
        return str(parse_unit_price(value, "unit_price"))
    except InvalidAmount as exc:
        raise ValueError(str(exc).removeprefix("unit_price: ")) from None


def _midnight(value: object) -> object:
    if isinstance(value, str) and "T" in value:
        try:
            parsed = wire.parse_instant(value, "metering_start_date")
        except wire.InvalidInstant as exc:
            raise ValueError(str(exc).removeprefix("metering_start_date: ")) from None
        if (parsed.hour, parsed.minute, parsed.second, parsed.microsecond) != (0, 0, 0, 0):
            raise ValueError("must be a UTC midnight (a date such as 2026-11-01)")
        return parsed.date()
    return value


class ListingDimension(Body):
    name: str = Field(min_length=1, max_length=255, description="the marketplace dimension (AWS Dimension, "
                      "Azure dimension, Google metric name after the service)")
    unit_price: str = Field(description="the price of one unit of this dimension, a decimal string above 0")
    prices: Union[Literal["remaining"], list[str]] = Field(description=(
        'the price keys or item ids of the billing plan this dimension reports, or "remaining": every price '
        "no other dimension names"))

    @field_validator("unit_price", mode="before")
    @classmethod
    def _price(cls, value: object) -> object:
        return _decimal(value)

    @field_validator("prices", mode="before")
    @classmethod
    def _prices(cls, value: object) -> object:
        if value == "remaining":
            return value
        if (not isinstance(value, list) or not value or len(value) > 1000
                or not all(isinstance(v, str) and 0 < len(v) <= 255 for v in value)):
            raise ValueError('must be "remaining" or a list of 1 to 1000 price keys or item ids')
        return value


class ListingAllocation(Body):
    tag: str = Field(min_length=1, max_length=255, description="the tag (AWS) or user-label (Google) key")
    property: str = Field(min_length=1, max_length=255, description="the usage events' property giving its value")


class _Fields(Body):
    name: Optional[str] = Field(default=None, max_length=255)
    billing_plan_id: Optional[str] = Field(default=None, min_length=1, max_length=64)
    dimension: Optional[str] = Field(default=None, min_length=1, max_length=255)
    unit_price: Optional[str] = None
    dimensions: Optional[list[ListingDimension]] = Field(default=None, min_length=1, max_length=100, description=(
        "several dimensions, each with its own unit price and prices (instead of dimension and unit_price); "
        "null on update: one dimension again"))
    currency: Optional[str] = Field(default=None, min_length=3, max_length=3)
    close_rounding: Optional[Literal["floor", "half_up", "ceil"]] = None
    include_fixed_fees: Optional[bool] = None
    metering_start_date: Optional[date] = None
    approve_entitlements: Optional[bool] = None
    aws_legacy_identifiers: Optional[bool] = Field(default=None, description=(
        "AWS: meter with the legacy CustomerIdentifier (and ProductCode) when a contract has one"))
    aws_concurrent_agreements: Optional[bool] = Field(default=None, description=(
        "AWS: the product uses Concurrent Agreements; records carry CustomerAWSAccountId + LicenseArn "
        "and the request no ProductCode"))
    usage_allocations: Optional[list[ListingAllocation]] = Field(default=None, max_length=64, description=(
        "split each record over the combinations of these event properties' values: AWS UsageAllocations "
        "(at most 5 tags), Google userLabels; null or []: off"))

    @field_validator("unit_price", mode="before")
    @classmethod
    def _price(cls, value: object) -> object:
        return None if value is None else _decimal(value)

    @field_validator("metering_start_date", mode="before")
    @classmethod
    def _start(cls, value: object) -> object:
        return _midnight(value)

    @field_validator("metering_start_date")
    @classmethod
    def _start_in_range(cls, value: Optional[date]) -> Optional[date]:
        if value is not None:
            try:
                wire.check_date(value, "metering_start_date")
            except wire.InvalidInstant as exc:
                raise ValueError(str(exc).removeprefix("metering_start_date: ")) from None
        return value


class ListingCreate(_Fields):
    marketplace: Literal["aws", "azure", "gcp"]
    product_id: str = Field(min_length=1, max_length=255)
    plan_id: Optional[str] = Field(default=None, max_length=255)
    billing_plan_id: str = Field(min_length=1, max_length=64)
    currency: str = Field(default="USD", min_length=3, max_length=3)
    close_rounding: Literal["floor", "half_up", "ceil"] = "floor"
    include_fixed_fees: bool = False
    approve_entitlements: bool = True
    aws_legacy_identifiers: bool = False
    aws_concurrent_agreements: bool = False


class ListingUpdate(_Fields):
    pass


def _engine() -> Any:
    return current_app.extensions["marketsync"].engine


@bp.post("/listings")
@documented(body=ListingCreate, response=Listing, status=201, links={
    endpoint: {"listing_id": "$response.body#/id"} for endpoint in ("listings.fetch", "listings.update")})
def create() -> ResponseReturnValue:
    """Create a listing."""
    body = parse_body(ListingCreate)
    values = body.model_dump()
    values["currency"] = values["currency"].upper()
    return listings.create_listing(_engine(), values, now=datetime.now(timezone.utc)), 201


@bp.get("/listings")
@documented(query=ListingQuery, response=NumberedPage[Listing])
def index() -> ResponseReturnValue:
    """List listings, optionally of one marketplace."""
    page, size = page_params()
    marketplace = request.args.get("marketplace")
    if marketplace and marketplace not in listings.MARKETPLACES:
        raise bad("marketplace", "must be aws, azure or gcp")
    rows, total = listings.list_listings(_engine(), marketplace=marketplace, offset=(page - 1) * size, limit=size)
    return page_envelope(rows, total=total, page=page, size=size)


@bp.get("/listings/<listing_id>")
@documented(response=Listing)
def fetch(listing_id: str) -> ResponseReturnValue:
    """Fetch one listing."""
    return listings.get_listing(_engine(), listing_id)


@bp.patch("/listings/<listing_id>")
@documented(body=ListingUpdate, response=Listing)
def update(listing_id: str) -> ResponseReturnValue:
    """Change a listing's plan, dimension(s), unit price(s), rounding, fees or start date."""
    body = parse_body(ListingUpdate)
    values = {k: v for k, v in body.model_dump(exclude_unset=True).items()}
    if "currency" in values and values["currency"]:
        values["currency"] = values["currency"].upper()
    nulls = [k for k, v in values.items()
             if v is None and k not in ("metering_start_date", "name", "dimensions", "usage_allocations")]
    if nulls:
        raise bad(nulls[0], "may not be null")
    return listings.update_listing(_engine(), listing_id, values, now=datetime.now(timezone.utc))
