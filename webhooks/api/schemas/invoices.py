"""Invoices and their line items."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import Field

from webhooks.api.schemas.base import Money, Quantity, Metadata, Shape, Query, CursorQuery
from webhooks.api.schemas.catalog import Price, AdjustmentType


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
