"""Costs to date for every subscription: fragments off, cold and warm, at two sizes in one run.

    python -m bench.costs [--subscriptions 10000] [--events 1000000 4000000 10000000]

For each size, builds a fresh, migrated SQLite file (WAL) with ``--subscriptions`` customers,
each subscribed to one of three plans mixing every price model (unit, tiered, bulk, package,
tiered_package, matrix on ``region``, fixed fees in advance and in arrears), and that many
events spread over the current billing period. Then, on the same file:

1. **floor**: one raw ``SELECT customer_id, COUNT(*), SUM(tokens) ... GROUP BY customer_id``;
2. **fragments off**: what ``service_plans.all_costs`` does — load every subscription's timeline,
   read usage in bulk (``BatchSqlUsageSource``: metrics over the same events share one grouped
   scan) and rate every price of every subscription;
3. **cold**: the same through ``FragmentUsageSource`` with no fragment stored: the answer comes
   from the raw path (most of the window is missing), then the fragments are built, timed apart;
4. **warm**: the same again, twice, with every fragment current.

Prints each time and its "read usage" phase, the bytes of fragments per event, and the ratios
between the sizes. Targets: warm reading usage <= 1 s at 10 M events; cold no slower than off.
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


def build(path: Path, subscriptions: int, events: int, *, plans_used: int = 3,
          events_from: datetime = PERIOD_START, events_to: datetime = NOW - timedelta(hours=1)) -> None:
    """Create the database: catalog, customers, subscriptions and events (not timed).

    Subscription ``i`` is on plan ``i % plans_used`` (of a, b, c); events fall in ``[events_from, events_to)``.
    """
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
        plan = plans[i % plans_used]
        sub = create_subscription(id=f"sub_{i:05d}", customer_id=f"cus_{i:05d}", plan=plan, start=created, now=created)
        snapshot = json.dumps(subscription_to_dict(sub), sort_keys=True, separators=(",", ":"))
        subs_rows.append({"id": sub.id, "customer_id": sub.customer_id, "plan_id": plan.id,
                          "start_date": sub.start, "end_date": None, "revision": 1, "timeline": snapshot,
                          "created_at": created})
        edit_rows.append({"subscription_id": sub.id, "sequence": 1, "kind": "create", "effective_at": sub.start,
                          "recorded_at": created, "timeline": snapshot})
    with engine.begin() as conn:
        conn.execute(insert(SubscriptionRow.__table__), subs_rows)  # type: ignore[attr-defined]
        conn.execute(insert(SubscriptionEditRow.__table__), edit_rows)  # type: ignore[attr-defined]
    engine.dispose()
    rng = random.Random(11)
    lo = int(events_from.timestamp() * 1_000_000)
    hi = int(events_to.timestamp() * 1_000_000)
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


def all_costs(path: Path, source: str = "raw") -> tuple[float, int, Decimal, dict[str, float]]:
    """Time every subscription's costs to date; return (seconds, count, sum of totals, phases).

    The phases are what ``service_plans.all_costs`` does in one call, timed step by step. Usage is
    read by ``BatchSqlUsageSource`` (``raw``: every event of the period), or by
    ``FragmentUsageSource`` (``fragments``). With fragments, a "build" phase follows the answer
    when the read was cold: it stores what the next read reuses (``build_pending``).
    """
    from billing_core.bulk import paused_gc
    from billing_core.costs import _aggregate_costs
    from billing_core.lines import charges_for_timeframe, fetch_usage, rate_amounts, usage_key
    from billing_core.persistence.subscriptions import SqlSubscriptions
    from billing_core.sql_fragments import FragmentUsageSource
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

    fragments = FragmentUsageSource(engine) if source == "fragments" else None
    with paused_gc(), db.session_scope(engine) as session:  # as costs_each and service_plans.all_costs run
        subs = SqlSubscriptions(session).all_active(NOW)
        phase("load timelines")
        starts = [(s, billing_period(s, NOW).start) for s in subs]
        planned = [(s, start, charges_for_timeframe(s, start, NOW)) for s, start in starts]
        phase("plan charges")
        keys = [k for s, _, charges in planned for k in (usage_key(s, c) for c in charges) if k is not None]
        usage = fetch_usage(keys, fragments or BatchSqlUsageSource(session))
        phase("read usage")
        results = [_aggregate_costs(s, start, NOW, rate_amounts(s, charges, usage)) for s, start, charges in planned]
        phase("rate and add up")
    elapsed = time.perf_counter() - started
    if fragments is not None and fragments.pending:
        fragments.build_pending()
        phase("build fragments (after the answer)")
    engine.dispose()
    return elapsed, len(results), sum((c.total for c in results), Decimal(0)), phases


def fragment_bytes(path: Path) -> int:
    """Bytes the fragment tables take in the SQLite file (dbstat), or 0 where dbstat is missing."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(
            "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ('usage_fragments', "
            "'usage_fragment_coverage') OR name LIKE 'sqlite_autoindex_usage_fragment%'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def measure(subscriptions: int, events: int) -> dict[str, float]:
    """Build one data set; time raw, cold and warm costs on it; print them; return the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as tmp:
        path = Path(tmp) / "marketsync.db"
        started = time.perf_counter()
        build(path, subscriptions, events)
        print(f"\n{subscriptions:,} subscriptions, {events:,} events in the current period "
              f"(setup {time.perf_counter() - started:.1f} s, not timed)")
        raw_group_by(path)  # warm the page cache for every contender alike
        raw_s, groups = raw_group_by(path)
        print(f"  raw GROUP BY customer (the floor): {raw_s:.2f} s ({groups:,} groups)")
        figures: dict[str, float] = {"floor": raw_s}
        totals = set()
        for label, source in (("fragments off", "raw"), ("cold (no fragment)", "fragments"),
                              ("warm (fragments current)", "fragments"), ("warm, again", "fragments")):
            seconds, count, total, phases = all_costs(path, source)
            totals.add(total)
            figures[label] = seconds
            figures[label + ": usage"] = phases["read usage"]
            detail = ", ".join(f"{name} {value:.2f} s" for name, value in phases.items())
            print(f"  costs to date, {label}: {seconds:.2f} s ({count:,} subscriptions; {detail})")
        assert len(totals) == 1, f"the costs differ between the sources: {totals}"
        stored = fragment_bytes(path)
        print(f"  same total every time: {totals.pop()} USD; fragments stored: {stored / 1e6:.1f} MB "
              f"({stored / events:.0f} bytes per event)")
        return figures


def main(argv: list[str] | None = None) -> None:
    """Time raw, cold and warm costs at two sizes (or more) in one run; print each and the ratios to the first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 4_000_000, 10_000_000],
                        metavar="EVENTS", help="sizes to measure, smallest first (at least two)")
    args = parser.parse_args(argv)
    if len(args.events) < 2:
        parser.error("--events: give at least two sizes")
    print(f"machine: {machine()}")
    figures = [measure(args.subscriptions, n) for n in args.events]
    small = figures[0]
    for events, large in zip(args.events[1:], figures[1:]):
        print(f"\n{events / args.events[0]:g}x the events ({args.events[0]:,} -> {events:,}):")
        for label in ("fragments off", "cold (no fragment)", "warm (fragments current)", "warm, again"):
            print(f"  {label}: {small[label]:.2f} s -> {large[label]:.2f} s ({large[label] / small[label]:.2f} x); "
                  f"reading usage {small[label + ': usage']:.2f} s -> {large[label + ': usage']:.2f} s")
    print("targets: warm reading usage <= 1 s at 10 M events; cold no slower than fragments off")


if __name__ == "__main__":
    main()
