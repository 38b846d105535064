"""Pydantic models of what the API answers, and of the request shapes parsed by hand.

Response models mirror the shape functions (``webhooks.api.orb``,
``worker.contracts.contract_as_dict`` ...) field by field: unknown fields are forbidden, so a
field added to a shape without its model fails the contract test. Request models for bodies
and query strings that the routes parse with plain code (plans, subscriptions, events, items,
pagination) describe what those parsers accept; bodies validated with pydantic (customers,
metrics, listings, contracts) are documented with their own models instead.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from webhooks.api.common import MAX_LIMIT, Body
from webhooks.api.paging import MAX_PAGE_SIZE
from worker.contracts import FILTERS as CONTRACT_FILTERS

T = TypeVar("T")
Money = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="A decimal string")]
Quantity = Annotated[float, Field(description="A JSON number (quantities are not money)")]
DecimalInput = Union[Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$")], int]
Metadata = dict[str, str]
MetadataInput = Optional[dict[str, Optional[str]]]


class Shape(BaseModel):
    """Base of response models: every field the code answers, and no other."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Base of query-string models (each field is one parameter)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- errors and envelopes -------------------------------------------------------------------------

class FieldError(Shape):
    field: str
    message: str


class EventFailure(Shape):
    idempotency_key: Optional[str]
    validation_errors: list[str]


class Error(Shape):
    """Every error: Orb's ``{type, status, title, detail}``; 400s name the offending fields."""

    type: str
    status: int = Field(ge=400, le=599)
    title: str
    detail: str
    validation_errors: Optional[list[FieldError]] = None
    validation_failed: Optional[list[EventFailure]] = None


class PaginationMetadata(Shape):
    has_more: bool
    next_cursor: Optional[str]


class Page(Shape, Generic[T]):
    """Orb's cursor-paginated list."""

    data: list[T]
    pagination_metadata: PaginationMetadata


class NumberedPage(Shape, Generic[T]):
    """The mapping API's page-number list."""

    count: int = Field(ge=0)
    total_count: int = Field(ge=0)
    page_count: int = Field(ge=0)
    next: Optional[str]
    previous: Optional[str]
    results: list[T]


class CursorQuery(Query):
    cursor: Optional[str] = Field(default=None, description="The next_cursor of the previous page")
    limit: Optional[int] = Field(default=None, ge=1, le=MAX_LIMIT)


class CreatedAtQuery(CursorQuery):
    created_at_gt: Optional[datetime] = Field(default=None, alias="created_at[gt]")
    created_at_gte: Optional[datetime] = Field(default=None, alias="created_at[gte]")
    created_at_lt: Optional[datetime] = Field(default=None, alias="created_at[lt]")
    created_at_lte: Optional[datetime] = Field(default=None, alias="created_at[lte]")


class NumberedQuery(Query):
    page: Optional[int] = Field(default=None, ge=1, le=10**9)
    page_size: Optional[int] = Field(default=None, ge=1, le=MAX_PAGE_SIZE)


# --- health and the document ----------------------------------------------------------------------

class Liveness(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    """Readiness: every dependency answers (200), or which does not (503)."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    type: Optional[str] = None
    title: Optional[str] = None
    detail: Optional[str] = None


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# --- items, metrics, customers --------------------------------------------------------------------

class Item(Shape):
    id: str
    name: str
    created_at: datetime
    external_connections: list[Any]
    metadata: Metadata
    archived_at: None


class ItemCreate(Body):
    name: str
    metadata: MetadataInput = None


class ItemUpdate(Body):
    name: Optional[str] = None
    metadata: MetadataInput = None


class MetricItem(Shape):
    id: Optional[str]
    name: Optional[str]
    created_at: Optional[datetime]
    external_connections: list[Any]
    metadata: Metadata
    archived_at: None


class Metric(Shape):
    id: str
    name: str
    description: Optional[str]
    item: MetricItem
    metadata: Metadata
    status: Literal["active", "draft", "archived"]
    sql: Optional[str]
    parameter_definitions: None
    created_at: datetime


class MetricQuery(CreatedAtQuery):
    status: Optional[Literal["active", "draft", "archived"]] = None


class CustomerHierarchy(Shape):
    children: list[Any]
    parent: None


class Customer(Shape):
    id: str
    external_customer_id: Optional[str]
    name: str
    email: str
    currency: Optional[str]
    timezone: Optional[str]
    metadata: Metadata
    created_at: datetime
    additional_emails: list[str]
    auto_collection: bool
    auto_issuance: None
    balance: Money
    billing_address: None
    shipping_address: None
    email_delivery: bool
    exempt_from_automated_tax: bool
    automatic_tax_enabled: bool
    hierarchy: CustomerHierarchy
    payment_provider: None
    payment_provider_id: None
    portal_url: None
    tax_id: None
    accounting_sync_configuration: None
    reporting_configuration: None


# --- prices, plans --------------------------------------------------------------------------------

ModelType = Literal["unit", "tiered", "bulk", "package", "tiered_package", "matrix"]
CadenceName = Literal["one_time", "monthly", "quarterly", "semi_annual", "annual"]


class PriceItem(Shape):
    id: str
    name: str


class IdRef(Shape):
    id: str


class BillingCycle(Shape):
    duration: int
    duration_unit: Literal["month"]


class Price(Shape):
    id: str
    name: str
    model_type: ModelType
    unit_config: Optional[dict[str, Any]] = None
    tiered_config: Optional[dict[str, Any]] = None
    bulk_config: Optional[dict[str, Any]] = None
    package_config: Optional[dict[str, Any]] = None
    tiered_package_config: Optional[dict[str, Any]] = None
    matrix_config: Optional[dict[str, Any]] = None
    cadence: CadenceName
    currency: str
    billing_mode: Literal["in_advance", "in_arrear"]
    price_type: Literal["fixed_price", "usage_price"]
    created_at: Optional[datetime]
    item: PriceItem
    billable_metric: Optional[IdRef]
    fixed_price_quantity: Optional[Quantity]
    minimum_amount: Optional[Money]
    maximum_amount: Optional[Money]
    minimum: None
    maximum: None
    discount: None
    external_price_id: Optional[str]
    metadata: Metadata
    billing_cycle_configuration: BillingCycle
    invoicing_cycle_configuration: None
    conversion_rate: None
    conversion_rate_config: None
    credit_allocation: None
    plan_phase_order: None
    replaces_price_id: None
    dimensional_price_configuration: None
    composite_price_filters: None
    invoice_grouping_key: None
    price_key: str


AdjustmentType = Literal["usage_discount", "amount_discount", "percentage_discount", "minimum", "maximum"]


class Adjustment(Shape):
    id: str
    adjustment_type: AdjustmentType
    applies_to_price_ids: list[str]
    filters: list[Any]
    is_invoice_level: bool
    plan_phase_order: None
    reason: Optional[str]
    replaces_adjustment_id: None
    usage_discount: Optional[Quantity] = None
    percentage_discount: Optional[Quantity] = None
    amount_discount: Optional[Money] = None
    minimum_amount: Optional[Money] = None
    maximum_amount: Optional[Money] = None
    item_id: Optional[str] = None


class Product(Shape):
    id: str
    name: str
    created_at: datetime


class TrialConfig(Shape):
    trial_period: None
    trial_period_unit: Literal["days"]


class Plan(Shape):
    id: str
    name: str
    description: Optional[str]
    currency: str
    invoicing_currency: str
    external_plan_id: Optional[str]
    status: str
    metadata: Metadata
    created_at: datetime
    version: int
    default_version: int
    prices: list[Price]
    adjustments: list[Adjustment]
    plan_phases: None
    base_plan: None
    base_plan_id: None
    default_invoice_memo: None
    discount: None
    maximum: None
    maximum_amount: None
    minimum: None
    minimum_amount: None
    net_terms: int
    product: Product
    trial_config: TrialConfig


class PlanVersion(Shape):
    version: int
    created_at: datetime
    plan_phases: None
    prices: list[Price]
    adjustments: list[Adjustment]


class UnitConfigInput(Body):
    unit_amount: DecimalInput


class TierInput(Body):
    first_unit: Union[float, str]
    last_unit: Optional[Union[float, str]] = None
    unit_amount: DecimalInput


class TieredConfigInput(Body):
    tiers: list[TierInput] = Field(min_length=1)


class NewPrice(Body):
    """Orb's new-price object: a ``model_type`` and its ``*_config``."""

    name: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    model_type: ModelType
    cadence: CadenceName
    billable_metric_id: Optional[str] = None
    billed_in_advance: Optional[bool] = None
    fixed_price_quantity: Optional[DecimalInput] = None
    currency: Optional[str] = None
    external_price_id: Optional[str] = None
    metadata: MetadataInput = None
    minimum_amount: Optional[DecimalInput] = None
    maximum_amount: Optional[DecimalInput] = None
    unit_config: Optional[UnitConfigInput] = None
    tiered_config: Optional[TieredConfigInput] = None
    bulk_config: Optional[dict[str, Any]] = None
    package_config: Optional[dict[str, Any]] = None
    tiered_package_config: Optional[dict[str, Any]] = None
    matrix_config: Optional[dict[str, Any]] = None


class WrappedPrice(Body):
    price: NewPrice
    plan_phase_order: Optional[int] = None


class NewAdjustment(Body):
    adjustment_type: AdjustmentType
    applies_to_price_ids: Optional[list[str]] = None
    applies_to_all: Optional[bool] = None
    is_invoice_level: Optional[bool] = None
    item_id: Optional[str] = None
    currency: Optional[str] = None
    reason: Optional[str] = None
    usage_discount: Optional[DecimalInput] = None
    amount_discount: Optional[DecimalInput] = None
    percentage_discount: Optional[DecimalInput] = None
    minimum_amount: Optional[DecimalInput] = None
    maximum_amount: Optional[DecimalInput] = None


class PlanAdjustmentInput(Body):
    adjustment: NewAdjustment
    plan_phase_order: Optional[int] = None


class PlanCreate(Body):
    name: str = Field(min_length=1)
    currency: str = Field(min_length=3, max_length=3)
    prices: list[Union[WrappedPrice, NewPrice]] = Field(min_length=1)
    adjustments: Optional[list[PlanAdjustmentInput]] = None
    description: Optional[str] = None
    external_plan_id: Optional[str] = None
    metadata: MetadataInput = None
    net_terms: Optional[int] = None
    status: Optional[str] = None
    default_invoice_memo: Optional[str] = None


class PriceIdRef(Body):
    price_id: str


class AdjustmentIdRef(Body):
    adjustment_id: str


class ReplacePlanPrice(Body):
    replaces_price_id: str
    price: NewPrice


class PlanVersionCreate(Body):
    version: int
    add_prices: Optional[list[Union[WrappedPrice, NewPrice]]] = None
    remove_prices: Optional[list[PriceIdRef]] = None
    replace_prices: Optional[list[ReplacePlanPrice]] = None
    add_adjustments: Optional[list[PlanAdjustmentInput]] = None
    remove_adjustments: Optional[list[AdjustmentIdRef]] = None
    set_as_default: Optional[bool] = None


class SetDefaultVersion(Body):
    version: int


class PlanQuery(CursorQuery):
    status: Optional[str] = None


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


# --- invoices -------------------------------------------------------------------------------------

class LineAdjustment(Shape):
    id: str
    adjustment_type: AdjustmentType
    amount: Money
    applies_to_price_ids: list[str]
    filters: list[Any]
    is_invoice_level: bool
    reason: None
    replaces_adjustment_id: None


class LineItem(Shape):
    id: str
    name: str
    kind: Literal["charge", "correction"]
    amount: Money
    subtotal: Money
    adjusted_subtotal: Money
    amount_unrounded: Money
    quantity: Quantity
    start_date: datetime
    end_date: datetime
    price: Price
    sub_line_items: list[dict[str, Any]]
    adjustments: list[LineAdjustment]
    credits_applied: Money
    partially_invoiced_amount: Money
    tax_amounts: list[Any]
    discount: None
    minimum: None
    maximum: None
    filter: None
    grouping: None
    usage_customer_ids: None
    proration: Optional[Money]
    corrects_invoice_id: Optional[str]
    corrects_line_id: Optional[str]
    trace: dict[str, Any]


class InvoiceCustomer(Shape):
    """Orb's minified customer, as an invoice embeds it."""

    id: str
    external_customer_id: Optional[str]


class AutoCollection(Shape):
    enabled: bool
    next_attempt_at: None
    num_attempts: None
    previously_attempted_at: None


class Invoice(Shape):
    id: Optional[str]
    invoice_number: str
    status: Literal["issued", "draft"]
    currency: str
    customer: InvoiceCustomer
    subscription: dict[str, Optional[str]]
    amount_due: Money
    total: Money
    subtotal: Money
    line_items: list[LineItem]
    invoice_date: datetime
    period_start: datetime
    period_end: datetime
    created_at: datetime
    issued_at: Optional[datetime]
    due_date: None
    paid_at: None
    voided_at: None
    scheduled_issue_at: None
    sync_failed_at: None
    payment_failed_at: None
    payment_started_at: None
    eligible_to_issue_at: Optional[datetime]
    invoice_source: Literal["subscription"]
    hidden_line_item_count: int
    credit_notes: list[Any]
    customer_balance_transactions: list[Any]
    discounts: list[Any]
    discount: None
    maximum: None
    maximum_amount: None
    minimum: None
    minimum_amount: None
    memo: None
    metadata: Metadata
    auto_collection: AutoCollection
    billing_address: None
    shipping_address: None
    customer_tax_id: None
    hosted_invoice_url: None
    invoice_pdf: None
    payment_attempts: list[Any]
    will_auto_issue: bool
    is_payable_now: bool
    total_unrounded: Money
    target_date: Optional[datetime] = None


class UpcomingInvoiceQuery(Query):
    subscription_id: str = Field(min_length=1)


class InvoiceQuery(CursorQuery):
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    subscription_id: Optional[str] = None
    status: Optional[Literal["draft", "issued"]] = None


# --- events ---------------------------------------------------------------------------------------

class NewEvent(BaseModel):
    """One usage event (validated by ``billing_core.events.validate_batch``)."""

    model_config = ConfigDict(extra="forbid")
    idempotency_key: str = Field(min_length=1)
    event_name: str = Field(min_length=1)
    timestamp: datetime
    properties: dict[str, Any]
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None


class IngestBody(Body):
    events: list[NewEvent] = Field(max_length=500)


class IngestQuery(Query):
    debug: Optional[bool] = None
    backfill_id: Optional[str] = None


class IngestDebug(Shape):
    duplicate: list[str]
    ingested: list[str]


class IngestResult(Shape):
    validation_failed: list[EventFailure]
    debug: Optional[IngestDebug] = None


class EventSearch(Body):
    event_ids: list[str] = Field(max_length=500)
    timeframe_start: Optional[datetime] = None
    timeframe_end: Optional[datetime] = None


class EventView(Shape):
    id: str
    customer_id: Optional[str]
    external_customer_id: Optional[str]
    event_name: str
    timestamp: datetime
    deprecated: bool
    properties: dict[str, Any]


class EventList(Shape):
    data: list[EventView]


class EventAmend(Body):
    event_name: str
    properties: dict[str, Any]
    timestamp: datetime
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None


class Amended(Shape):
    amended: str


class Deprecated(Shape):
    deprecated: str


class BackfillCreate(Body):
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    replace_existing_events: Optional[bool] = None


class Backfill(Shape):
    id: str
    status: Literal["pending", "pending_revert", "reflected", "reverted"]
    created_at: datetime
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: Optional[str]
    replace_existing_events: bool
    events_ingested: int
    close_time: Optional[datetime]
    reverted_at: Optional[datetime]
    deprecation_filter: None


# --- the mapping API ------------------------------------------------------------------------------

class Listing(Shape):
    id: str
    marketplace: Literal["aws", "azure", "gcp"]
    product_id: str
    plan_id: Optional[str]
    name: Optional[str]
    billing_plan_id: str
    dimension: str
    unit_price: Money
    currency: str
    close_rounding: Literal["floor", "half_up", "ceil"]
    include_fixed_fees: bool
    metering_start_date: Optional[date]
    approve_entitlements: bool
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


class BillingAssociation(Shape):
    billing: MappedObject


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
    mapping: ContractMapping
    external_associations: BillingAssociation
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
