"""Rows of the sync application: listings, contracts and the webhook inbox.

Money is stored as text (exact ``Decimal``); JSON columns hold identifiers and pricing as
received. Unique constraints are what make concurrent processes safe: one inbox row per
(source, delivery id), one contract per (source, external id), one contract per subscription.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class ListingRow(SQLModel, table=True):
    __tablename__ = "listings"
    __table_args__ = (
        UniqueConstraint("marketplace", "product_id", "plan_id", name="uq_listings_product_plan"),
    )

    id: str = Field(primary_key=True, max_length=40)
    marketplace: str = Field(max_length=16, index=True)
    product_id: str = Field(max_length=255)  # AWS product code, Azure offer id, Google product
    plan_id: str = Field(default="", max_length=255)  # Azure/Google plan; "" = any plan
    name: str = Field(default="", max_length=255)
    billing_plan_id: str = Field(max_length=64)
    dimension: str = Field(max_length=255)
    unit_price: str = Field(sa_column=Column(Text, nullable=False))
    # Several dimensions (docs/marketplaces.md §1.9): [{"name", "unit_price", "prices": [keys] |
    # "remaining"}]; null = the single ``dimension`` at ``unit_price`` (which then hold the first's).
    dimensions: Optional[list[dict[str, Any]]] = Field(default=None, sa_column=Column(JSON))
    currency: str = Field(default="USD", max_length=8)
    close_rounding: str = Field(default="floor", max_length=16)
    include_fixed_fees: bool = Field(default=False)
    metering_start_date: Optional[date] = Field(default=None)
    approve_entitlements: bool = Field(default=True)
    # AWS only (docs/marketplaces.md §2.1): meter with the legacy CustomerIdentifier (listings that
    # existed before these flags: the migration sets it on them); send no ProductCode (Concurrent
    # Agreements). New listings default to neither.
    aws_legacy_identifiers: bool = Field(default=False)
    aws_concurrent_agreements: bool = Field(default=False)
    # Usage allocations (docs/marketplaces.md §1.12): [{"tag": <tag or label key>, "property": <event
    # property>}]; each record is split over the combinations of those properties' values. None: off.
    usage_allocations: Optional[list[dict[str, str]]] = Field(default=None, sa_column=Column(JSON))
    created_at: datetime
    updated_at: datetime


class ContractRow(SQLModel, table=True):
    __tablename__ = "contracts"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="uq_contracts_source_external"),
        UniqueConstraint("subscription_id", name="uq_contracts_subscription"),
        Index("ix_contracts_status_mapping", "status", "mapping_status"),
    )

    id: str = Field(primary_key=True, max_length=40)
    source: str = Field(max_length=32)  # contracts (normalized webhooks), aws, azure, gcp
    external_id: str = Field(max_length=255)  # the sender's contract id / license / subscription
    marketplace: str = Field(max_length=16, index=True)
    status: str = Field(default="pending", max_length=16)
    listing_id: Optional[str] = Field(default=None, max_length=40, index=True)
    product_code: Optional[str] = Field(default=None, max_length=255, index=True)
    customer_aws_account_id: Optional[str] = Field(default=None, max_length=255, index=True)
    license_arn: Optional[str] = Field(default=None, max_length=512, index=True)
    customer_identifier: Optional[str] = Field(default=None, max_length=255, index=True)
    azure_subscription_id: Optional[str] = Field(default=None, max_length=64, index=True)
    gcp_entitlement_id: Optional[str] = Field(default=None, max_length=255, index=True)
    offer_id: Optional[str] = Field(default=None, max_length=255)
    plan_id: Optional[str] = Field(default=None, max_length=255)
    cloud_identifiers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    buyer_name: str = Field(default="", max_length=255)
    buyer_email: str = Field(default="", max_length=255)
    pricing: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    previous_pricing: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    custom_properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Contracts with consumption (worker/entitlements.py): [{"effective_at", "included": {dimension:
    # units}, "source"}], oldest first; [] = pure pay-as-you-go.
    entitlements: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    mapping_status: str = Field(default="unmapped", max_length=16)
    mapping_reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # Unmapped by an operator: lifecycle events (a creation applied again, a modification) leave
    # it unmapped; mapping it through the API or the dashboard clears this.
    operator_unmapped: bool = Field(default=False)
    customer_id: Optional[str] = Field(default=None, max_length=64)
    subscription_id: Optional[str] = Field(default=None, max_length=64)
    started_at: Optional[datetime] = Field(default=None)
    canceled_at: Optional[datetime] = Field(default=None)  # when the cancellation webhook came (T)
    cancel_effective_at: Optional[datetime] = Field(default=None)  # marketplace cancellation time (C)
    closed_at: Optional[datetime] = Field(default=None)
    created_at: datetime
    updated_at: datetime


class InboxRow(SQLModel, table=True):
    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("source", "delivery_id", name="uq_inbox_source_delivery"),
        Index("ix_inbox_status_received", "status", "received_at"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    source: str = Field(max_length=32)
    delivery_id: str = Field(max_length=255)
    event_type: str = Field(default="", max_length=64)
    status: str = Field(default="received", max_length=16)  # received processing done failed ignored deferred
    contract_key: str = Field(default="", max_length=255, index=True)  # external contract id, once known
    contract_id: Optional[str] = Field(default=None, max_length=40, index=True)
    body: str = Field(sa_column=Column(Text, nullable=False))
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The verified, normalized event (verification happens once, at receipt: tokens expire).
    normalized: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attempts: int = Field(default=0)
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    received_at: datetime
    processed_at: Optional[datetime] = Field(default=None)
