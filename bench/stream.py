"""Usage streaming in while costs are read: read latency, fragment lag and storage per event.

    python -m bench.stream [--subscriptions 1000] [--rate 2000] [--seconds 120] [--history 200000]

Builds a fresh, migrated SQLite file (WAL) with ``--subscriptions`` customers on the three plans of
``bench.costs`` and ``--history`` events spread over the current billing period up to the last
hour. Then, for ``--seconds``, a separate process ingests ``--rate`` events a second through the
billing core's ingest (batches of 100, each its own transaction; 5 % of them late, in a random
earlier hour of the period) while this process, through ``FragmentUsageSource``:

- reads every subscription's costs to date every ``--costs-every`` seconds (as the API's costs
  and the dashboard do), and
- reads every customer's usage up to the last whole hour every ``--hourly-every`` seconds (what
  an hourly report reads).

Prints the ingest rate achieved, read latency p50 / p99 for both kinds, the lag from a batch's
acknowledgment to the end of the first read that started after it (that read recomputed the
fragments the batch made stale, or read the batch at the raw edge), and the bytes of fragments
stored per event. At the end, ``verify_fragments`` must find no difference, and the costs read
through fragments must equal the costs read from raw events.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import machine, percentile
from bench.costs import REGIONS, build, fragment_bytes

BATCH = 100
LATE_SHARE = 0.05


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def history(path: Path, subscriptions: int, events: int, start: datetime, end: datetime) -> None:
    """Add ``events`` events over ``[start, end)`` (bulk, not timed)."""
    rng = random.Random(3)
    conn = sqlite3.connect(path)
    rows = []
    for n in range(events):
        props = {"tokens": rng.randrange(1, 400), "region": REGIONS[rng.randrange(4)]}
        rows.append((f"hist-{n:09d}", "api_call", f"cus_{rng.randrange(subscriptions):05d}",
                     rng.randrange(_micros(start), _micros(end)), json.dumps(props, separators=(",", ":"))))
    conn.executemany("INSERT INTO events (idempotency_key, version, event_name, customer_id, ts, properties, state) "
                     "VALUES (?, 0, ?, ?, ?, ?, 0)", rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def ingest(path: str, subscriptions: int, rate: int, seconds: float, period_start: float, acks: Any,
           go: Any) -> None:
    """The writer process: ``rate`` events a second in batches, each acknowledgment put on ``acks``."""
    from billing_core import SqlEventStore
    from billing_core.events import store_records, validate_batch
    from billing_core.persistence.writes import write_lock
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    rng = random.Random(7)
    start_of_period = datetime.fromtimestamp(period_start, UTC)
    go.wait()
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        due = (time.monotonic() - started) * rate
        if sent >= due:
            time.sleep(min(0.01, (sent - due) / rate))
            continue
        now = datetime.now(UTC)
        last_hour = now.replace(minute=0, second=0, microsecond=0)
        bodies = []
        for i in range(BATCH):
            if rng.random() < LATE_SHARE and last_hour > start_of_period:
                at = start_of_period + (last_hour - start_of_period) * rng.random()
            else:
                at = now - timedelta(seconds=rng.random())
            bodies.append({"idempotency_key": f"s-{sent + i}", "event_name": "api_call",
                           "customer_id": f"cus_{rng.randrange(subscriptions):05d}", "timestamp": at.isoformat(),
                           "properties": {"tokens": rng.randrange(1, 400), "region": REGIONS[rng.randrange(4)]}})
        records = validate_batch(bodies, now=now)  # outside the lock, as the API does
        with write_lock(engine), db.session_scope(engine) as session:
            store_records(SqlEventStore(session), records, sent=len(bodies))
        acks.put((time.monotonic(), len(bodies)))
        sent += len(bodies)
    acks.put(None)
    engine.dispose()


def costs_read(engine: Any, source: Any, now: datetime) -> Decimal:
    """Every subscription's costs to date through ``source``; return the sum of totals."""
    from billing_core.costs import costs_each
    from billing_core.persistence.subscriptions import SqlSubscriptions
    from billing_core.subscriptions import billing_period
    from worker import db

    with db.session_scope(engine) as session:
        subs = SqlSubscriptions(session).all_active(now)
    results = costs_each([(s, billing_period(s, now).start, now) for s in subs], source)
    return sum((r.total for r in results), Decimal(0))  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=2_000, help="events per second")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--history", type=int, default=200_000, help="events already in the period")
    parser.add_argument("--costs-every", type=float, default=2.0)
    parser.add_argument("--hourly-every", type=float, default=10.0)
    args = parser.parse_args(argv)

    from billing_core.sql_fragments import FragmentUsageSource, verify_fragments
    from billing_core.sql_usage_batch import BatchSqlUsageSource
    from billing_core.subscriptions import billing_period
    from billing_core.usage import UsageRequest
    from worker import db

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        path = Path(tmp) / "marketsync.db"
        build(path, args.subscriptions, 0)
        engine = db.build_engine(f"sqlite:///{path}")
        now = datetime.now(UTC)
        with db.session_scope(engine) as session:
            from billing_core.persistence.subscriptions import SqlSubscriptions

            sub = SqlSubscriptions(session).all_active(now)[0]
        period_start = billing_period(sub, now).start
        last_hour = now.replace(minute=0, second=0, microsecond=0)
        history(path, args.subscriptions, args.history, period_start, max(last_hour, period_start + timedelta(hours=1)))
        print(f"setup: {args.subscriptions:,} subscriptions, {args.history:,} events since {period_start:%Y-%m-%d}")
        costs_read(engine, FragmentUsageSource(engine, build_cold=True), now)  # the first, cold read
        customers = [f"cus_{i:05d}" for i in range(args.subscriptions)]
        requests = [UsageRequest("calls"), UsageRequest("tokens"), UsageRequest("regions", ("region",))]

        ctx = multiprocessing.get_context("spawn")
        acks, go = ctx.Queue(), ctx.Event()
        writer = ctx.Process(target=ingest, args=(str(path), args.subscriptions, args.rate, args.seconds,
                                                 period_start.timestamp(), acks, go))
        writer.start()
        time.sleep(2)  # the writer's imports
        go.set()
        started = time.monotonic()
        reads: dict[str, list[float]] = {"costs": [], "hourly": []}
        pending: list[tuple[float, int]] = []
        lags: list[float] = []
        events = 0
        next_costs = next_hourly = started
        done = False
        while not done or pending:
            while True:
                try:
                    item = acks.get_nowait()
                except Exception:  # queue.Empty
                    break
                if item is None:
                    done = True
                else:
                    pending.append(item)
                    events += item[1]
            moment = time.monotonic()
            kind = "costs" if moment >= next_costs else "hourly" if moment >= next_hourly else None
            if kind is None:
                if done and not pending:
                    break
                time.sleep(0.02)
                continue
            read_started = time.monotonic()
            waiting = [p for p in pending if p[0] <= read_started]
            source = FragmentUsageSource(engine)
            at = datetime.now(UTC)
            if kind == "costs":
                costs_read(engine, source, at)
                next_costs = read_started + args.costs_every
            else:
                source.usage_bulk_many(requests, customers, period_start, at.replace(minute=0, second=0, microsecond=0))
                next_hourly = read_started + args.hourly_every
            ended = time.monotonic()
            reads[kind].append(ended - read_started)
            lags += [ended - ack for ack, _ in waiting]
            pending = [p for p in pending if p[0] > read_started]
            if done and not pending:
                break
        elapsed = time.monotonic() - started
        writer.join()
        at = datetime.now(UTC)
        fragments_total = costs_read(engine, FragmentUsageSource(engine), at)
        raw_total = costs_read(engine, BatchSqlUsageSource(engine), at)
        checked, stale, differences = verify_fragments(engine)
        engine.dispose()
        stored = fragment_bytes(path)
        total_events = args.history + events
        print(f"ingested {events:,} events in {elapsed:.0f} s: {events / elapsed:,.0f} events/s (asked {args.rate:,})")
        for kind, label in (("costs", "costs to date, every subscription"),
                            ("hourly", "usage to the last hour, every customer")):
            got = sorted(reads[kind])
            print(f"  {label}: {len(got)} reads, p50 {percentile(got, 50):.2f} s, p99 {percentile(got, 99):.2f} s")
        lags.sort()
        print(f"  ingest acknowledged -> answered by a read (fragments recomputed or raw edge): "
              f"p50 {percentile(lags, 50):.2f} s, p99 {percentile(lags, 99):.2f} s")
        print(f"  fragments stored: {stored / 1e6:.1f} MB for {total_events:,} events "
              f"({stored / total_events:.0f} bytes per event)")
        print(f"  verify: {checked:,} buckets recomputed from events, {stale} stale, {len(differences)} difference(s); "
              f"costs through fragments {fragments_total} == raw {raw_total}: {fragments_total == raw_total}")
        assert not differences and fragments_total == raw_total


if __name__ == "__main__":
    main()
