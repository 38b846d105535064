"""What the events table's index buys at volume: one contract's costs to date, with and without it.

    python -m bench.events_volume [--subscriptions 10000] [--events 1000000] [--samples 200]

Builds the ``bench.costs`` database (SQLite, WAL: ``--subscriptions`` customers on three plans,
``--events`` events over the current period), then times, in the same run:

1. **one contract's costs to date** — what the hourly sync and a flush compute for a single
   contract (``billing_core.costs.costs`` over ``SqlUsageSource``) — for ``--samples``
   random subscriptions, with ``ix_events_customer_name_ts (customer_id, event_name, ts)``;
2. the same after dropping that index (fewer samples: each is a scan of the whole table);
3. **ingest cost of the index**: a raw ``executemany`` of 100,000 further events with the
   index, and without it.

Prints milliseconds per contract (p50, p99), the ratio, and events/s for the inserts.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import machine, percentile
from bench.costs import NOW, PERIOD_START, build

INDEX = "ix_events_customer_name_ts"
INDEX_SQL = f"CREATE INDEX {INDEX} ON events (customer_id, event_name, ts)"


def one_contract_costs(path: Path, subscription_ids: list[str]) -> list[float]:
    """Return the milliseconds each subscription's costs to date took (fresh engine, warm cache)."""
    from billing_core.costs import costs
    from billing_core.persistence.subscriptions import SqlSubscriptions
    from billing_core.sql_usage import SqlUsageSource
    from billing_core.subscriptions import billing_period
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with db.session_scope(engine) as session:
        subs = [SqlSubscriptions(session).get(i) for i in subscription_ids]
    source = SqlUsageSource(engine)
    costs(subs[0], billing_period(subs[0], NOW).start, NOW, source)  # warm the page cache
    timings = []
    for sub in subs:
        started = time.perf_counter()
        costs(sub, billing_period(sub, NOW).start, NOW, source)
        timings.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    return timings


def insert_rate(path: Path, count: int, seed: int, subscriptions: int) -> float:
    """Insert ``count`` events with a raw executemany; return events per second."""
    rng = random.Random(seed)
    lo, hi = int(PERIOD_START.timestamp() * 1e6), int(NOW.timestamp() * 1e6)
    rows = [(f"vol-{seed}-{n:09d}", "api_call", f"cus_{rng.randrange(subscriptions):05d}", rng.randrange(lo, hi),
             json.dumps({"tokens": rng.randrange(1, 400), "region": "us"}, separators=(",", ":")))
            for n in range(count)]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # as the service's connections
    conn.execute("PRAGMA cache_size=-65536")  # as the service's ingest connections (64 MB)
    started = time.perf_counter()
    for i in range(0, count, 500):
        conn.executemany("INSERT INTO events (idempotency_key, version, event_name, customer_id, ts, properties, "
                         "state) VALUES (?, 0, ?, ?, ?, ?, 0)", rows[i:i + 500])
        conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "volume.db"
        started = time.perf_counter()
        build(path, args.subscriptions, args.events)
        print(f"setup: {args.subscriptions:,} subscriptions, {args.events:,} events in "
              f"{time.perf_counter() - started:.1f} s")
        rng = random.Random(3)
        ids = [f"sub_{rng.randrange(args.subscriptions):05d}" for _ in range(args.samples)]

        with_index = one_contract_costs(path, ids)
        with_rate = insert_rate(path, 100_000, 1, args.subscriptions)
        conn = sqlite3.connect(path)
        conn.execute(f"DROP INDEX {INDEX}")
        conn.execute("ANALYZE")
        conn.close()
        without_index = one_contract_costs(path, ids[: max(5, args.samples // 20)])
        without_rate = insert_rate(path, 100_000, 2, args.subscriptions)
        conn = sqlite3.connect(path)
        conn.execute(INDEX_SQL)
        conn.close()

    p50_with, p50_without = percentile(with_index, 50), percentile(without_index, 50)
    print(f"one contract's costs to date over {args.events:,} events "
          f"(the per-contract path of the hourly sync and of a flush):")
    print(f"  with {INDEX}:    p50 {p50_with:8.2f} ms  p99 {percentile(with_index, 99):8.2f} ms  "
          f"({len(with_index)} contracts)")
    print(f"  without it:       p50 {p50_without:8.2f} ms  p99 {percentile(without_index, 99):8.2f} ms  "
          f"({len(without_index)} contracts)  -> {p50_without / p50_with:,.0f} x slower")
    print(f"raw insert of 100,000 more events: {with_rate:,.0f} events/s with the index, "
          f"{without_rate:,.0f} without ({with_rate / without_rate:.2f} x)")


if __name__ == "__main__":
    main()
