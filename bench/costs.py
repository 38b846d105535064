"""Costs to date for every subscription, against one raw GROUP BY over the same events.

    python -m bench.costs [--subscriptions 10000] [--events 1000000]

Builds a fresh, migrated SQLite file (WAL) with ``--subscriptions`` customers, each subscribed
to one of three plans mixing every price model (unit, tiered, bulk, package, tiered_package,
matrix on ``region``, fixed fees in advance and in arrears), and ``--events`` events spread over
the current billing period. Then, in the same run:

1. **raw**: one ``SELECT customer_id, COUNT(*), SUM(tokens) ... GROUP BY customer_id`` over the
   period, as SQLite plans it (through the ``(customer_id, event_name, ts)`` index) — the floor;
2. **costs**: what ``service_plans.all_costs`` does — load every active subscription's timeline,
   read usage in bulk (``BatchSqlUsageSource``: metrics over the same events share ONE grouped
   scan for all customers; with the window holding most of the table, that scan reads the table
   in storage order rather than through the index) and rate every price of every subscription,
   unrounded and rounded.

Prints seconds for each and the ratio. Targets on a 2-core machine: costs <= 10 s and <= 3 x raw.
For reference it also prints the raw aggregation forced into storage order (``NOT INDEXED``),
the plan the costs' scan uses; the ratio and its target are against the plain query.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bench.common import machine

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)
REGIONS = ("us", "eu", "ap", "sa")


def _plans(item_id: str):  # type: ignore[no-untyped-def]
    from billing_core.plans import create_plan
    from billing_core.pricing import (
        BillingMode, BulkConfig, BulkTier, MatrixConfig, MatrixValue, ModelType, PackageConfig, Price, Tier,
        TieredConfig, TieredPackageConfig, TieredPackageTier, UnitConfig,
    )

    def price(pid: str, model: ModelType, config, metric: str | None = None, **kw) -> Price:  # type: ignore[no-untyped-def]
        return Price(id=pid, key=pid, name=pid, item_id=item_id, model_type=model, config=config,
                     metric_id=metric, **kw)

    d = Decimal
    fee = price("fee", ModelType.UNIT, UnitConfig(d("49.00")), fixed_price_quantity=d(1),
                billing_mode=BillingMode.IN_ADVANCE)
    support = price("support", ModelType.UNIT, UnitConfig(d("30.00")), fixed_price_quantity=d(2))
    a = [price("a_calls", ModelType.UNIT, UnitConfig(d("0.00067")), "calls", minimum_amount=d("5")),
         price("a_tokens", ModelType.TIERED, TieredConfig((Tier(d(0), d(10000), d("0.001")),
                                                            Tier(d(10000), None, d("0.0005")))), "tokens"),
         fee]
    b = [price("b_tokens", ModelType.BULK, BulkConfig((BulkTier(d(5000), d("0.002")), BulkTier(None, d("0.001")))), "tokens"),
         price("b_calls", ModelType.PACKAGE, PackageConfig(d("0.80"), d(10)), "calls"),
         price("b_region", ModelType.MATRIX, MatrixConfig(("region",), d("0.015"), (
             MatrixValue(("us",), d("0.01")), MatrixValue(("eu",), d("0.02")))), "regions"),
         support]
    c = [price("c_tokens", ModelType.TIERED_PACKAGE, TieredPackageConfig(d(100), (
             TieredPackageTier(d(0), d("0.10")), TieredPackageTier(d(10000), d("0.05")))), "tokens"),
         price("c_calls", ModelType.UNIT, UnitConfig(d("0.001")), "calls", maximum_amount=d("1000")),
         price("c_region", ModelType.MATRIX, MatrixConfig(("region",), d("0.01"), ()), "regions"),
         fee]
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return [create_plan(id=f"plan_{n}", name=n, currency="USD", prices=p, now=created)
            for n, p in (("a", a), ("b", b), ("c", c))]


def build(path: Path, subscriptions: int, events: int) -> None:
    """Create the database: catalog, customers, subscriptions and events (not timed)."""
    from sqlalchemy import insert

    from billing_core.metrics import create_metric
    from billing_core.persistence.catalog import SqlCatalog
    from billing_core import SqlMetricRepository
    from billing_core.persistence.subscriptions import SubscriptionEditRow, SubscriptionRow
    from billing_core.codec import subscription_to_dict
    from billing_core.plans import Item
    from billing_core.subscriptions import create_subscription
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    with db.session_scope(engine) as session:
        SqlCatalog(session).add_item(Item("item_api", "API", created))
        metrics = SqlMetricRepository(session)
        create_metric(metrics, metric_id="calls", name="Calls", now=created,
                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
        create_metric(metrics, metric_id="tokens", name="Tokens", now=created,
                      sql="SELECT SUM(tokens) FROM events WHERE event_name = 'api_call'")
        create_metric(metrics, metric_id="regions", name="Calls by region", now=created,
                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
        plans = _plans("item_api")
        for plan in plans:
            SqlCatalog(session).save_plan(plan)
    raw = sqlite3.connect(path)
    raw.executemany(
        "INSERT INTO customers (id, external_customer_id, name, email, currency, timezone, metadata, created_at) "
        "VALUES (?, ?, ?, ?, 'USD', 'UTC', '{}', ?)",
        [(f"cus_{i:05d}", f"ext-{i:05d}", f"Customer {i}", f"c{i}@example.test", created.isoformat(" "))
         for i in range(subscriptions)])
    raw.commit()
    subs_rows, edit_rows = [], []
    for i in range(subscriptions):
        sub = create_subscription(id=f"sub_{i:05d}", customer_id=f"cus_{i:05d}", plan=plans[i % 3],
                                  start=created, now=created)
        snapshot = json.dumps(subscription_to_dict(sub), sort_keys=True, separators=(",", ":"))
        subs_rows.append({"id": sub.id, "customer_id": sub.customer_id, "plan_id": plans[i % 3].id,
                          "start_date": sub.start, "end_date": None, "revision": 1, "timeline": snapshot,
                          "created_at": created})
        edit_rows.append({"subscription_id": sub.id, "sequence": 1, "kind": "create", "effective_at": sub.start,
                          "recorded_at": created, "timeline": snapshot})
    with engine.begin() as conn:
        conn.execute(insert(SubscriptionRow.__table__), subs_rows)  # type: ignore[attr-defined]
        conn.execute(insert(SubscriptionEditRow.__table__), edit_rows)  # type: ignore[attr-defined]
    engine.dispose()
    rng = random.Random(11)
    lo = int(PERIOD_START.timestamp() * 1_000_000)
    hi = int((NOW - timedelta(hours=1)).timestamp() * 1_000_000)
    batch = []
    for n in range(events):
        props = {"tokens": rng.randrange(1, 400), "region": REGIONS[rng.randrange(4)]}
        batch.append((f"evt-{n:09d}", "api_call", f"cus_{rng.randrange(subscriptions):05d}",
                      rng.randrange(lo, hi), json.dumps(props, separators=(",", ":"))))
        if len(batch) == 50_000:
            raw.executemany("INSERT INTO events (idempotency_key, version, event_name, customer_id, ts, properties, "
                            "state) VALUES (?, 0, ?, ?, ?, ?, 0)", batch)
            batch.clear()
    if batch:
        raw.executemany("INSERT INTO events (idempotency_key, version, event_name, customer_id, ts, properties, "
                        "state) VALUES (?, 0, ?, ?, ?, ?, 0)", batch)
    raw.commit()
    raw.execute("ANALYZE")
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()


def raw_group_by(path: Path, storage_order: bool = False) -> tuple[float, int]:
    """Time one raw GROUP BY customer over the period's events; return (seconds, groups)."""
    conn = sqlite3.connect(path)
    lo = int(PERIOD_START.timestamp() * 1_000_000)
    hi = int(NOW.timestamp() * 1_000_000)
    source = "events NOT INDEXED" if storage_order else "events"
    started = time.perf_counter()
    rows = conn.execute(
        f"SELECT customer_id, COUNT(*), SUM(json_extract(properties, '$.tokens')) FROM {source} "
        "WHERE event_name = 'api_call' AND ts >= ? AND ts < ? AND state = 0 GROUP BY customer_id", (lo, hi)).fetchall()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, len(rows)


def all_costs(path: Path) -> tuple[float, int, Decimal, dict[str, float]]:
    """Time every subscription's costs to date; return (seconds, count, sum of totals, phases).

    The phases are what ``service_plans.all_costs`` does in one call, timed step by step.
    """
    from billing_core.costs import _aggregate_costs
    from billing_core.lines import charges_for_timeframe, fetch_usage, rate_all, usage_key
    from billing_core.persistence.subscriptions import SqlSubscriptions
    from billing_core.sql_usage_batch import BatchSqlUsageSource
    from billing_core.subscriptions import billing_period
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with engine.connect():
        pass  # open the pool outside the timing
    phases: dict[str, float] = {}
    started = mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    with db.session_scope(engine) as session:
        subs = SqlSubscriptions(session).all_active(NOW)
        phase("load timelines")
        planned = [(s, billing_period(s, NOW).start, charges_for_timeframe(s, billing_period(s, NOW).start, NOW))
                   for s in subs]
        phase("plan charges")
        keys = [k for s, _, charges in planned for k in (usage_key(s, c) for c in charges) if k is not None]
        usage = fetch_usage(keys, BatchSqlUsageSource(session))
        phase("read usage (SQL, batched)")
        results = [_aggregate_costs(s, start, NOW, rate_all(s, charges, usage)) for s, start, charges in planned]
        phase("rate and add up")
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, len(results), sum((c.total for c in results), Decimal(0)), phases


def main(argv: list[str] | None = None) -> None:
    """Build the data set, then time the raw aggregation and the costs in the same run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as tmp:
        path = Path(tmp) / "marketsync.db"
        started = time.perf_counter()
        build(path, args.subscriptions, args.events)
        print(f"setup: {args.subscriptions:,} subscriptions, {args.events:,} events in the current period "
              f"({time.perf_counter() - started:.1f} s, not timed)")
        raw_group_by(path)  # warm the page cache for both contenders alike
        raw_s, groups = raw_group_by(path)
        costs_s, count, total, phases = all_costs(path)
        scan_s, _ = raw_group_by(path, storage_order=True)
        print(f"raw GROUP BY customer: {raw_s:.2f} s ({groups:,} groups)")
        print(f"  (for reference, the same forced into storage order: {scan_s:.2f} s)")
        print(f"costs to date:         {costs_s:.2f} s ({count:,} subscriptions, total {total} USD)")
        for name, seconds in phases.items():
            print(f"  {name}: {seconds:.2f} s")
        print(f"ratio costs / raw:     {costs_s / raw_s:.2f} x  (targets: <= 10 s and <= 3 x)")


if __name__ == "__main__":
    main()
