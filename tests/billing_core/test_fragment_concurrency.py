"""An event committed while a fragment is being computed is never lost: two real OS processes.

A writer process commits for a few seconds — new events, late events into hours and days the reader
has already stored, resent duplicates, amendments (moving an event to another instant, value, group
or customer), deprecations, and a customer created after its events — each in its own transaction
(under ``write_lock``, as the API's writes are), and logs what it committed. Meanwhile a reader
process reads usage through ``FragmentUsageSource`` over windows made of raw edges, whole hours and
whole days, so buckets are computed and stored while the writes commit. Afterwards, on SQLite (a WAL
file) and PostgreSQL:

- the raw source (``SqlUsageSource``) answers what the writer's log says was committed;
- ``verify_fragments`` finds no stored fragment that differs from its events, in what the two
  processes left behind (asked per customer, then for the whole database) and after a final read;
- the fragment source answers exactly what the raw source answers, for every customer, window,
  metric and grouping (quantity, event count, skipped, groups).

Only public functions are used (no table names, no private helpers): the store may change layout.
The processes are started with the ``spawn`` context, so each has its own interpreter, engine and
connections, as the web and worker processes do. A failure names the seed of the processes' random
choices (``FRAGMENT_CONCURRENCY_SEED`` replays them; the interleaving itself is the scheduler's).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
import traceback
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from billing_core import SqlCustomerRepository, SqlEventStore, SqlMetricRepository, create_customer, write_lock
from billing_core.events import amend_event, deprecate_event, ingest_events
from billing_core.metric_definition import MetricDefinition
from billing_core.metrics import create_metric
from billing_core.sql_fragments import FragmentUsageSource, verify_fragments
from billing_core.sql_usage import SqlUsageSource
from billing_core.usage import MetricUsage
from worker.db import build_engine, session_scope

NOW = datetime(2026, 12, 15, tzinfo=timezone.utc)
DAY0 = datetime(2026, 11, 9, tzinfo=timezone.utc)
SPAN = 4 * 24 * 3600  # seconds of event time: four whole days from DAY0
WRITE_SECONDS = 2.5
MIN_READS = 12  # reads that must start while the writes commit
SETUP_EVENTS = 150
METRICS = {"m_sum": MetricDefinition("call", "sum", "n"), "m_count": MetricDefinition("call", "count")}
GROUPINGS: tuple[tuple[str, ...], ...] = ((), ("g",))
CUSTOMERS = {"acme": "c1", "globex": "c2", "initech": "c3", "umbrella": "c4"}  # c4 is created by the writer
IDS = sorted(CUSTOMERS.values())
H, D = 3600, 24 * 3600
# Windows the reader reads and the final comparison checks: whole days; raw edges, hours and days;
# hours only; hours then days; and a window wider than every event.
WINDOWS = [(0, SPAN), (30 * 60, 3 * D + 17 * H + 45 * 60), (5 * H, 2 * D + 7 * H), (D + 3 * H, D + 9 * H + 1),
           (7 * H, 3 * D), (-D, SPAN + D)]


def _at(second: float) -> str:
    return (DAY0 + timedelta(seconds=second)).isoformat().replace("+00:00", "Z")


def _window(lo: int, hi: int) -> tuple[datetime, datetime]:
    return DAY0 + timedelta(seconds=lo), DAY0 + timedelta(seconds=hi)


def _body(key: str, second: float, customer: str, value: Decimal | None, group: str) -> dict[str, Any]:
    props: dict[str, Any] = {"g": group} if value is None else {"g": group, "n": value}
    return {"idempotency_key": key, "event_name": "call", "external_customer_id": customer,
            "timestamp": _at(second), "properties": props}


def _random_event(rng: random.Random, key: str, customers: list[str]) -> dict[str, Any]:
    """An event anywhere in the span, often on an hour's or a day's first or last microsecond."""
    kind = rng.random()
    if kind < 0.2:
        second: float = rng.randrange(0, SPAN, H)  # the first instant of an hour
    elif kind < 0.35:
        second = rng.randrange(H, SPAN + 1, H) - 0.000001  # the last microsecond of an hour
    elif kind < 0.45:
        second = rng.randrange(0, SPAN, D)  # the first instant of a day
    else:
        second = rng.randrange(0, SPAN * 1000) / 1000
    value = None if rng.random() < 0.1 else Decimal(rng.randrange(-2000, 50000)) / 100
    return _body(key, second, rng.choice(customers), value, rng.choice(["x", "y", "z"]))


# --- the two processes (module-level, so ``spawn`` can import them) ---------------------------------

def _run_child(role: str, url: str, out: str, ready: Any, go: Any, done: Any, seed: int, reads: Any) -> None:
    engine = build_engine(url)
    try:
        with engine.connect():  # connect before the start, so both processes begin at once
            pass
        ready.set()
        if not go.wait(60):
            raise TimeoutError("the test never said go")
        result = _writer(engine, seed, done, reads) if role == "writer" else _reader(engine, seed, done, reads)
        Path(out).write_text(json.dumps(result, default=str))  # values (Decimal) as text
    except BaseException:
        Path(out).write_text(json.dumps({"error": traceback.format_exc()}))
        raise
    finally:
        if role == "writer":  # the reader stops when the writer stops, even when it failed
            done.set()
        engine.dispose()


def _writer(engine: Engine, seed: int, done: Any, reads: Any) -> dict[str, Any]:
    """Commit one change per transaction for WRITE_SECONDS (longer, up to 8 times, until the
    reader has read MIN_READS times: a loaded machine reads slower); return the log of what was
    committed."""
    rng = random.Random(seed)
    log: list[list[Any]] = []  # [kind, ..., committed at (monotonic)]
    live = [f"s{i}" for i in range(SETUP_EVENTS)]  # keys that may be amended or deprecated
    pristine: list[dict[str, Any]] = []  # bodies never amended: resending them changes nothing
    customers = ["acme", "globex", "initech", "umbrella"]
    counter = 0
    started = time.monotonic()
    created_c4 = False
    def writing() -> bool:
        elapsed = time.monotonic() - started
        return elapsed < WRITE_SECONDS or (reads.value < MIN_READS and elapsed < WRITE_SECONDS * 8)

    while writing():
        roll = rng.random()
        if not created_c4 and time.monotonic() - started > WRITE_SECONDS * 0.4:
            with write_lock(engine), session_scope(engine) as session:
                create_customer(SqlCustomerRepository(session), customer_id="c4", name="U", email="u@x.test",
                                external_customer_id="umbrella", now=NOW)
            log.append(["customer", "c4", "umbrella", time.monotonic()])
            created_c4 = True
        elif roll < 0.15 and live:
            key = rng.choice(live)
            body = _random_event(rng, key, customers)
            with write_lock(engine), session_scope(engine) as session:
                amend_event(SqlEventStore(session), key, {k: v for k, v in body.items() if k != "idempotency_key"},
                            now=NOW)
            pristine = [b for b in pristine if b["idempotency_key"] != key]
            log.append(["amend", body, time.monotonic()])
        elif roll < 0.23 and live:
            key = live.pop(rng.randrange(len(live)))
            with write_lock(engine), session_scope(engine) as session:
                deprecate_event(SqlEventStore(session), key)
            pristine = [b for b in pristine if b["idempotency_key"] != key]
            log.append(["deprecate", key, time.monotonic()])
        else:
            batch = []
            for _ in range(rng.randint(1, 3)):
                counter += 1
                batch.append(_random_event(rng, f"w{counter}", customers))
            if pristine and rng.random() < 0.2:  # a duplicate delivery: the same body again
                batch.append(rng.choice(pristine))
            with write_lock(engine), session_scope(engine) as session:
                ingest_events(SqlEventStore(session), batch, now=NOW)
            fresh = [b for b in batch if b["idempotency_key"].startswith("w") and b not in pristine]
            live.extend(b["idempotency_key"] for b in fresh)
            pristine.extend(fresh)
            log.append(["ingest", batch, time.monotonic()])
        time.sleep(rng.random() * 0.003)  # let the reader's transactions interleave on two cores
    done.set()
    return {"log": log}


def _reader(engine: Engine, seed: int, done: Any, count: Any) -> dict[str, Any]:
    """Read usage through fragments until the writer is done; return when each read started."""
    rng = random.Random(seed)
    reads: list[float] = []
    deadline = time.monotonic() + WRITE_SECONDS * 8 + 20
    while not done.is_set() and time.monotonic() < deadline:
        source = FragmentUsageSource(engine)
        if rng.random() < 0.7:
            lo, hi = rng.choice(WINDOWS)
        else:  # any window, its edges on hours or anywhere
            a, b = (rng.choice([rng.randrange(0, SPAN, H), rng.randrange(0, SPAN)]) for _ in range(2))
            lo, hi = min(a, b), max(a, b) + 1
        reads.append(time.monotonic())
        source.usage_bulk(rng.choice(list(METRICS)), IDS, *_window(lo, hi), rng.choice(GROUPINGS))
        with count.get_lock():
            count.value += 1
    return {"reads": reads}


# --- the test ---------------------------------------------------------------------------------------

def _setup(engine: Engine) -> list[dict[str, Any]]:
    """Three customers, the two metrics, and events over several hours of each of the four days."""
    rng = random.Random(7)
    with session_scope(engine) as session:
        for external, customer_id in list(CUSTOMERS.items())[:3]:
            create_customer(SqlCustomerRepository(session), customer_id=customer_id, name=external,
                            email=f"{external}@x.test", external_customer_id=external, now=NOW)
    with session_scope(engine) as session:
        for metric_id, definition in METRICS.items():
            create_metric(SqlMetricRepository(session), metric_id=metric_id, name=metric_id, now=NOW,
                          definition=definition)
    events = [_random_event(rng, f"s{i}", ["acme", "globex", "umbrella"]) for i in range(SETUP_EVENTS)]
    with session_scope(engine) as session:
        ingest_events(SqlEventStore(session), events, now=NOW)
    return events


def _expected(setup_events: list[dict[str, Any]], log: list[list[Any]]) -> dict[str, dict[str, MetricUsage]]:
    """What the committed writes add up to over the whole span: {metric: {customer: usage}}."""
    current: dict[str, dict[str, Any] | None] = {b["idempotency_key"]: b for b in setup_events}
    for entry in log:
        if entry[0] == "ingest":
            for body in entry[1]:
                current.setdefault(body["idempotency_key"], body)
        elif entry[0] == "amend":
            current[entry[1]["idempotency_key"]] = entry[1]
        elif entry[0] == "deprecate":
            current[entry[1]] = None
    out: dict[str, dict[str, MetricUsage]] = {}
    for metric_id in METRICS:
        per: dict[str, MetricUsage] = {}
        for customer_id in IDS:
            mine = [b for b in current.values()
                    if b is not None and CUSTOMERS[b["external_customer_id"]] == customer_id]
            if metric_id == "m_count":
                per[customer_id] = MetricUsage(quantity=Decimal(len(mine)), event_count=len(mine))
            else:
                valued = [Decimal(str(b["properties"]["n"])) for b in mine if "n" in b["properties"]]
                per[customer_id] = MetricUsage(quantity=sum(valued, Decimal(0)), event_count=len(mine),
                                               skipped=len(mine) - len(valued))
        out[metric_id] = per
    return out


def test_events_committed_while_fragments_are_computed_are_never_lost(any_engine: Engine, any_url: str,
                                                                      tmp_path: Path) -> None:
    setup_events = _setup(any_engine)

    ctx = multiprocessing.get_context("spawn")
    ready_w, ready_r, go, done = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    reads_count = ctx.Value("i", 0)
    seed = int(os.environ.get("FRAGMENT_CONCURRENCY_SEED") or random.randrange(1 << 30))  # the writes' choices
    outs = {role: tmp_path / f"{role}.json" for role in ("writer", "reader")}
    procs = {
        role: ctx.Process(target=_run_child, name=f"fragments-{role}",
                          args=(role, any_url, str(outs[role]), ready, go, done, seed + n, reads_count))
        for n, (role, ready) in enumerate((("writer", ready_w), ("reader", ready_r)))
    }
    for proc in procs.values():
        proc.start()
    try:
        assert ready_w.wait(60) and ready_r.wait(60), "a child process did not start"
        go.set()
        for proc in procs.values():
            proc.join(WRITE_SECONDS * 8 + 40)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
                proc.join()
    results = {role: json.loads(path.read_text()) if path.exists() else {"error": "no result"}
               for role, path in outs.items()}
    for role, proc in procs.items():
        assert proc.exitcode == 0 and "error" not in results[role], (role, proc.exitcode, results[role], seed)

    # The reads really ran while the writes committed.
    log, reads = results["writer"]["log"], results["reader"]["reads"]
    first, last = log[0][-1], log[-1][-1]
    during = [t for t in reads if first <= t <= last]
    assert len(log) >= 50 and len(during) >= 10, (len(log), len(reads), len(during), seed)
    assert any(e[0] == "amend" for e in log) and any(e[0] == "deprecate" for e in log), seed

    # The raw source holds exactly what the writer committed.
    raw, fragments = SqlUsageSource(any_engine), FragmentUsageSource(any_engine)
    expected = _expected(setup_events, log)
    for metric_id in METRICS:
        got = raw.usage_bulk(metric_id, IDS, *_window(-D, SPAN + D))
        assert dict(got) == expected[metric_id], (metric_id, seed)

    # What the two processes left behind: every stored fragment is current and equal to its events, or
    # known stale — never missing a committed change. Per customer first, then the whole database.
    for customer_id in IDS:
        checked, stale, differences = verify_fragments(any_engine, customer_id=customer_id)
        assert differences == [], (customer_id, checked, stale, differences, seed)
    checked, stale, differences = verify_fragments(any_engine)
    assert differences == [] and checked > 0, (checked, stale, differences, seed)

    # Reading through fragments (stale buckets recomputed, the rest reused) answers what raw events answer.
    for lo, hi in WINDOWS:
        for metric_id in METRICS:
            for group_by in GROUPINGS:
                want = raw.usage_bulk(metric_id, IDS, *_window(lo, hi), group_by)
                got = fragments.usage_bulk(metric_id, IDS, *_window(lo, hi), group_by)
                assert dict(got) == dict(want), (metric_id, group_by, lo, hi, seed)
    checked, stale, differences = verify_fragments(any_engine)
    assert differences == [] and checked > 0, (checked, stale, differences, seed)
