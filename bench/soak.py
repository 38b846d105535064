"""Soak: steady contract webhooks, event ingest and hourly sync runs against the whole service.

    python -m bench.soak [--minutes 10] [--webhook-rate 50] [--ingest-rate 10] [--batch 100]
                         [--sync-every 60] [--contracts 300] [--workers 2] [--web-workers 3]

The service runs as in production: gunicorn (``webhooks:create_app()``, the Procfile's 3 sync
workers unless ``--threads`` > 1) and
``--workers`` real ``rq worker --with-scheduler --worker-class worker.rq_worker.MarketsyncWorker
urgent contracts sync`` processes (the Procfile's) on a fresh SQLite file (WAL) and a private Redis;
their sandbox adapters talk to the three emulators served by this process (``--latency-ms``
per call, AWS keeping its 10 calls/s throttle).

Setup (not measured): a catalog (tokens priced per unit), one listing per marketplace, a
marketplace customer per contract in each emulator, then ``--contracts`` signed
``contract.created`` webhooks, processed by the workers into mapped contracts.

For ``--minutes``, all at once:

- **webhooks**: signed Standard Webhooks deliveries at ``--webhook-rate`` per second: four in
  five a ``contract.modified`` (a seat quantity change) of a mapped contract, in turn; one in
  five a ``contract.created`` of a new contract whose product has no listing (stored, processed,
  kept unmapped with its reason), so the set of contracts the sync reports on stays the same;
- **ingest**: ``POST /v1/ingest`` batches of ``--batch`` events at ``--ingest-rate`` per second,
  spread over the mapped contracts' customers;
- **hourly sync**: every ``--sync-every`` seconds the fan-out the cron runs
  (``jobs.run_hourly_sync``) is enqueued on ``sync`` for the next hour stamp. The soak compresses
  an hour into ``--sync-every`` seconds, so its stamps are consecutive past hours; the AWS
  emulator's six-hour and Azure's 24-hour age limits are widened to cover them;
- the RSS and CPU time of every web and worker process, every ``--sample-every`` seconds
  (``/proc``), and the inbox backlog.

Then the load stops, the inbox drains, one last sync run reports the rest, and the soak checks:
each emulator's accepted units equal the ledger's accepted units, each contract's ledger equals
the units computed here from the stored events, every acknowledged delivery is stored and
processed and every acknowledged event stored once. It prints requests and errors by kind, p50 /
p99 latency per kind per minute, the sync runs, the RSS at the end of the warm-up (``--warmup``,
the first minute, and at least until the first sync run has finished: a worker loads the whole
sync path then) and at the end, and exits non-zero on any error, a wrong total, or an RSS growth
of 10 % or more. The cron process is not started: the soak runs the fan-out itself, and nothing is left
for the sweepers when nothing fails.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import logging
import os
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Callable

import requests

from bench.common import Emulators, machine, percentile, start_workers, stop_workers, web_service

SECRET = "whsec_c29hay13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"
API_KEY = "soak-api-key-0123456789abcdef"
MARKETPLACES = ("aws", "azure", "gcp")
DIMENSION = "usage_cost"
TOKEN_PRICE = Decimal("0.0001")  # the plan's price per token
UNIT_PRICE = Decimal("0.01")  # the listings' dimension: one unit per cent
PRODUCT = {"aws": "prod-soak", "azure": "offer-soak", "gcp": "prod-soak"}
UNLISTED = "prod-unlisted"
RSS_GROWTH_LIMIT = 10.0  # percent, warm-up end -> end


# --- processes: RSS and CPU from /proc -----------------------------------------------------------

def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """Return the user + system CPU seconds of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Return the direct children of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Sampler:
    """Sample the RSS of the web and worker processes and the inbox backlog every ``every`` seconds."""

    every: float
    t0: float
    db_path: Path
    worker_pids: list[int]
    rss: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    roles: dict[int, str] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)  # the latest CPU seconds of each process
    backlog: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def processes(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for pid in children(os.getpid()):
            if "gunicorn" in cmdline(pid):
                found[pid] = "web master"
                for child in children(pid):
                    found[child] = "web worker"
        for n, pid in enumerate(self.worker_pids):
            found[pid] = f"rq worker {n + 1}"
            for child in children(pid):
                found[child] = f"rq scheduler {n + 1}"
        return found

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        for pid, role in self.processes().items():
            kb, cpu = _status_kb(pid, "VmRSS"), cpu_seconds(pid)
            if kb is not None:
                self.roles.setdefault(pid, role)
                self.rss[pid].append((now, kb / 1024))
            if cpu is not None:
                self.cpu[pid] = cpu
        try:
            with sqlite3.connect(self.db_path, timeout=30) as conn:
                waiting = conn.execute("SELECT COUNT(*) FROM inbox WHERE status IN ('received', 'processing')").fetchone()[0]
            self.backlog.append((now, int(waiting)))
        except sqlite3.Error:
            pass

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)

    def start(self) -> "Sampler":
        threading.Thread(target=self.run, name="sampler", daemon=True).start()
        return self


# --- the emulators -------------------------------------------------------------------------------

# --- setup ---------------------------------------------------------------------------------------

def create_catalog(db_path: Path, created: datetime) -> None:
    """Create the tokens metric, a plan pricing each token, and one listing per marketplace."""
    from sqlmodel import Session

    from billing_core.metrics import MetricDefinition, create_metric
    from billing_core.persistence.catalog import SqlCatalog
    from billing_core import SqlMetricRepository
    from billing_core.plans import Item, create_plan
    from billing_core.pricing import ModelType, Price, UnitConfig
    from worker import db
    from worker.persistence.contracts import ListingRow

    engine = db.build_engine(f"sqlite:///{db_path}")
    with Session(engine) as session:
        SqlCatalog(session).add_item(Item("item_api", "API", created))
        create_metric(SqlMetricRepository(session), metric_id="m_tokens", name="Tokens", now=created,
                      definition=MetricDefinition(event_name="api_call", aggregation="sum", property="tokens"))
        price = Price(id="p_tokens", key="p_tokens", name="Tokens", item_id="item_api", model_type=ModelType.UNIT,
                      config=UnitConfig(TOKEN_PRICE), metric_id="m_tokens")
        SqlCatalog(session).save_plan(create_plan(id="plan_soak", name="Soak", currency="USD", prices=[price],
                                                  now=created))
        for marketplace in MARKETPLACES:
            session.add(ListingRow(id=f"lst_{marketplace}", marketplace=marketplace, product_id=PRODUCT[marketplace],
                                   billing_plan_id="plan_soak", dimension=DIMENSION, unit_price=str(UNIT_PRICE),
                                   created_at=created, updated_at=created))
        session.commit()
    engine.dispose()


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def contract_event(kind: str, event_id: str, contract_id: str, marketplace: str, at: datetime, *,
                   identifiers: dict[str, str] | None = None, quantity: int | None = None) -> bytes:
    """Return a normalized contract event (the body of a signed webhook)."""
    data: dict[str, Any] = {"contract_id": contract_id, "marketplace": marketplace,
                            "cloud_identifiers": identifiers or {}, "effective_at": _iso(at)}
    if kind == "created":
        data["buyer"] = {"name": f"Buyer {contract_id}", "email": f"{contract_id}@example.test"}
        data["pricing"] = {"currency": "USD", "dimensions": [{"name": DIMENSION, "unit_price": str(UNIT_PRICE)}]}
    if quantity is not None:
        data["quantity"] = quantity
    return json.dumps({"id": event_id, "type": f"contract.{kind}", "occurred_at": _iso(at), "data": data}).encode()


def signed(body: bytes, delivery_id: str) -> dict[str, str]:
    from worker.standard_webhooks import signed_headers

    return {**signed_headers(SECRET, delivery_id, int(time.time()), body), "Content-Type": "application/json"}


def map_contracts(base: str, db_path: Path, emulators: Emulators, count: int, start: datetime,
                  timeout: float = 600) -> list[dict[str, str]]:
    """Create ``count`` contracts through signed contract.created webhooks; wait until each is mapped."""
    order = [MARKETPLACES[i % 3] for i in range(count)]
    with ThreadPoolExecutor(4) as pool:
        identifiers = list(pool.map(lambda m: emulators.new_customer(m, start), order))

    def deliver(i: int) -> int:
        body = contract_event("created", f"evt_setup_{i}", f"soak-{i:05d}", order[i], start, identifiers=identifiers[i])
        return requests.post(f"{base}/webhooks/contracts", data=body, headers=signed(body, f"msg_setup_{i}"),
                             timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(deliver, range(count)))
    if set(codes) != {202}:
        raise RuntimeError(f"setup deliveries answered {sorted(set(codes))}")
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db_path, timeout=30) as conn:
            rows = conn.execute("SELECT external_id, marketplace, customer_id FROM contracts "
                                "WHERE mapping_status = 'mapped' ORDER BY external_id").fetchall()
        if len(rows) == count:
            return [{"id": r[0], "marketplace": r[1], "customer_id": r[2]} for r in rows]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rows)} of {count} contracts mapped after {timeout:.0f} s")
        time.sleep(0.5)


# --- load ----------------------------------------------------------------------------------------

@dataclass
class Result:
    kind: str
    at: float  # seconds since the load started, when it was sent
    ms: float
    status: int  # 0: no answer (connection error)
    size: int = 0  # events in an ingest batch


class Paced:
    """Send requests ``i = 0, 1, ...`` at ``rate`` per second from ``threads`` keep-alive connections until ``end``."""

    def __init__(self, kind: str, base: str, rate: float, threads: int, build: Callable[[int], tuple[str, bytes, dict, int]],
                 t0: float, end: float, out: list[Result]):
        self.kind, self.rate, self.build, self.t0, self.end, self.out = kind, rate, build, t0, end, out
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.counter = itertools.count()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, name=f"{kind}-{n}", daemon=True) for n in range(threads)]

    def start(self) -> "Paced":
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while True:
            with self._lock:
                i = next(self.counter)
            due = self.t0 + i / self.rate
            if due >= self.end:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            path, body, headers, size = self.build(i)
            started = time.monotonic()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.out.append(Result(self.kind, started - self.t0, (time.monotonic() - started) * 1000, status, size))
        conn.close()


def webhook_request(contracts: list[dict[str, str]]) -> Callable[[int], tuple[str, bytes, dict, int]]:
    """Build delivery ``i``: four in five a quantity change of a mapped contract, one in five a new unlisted contract."""
    def build(i: int) -> tuple[str, bytes, dict, int]:
        now = datetime.now(UTC)
        if i % 5 == 4:
            account = f"{700_000_000_000 + i:012d}"
            body = contract_event("created", f"evt_soak_{i}", f"soak-new-{i}", "aws", now, identifiers={
                "product_code": UNLISTED, "customer_aws_account_id": account,
                "license_arn": f"arn:aws:license-manager::{account}:license:l-{i:032x}"})
        else:
            contract = contracts[(i - i // 5) % len(contracts)]
            body = contract_event("modified", f"evt_soak_{i}", contract["id"], contract["marketplace"], now,
                                  quantity=1 + i % 50)
        return "/webhooks/contracts", body, signed(body, f"msg_soak_{i}"), 0
    return build


def ingest_request(contracts: list[dict[str, str]], batch: int) -> Callable[[int], tuple[str, bytes, dict, int]]:
    """Build batch ``i``: ``batch`` api_call events with distinct keys, spread over the contracts' customers."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    def build(i: int) -> tuple[str, bytes, dict, int]:
        at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        events = [{"idempotency_key": f"soak-{i}-{k}", "customer_id": contracts[(i * batch + k) % len(contracts)]["customer_id"],
                   "event_name": "api_call", "timestamp": at, "properties": {"tokens": 1 + (i * batch + k) % 997}}
                  for k in range(batch)]
        return "/v1/ingest", json.dumps({"events": events}).encode(), headers, batch
    return build


# --- hourly sync runs ----------------------------------------------------------------------------

@dataclass
class SyncRun:
    stamp: datetime
    at: float  # seconds since the load started
    seconds: float
    enqueued: int
    rows: int
    units: int
    late: float = 0.0  # seconds it started after its turn (the previous run was still going)


def run_sync(runtime: Any, db_path: Path, stamp: datetime, *, timeout: float) -> tuple[float, int]:
    """Enqueue the hourly fan-out for ``stamp`` as the cron does; return (seconds until reported, contracts enqueued)."""
    from rq.job import JobStatus
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    from worker import jobs

    queue = runtime.queue("sync")
    failed_before = FailedJobRegistry(queue=queue).count
    started = time.monotonic()
    fanout = queue.enqueue(jobs.run_hourly_sync, stamp.isoformat(), job_id=f"soak-fanout-{stamp:%Y%m%d%H}",
                           result_ttl=86400)
    quiet = 0
    while quiet < 2:  # twice in a row: no job between its dequeue and the started registry
        time.sleep(0.2)
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the sync run of {stamp:%H:00} did not finish within {timeout:.0f} s")
        status = fanout.get_status(refresh=True)
        if status == JobStatus.FAILED:
            raise RuntimeError(f"the fan-out of {stamp:%H:00} failed: {fanout.latest_result()}")
        if status != JobStatus.FINISHED or queue.count or StartedJobRegistry(queue=queue).count \
                or ScheduledJobRegistry(queue=queue).count:
            quiet = 0
            continue
        with sqlite3.connect(db_path, timeout=30) as conn:
            pending = conn.execute("SELECT COUNT(*) FROM usage_ledger WHERE status = 'pending'").fetchone()[0]
        quiet = quiet + 1 if pending == 0 else 0
    if FailedJobRegistry(queue=queue).count != failed_before:
        raise RuntimeError(f"sync jobs failed during the run of {stamp:%H:00}")
    return time.monotonic() - started, int((fanout.return_value() or {}).get("enqueued", 0))


def ledger_of(db_path: Path, stamp: datetime) -> tuple[int, int]:
    with sqlite3.connect(db_path, timeout=30) as conn:
        rows, units = conn.execute("SELECT COUNT(*), COALESCE(SUM(quantity), 0) FROM usage_ledger WHERE hour = ?",
                                   (stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),)).fetchone()
    return int(rows), int(units)


class SyncDriver:
    """Run the hourly fan-out every ``every`` seconds of the load, one stamp after the other."""

    def __init__(self, runtime: Any, db_path: Path, stamps: list[datetime], every: float, t0: float, timeout: float):
        self.runtime, self.db_path, self.stamps = runtime, db_path, stamps
        self.every, self.t0, self.timeout = every, t0, timeout
        self.runs: list[SyncRun] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sync", daemon=True)

    def _run(self) -> None:
        try:
            for k, stamp in enumerate(self.stamps):
                due = self.t0 + self.every / 2 + k * self.every
                time.sleep(max(0.0, due - time.monotonic()))
                at = time.monotonic() - self.t0
                seconds, enqueued = run_sync(self.runtime, self.db_path, stamp, timeout=self.timeout)
                rows, units = ledger_of(self.db_path, stamp)
                self.runs.append(SyncRun(stamp, at, seconds, enqueued, rows, units,
                                         late=max(0.0, at - (due - self.t0))))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


# --- checks --------------------------------------------------------------------------------------

def wait_inbox_drained(db_path: Path, timeout: float) -> float:
    started = time.monotonic()
    while True:
        with sqlite3.connect(db_path, timeout=30) as conn:
            waiting = conn.execute("SELECT COUNT(*) FROM inbox WHERE status IN ('received', 'processing')").fetchone()[0]
        if waiting == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{waiting} deliveries still waiting in the inbox after {timeout:.0f} s")
        time.sleep(0.5)


def check_totals(db_path: Path, emulators: Emulators, contracts: list[dict[str, str]], *,
                 webhooks_ok: int, events_ok: int) -> dict[str, int]:
    """Assert emulator totals == ledger accepted units == units from the stored events; every acknowledged request kept."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM usage_ledger GROUP BY status").fetchall())
        bad = {s: n for s, n in statuses.items() if s not in ("accepted", "duplicate")}
        assert not bad, f"ledger rows not accepted: {bad}"
        ledger = dict(conn.execute("SELECT contract_id, SUM(quantity) FROM usage_ledger GROUP BY contract_id").fetchall())
        ids = dict(conn.execute("SELECT external_id, id FROM contracts").fetchall())
        tokens = dict(conn.execute("SELECT customer_id, SUM(json_extract(properties, '$.tokens')) FROM events "
                                   "WHERE state = 0 GROUP BY customer_id").fetchall())
        stored_events = conn.execute("SELECT COUNT(*) FROM events WHERE idempotency_key LIKE 'soak-%'").fetchone()[0]
        inbox = dict(conn.execute("SELECT status, COUNT(*) FROM inbox WHERE delivery_id LIKE 'msg_soak_%' "
                                  "GROUP BY status").fetchall())
    finally:
        conn.close()
    per_marketplace: dict[str, int] = defaultdict(int)
    wrong = []
    for contract in contracts:
        expected = int((Decimal(tokens.get(contract["customer_id"]) or 0) * TOKEN_PRICE / UNIT_PRICE)
                       .to_integral_value(ROUND_FLOOR))
        got = int(ledger.get(ids[contract["id"]], 0))
        if got != expected:
            wrong.append((contract["id"], got, expected))
        per_marketplace[contract["marketplace"]] += got
    assert not wrong, f"{len(wrong)} contracts' ledgers differ from their events (got, expected): {wrong[:5]}"
    for marketplace in MARKETPLACES:
        accepted = emulators.totals(marketplace)
        assert accepted == per_marketplace[marketplace], \
            f"{marketplace}: the emulator accepted {accepted} units, the ledger {per_marketplace[marketplace]}"
    assert stored_events == events_ok, f"{events_ok} events acknowledged, {stored_events} stored"
    assert sum(inbox.values()) == webhooks_ok, f"{webhooks_ok} deliveries acknowledged, {sum(inbox.values())} stored"
    assert set(inbox) <= {"done"}, f"deliveries not processed: {inbox}"
    return dict(per_marketplace)


# --- report --------------------------------------------------------------------------------------

def latency_table(results: list[Result], kinds: tuple[str, ...]) -> list[str]:
    minutes = int(max((r.at for r in results), default=0) // 60) + 1
    lines = ["  minute | " + " | ".join(f"{k + ' requests':>17} p50 ms   p99 ms  errors" for k in kinds)]
    for m in range(minutes):
        cells = []
        for kind in kinds:
            rows = [r for r in results if r.kind == kind and m * 60 <= r.at < (m + 1) * 60]
            ms = [r.ms for r in rows]
            errors = sum(1 for r in rows if r.status // 100 != 2)
            cells.append(f"{len(rows):17d} {percentile(ms, 50):6.1f} {percentile(ms, 99):8.1f} {errors:7d}")
        lines.append(f"  {m + 1:6d} | " + " | ".join(cells))
    return lines


def memory_report(sampler: Sampler, warmup: float) -> tuple[list[str], float]:
    """Return the RSS table (warm-up end -> end per process, and minute by minute) and the largest growth in percent."""
    lines = ["  process          pid      warm-up MB   end MB   max MB   growth   CPU s   RSS at each minute's end, MB"]
    worst = 0.0
    order = sorted(sampler.rss, key=lambda p: (sampler.roles[p], p))
    for pid in order:
        series = sampler.rss[pid]
        after = [mb for t, mb in series if t >= warmup]
        if not after:
            continue
        base, end, peak = after[0], series[-1][1], max(mb for _, mb in series)
        growth = (end - base) / base * 100 if base else 0.0
        worst = max(worst, growth)
        minutes = [next((mb for t, mb in reversed(series) if t <= (m + 1) * 60), series[0][1])
                   for m in range(max(1, round(series[-1][0] / 60)))]
        lines.append(f"  {sampler.roles[pid]:<16} {pid:<8} {base:10.1f} {end:8.1f} {peak:8.1f} {growth:+7.1f} % "
                     f"{sampler.cpu.get(pid, float('nan')):7.1f}   {' '.join(f'{mb:.0f}' for mb in minutes)}")
    for role in ("web worker", "rq worker"):
        pids = [p for p in order if sampler.roles[p].startswith(role)]
        base = sum(next((mb for t, mb in sampler.rss[p] if t >= warmup), 0.0) for p in pids)
        end = sum(sampler.rss[p][-1][1] for p in pids)
        if base:
            lines.append(f"  all {role}s: {base:.1f} MB -> {end:.1f} MB ({(end - base) / base * 100:+.1f} %)")
    return lines, worst


# --- the run -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--webhook-rate", type=float, default=50.0, help="signed deliveries per second")
    parser.add_argument("--ingest-rate", type=float, default=10.0, help="ingest batches per second")
    parser.add_argument("--batch", type=int, default=100, help="events per ingest batch")
    parser.add_argument("--sync-every", type=float, default=60.0, help="seconds between hourly sync runs")
    parser.add_argument("--contracts", type=int, default=300, help="mapped contracts (a third per marketplace)")
    parser.add_argument("--workers", type=int, default=2, help="rq worker processes")
    parser.add_argument("--web-workers", type=int, default=3, help="gunicorn worker processes (the Procfile's)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (gthread when > 1)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulator latency per call")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of warm-up (at most half the run)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)

    from config import Settings
    from worker import runtime as runtime_module
    from worker.metering import hour_floor
    from worker.redis_server import PrivateRedis

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the emulators' request log
    duration = args.minutes * 60
    warmup = min(args.warmup, duration / 2)
    runs = max(1, int(duration // args.sync_every))
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    db_path = data_dir / "marketsync.db"
    base_hour = hour_floor(datetime.now(UTC))
    # Consecutive past hours, one per run and one for the final run, all after the contracts start.
    stamps = [base_hour - timedelta(hours=runs + 1 - k) for k in range(runs + 1)]
    contract_start = stamps[0] - timedelta(hours=2)
    failures: list[str] = []
    results: list[Result] = []
    procs: list[subprocess.Popen[bytes]] = []
    with Emulators(PRODUCT, DIMENSION, hours=runs + 4) as emulators, PrivateRedis(data_dir / "redis-soak") as redis_server:
        service_env = {**emulators.environment(), "REDIS_URL": redis_server.url, "WEBHOOK_SECRETS": SECRET,
                       "API_KEYS": API_KEY, "LOG_LEVEL": "WARNING", "DATA_DIR": str(data_dir),
                       "DATABASE_URL": f"sqlite:///{db_path}"}
        # web_service runs the migrations and gunicorn (its own Redis stays idle: REDIS_URL points at this one).
        with web_service(data_dir, service_env, workers=args.web_workers, threads=args.threads,
                         worker_class="gthread" if args.threads > 1 else "sync") as base:
            settings = Settings.from_env({k: v for k, v in service_env.items() if k in Settings.model_fields})
            runtime = runtime_module.Runtime(settings)
            try:
                procs = start_workers(args.workers, {**os.environ, **service_env}, data_dir, name="soak")
                t = time.perf_counter()
                create_catalog(db_path, contract_start - timedelta(days=1))
                contracts = map_contracts(base, db_path, emulators, args.contracts, contract_start)
                for marketplace in MARKETPLACES:
                    emulators.control(marketplace, "POST", "faults", {"latency_ms": args.latency_ms})
                print(f"setup: {len(contracts)} contracts mapped through signed webhooks in "
                      f"{time.perf_counter() - t:.1f} s ({data_dir})")
                print(f"load: {args.minutes:g} min; webhooks {args.webhook_rate:g}/s, ingest {args.ingest_rate:g} "
                      f"batches/s x {args.batch} events, a sync run every {args.sync_every:g} s ({runs} runs + a final "
                      f"one), gunicorn {args.web_workers} x {args.threads} threads, {args.workers} rq workers")

                t0 = time.monotonic()
                end = t0 + duration
                sampler = Sampler(args.sample_every, t0, db_path, [p.pid for p in procs]).start()
                loads = [Paced("webhook", base, args.webhook_rate, 4, webhook_request(contracts), t0, end, results).start(),
                         Paced("ingest", base, args.ingest_rate, 2, ingest_request(contracts, args.batch), t0, end,
                               results).start()]
                driver = SyncDriver(runtime, db_path, stamps[:-1], args.sync_every, t0, timeout=max(600.0, duration))
                driver.thread.start()
                for load in loads:
                    load.join()
                driver.thread.join()
                if driver.runs:  # the warm-up lasts at least until every path (a sync run too) has run once
                    warmup = max(warmup, driver.runs[0].at + driver.runs[0].seconds)
                sampler.sample()
                sampler.stop.set()
                if driver.error is not None:
                    failures.append(f"sync: {driver.error}")
                drained = wait_inbox_drained(db_path, timeout=600)
                final_seconds, final_enqueued = run_sync(runtime, db_path, stamps[-1], timeout=600)
                rows, units = ledger_of(db_path, stamps[-1])
                driver.runs.append(SyncRun(stamps[-1], time.monotonic() - t0, final_seconds, final_enqueued, rows, units))
                webhooks_ok = sum(1 for r in results if r.kind == "webhook" and r.status // 100 == 2)
                events_ok = sum(r.size for r in results if r.kind == "ingest" and r.status // 100 == 2)
                try:
                    units_by_marketplace = check_totals(db_path, emulators, contracts, webhooks_ok=webhooks_ok,
                                                        events_ok=events_ok)
                except AssertionError as exc:
                    failures.append(f"correctness: {exc}")
                    units_by_marketplace = {}
            finally:
                stop_workers(procs)
                runtime.close()

    # --- the report
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("requests:")
    total_errors = 0
    for kind in ("webhook", "ingest"):
        rows = [r for r in results if r.kind == kind]
        errors = [r for r in rows if r.status // 100 != 2]
        total_errors += len(errors)
        codes = sorted({r.status for r in errors})
        extra = f" ({sum(r.size for r in rows):,} events)" if kind == "ingest" else ""
        print(f"  {kind}: {len(rows):,} sent{extra}, {len(rows) / duration:.1f}/s, errors {len(errors)}"
              f"{' ' + str(codes) if codes else ''}  (target 0); p50 {percentile([r.ms for r in rows], 50):.1f} ms, "
              f"p99 {percentile([r.ms for r in rows], 99):.1f} ms")
    if total_errors:
        failures.append(f"{total_errors} requests failed")
    print("latency per minute (stability):")
    print("\n".join(latency_table(results, ("webhook", "ingest"))))
    print(f"hourly sync runs ({len(driver.runs)}; contracts enqueued, ledger rows and units of the stamp):")
    for n, run in enumerate(driver.runs, 1):
        label = "final" if n == len(driver.runs) else f"{n}"
        late = f", started {run.late:.1f} s late" if run.late > 1 else ""
        print(f"  {label:>5}: stamp {run.stamp:%H:00} at {run.at:6.1f} s: {run.seconds:5.1f} s, {run.enqueued} contracts, "
              f"{run.rows} rows, {run.units:,} units{late}")
    durations = [r.seconds for r in driver.runs[:-1]]
    if durations:
        print(f"  during the load: p50 {percentile(durations, 50):.1f} s, max {max(durations):.1f} s")
    peak = max((n for _, n in sampler.backlog), default=0)
    print(f"inbox backlog (received or processing): max {peak}, drained {drained:.1f} s after the load stopped")
    lines, worst = memory_report(sampler, warmup)
    print(f"RSS at the warm-up end ({warmup:.0f} s) and at the end ({len(sampler.backlog)} samples, every "
          f"{args.sample_every:g} s; target growth < {RSS_GROWTH_LIMIT:.0f} %):")
    print("\n".join(lines))
    if worst >= RSS_GROWTH_LIMIT:
        failures.append(f"RSS grew {worst:.1f} % (limit {RSS_GROWTH_LIMIT:.0f} %)")
    if units_by_marketplace:
        print(f"exact: emulator accepted units == ledger accepted units == units from the events {units_by_marketplace}; "
              f"{webhooks_ok:,} deliveries stored and processed, {events_ok:,} events stored once")
    if not args.keep:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
