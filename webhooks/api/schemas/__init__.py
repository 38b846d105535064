"""Pydantic models of what the API answers, and of the request shapes parsed by hand.

Response models mirror the shape functions (``billing_core.orb_json``,
``worker.contracts.contract_as_dict`` ...) field by field: unknown fields are forbidden, so a
field added to a shape without its model fails the contract test. Request models for bodies
and query strings that the routes parse with plain code (plans, subscriptions, events, items,
pagination) describe what those parsers accept; bodies validated with pydantic (customers,
metrics, listings, contracts) are documented with their own models instead.

One module per resource family: ``base`` (bases, field types, errors, envelopes, health),
``catalog``, ``subscriptions``, ``invoices``, ``events``, ``mapping``, ``prices`` (evaluation, simulations).
"""

from __future__ import annotations

from webhooks.api.schemas.base import (
    Money, Quantity, DecimalInput, Metadata, MetadataInput, Shape, Query, FieldError, EventFailure,
    Error, PaginationMetadata, Page, NumberedPage, CursorQuery, CreatedAtQuery, NumberedQuery, Liveness,
    Readiness, OpenApiDocument,
)
from webhooks.api.schemas.catalog import (
    Item, ItemCreate, ItemUpdate, MetricItem, Metric, MetricQuery, CustomerHierarchy, Customer,
    ModelType, CadenceName, PriceItem, IdRef, BillingCycle, Price, AdjustmentType, Adjustment, Product,
    TrialConfig, Plan, PlanVersion, UnitConfigInput, TierInput, TieredConfigInput, NewPrice,
    WrappedPrice, NewAdjustment, PlanAdjustmentInput, PlanCreate, PriceIdRef, AdjustmentIdRef,
    ReplacePlanPrice, PlanVersionCreate, SetDefaultVersion, PlanQuery,
)
from webhooks.api.schemas.subscriptions import (
    PriceInterval, AdjustmentInterval, AnchorConfiguration, TimelineEdit, TrialInfo, Subscription,
    InstantOrTerm, AddPriceInput, RemovePriceInput, ReplacePriceInput, AddAdjustmentInput, AnchorInput,
    SubscriptionCreate, ChangeOption, SubscriptionCancel, PlanChange, IntervalAddInput,
    IntervalEditInput, PriceIntervalsEdit, SubscriptionQuery, TimeframeQuery, UsageQuery, PerPriceCost,
    CostFrame, Costs, MetricRef, UsagePoint, MetricUsage, Usage,
)
from webhooks.api.schemas.invoices import (
    LineAdjustment, LineItem, InvoiceCustomer, AutoCollection, Invoice, UpcomingInvoiceQuery,
    InvoiceQuery,
)
from webhooks.api.schemas.events import (
    NewEvent, IngestBody, IngestQuery, IngestDebug, IngestResult, EventSearch, EventView, EventList,
    EventAmend, Amended, Deprecated, BackfillCreate, Backfill,
)
from webhooks.api.schemas.outbound import (
    WebhookEndpoint, WebhookEndpointWithSecret, WebhookEndpointCreate, WebhookEndpointUpdate, WebhookDelivery,
    DeliveryQuery, Alert, AlertCreate, AlertUpdate, AlertToggle, AlertQuery,
)
from webhooks.api.schemas.prices import (
    PriceEvaluationInput, PriceEvaluate, PreviewEvent, PriceEvaluatePreview, PriceGroup, EvaluatedPrice,
    PriceEvaluations, SinglePriceEvaluate, PriceGroups, DraftPrice, DraftAdjustment, SimulationCreate, Bucket, PriceRevenue, CustomerRevenue, SimulationFailure,
    SimulationResult,
)
from webhooks.api.schemas.migrations import (
    PlanMigrationCreate, MigrationCounts, PlanMigration, MigrationOutcome, PlanMigrationDetail, DryRunLine,
    DryRunTotals, PlanMigrationDryRun, MigrationQuery,
)
from webhooks.api.schemas.mapping import (
    Listing, ListingQuery, Buyer, ContractMapping, MappedObject, ExternalAssociations, Contract,
    ContractQuery, SyncQueued, ReportRow, MeteringReport, ReportQuery, ContractWebhook,
    MarketplaceNotification, DeliveryAccepted, TrueupRow, TrueupError, TrueupCounts, TrueupAnswer, TrueupApplied,
    TrueupList,
)

__all__ = [
    "WebhookEndpoint", "WebhookEndpointWithSecret", "WebhookEndpointCreate", "WebhookEndpointUpdate",
    "WebhookDelivery", "DeliveryQuery", "Alert", "AlertCreate", "AlertUpdate", "AlertToggle", "AlertQuery",
    "Money", "Quantity", "DecimalInput", "Metadata", "MetadataInput", "Shape", "Query", "FieldError",
    "EventFailure", "Error", "PaginationMetadata", "Page", "NumberedPage", "CursorQuery",
    "CreatedAtQuery", "NumberedQuery", "Liveness", "Readiness", "OpenApiDocument", "Item", "ItemCreate",
    "ItemUpdate", "MetricItem", "Metric", "MetricQuery", "CustomerHierarchy", "Customer", "ModelType",
    "CadenceName", "PriceItem", "IdRef", "BillingCycle", "Price", "AdjustmentType", "Adjustment",
    "Product", "TrialConfig", "Plan", "PlanVersion", "UnitConfigInput", "TierInput",
    "TieredConfigInput", "NewPrice", "WrappedPrice", "NewAdjustment", "PlanAdjustmentInput",
    "PlanCreate", "PriceIdRef", "AdjustmentIdRef", "ReplacePlanPrice", "PlanVersionCreate",
    "SetDefaultVersion", "PlanQuery", "PriceInterval", "AdjustmentInterval", "AnchorConfiguration",
    "TimelineEdit", "TrialInfo", "Subscription", "InstantOrTerm", "AddPriceInput", "RemovePriceInput",
    "ReplacePriceInput", "AddAdjustmentInput", "AnchorInput", "SubscriptionCreate", "ChangeOption",
    "SubscriptionCancel", "PlanChange", "IntervalAddInput", "IntervalEditInput", "PriceIntervalsEdit",
    "SubscriptionQuery", "TimeframeQuery", "UsageQuery", "PerPriceCost", "CostFrame", "Costs",
    "MetricRef", "UsagePoint", "MetricUsage", "Usage", "LineAdjustment", "LineItem", "InvoiceCustomer",
    "AutoCollection", "Invoice", "UpcomingInvoiceQuery", "InvoiceQuery", "NewEvent", "IngestBody",
    "IngestQuery", "IngestDebug", "IngestResult", "EventSearch", "EventView", "EventList", "EventAmend",
    "Amended", "Deprecated", "BackfillCreate", "Backfill", "Listing", "ListingQuery", "Buyer",
    "ContractMapping", "MappedObject", "ExternalAssociations", "Contract", "ContractQuery", "SyncQueued", "TrueupRow", "TrueupError", "TrueupCounts", "TrueupAnswer",
    "TrueupApplied", "TrueupList",
    "ReportRow", "MeteringReport", "ReportQuery", "ContractWebhook", "MarketplaceNotification",
    "DeliveryAccepted", "PriceEvaluationInput", "PriceEvaluate", "PreviewEvent", "PriceEvaluatePreview",
    "PriceGroup", "EvaluatedPrice", "PriceEvaluations", "SinglePriceEvaluate", "PriceGroups", "DraftPrice", "DraftAdjustment", "SimulationCreate", "Bucket",
    "PriceRevenue", "CustomerRevenue", "SimulationFailure", "SimulationResult",
    "PlanMigrationCreate", "MigrationCounts", "PlanMigration", "MigrationOutcome",
    "PlanMigrationDetail", "DryRunLine", "DryRunTotals", "PlanMigrationDryRun", "MigrationQuery",
]
