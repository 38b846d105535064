"""Items, billable metrics, customers, prices and plans: what the catalog endpoints answer and accept."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional, Union

from pydantic import Field

from webhooks.api.common import Body
from webhooks.api.schemas.base import (
    Money, Quantity, DecimalInput, Metadata, MetadataInput, Shape, CursorQuery, CreatedAtQuery,
)


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
    replaces_price_id: Optional[str]
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
    replaces_adjustment_id: Optional[str]
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


class LineageEntry(Shape):
    kind: Literal["price", "adjustment"]
    key: str
    change: Literal["added", "edited", "removed", "kept"]
    id: Optional[str]
    previous_id: Optional[str]


class PlanVersion(Shape):
    version: int
    created_at: datetime
    plan_phases: None
    prices: list[Price]
    adjustments: list[Adjustment]
    lineage: list[LineageEntry]


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


class ReplacePlanAdjustment(Body):
    replaces_adjustment_id: str
    adjustment: NewAdjustment
    plan_phase_order: Optional[int] = None


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
    replace_adjustments: Optional[list[ReplacePlanAdjustment]] = None
    set_as_default: Optional[bool] = None


class SetDefaultVersion(Body):
    version: int


class PlanQuery(CursorQuery):
    status: Optional[str] = None
