"""Event ingest throughput: over HTTP to gunicorn, through the in-process path, and raw inserts.

    python -m bench.ingest [--events 1000000] [--batch 500] [--clients 8] [--workers 3] [--threads 1]

The same rows go three ways, each into a fresh, migrated SQLite file (WAL):

1. **HTTP**: ``POST /v1/ingest`` bodies of ``--batch`` events to the web process (gunicorn,
   ``webhooks:create_app()``) from ``--clients`` keep-alive connections; the bodies are encoded
   before the clock starts, so the figure is the server's.
2. **in-process**: ``billing_core.events.ingest_events`` on the same events as Python dicts,
   one transaction per batch (validation, customer resolution, multi-row insert, idempotency
   check).
3. **raw**: ``sqlite3`` ``executemany`` of the already-validated row tuples into the same table
   and indexes, one transaction per batch: the floor the in-process path is compared with.
   Raw and in-process alternate batch by batch (each into its own database), so a machine
   shared with other work loads both alike; CPU time per event is printed too.

Targets on a 2-core machine: HTTP >= 50,000 events/s; in-process >= 0.4 x raw.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import machine, server_cpu_seconds, web_service

API_KEY = "bench-api-key-0123456789"
MODELS = ("gpt-4", "gpt-4o", "claude", "llama", "mistral")


def make_events(count: int, customers: int, now: datetime, seed: int = 7) -> list[dict[str, Any]]:
    """Return ``count`` distinct events over the last 24 hours, in time order with a few seconds of jitter.

    Live usage arrives roughly in time order; that is the load this measures (a backfill of
    shuffled history touches random index pages and is slower).
    """
    rng = random.Random(seed)
    start = now - timedelta(days=1)
    span_us = 24 * 3600 * 1_000_000
    events = []
    for i in range(count):
        jitter = rng.randrange(-2_000_000, 2_000_000)
        at = start + timedelta(microseconds=max(0, span_us * i // max(count, 1) + jitter))
        events.append({
            "idempotency_key": f"evt-{i:09d}",
            "event_name": "api_call",
            "external_customer_id": f"cust-{i % customers:05d}",
            "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "properties": {"tokens": rng.randrange(1, 5000), "model": MODELS[i % len(MODELS)],
                           "cost": Decimal(rng.randrange(1, 10**6)).scaleb(-6)},
        })
    return events


def _encode(batch: list[dict[str, Any]]) -> bytes:
    """Encode a batch as the client would send it, numbers written exactly."""
    parts = []
    for e in batch:
        props = e["properties"]
        head = json.dumps({k: v for k, v in e.items() if k != "properties"})[:-1]
        body = '{"tokens":%d,"model":%s,"cost":%s}' % (props["tokens"], json.dumps(props["model"]), props["cost"])
        parts.append(head + ',"properties":' + body + "}")
    return ('{"events":[' + ",".join(parts) + "]}").encode()


def _batches(events: list[Any], size: int) -> list[list[Any]]:
    return [events[i:i + size] for i in range(0, len(events), size)]


def _migrated(path: Path) -> None:
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()


def _add_customers(url: str, customers: int, now: datetime) -> None:
    from billing_core.customers import create_customer
    from billing_core import SqlCustomerRepository
    from worker import db

    engine = db.build_engine(url)
    with db.session_scope(engine) as session:
        repo = SqlCustomerRepository(session)
        for c in range(customers):
            create_customer(repo, customer_id=f"c{c:05d}", name=f"Customer {c}", email=f"c{c}@bench.test",
                            external_customer_id=f"cust-{c:05d}", now=now)
    engine.dispose()


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def run_http(events: list[dict[str, Any]], batch: int, customers: int, now: datetime, *, clients: int,
             workers: int, threads: int, worker_class: str = "gthread") -> tuple[float, int, float]:
    """Send every batch to gunicorn; return (seconds, events stored, server CPU seconds)."""
    bodies = [_encode(b) for b in _batches(events, batch)]
    with tempfile.TemporaryDirectory() as tmp, web_service(
        Path(tmp), {"API_KEYS": API_KEY, "MAX_BODY_BYTES": str(8 * 1024 * 1024)}, workers=workers, threads=threads,
        worker_class=worker_class,
    ) as base:
        db_path = Path(tmp) / "marketsync.db"
        _add_customers(f"sqlite:///{db_path}", customers, now)
        host, port = base.removeprefix("http://").split(":")
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        counter = iter(range(len(bodies)))
        lock = threading.Lock()
        failures: list[str] = []

        def client() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                conn.request("POST", "/v1/ingest", body=bodies[i], headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    failures.append(f"{response.status} {payload[:200]!r}")
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=120)
            conn.close()

        pool = [threading.Thread(target=client) for _ in range(clients)]
        cpu_before = server_cpu_seconds(port)
        started = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - started
        cpu = server_cpu_seconds(port) - cpu_before
        if failures:
            raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
        return elapsed, _count(db_path), cpu


def run_in_process_and_raw(events: list[dict[str, Any]], batch: int, customers: int,
                           now: datetime) -> dict[str, tuple[float, float, int]]:
    """Ingest every batch through ``ingest_events`` and, alternately, raw ``executemany``.

    Each path writes its own fresh database; batch by batch they take turns, so both see the
    same load from anything else running on the machine. Returns, per path, (wall seconds,
    CPU seconds, events stored).
    """
    from billing_core.events import ingest_events, validate_batch
    from billing_core import SqlEventStore
    from worker import db

    batches = _batches(events, batch)
    raw_rows = [
        [(r[0], r[1], f"c{int(r[3][5:]):05d}", r[3], r[4], r[5]) for r in validate_batch(chunk, now=now)]
        for chunk in batches
    ]
    with tempfile.TemporaryDirectory() as tmp:
        in_path, raw_path = Path(tmp) / "inprocess.db", Path(tmp) / "raw.db"
        for path in (in_path, raw_path):
            _migrated(path)
            _add_customers(f"sqlite:///{path}", customers, now)
        engine = db.build_engine(f"sqlite:///{in_path}")
        conn = sqlite3.connect(raw_path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")  # as the store sets them
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        sql = ("INSERT INTO events (idempotency_key, event_name, customer_id, external_customer_id, ts, properties) "
               "VALUES (?, ?, ?, ?, ?, ?)")
        wall = {"raw": 0.0, "in-process": 0.0}
        cpu = {"raw": 0.0, "in-process": 0.0}
        for chunk, rows in zip(batches, raw_rows):
            w, c = time.perf_counter(), time.process_time()
            with conn:
                conn.executemany(sql, rows)
            w2, c2 = time.perf_counter(), time.process_time()
            with db.session_scope(engine) as session:
                ingest_events(SqlEventStore(session), chunk, now=now)
            w3, c3 = time.perf_counter(), time.process_time()
            wall["raw"] += w2 - w
            cpu["raw"] += c2 - c
            wall["in-process"] += w3 - w2
            cpu["in-process"] += c3 - c2
        conn.close()
        engine.dispose()
        return {
            "raw": (wall["raw"], cpu["raw"], _count(raw_path)),
            "in-process": (wall["in-process"], cpu["in-process"], _count(in_path)),
        }


def main(argv: list[str] | None = None) -> None:
    """Run the three measurements and print events/s, ratios and the machine."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP connections")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes (the Procfile's default)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (gthread when > 1)")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args(argv)

    now = datetime.now(timezone.utc)
    events = make_events(args.events, args.customers, now)
    print(f"machine: {machine()}")
    print(f"load average before the run: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"events: {args.events:,} in batches of {args.batch} for {args.customers} customers")

    paired = run_in_process_and_raw(events, args.batch, args.customers, now)
    raw_s, raw_cpu, raw_n = paired["raw"]
    inproc_s, inproc_cpu, inproc_n = paired["in-process"]
    figures = {"raw executemany": (raw_s, raw_n), "in-process ingest": (inproc_s, inproc_n)}
    http_cpu = 0.0
    if not args.skip_http:
        http_s, http_n, http_cpu = run_http(events, args.batch, args.customers, now, clients=args.clients,
                                            workers=args.workers, threads=args.threads,
                                            worker_class="gthread" if args.threads > 1 else "sync")
        figures["HTTP (gunicorn)"] = (http_s, http_n)
    for name, (seconds, stored) in figures.items():
        if stored != args.events:
            raise SystemExit(f"{name}: stored {stored:,} events, expected {args.events:,}")
        print(f"{name:>18}: {args.events / seconds:>10,.0f} events/s  ({seconds:.2f} s)")
    raw_rate = args.events / raw_s
    print(f"in-process / raw: {(args.events / inproc_s) / raw_rate:.2f} wall, {raw_cpu / inproc_cpu:.2f} CPU "
          "(target >= 0.40; the two alternate batch by batch)")
    print(f"CPU per event: raw {raw_cpu / args.events * 1e6:.1f} us, in-process {inproc_cpu / args.events * 1e6:.1f} us")
    if "HTTP (gunicorn)" in figures:
        http_rate = args.events / figures["HTTP (gunicorn)"][0]
        print(f"HTTP / raw: {http_rate / raw_rate:.2f}; HTTP target >= 50,000 events/s: "
              f"{'met' if http_rate >= 50_000 else 'NOT met'}")
        print(f"HTTP server CPU: {http_cpu:.1f} s over {args.workers} workers = "
              f"{http_cpu / args.events * 1e6:.1f} us per event (capacity {args.events / http_cpu:,.0f} events "
              f"per CPU-second)")
    print(f"load average after the run: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (other processes "
          "share these cores)")

if __name__ == "__main__":
    main()
