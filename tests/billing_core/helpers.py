"""Builders for prices in tests: one short call per price model."""

from decimal import Decimal as D

from billing_core.periods import Cadence
from billing_core.pricing import (
    BillingMode, BulkConfig, BulkTier, MatrixConfig, MatrixValue, ModelType, PackageConfig, Price,
    Tier, TieredConfig, TieredPackageConfig, TieredPackageTier, UnitConfig,
)


def _d(v):
    return None if v is None else D(str(v))


def price(model, config, *, id="p1", key=None, metric="m1", **kw):
    return Price(id=id, key=key or id, name=kw.pop("name", id), item_id=kw.pop("item_id", "item1"),
                 model_type=model, config=config, metric_id=metric, **kw)


def unit(amount, **kw):
    return price(ModelType.UNIT, UnitConfig(D(amount)), **kw)


def tiered(*tiers, **kw):
    return price(ModelType.TIERED, TieredConfig(tuple(Tier(_d(a), _d(b), D(c)) for a, b, c in tiers)), **kw)


def bulk(*tiers, **kw):
    return price(ModelType.BULK, BulkConfig(tuple(BulkTier(_d(m), D(a)) for m, a in tiers)), **kw)


def package(size, amount, **kw):
    return price(ModelType.PACKAGE, PackageConfig(D(amount), D(size)), **kw)


def tiered_package(size, *tiers, **kw):
    return price(ModelType.TIERED_PACKAGE, TieredPackageConfig(
        D(size), tuple(TieredPackageTier(D(str(lo)), D(a)) for lo, a in tiers)), **kw)


def matrix(dims, default, values, **kw):
    return price(ModelType.MATRIX, MatrixConfig(tuple(dims), D(default), tuple(
        MatrixValue(tuple(k), D(v)) for k, v in values)), **kw)


def fixed(amount, quantity="1", *, cadence=Cadence.MONTHLY, mode=BillingMode.IN_ADVANCE, **kw):
    return price(ModelType.UNIT, UnitConfig(D(amount)), metric=None, fixed_price_quantity=D(quantity),
                 cadence=cadence, billing_mode=mode, **kw)


# --- timelines and usage -------------------------------------------------------------------

from datetime import UTC, datetime  # noqa: E402

from billing_core.plans import create_plan  # noqa: E402
from billing_core.usage import InMemoryMetric, InMemoryUsageSource  # noqa: E402


def t(y, m, d, h=0, mi=0):
    return datetime(y, m, d, h, mi, tzinfo=UTC)


def plan_of(*prices, id="plan1", adjustments=(), currency="USD"):
    return create_plan(id=id, name=id, currency=currency, prices=prices, adjustments=adjustments, now=t(2024, 12, 1))


METRICS = {
    "m1": InMemoryMetric("api_call", "count"),
    "tokens": InMemoryMetric("api_call", "sum", "tokens"),
    "max_tokens": InMemoryMetric("api_call", "max", "tokens"),
    "users": InMemoryMetric("api_call", "unique_count", "user"),
    "latest": InMemoryMetric("api_call", "latest", "tokens"),
}


def events(customer, *specs):
    """Build events from (timestamp, properties) pairs with derived idempotency keys."""
    return [{"idempotency_key": f"{customer}-{i}", "customer_id": customer, "event_name": "api_call",
             "timestamp": ts, "properties": props} for i, (ts, props) in enumerate(specs)]


def source(*evs, metrics=None):
    return InMemoryUsageSource(metrics or METRICS, [e for group in evs for e in group])
