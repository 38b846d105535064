"""The hourly sync at scale: a full run, an incremental run, and cancellation flushes meanwhile.

    python -m bench.sync [--contracts 10000] [--events 1000000 10000000] [--workers 2] [--latency-ms 20]
    python -m bench.sync --contracts 600 --events 60000      # quick mode, one size

Setup (not timed) builds a fresh, migrated SQLite file (WAL): a catalog (tokens and calls
priced per unit), ``--contracts`` customers and subscriptions (a third per marketplace, on the
billing core's domain functions, stored in bulk), one listing per marketplace, mapped contracts
whose marketplace customers are created through each emulator's control API, and ``--events``
usage events in the current billing period (bulk ``executemany`` of validated rows).

The measured runs take the real path: the hourly fan-out (``jobs.run_hourly_sync``) enqueued on
``sync`` as the cron does, served by ``--workers`` real ``rq worker --with-scheduler
--worker-class worker.rq_worker.MarketsyncWorker urgent contracts sync`` processes (the Procfile's), whose
real adapters (boto3, the Azure and Google HTTP clients) talk to the three emulators on
loopback, each answering after ``--latency-ms`` and AWS keeping its 10 requests/s throttle.

1. **full run**: every contract has usage to report under the hour that just ended. While it
   runs, a contract is canceled every ``--flush-every`` seconds and its flush enqueued on
   ``urgent`` (``queueing.schedule_flushes``); the flush latency is enqueue -> its ledger row
   accepted.
2. **incremental run**: 1 % of the contracts get new events (billing core ingest), then the
   next hour's run (AWS sends its hourly zero record for every other AWS contract).

After each run the bench asserts exact totals: for every marketplace, the units the emulator
accepted equal the ledger's accepted units, and both equal the units computed independently
from the events (floor of cost / unit price per contract); nothing is pending, failed or
rejected; and ``marketsync verify`` finds no difference between the stored usage fragments
and the events. Targets on a 2-core machine: full <= 60 s, incremental usage answered <= 3 s
at 1 M and at 10 M events and <= 1.3 x between them, flush p99 <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sqlite3
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any


from bench.common import Emulators, machine, percentile, start_workers, stop_workers

MARKETPLACES = ("aws", "azure", "gcp")
DIMENSION = "usage_cost"
TOKEN_PRICE = Decimal("0.0001")  # per token
CALL_PRICE = Decimal("0.002")  # per call
UNIT_PRICE = Decimal("0.01")  # the listings' dimension: one unit per cent
PRODUCT = {"aws": "prod-bench", "azure": "offer-bench", "gcp": "prod-bench"}


# --- setup ---------------------------------------------------------------------------------------

def build(db_path: Path, emulators: Emulators, *, contracts: int, events: int, start: datetime,
          until: datetime, seed: int = 17) -> list[dict[str, Any]]:
    """Create catalog, customers, subscriptions, listings, contracts and events; return the contracts."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from billing_core.codec import subscription_to_dict
    from billing_core.metrics import MetricDefinition, create_metric
    from billing_core.persistence.catalog import SqlCatalog
    from billing_core import SqlMetricRepository
    from billing_core.persistence.subscriptions import SubscriptionEditRow, SubscriptionRow
    from billing_core.plans import Item, create_plan
    from billing_core.pricing import ModelType, Price, UnitConfig
    from billing_core.subscriptions import create_subscription
    from worker import db
    from worker.persistence.contracts import ContractRow, ListingRow

    engine = db.build_engine(f"sqlite:///{db_path}")
    db.upgrade(engine)
    created = start - timedelta(days=1)
    with Session(engine) as session:
        SqlCatalog(session).add_item(Item("item_api", "API", created))
        metrics = SqlMetricRepository(session)
        create_metric(metrics, metric_id="m_tokens", name="Tokens", now=created,
                      definition=MetricDefinition(event_name="api_call", aggregation="sum", property="tokens"))
        create_metric(metrics, metric_id="m_calls", name="Calls", now=created,
                      definition=MetricDefinition(event_name="api_call", aggregation="count"))
        prices = [Price(id="p_tokens", key="p_tokens", name="Tokens", item_id="item_api", model_type=ModelType.UNIT,
                        config=UnitConfig(TOKEN_PRICE), metric_id="m_tokens"),
                  Price(id="p_calls", key="p_calls", name="Calls", item_id="item_api", model_type=ModelType.UNIT,
                        config=UnitConfig(CALL_PRICE), metric_id="m_calls")]
        plan = create_plan(id="plan_bench", name="Bench", currency="USD", prices=prices, now=created)
        SqlCatalog(session).save_plan(plan)
        for marketplace in MARKETPLACES:
            session.add(ListingRow(id=f"lst_{marketplace}", marketplace=marketplace, product_id=PRODUCT[marketplace],
                                   billing_plan_id="plan_bench", dimension=DIMENSION, unit_price=str(UNIT_PRICE),
                                   created_at=created, updated_at=created))
        session.commit()

    # Marketplace customers through the emulators' control APIs (a few threads: it is I/O).
    order = [MARKETPLACES[i % 3] for i in range(contracts)]
    with ThreadPoolExecutor(4) as pool:
        identifiers = list(pool.map(emulators.new_customer, order))

    raw = sqlite3.connect(db_path)
    raw.executemany(
        "INSERT INTO customers (id, external_customer_id, name, email, currency, timezone, metadata, created_at) "
        "VALUES (?, ?, ?, ?, 'USD', 'UTC', '{}', ?)",
        [(f"cus_{i:05d}", f"{order[i]}:c{i:05d}", f"Customer {i}", f"c{i}@example.test", created.isoformat(" "))
         for i in range(contracts)])
    raw.commit()
    subs, edits, rows, out = [], [], [], []
    for i, marketplace in enumerate(order):
        contract_id = f"ctr_{i:05d}"
        sub = create_subscription(id=f"sub_{i:05d}", customer_id=f"cus_{i:05d}", plan=plan, start=start,
                                  now=created, external_marketplace=marketplace,
                                  external_marketplace_reporting_id=contract_id)
        timeline = json.dumps(subscription_to_dict(sub), sort_keys=True, separators=(",", ":"))
        subs.append({"id": sub.id, "customer_id": sub.customer_id, "plan_id": plan.id, "start_date": sub.start,
                     "end_date": None, "external_marketplace": marketplace,
                     "external_marketplace_reporting_id": contract_id, "revision": len(sub.edits),
                     "timeline": timeline, "created_at": created})
        edits.append({"subscription_id": sub.id, "sequence": 1, "kind": "create", "effective_at": sub.start,
                      "recorded_at": created, "timeline": timeline})
        ids = identifiers[i]
        columns = {k: v for k, v in ids.items() if k in ContractRow.__table__.c}  # type: ignore[attr-defined]
        rows.append({**{c: None for c in ("product_code", "customer_aws_account_id", "license_arn",
                                          "customer_identifier", "azure_subscription_id", "gcp_entitlement_id",
                                          "offer_id", "plan_id")},
                     "id": contract_id, "source": "contracts", "external_id": contract_id,
                     "marketplace": marketplace, "status": "active", "listing_id": f"lst_{marketplace}",
                     "cloud_identifiers": ids, "buyer_name": f"Customer {i}", "buyer_email": f"c{i}@example.test",
                     "pricing": None, "previous_pricing": None, "custom_properties": {}, "entitlements": [],
                     "mapping_status": "mapped", "mapping_reason": "", "customer_id": sub.customer_id,
                     "subscription_id": sub.id, "started_at": start, "canceled_at": None,
                     "cancel_effective_at": None, "closed_at": None, "created_at": created, "updated_at": created,
                     **columns})
        out.append({"id": contract_id, "marketplace": marketplace, "customer_id": sub.customer_id})
    with engine.begin() as conn:
        conn.execute(insert(SubscriptionRow.__table__), subs)  # type: ignore[attr-defined]
        conn.execute(insert(SubscriptionEditRow.__table__), edits)  # type: ignore[attr-defined]
        conn.execute(insert(ContractRow.__table__), rows)  # type: ignore[attr-defined]
    engine.dispose()

    rng = random.Random(seed)
    lo, hi = int(start.timestamp() * 1_000_000), int(until.timestamp() * 1_000_000)
    batch: list[tuple[Any, ...]] = []
    sql = ("INSERT INTO events (idempotency_key, version, event_name, customer_id, ts, properties, state) "
           "VALUES (?, 0, 'api_call', ?, ?, ?, 0)")
    for n in range(events):
        batch.append((f"evt-{n:09d}", f"cus_{rng.randrange(contracts):05d}", rng.randrange(lo, hi),
                      '{"tokens":%d}' % rng.randrange(1, 1000)))
        if len(batch) == 50_000:
            raw.executemany(sql, batch)
            batch.clear()
    raw.executemany(sql, batch)
    raw.commit()
    raw.execute("ANALYZE")
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    return out


# --- processes -----------------------------------------------------------------------------------

def worker_env(data_dir: Path, db_path: Path, redis_url: str, emulators: Emulators) -> dict[str, str]:
    """Return the environment of the service's processes (sandbox adapters on the emulators)."""
    return {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": f"sqlite:///{db_path}", "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING", **emulators.environment()}


# --- measuring -----------------------------------------------------------------------------------

def _idle(runtime: Any, db_path: Path) -> bool:
    """Return whether no job waits, runs or is scheduled for a retry, and no report is pending."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    for name in ("urgent", "contracts", "sync"):
        queue = runtime.queue(name)
        if queue.count or StartedJobRegistry(queue=queue).count:
            return False
        if name == "sync" and ScheduledJobRegistry(queue=queue).count:
            return False
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM usage_ledger WHERE status = 'pending'").fetchone()[0] == 0


def _usage_settled(runtime: Any, db_path: Path) -> bool:
    """Return whether every contract's report job ran and no report with units is pending
    (zero-quantity AWS heartbeats may still be going out at AWS's 10 calls/s)."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    queue = runtime.queue("sync")
    jobs = [*queue.get_job_ids(), *StartedJobRegistry(queue=queue).get_job_ids(),
            *ScheduledJobRegistry(queue=queue).get_job_ids()]
    if any(job_id.startswith("report-") for job_id in jobs):
        return False
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM usage_ledger WHERE status = 'pending' AND quantity > 0"
                            ).fetchone()[0] == 0


def run_hourly(runtime: Any, db_path: Path, stamp: datetime, *, timeout: float,
               during: Any = None) -> tuple[float, float]:
    """Enqueue the fan-out as the cron does; return the seconds until every report with units
    was answered, and until everything (zero heartbeats included) was."""
    from rq.registry import FailedJobRegistry

    from worker import jobs

    runtime.redis.delete("marketsync:sync:last_fanout")
    started = time.perf_counter()
    fanout = runtime.queue("sync").enqueue(jobs.run_hourly_sync, stamp.isoformat())
    quiet = 0
    usage_done: float | None = None
    while True:
        if during is not None:
            during()
        fanned_out = runtime.redis.exists("marketsync:sync:last_fanout")
        if usage_done is None and fanned_out and _usage_settled(runtime, db_path):
            usage_done = time.perf_counter() - started
        # The fan-out job records its end in Redis (its own job hash is not relied upon).
        if fanned_out and _idle(runtime, db_path):
            quiet += 1
            if quiet >= 2:  # twice in a row: no job between dequeue and the started registry
                break
        else:
            quiet = 0
        if runtime.redis.hget(fanout.key, "status") == b"failed":
            raise RuntimeError(f"the fan-out failed: {fanout.latest_result()}")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the run did not finish within {timeout:.0f} s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    failed = FailedJobRegistry(queue=runtime.queue("sync")).get_job_ids()
    if failed:
        raise RuntimeError(f"{len(failed)} sync jobs failed, e.g. {failed[:3]}")
    return (usage_done if usage_done is not None else elapsed), elapsed


class Flusher:
    """Cancel a contract every ``every`` seconds during a run; time each flush until its report is accepted."""

    def __init__(self, runtime: Any, db_path: Path, candidates: list[dict[str, Any]], *, every: float, limit: int):
        self.runtime, self.db_path = runtime, db_path
        self.candidates = list(candidates)
        self.every, self.limit = every, limit
        self.next_at = time.perf_counter() + every
        self.outstanding: dict[str, float] = {}
        self.latencies: dict[str, float] = {}
        self.canceled: dict[str, datetime] = {}
        self.nothing = 0
        self.deferred = 0  # cancellations whose marketplace planned no flush now (only the final one)
        self.conn = sqlite3.connect(db_path, timeout=30)

    def __call__(self) -> None:
        now = time.perf_counter()
        if now >= self.next_at and len(self.canceled) < self.limit and self.candidates:
            self.next_at = now + self.every
            self.cancel(self.candidates.pop(0))
        self.poll()

    def cancel(self, contract: dict[str, Any]) -> None:
        """Record late usage and the cancellation as the contract use case does, then schedule the flushes."""
        from sqlmodel import Session

        from billing_core.events import ingest_events
        from billing_core import SqlEventStore
        from worker import queueing
        from worker.persistence.contracts import ContractRow

        engine = self.runtime.engine
        at = datetime.now(UTC)
        with Session(engine) as session:
            # Usage up to the cancellation, so the flush always has units to send.
            ingest_events(SqlEventStore(session), [{
                "idempotency_key": f"late-{contract['id']}", "customer_id": contract["customer_id"],
                "event_name": "api_call", "timestamp": (at - timedelta(seconds=1)).isoformat(),
                "properties": {"tokens": 700}}], now=at)
            row = session.get(ContractRow, contract["id"])
            row.status, row.canceled_at, row.cancel_effective_at, row.updated_at = "canceled", at, at, at
            session.add(row)
            session.commit()
        self.canceled[contract["id"]] = at
        started = time.perf_counter()
        # The final flush after the grace falls outside the bench; the one enqueued now is timed.
        # A marketplace whose final report must land soon may plan no flush now (AWS in the first
        # 20 minutes of an hour: the flush now would take the final flush's hour): not timed.
        planned = queueing.schedule_flushes(self.runtime, contract["id"], grace_seconds=3600)
        if planned.get("flush_now"):
            self.outstanding[contract["id"]] = started
        else:
            self.deferred += 1

    def poll(self) -> None:
        """Record the flushes whose job finished with its report accepted (or nothing left to send)."""
        if not self.outstanding:
            return
        ids = list(self.outstanding)
        marks = ",".join("?" * len(ids))
        rows = dict(self.conn.execute(
            f"SELECT contract_id, status FROM usage_ledger WHERE contract_id IN ({marks}) AND kind = 'flush'",
            ids).fetchall())
        now = time.perf_counter()
        for contract_id in ids:
            status = rows.get(contract_id)
            if status in ("accepted", "duplicate"):
                self.latencies[contract_id] = now - self.outstanding.pop(contract_id)
            elif status is None and self.runtime.redis.hget(f"rq:job:flush-{contract_id}-now", "status") == b"finished":
                # The hourly report took the late usage first: the flush had nothing left to send.
                self.latencies[contract_id] = now - self.outstanding.pop(contract_id)
                self.nothing += 1

    def finish(self, timeout: float = 60.0) -> None:
        deadline = time.perf_counter() + timeout
        while self.outstanding and time.perf_counter() < deadline:
            self.poll()
            time.sleep(0.02)
        if self.outstanding:
            raise RuntimeError(f"flushes not accepted within {timeout:.0f} s: {sorted(self.outstanding)}")


def expected_units(db_path: Path, contracts: list[dict[str, Any]], canceled: dict[str, datetime]) -> dict[str, int]:
    """Return each contract's units computed from the events alone: floor(cost / unit price)."""
    conn = sqlite3.connect(db_path)
    usage = {cid: (int(tokens or 0), int(calls)) for cid, tokens, calls in conn.execute(
        "SELECT customer_id, SUM(json_extract(properties, '$.tokens')), COUNT(*) FROM events "
        "WHERE state = 0 GROUP BY customer_id")}
    for contract_id, at in canceled.items():  # usage after the cancellation is not billed
        customer = next(c["customer_id"] for c in contracts if c["id"] == contract_id)
        cutoff = int(at.timestamp() * 1_000_000)
        tokens, calls = conn.execute(
            "SELECT SUM(json_extract(properties, '$.tokens')), COUNT(*) FROM events WHERE state = 0 "
            "AND customer_id = ? AND ts < ?", (customer, cutoff)).fetchone()
        usage[customer] = (int(tokens or 0), int(calls))
    conn.close()
    out = {}
    for c in contracts:
        tokens, calls = usage.get(c["customer_id"], (0, 0))
        cost = tokens * TOKEN_PRICE + calls * CALL_PRICE
        out[c["id"]] = int((cost / UNIT_PRICE).to_integral_value(ROUND_FLOOR))
    return out


def assert_exact(db_path: Path, emulators: Emulators, contracts: list[dict[str, Any]],
                 canceled: dict[str, datetime]) -> dict[str, int]:
    """Assert emulator totals == ledger accepted units == units from the events; return units per marketplace."""
    expected = expected_units(db_path, contracts, canceled)
    conn = sqlite3.connect(db_path)
    statuses = dict(conn.execute("SELECT status, COUNT(*) FROM usage_ledger GROUP BY status").fetchall())
    bad = {s: n for s, n in statuses.items() if s not in ("accepted", "duplicate")}
    assert not bad, f"ledger rows not accepted: {bad}"
    ledger = dict(conn.execute("SELECT contract_id, SUM(quantity) FROM usage_ledger "
                               "WHERE status IN ('accepted', 'duplicate') GROUP BY contract_id").fetchall())
    conn.close()
    wrong = [c["id"] for c in contracts if ledger.get(c["id"], 0) != expected[c["id"]]]
    assert not wrong, (f"{len(wrong)} contracts reported other than their units, e.g. "
                       f"{[(w, ledger.get(w, 0), expected[w]) for w in wrong[:5]]}")
    units: dict[str, int] = defaultdict(int)
    for c in contracts:
        units[c["marketplace"]] += expected[c["id"]]
    for marketplace in MARKETPLACES:
        accepted = emulators.totals(marketplace)
        assert accepted == units[marketplace], f"{marketplace}: emulator has {accepted} units, expected {units[marketplace]}"
    return dict(units)


def ingest_increment(db_path: Path, contracts: list[dict[str, Any]], *, share: float, at: datetime,
                     seed: int = 23) -> list[str]:
    """Store new events for ``share`` of the contracts through the billing core's ingest; return their ids."""
    from sqlmodel import Session

    from billing_core.events import ingest_events
    from billing_core import SqlEventStore
    from worker import db

    rng = random.Random(seed)
    chosen = rng.sample(contracts, max(1, int(len(contracts) * share)))
    engine = db.build_engine(f"sqlite:///{db_path}")
    batch = [{"idempotency_key": f"inc-{c['id']}-{k}", "customer_id": c["customer_id"], "event_name": "api_call",
              "timestamp": (at - timedelta(seconds=k + 1)).isoformat(), "properties": {"tokens": rng.randrange(100, 5000)}}
             for c in chosen for k in range(5)]
    with Session(engine) as session:
        ingest_events(SqlEventStore(session), batch, now=datetime.now(UTC))
        session.commit()
    engine.dispose()
    return [c["id"] for c in chosen]


def ledger_summary(db_path: Path, stamp: datetime) -> dict[str, Any]:
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT marketplace, kind, COUNT(*), SUM(quantity) FROM usage_ledger WHERE hour = ? "
                        "GROUP BY marketplace, kind", (stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),)).fetchall()
    conn.close()
    return {f"{m}/{k}": {"rows": n, "units": u} for m, k, n, u in rows}


# --- the run -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contracts", type=int, default=10_000)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="one run per size, in one process (two sizes: their ratio is printed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--aws-rps", type=float, default=10.0, help="AWS BatchMeterUsage throttle (0 lifts it)")
    parser.add_argument("--flush-every", type=float, default=1.0, help="seconds between cancellations in the full run")
    parser.add_argument("--flushes", type=int, default=40, help="at most this many cancellations")
    parser.add_argument("--incremental-share", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take before the bench fails")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    results = [(events, run(args, events)) for events in args.events]
    if len(results) == 2:
        (small, a), (large, b) = results
        print(f"\n{large / small:g}x the events ({small:,} -> {large:,}), {args.contracts:,} contracts:")
        for key, label in (("incremental_usage", "incremental run, every report with units answered"),
                           ("incremental", "incremental run, complete"), ("full", "full run")):
            print(f"  {label}: {a[key]:.1f} s -> {b[key]:.1f} s ({b[key] / a[key]:.2f} x)")
        print("  targets: incremental usage answered <= 3 s at both sizes, and <= 1.3 x between them")
    return 0


def run(args: argparse.Namespace, events: int) -> dict[str, float]:
    """One data set of ``events`` events: build it, then the full and the incremental run; return their times."""
    from config import Settings
    from worker import runtime as runtime_module
    from worker.metering import hour_floor
    from worker.redis_server import PrivateRedis

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the emulators' request log
    print(f"\n== {events:,} events, {args.contracts:,} contracts")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    db_path = data_dir / "marketsync.db"
    now = datetime.now(UTC)
    if now.minute >= 50:  # the runs must not cross an hour boundary (stamps are derived from the clock)
        wait = (hour_floor(now) + timedelta(hours=1, minutes=1) - now).total_seconds()
        print(f"waiting {wait:.0f} s for the next hour (a run must not straddle it)")
        time.sleep(wait)
        now = datetime.now(UTC)
    current = hour_floor(now)
    period_start = current - timedelta(days=3)
    with Emulators(PRODUCT, DIMENSION) as emulators, PrivateRedis(data_dir / "redis") as redis_server:
        t = time.perf_counter()
        contracts = build(db_path, emulators, contracts=args.contracts, events=events, start=period_start,
                          until=now - timedelta(minutes=1))
        print(f"setup: {args.contracts:,} contracts, {events:,} events in {time.perf_counter() - t:.1f} s "
              f"({data_dir})")
        env = worker_env(data_dir, db_path, redis_server.url, emulators)
        settings = Settings.from_env({k: v for k, v in env.items() if k in Settings.model_fields})
        runtime = runtime_module.Runtime(settings)
        runtime_module.install(runtime)
        emulators.set_latency(args.latency_ms)
        emulators.control("aws", "POST", "options", {"rate_limit_rps": args.aws_rps})
        procs = start_workers(args.workers, env, data_dir)
        try:
            # Warm the workers (imports, engines, adapters) as a running service is.
            from worker import jobs

            for _ in range(args.workers * 2):
                runtime.queue("urgent").enqueue(jobs.sweep_ledger)
            deadline = time.monotonic() + 60
            while not _idle(runtime, db_path) and time.monotonic() < deadline:
                time.sleep(0.1)

            full_stamp = current - timedelta(hours=1)
            rng = random.Random(5)
            candidates = rng.sample(contracts, min(len(contracts), args.flushes * 4))
            flusher = Flusher(runtime, db_path, candidates, every=args.flush_every, limit=args.flushes)
            full_usage, full = run_hourly(runtime, db_path, full_stamp, timeout=args.timeout, during=flusher)
            flusher.finish()
            print(f"full run ({args.contracts:,} contracts, stamp {full_stamp:%H:00}): {full:.1f} s  (target <= 60 s); "
                  f"every report with units answered after {full_usage:.1f} s")
            print(f"  reports: {json.dumps(ledger_summary(db_path, full_stamp))}")
            latencies = sorted(flusher.latencies.values())
            print(f"cancellation flush, enqueue -> accepted, during the full run ({len(latencies)} flushes"
                  f"{f'; {flusher.deferred} with only a final flush planned' if flusher.deferred else ''}): "
                  f"p50 {percentile(latencies, 50):.2f} s, p99 {percentile(latencies, 99):.2f} s, "
                  f"max {max(latencies, default=float('nan')):.2f} s  (target p99 <= 5 s)")
            units = assert_exact(db_path, emulators, contracts, flusher.canceled)
            print(f"  exact: emulator totals == ledger accepted == computed units {units}")

            live = [c for c in contracts if c["id"] not in flusher.canceled]
            changed = ingest_increment(db_path, live, share=args.incremental_share, at=datetime.now(UTC))
            incremental_usage, incremental = run_hourly(runtime, db_path, current, timeout=args.timeout)
            aws_calls = -(-sum(1 for c in live if c["marketplace"] == "aws") // 25)
            print(f"incremental run ({len(changed)} contracts with new events, stamp {current:%H:00}): "
                  f"every report with units answered after {incremental_usage:.1f} s  (target <= 3 s); "
                  f"complete with the AWS zero-quantity heartbeats after {incremental:.1f} s "
                  f"({aws_calls} BatchMeterUsage calls at {args.aws_rps:g}/s)")
            print(f"  reports: {json.dumps(ledger_summary(db_path, current))}")
            units = assert_exact(db_path, emulators, contracts, flusher.canceled)
            print(f"  exact: emulator totals == ledger accepted == computed units {units}")
            figures = {"full": full, "incremental_usage": incremental_usage, "incremental": incremental}
            from billing_core.sql_fragments import verify_fragments

            checked, stale, differences = verify_fragments(runtime.engine)
            print(f"  marketsync verify: {checked:,} fragment buckets recomputed from events, {stale} stale, "
                  f"{len(differences)} difference(s)")
            assert not differences, differences[:5]
            from worker.hourly import verify_carried

            carried, wrong = verify_carried(runtime.engine, now=datetime.now(UTC))
            print(f"  costs the next run would carry forward: {carried:,} recomputed from scratch, "
                  f"{len(wrong)} difference(s)")
            assert not wrong, wrong[:5]
        finally:
            stop_workers(procs)
            runtime.close()
    if not args.keep:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
