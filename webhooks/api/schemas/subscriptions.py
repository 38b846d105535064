"""Subscriptions, their timelines, costs and usage: answers and request bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional, Union

from pydantic import Field

from webhooks.api.common import Body
from webhooks.api.schemas.base import (
    Money, Quantity, DecimalInput, Metadata, MetadataInput, Shape, Query, CursorQuery,
)
from webhooks.api.schemas.catalog import (
    Customer, Price, Adjustment, Plan, NewPrice, NewAdjustment, AdjustmentIdRef,
)


# --- subscriptions, costs, usage ------------------------------------------------------------------

class PriceInterval(Shape):
    id: str
    start_date: datetime
    end_date: Optional[datetime]
    price: Price
    billing_cycle_day: int
    current_billing_period_start_date: Optional[datetime]
    current_billing_period_end_date: Optional[datetime]
    fixed_fee_quantity_transitions: None
    filter: None
    usage_customer_ids: None
    can_defer_billing: bool
    plan_id: Optional[str]
    plan_version: Optional[int]


class AdjustmentInterval(Shape):
    id: str
    adjustment: Adjustment
    applies_to_price_interval_ids: list[str]
    start_date: datetime
    end_date: Optional[datetime]


class AnchorConfiguration(Shape):
    day: int
    month: Optional[int]
    year: None


class TimelineEdit(Shape):
    sequence: int
    kind: str
    effective_at: Optional[datetime]
    recorded_at: Optional[datetime]
    details: dict[str, Any]


class TrialInfo(Shape):
    end_date: None


class Subscription(Shape):
    id: str
    name: str
    status: Literal["upcoming", "active", "ended"]
    customer: Customer
    plan: Optional[Plan]
    plan_version: Optional[int]
    start_date: datetime
    end_date: Optional[datetime]
    created_at: datetime
    currency: str
    billing_cycle_day: int
    billing_cycle_anchor_configuration: AnchorConfiguration
    current_billing_period_start_date: Optional[datetime]
    current_billing_period_end_date: Optional[datetime]
    price_intervals: list[PriceInterval]
    adjustment_intervals: list[AdjustmentInterval]
    discount_intervals: list[Any]
    minimum_intervals: list[Any]
    maximum_intervals: list[Any]
    fixed_fee_quantity_schedule: list[Any]
    metadata: Metadata
    net_terms: int
    auto_collection: None
    auto_issuance: None
    default_invoice_memo: None
    invoicing_threshold: None
    redeemed_coupon: None
    trial_info: TrialInfo
    active_plan_phase_order: None
    pending_subscription_change: None
    external_marketplace: Optional[Literal["aws", "azure", "google"]]
    external_marketplace_reporting_id: Optional[str]
    timeline_edits: list[TimelineEdit]
    changed_resources: None = None


InstantOrTerm = Union[datetime, Literal["start_of_term", "end_of_term"]]


class AddPriceInput(Body):
    price: Optional[NewPrice] = None
    price_id: Optional[str] = None
    external_price_id: Optional[str] = None
    start_date: Optional[datetime] = None
    end_date: Optional[datetime] = None
    minimum_amount: Optional[DecimalInput] = None
    maximum_amount: Optional[DecimalInput] = None
    fixed_price_quantity: Optional[DecimalInput] = None


class RemovePriceInput(Body):
    price_id: Optional[str] = None
    external_price_id: Optional[str] = None


class ReplacePriceInput(Body):
    replaces_price_id: str
    price: Optional[NewPrice] = None
    price_id: Optional[str] = None
    external_price_id: Optional[str] = None
    minimum_amount: Optional[DecimalInput] = None
    maximum_amount: Optional[DecimalInput] = None
    fixed_price_quantity: Optional[DecimalInput] = None


class AddAdjustmentInput(Body):
    adjustment: NewAdjustment
    start_date: Optional[datetime] = None
    end_date: Optional[datetime] = None


class AnchorInput(Body):
    day: int = Field(ge=1, le=31)
    month: Optional[int] = Field(default=None, ge=1, le=12)
    year: Optional[int] = None


class _PlanChanges(Body):
    plan_id: Optional[str] = None
    external_plan_id: Optional[str] = None
    plan_version_number: Optional[int] = None
    add_prices: Optional[list[AddPriceInput]] = None
    remove_prices: Optional[list[RemovePriceInput]] = None
    replace_prices: Optional[list[ReplacePriceInput]] = None
    add_adjustments: Optional[list[AddAdjustmentInput]] = None
    remove_adjustments: Optional[list[AdjustmentIdRef]] = None


class SubscriptionCreate(_PlanChanges):
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    start_date: Optional[datetime] = None
    end_date: Optional[datetime] = None
    billing_cycle_anchor_configuration: Optional[AnchorInput] = None
    external_marketplace: Optional[Literal["aws", "azure", "google"]] = None
    external_marketplace_reporting_id: Optional[str] = None
    metadata: MetadataInput = None
    currency: Optional[str] = None
    net_terms: Optional[int] = None
    auto_collection: Optional[bool] = None
    default_invoice_memo: Optional[str] = None
    name: Optional[str] = None
    align_billing_with_subscription_start_date: Optional[bool] = None


ChangeOption = Literal["immediate", "requested_date", "end_of_subscription_term"]


class SubscriptionCancel(Body):
    cancel_option: ChangeOption
    cancellation_date: Optional[datetime] = None
    allow_invoice_credit_or_void: Optional[bool] = None


class PlanChange(_PlanChanges):
    change_option: ChangeOption
    change_date: Optional[datetime] = None
    align_billing_with_plan_change_date: Optional[bool] = None
    billing_cycle_alignment: Optional[Literal["unchanged"]] = None


class IntervalAddInput(AddPriceInput):
    start_date: InstantOrTerm  # type: ignore[assignment]
    end_date: Optional[InstantOrTerm] = None  # type: ignore[assignment]


class IntervalEditInput(Body):
    price_interval_id: str = Field(min_length=1)
    start_date: Optional[InstantOrTerm] = None
    end_date: Optional[InstantOrTerm] = None


class PriceIntervalsEdit(Body):
    add: Optional[list[IntervalAddInput]] = None
    edit: Optional[list[IntervalEditInput]] = None
    add_adjustments: Optional[list[AddAdjustmentInput]] = None
    allow_invoice_credit_or_void: Optional[bool] = None


class SubscriptionQuery(CursorQuery):
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    status: Optional[Literal["upcoming", "active", "ended"]] = None


class TimeframeQuery(Query):
    timeframe_start: Optional[datetime] = None
    timeframe_end: Optional[datetime] = None
    view_mode: Optional[Literal["cumulative"]] = None


class UsageQuery(Query):
    timeframe_start: Optional[datetime] = None
    timeframe_end: Optional[datetime] = None
    granularity: Optional[Literal["day"]] = None
    billable_metric_id: Optional[str] = None


class PerPriceCost(Shape):
    price_id: str
    price: Price
    quantity: Quantity
    subtotal: Money
    total: Money
    subtotal_unrounded: Money
    total_unrounded: Money
    price_interval_ids: list[str]


class CostFrame(Shape):
    timeframe_start: datetime
    timeframe_end: datetime
    subtotal: Money
    total: Money
    subtotal_unrounded: Money
    total_unrounded: Money
    per_price_costs: list[PerPriceCost]


class Costs(Shape):
    data: list[CostFrame]


class MetricRef(Shape):
    id: str
    name: str


class UsagePoint(Shape):
    quantity: Quantity
    timeframe_start: datetime
    timeframe_end: datetime


class MetricUsage(Shape):
    billable_metric: MetricRef
    view_mode: Literal["periodic"]
    usage: list[UsagePoint]


class Usage(Shape):
    data: list[MetricUsage]
    pagination_metadata: None
