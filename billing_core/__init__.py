"""The embedded billing core: what ``worker/`` and ``webhooks/`` may use.

Everything outside ``billing_core`` imports from here: the errors (their tree is in
``billing_core.errors``), the domain types, the use cases, and the SQL adapters the entry points
hand to the use cases (repositories on the caller's session, usage sources, the write lock).
Rows (``table=True`` models) stay inside ``billing_core.persistence``.

``service_plans`` (use cases on a session: plans, subscriptions, invoices, costs),
``service_migrations`` (plan migrations: start, run a chunk, apply pending, cancel, dry run) and ``wire``
(strict JSON and the accepted instant range) and ``orb_json`` (the Orb object shapes: API answers and
expanded webhook payloads) are used as modules.
"""

from billing_core import orb_json, service_alerts, service_migrations, service_outbox, service_plans, wire
from billing_core.alerts import CREDIT_TYPES, SUBSCRIPTION_TYPES, Alert, AlertNotFound
from billing_core.outbox import EVENT_TYPES, Delivery, Endpoint, OutboxEvent
from billing_core.persistence.alerts import SqlAlerts
from billing_core.persistence.outbox import SqlOutbox
from billing_core.service_outbox import OUTBOX_FLAG, emit, emit_subscription
from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.backfills import (
    Backfill, BackfillNotFound, close_backfill, create_backfill, ingest_into_backfill, revert_backfill,
)
from billing_core.changes import Mark, changed_customers, unchanged_usage, watermark
from billing_core.codec import definition_from_dict
from billing_core.costs import Costs, PriceCost, costs, costs_each
from billing_core.customers import Customer, CustomerNotFound, create_customer, update_customer
from billing_core.errors import (
    BillingError, Conflict, InexactAmount, InvalidInput, NotFound, OutOfRange, UnsupportedMetricSql,
    UsageOutOfRange,
)
from billing_core.evaluation import (
    MAX_PREVIEW_EVENTS, MAX_PRICE_EVALUATIONS, EvaluatedPrice, PriceEvaluation, PriceGroup, evaluate_prices,
    preview_usage_source,
)
from billing_core.events import (
    BatchTooLarge, Event, EventNotFound, EventValidationFailed, IdempotencyConflict, amend_event,
    deprecate_event, from_micros, ingest_events, properties_json, store_records, to_micros, validate_batch,
)
from billing_core.invoices import Invoice, InvoiceNotFound
from billing_core.lines import Charge, LineItem, charges_for_timeframe, iso
from billing_core.metric_definition import Condition, InvalidMetric, MetricDefinition
from billing_core.metric_sql import filter_from_sql
from billing_core.metrics import Metric, MetricNotFound, create_metric, update_metric
from billing_core.money import (
    ExactNumber, InvalidAmount, divide_to_integral, exact_json, exact_number, format_decimal, parse_decimal,
    parse_optional_decimal, parse_unit_price, round_money,
)
from billing_core.periods import BillingAnchor, Cadence, Period
from billing_core.persistence import MIGRATIONS_DIR
from billing_core.persistence.backfills import SqlBackfillStore
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import GroupCommitWriter, SqlEventStore, count_customer_events_since
from billing_core.persistence.metrics import SqlMetricRepository
from billing_core.persistence.plan_migrations import Migration, MigrationNotFound, SqlPlanMigrations, SubscriptionOutcome
from billing_core.plan_migrations import EffectiveTime, MigrationError, Outcome, Overrides, parse_effective_time
from billing_core.service_migrations import DryRunLine, MigrationRequest
from billing_core.usage import UsageSource
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.persistence.writes import GroupCommit, get_for_update, process_local, write_lock
from billing_core.plans import Item, ItemNotFound, Plan, PlanNotFound, PriceNotFound, create_plan
from billing_core.pricing import (
    BillingMode, BulkConfig, BulkTier, MatrixConfig, MatrixValue, ModelType, PackageConfig, Price, Tier,
    TieredConfig, TieredPackageConfig, TieredPackageTier, UnitConfig, config_to_dict, parse_config,
)
from billing_core.simulations import Simulation
from billing_core.sql_usage import SqlUsageSource
from billing_core.sql_fragments import FragmentUsageSource, use_fragments, usage_source
from billing_core.sql_usage_batch import BatchSqlUsageSource
from billing_core.subscriptions import (
    AddAdjustment, AddPrice, AdjustmentInterval, IntervalEdit, PriceInterval, ReplacePrice, Subscription,
    SubscriptionNotFound, billing_period, cancel, create_subscription, schedule_plan_change,
)

__all__ = [
    # modules used as namespaces
    "orb_json", "service_alerts", "service_migrations", "service_outbox", "service_plans", "wire",
    # plan migrations
    "Migration", "MigrationNotFound", "SqlPlanMigrations", "SubscriptionOutcome", "EffectiveTime", "MigrationError",
    "Outcome", "Overrides", "parse_effective_time", "MigrationRequest", "DryRunLine", "UsageSource",
    # outbound webhooks and alerts
    "EVENT_TYPES", "Delivery", "Endpoint", "OutboxEvent", "SqlOutbox", "OUTBOX_FLAG", "emit", "emit_subscription",
    "Alert", "AlertNotFound", "CREDIT_TYPES", "SUBSCRIPTION_TYPES", "SqlAlerts", "changed_customers",
    # errors
    "BillingError", "NotFound", "Conflict", "InvalidInput", "UnsupportedMetricSql", "OutOfRange",
    "UsageOutOfRange", "InexactAmount", "InvalidAmount", "BatchTooLarge", "EventValidationFailed",
    "IdempotencyConflict", "BackfillNotFound", "CustomerNotFound", "EventNotFound", "InvoiceNotFound",
    "ItemNotFound", "MetricNotFound", "PlanNotFound", "PriceNotFound", "SubscriptionNotFound",
    # domain types
    "Adjustment", "AdjustmentType", "Backfill", "Customer", "Event", "Metric", "MetricDefinition", "Condition",
    "Item", "Plan", "Price", "BillingMode", "ModelType", "UnitConfig", "Tier", "TieredConfig", "BulkTier",
    "BulkConfig", "PackageConfig", "TieredPackageTier", "TieredPackageConfig", "MatrixValue", "MatrixConfig",
    "Cadence", "BillingAnchor", "Period", "Subscription", "PriceInterval", "AdjustmentInterval", "AddPrice",
    "AddAdjustment", "ReplacePrice", "IntervalEdit", "Invoice", "LineItem", "Costs", "PriceCost",
    "ExactNumber", "PriceEvaluation", "PriceGroup", "EvaluatedPrice", "InvalidMetric",
    "MAX_PREVIEW_EVENTS", "MAX_PRICE_EVALUATIONS", "Simulation",
    # use cases and pure functions
    "create_customer", "update_customer", "create_metric", "update_metric", "validate_batch",
    "store_records", "ingest_events", "amend_event", "deprecate_event", "create_backfill",
    "ingest_into_backfill", "close_backfill", "revert_backfill", "create_plan", "create_subscription",
    "cancel", "schedule_plan_change", "billing_period", "costs", "costs_each", "count_customer_events_since",
    "evaluate_prices", "preview_usage_source", "filter_from_sql",
    # conversions at the edge
    "definition_from_dict", "parse_config", "config_to_dict", "properties_json", "to_micros", "from_micros",
    "iso", "format_decimal", "parse_decimal", "parse_optional_decimal", "parse_unit_price", "exact_number", "exact_json",
    "round_money", "divide_to_integral",
    # adapters: repositories on the caller's session, usage sources, writers
    "SqlCustomerRepository", "SqlEventStore", "SqlMetricRepository", "SqlBackfillStore", "SqlCatalog",
    "SqlSubscriptions", "SqlUsageSource", "BatchSqlUsageSource", "FragmentUsageSource", "use_fragments",
    "usage_source", "GroupCommitWriter", "GroupCommit", "Mark", "unchanged_usage", "watermark",
    "Charge", "charges_for_timeframe",
    "write_lock", "get_for_update", "process_local",
    # the Alembic revisions of billing_core's tables
    "MIGRATIONS_DIR",
]
