"""The fault suite's harness: gated emulators, real ``rq worker`` processes, recovery, the books.

- ``Marketplaces``: the three emulators served in this process, each behind a ``Gate`` that
  can stop one usage call before the emulator sees it, or after it stored it but before the
  answer leaves (the two instants a worker can die inside a send).
- ``Fleet``: worker processes started exactly as the Procfile's ``worker`` line, each in its
  own process group (the worker and its scheduler child), SIGKILLed or stopped by group.
- ``Book``: the events ingested per contract and the units each must end with per dimension,
  ``floor(tokens × token price / unit price)`` (every third contract's listing has two
  dimensions: calls and tokens apart), computed here, not by the code under test.
- ``settle``: what an operator's cron does after a failure, run until nothing is left: wait
  until the live workers are idle, hand abandoned RQ jobs back to their retry policy (RQ's own
  registry cleanup, run now instead of at its next maintenance), let claims of dead workers
  expire (their ``claimed_at`` is moved past ``ledger.CLAIM_TIMEOUT``, as if the clock had
  moved) and enqueue the ledger sweeper.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import redis
import requests
from rq import Queue
from rq.executions import Execution
from rq.registry import StartedJobRegistry
from sqlalchemy import Engine, func, select, update
from sqlmodel import Session

from billing_core.sql_fragments import verify_fragments
from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import (
    DIMENSION, SyncEnv, emulator_factory, ingest, map_contract, setup_billing, setup_two_dimension_billing,
)
from worker import hourly, ledger
from worker.persistence.ledger import ContractSyncRow, DimensionSyncRow, LedgerRow
from worker.runtime import QUEUE_NAMES

MARKETPLACES = ("aws", "azure", "gcp")
TOKEN_PRICE = Decimal("0.001")  # the plan's unit price per token (setup_billing's unit_amount)
CALL_PRICE = Decimal("0.0007")  # the two-dimension plan's price per call (setup_two_dimension_billing)
CALL_UNIT = Decimal("0.001")  # the api_calls dimension's unit price
UNIT_PRICES = ("0.01", "0.03", "0.07")  # listing unit prices, so units are not a plain tokens / 10
PORT_SETTINGS = {"aws": "AWS_EMULATOR_PORT", "azure": "AZURE_EMULATOR_PORT", "gcp": "GCP_EMULATOR_PORT"}
REPO = Path(__file__).resolve().parents[2]


# --- gated emulators -----------------------------------------------------------------------------

def is_usage_call(marketplace: str, environ: dict[str, Any]) -> bool:
    """Tell whether a request to the emulator reports usage (the calls a sync worker makes)."""
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") != "POST" or path.startswith("/_emulator"):
        return False
    if marketplace == "aws":
        return "MeterUsage" in environ.get("HTTP_X_AMZ_TARGET", "")
    if marketplace == "azure":
        return path.endswith(("/usageEvent", "/batchUsageEvent"))
    return path.endswith(":report")


class Gate:
    """WSGI middleware that stops the next usage call ``before`` or ``after`` the emulator.

    ``before``: the call never reaches the emulator (it is answered 503 once released).
    ``after``: the emulator stores it; the answer is held until released. ``tripped`` is set
    while the call is held, so a test can kill the worker that made it at that instant.
    """

    def __init__(self, app: Any, marketplace: str):
        self.app = app
        self.marketplace = marketplace
        self.tripped = threading.Event()
        self._released = threading.Event()
        self._armed: str | None = None
        self._lock = threading.Lock()
        self.usage_calls = 0
        self.client_port: int | None = None  # the local port of the worker whose call is held

    def arm(self, when: str) -> None:
        assert when in ("before", "after")
        with self._lock:
            self._armed = when
            self.tripped.clear()
            self._released.clear()

    def release(self) -> None:
        with self._lock:
            self._armed = None
        self._released.set()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not is_usage_call(self.marketplace, environ):
            return self.app(environ, start_response)
        with self._lock:
            self.usage_calls += 1
            when, self._armed = self._armed, None
        if when is None:
            return self.app(environ, start_response)
        self.client_port = int(environ.get("REMOTE_PORT") or 0) or None
        if when == "before":
            self.tripped.set()
            self._released.wait(60)
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"message": "held by the fault gate"}']
        answer: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            answer.update(status=status, headers=headers)
            return lambda _data: None

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        self.tripped.set()
        self._released.wait(60)
        start_response(answer["status"], answer["headers"])
        return [body]


class Marketplaces:
    """The three emulators, each behind its gate, served on loopback ports in this process."""

    def __init__(self) -> None:
        self.gates: dict[str, Gate] = {}
        self.servers: dict[str, EmulatorServer] = {}
        for name in MARKETPLACES:
            gate = Gate(emulator_factory(name)(), name)
            self.gates[name] = gate
            self.servers[name] = EmulatorServer(gate).start()

    def stop(self) -> None:
        for gate in self.gates.values():
            gate.release()
        for server in self.servers.values():
            server.stop()

    def control(self, marketplace: str, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, f"{self.servers[marketplace].url}/_emulator/{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def reset(self) -> None:
        for name in MARKETPLACES:
            self.gates[name].release()
            self.control(name, "POST", "reset")

    def faults(self, **values: Any) -> None:
        """Set the same faults on every emulator (``fail_after_store`` only exists on Google's)."""
        gcp_only = {k: values.pop(k) for k in ("fail_after_store",) if k in values}
        for name in MARKETPLACES:
            self.control(name, "POST", "faults", {**values, **(gcp_only if name == "gcp" else {})})

    def total(self, marketplace: str) -> int:
        """Return every unit the emulator accepted, all customers and hours together."""
        rows = self.control(marketplace, "GET", "usage")["totals"]
        return int(sum(Decimal(str(r["quantity"])) for r in rows))

    def total_by_dimension(self, marketplace: str) -> dict[str, int]:
        """Return the units the emulator accepted per dimension (dimensions with units only)."""
        out: dict[str, int] = {}
        for r in self.control(marketplace, "GET", "usage")["totals"]:
            out[r["dimension"]] = out.get(r["dimension"], 0) + int(Decimal(str(r["quantity"])))
        return {d: u for d, u in out.items() if u}

    def environment(self) -> dict[str, str]:
        """Return the settings that point the sandbox adapters at these emulators."""
        env = {PORT_SETTINGS[name]: str(server.port) for name, server in self.servers.items()}
        return {**env, "MARKETPLACE_MODE": "sandbox", "EMULATOR_HOST": "127.0.0.1",
                "GCP_PUSH_AUDIENCE": "http://127.0.0.1/unused"}

    def env_for(self, marketplace: str, engine: Engine) -> SyncEnv:
        """Return the sync_support environment that maps contracts against one emulator."""
        return SyncEnv(marketplace, engine, self.servers[marketplace], adapter=None, settings=None)  # type: ignore[arg-type]


# --- the books -----------------------------------------------------------------------------------

@dataclass
class Book:
    """Tokens and calls ingested per contract and the units each must end with, per dimension."""

    stamp: datetime
    tokens: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    unit_price: dict[str, Decimal] = field(default_factory=dict)
    marketplace: dict[str, str] = field(default_factory=dict)
    two_dimensions: set[str] = field(default_factory=set)

    def expected_dimensions(self, contract_id: str) -> dict[str, int]:
        """Return the units the contract must end with in each dimension of its listing."""
        tokens = _floor(self.tokens[contract_id] * TOKEN_PRICE / self.unit_price[contract_id])
        if contract_id not in self.two_dimensions:
            return {DIMENSION: tokens}
        return {"api_calls": _floor(self.calls[contract_id] * CALL_PRICE / CALL_UNIT), "usage_fee": tokens}

    def expected(self, contract_id: str) -> int:
        return sum(self.expected_dimensions(contract_id).values())

    def expected_total(self, marketplace: str) -> int:
        return sum(self.expected(c) for c, m in self.marketplace.items() if m == marketplace)

    def expected_by_dimension(self, marketplace: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for contract, name in self.marketplace.items():
            if name == marketplace:
                for dimension, units in self.expected_dimensions(contract).items():
                    out[dimension] = out.get(dimension, 0) + units
        return {d: u for d, u in out.items() if u}


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def populate(engine: Engine, markets: Marketplaces, *, per_marketplace: int, start: datetime, seed: int) -> Book:
    """Map ``per_marketplace`` contracts on each emulator (every third with two dimensions) and
    ingest 1-3 events for each."""
    rng = random.Random(seed)
    setup_billing(engine, unit_amount=str(TOKEN_PRICE))
    setup_two_dimension_billing(engine)
    book = Book(stamp=start)
    for name in MARKETPLACES:
        env = markets.env_for(name, engine)
        for i in range(per_marketplace):
            price = UNIT_PRICES[i % len(UNIT_PRICES)]
            if i % 3 == 2:
                dimensions = [{"name": "api_calls", "unit_price": str(CALL_UNIT), "prices": ["calls"]},
                              {"name": "usage_fee", "unit_price": price, "prices": "remaining"}]
                contract, customer = map_contract(env, start=start, plan_id="plan_dims", dimensions=dimensions)
                book.two_dimensions.add(contract)
            else:
                contract, customer = map_contract(env, start=start, unit_price=price)
            book.marketplace[contract], book.unit_price[contract] = name, Decimal(price)
            book.tokens[contract] = book.calls[contract] = 0
            for n in range(rng.randint(1, 3)):
                tokens = rng.randint(1_000, 40_000)
                ingest(engine, customer, tokens, start + timedelta(minutes=5 + 10 * n, seconds=rng.randint(0, 59)))
                book.tokens[contract] += tokens
                book.calls[contract] += 1
    return book


# --- worker processes ----------------------------------------------------------------------------

class Fleet:
    """Real ``rq worker`` processes, as the Procfile starts them, each in its own process group."""

    def __init__(self, *, redis_url: str, environment: dict[str, str], workdir: Path):
        self.redis_url = redis_url
        self.environment = environment
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[str] = []
        self.exited: list[str] = []  # workers that died on their own (and were restarted)
        self.size = 0  # how many workers the supervisor keeps running
        self._n = 0

    def command(self, name: str) -> list[str]:
        rq = str(Path(sys.executable).parent / "rq")
        return [rq, "worker", "--url", self.redis_url, "--with-scheduler", "--worker-class",
                "worker.rq_worker.MarketsyncWorker", "--name", name, *QUEUE_NAMES]

    def supervise(self) -> None:
        """Restart workers that exited on their own, as the process manager of a Procfile does."""
        for name, proc in self.procs.items():
            if proc.poll() is not None and name not in self.killed and name not in self.exited:
                self.exited.append(name)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its scheduler child, if left behind
                except ProcessLookupError:
                    pass
        missing = self.size - len(self.live)
        if missing > 0:
            self.start(missing, replace=True)

    def start(self, count: int = 1, *, replace: bool = False) -> list[str]:
        """Start ``count`` workers (``replace``: in place of dead ones, else the fleet grows)."""
        if not replace:
            self.size += count
        names = []
        for _ in range(count):
            self._n += 1
            name = f"faults-{os.getpid()}-{self._n}"
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            env.update(self.environment, REDIS_URL=self.redis_url, LOG_LEVEL="WARNING",
                       PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
            log = open(self.workdir / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(self.command(name), cwd=self.workdir, env=env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            names.append(name)
        return names

    @property
    def live(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def owner(self, port: int | None) -> str | None:
        """Return the live worker that owns the loopback TCP connection from ``port`` (Linux /proc)."""
        if port is None:
            return None
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
        for name in self.live:
            fd_dir = Path(f"/proc/{self.procs[name].pid}/fd")
            try:
                links = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
            except OSError:
                continue
            if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
                return name
        return None

    def kill(self, name: str) -> None:
        """SIGKILL a worker and its scheduler child (its process group), as an OOM kill or a lost host."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        self.killed.append(name)
        self.size -= 1

    def stop(self) -> None:
        """Stop every worker: a warm shutdown, then SIGKILL of whatever is left in its group."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 2  # idle workers stop at once; a job still running is cut short
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the scheduler child too, if it outlived the worker
            except ProcessLookupError:
                pass
            proc.wait(10)

    def logs(self) -> str:
        parts = []
        for name in self.procs:
            path = self.workdir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name} ---\n{text[-3000:]}")
        return "\n".join(parts)


# --- waiting and recovering ----------------------------------------------------------------------

def pending_rows(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(LedgerRow)
                                   .where(LedgerRow.status == "pending")).scalar_one())


def _busy(conn: redis.Redis, live: list[str]) -> bool:
    """Tell whether a live worker is executing a job (its execution is in a started registry).

    Executions, not worker registrations, are read: a restarted Redis forgets the workers
    that survived it, while every job they start afterwards is registered again.
    """
    for name in QUEUE_NAMES:
        registry = StartedJobRegistry(queue=Queue(name, connection=conn))
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            try:
                execution = Execution.fetch(execution_id, job_id, connection=conn)
            except Exception:  # expired with its (dead) worker's heartbeat
                continue
            if execution.worker_name in live:
                return True
    return False


def wait_quiet(conn: redis.Redis, fleet: Fleet, deadline: float) -> None:
    """Wait until every queue is empty and no live worker is executing a job (twice in a row)."""
    quiet_polls = 0
    while quiet_polls < 2:
        if time.monotonic() > deadline:
            raise AssertionError("the workers did not go quiet in time\n" + fleet.logs())
        fleet.supervise()
        try:
            quiet = bool(fleet.live) and all(Queue(q, connection=conn).count == 0 for q in QUEUE_NAMES) \
                and not _busy(conn, fleet.live)
        except redis.ConnectionError:
            quiet = False
        quiet_polls = quiet_polls + 1 if quiet else 0
        time.sleep(0.2)


def requeue_abandoned(conn: redis.Redis) -> int:
    """Run RQ's cleanup of abandoned jobs now: each goes back to its retry policy (or fails)."""
    count = 0
    for name in QUEUE_NAMES:
        registry = StartedJobRegistry(queue=Queue(name, connection=conn))
        count += len(registry.get_job_ids(cleanup=False))
        registry.cleanup(timestamp=time.time() + 10**6)
    return count


def expire_dead_claims(engine: Engine) -> int:
    """Age the claims left on pending rows past the claim timeout (only call with idle workers)."""
    with engine.begin() as conn:
        rows = conn.execute(select(LedgerRow.id, LedgerRow.claimed_at).where(
            LedgerRow.status == "pending", LedgerRow.claim_token.is_not(None))).all()
        for row_id, claimed_at in rows:
            conn.execute(update(LedgerRow).where(LedgerRow.id == row_id).values(
                claimed_at=claimed_at - ledger.CLAIM_TIMEOUT - timedelta(seconds=1)))
    return len(rows)


@dataclass
class Recovery:
    """What ``settle`` had to do before nothing was pending."""

    abandoned_jobs: int = 0
    expired_claims: int = 0
    sweeps: int = 0


def settle(engine: Engine, conn: redis.Redis, fleet: Fleet, *, timeout: float = 90, max_sweeps: int = 40) -> Recovery:
    """Run the recovery an operator's cron would run, until every queue is empty and nothing is pending."""
    from worker import jobs

    deadline = time.monotonic() + timeout
    done = Recovery()
    while True:
        wait_quiet(conn, fleet, deadline)
        abandoned = requeue_abandoned(conn)
        if abandoned:
            done.abandoned_jobs += abandoned
            continue
        if pending_rows(engine) == 0:
            return done
        if done.sweeps >= max_sweeps:
            raise AssertionError(f"still {pending_rows(engine)} pending after {done.sweeps} sweeps\n" + fleet.logs())
        done.expired_claims += expire_dead_claims(engine)
        Queue("sync", connection=conn).enqueue(jobs.sweep_ledger, job_id=f"faults-sweep-{done.sweeps}-{time.time_ns()}")
        done.sweeps += 1


# --- the verdict ---------------------------------------------------------------------------------

def assert_exact(engine: Engine, markets: Marketplaces, book: Book, *, context: str = "") -> dict[str, int]:
    """Assert every emulator total and every contract's ledger equal the expected units exactly."""
    totals = {name: markets.total(name) for name in MARKETPLACES}
    expected = {name: book.expected_total(name) for name in MARKETPLACES}
    assert totals == expected, f"emulator totals {totals} != expected {expected} {context}"
    by_dimension = {name: markets.total_by_dimension(name) for name in MARKETPLACES}
    expected_by_dimension = {name: book.expected_by_dimension(name) for name in MARKETPLACES}
    assert by_dimension == expected_by_dimension, (
        f"emulator totals per dimension {by_dimension} != expected {expected_by_dimension} {context}")
    with Session(engine) as session:
        rows = list(session.execute(select(LedgerRow)).scalars())
        states = {s.contract_id: s for s in session.execute(select(ContractSyncRow)).scalars()}
        counts = {(c.contract_id, c.dimension): c.units_reported
                  for c in session.execute(select(DimensionSyncRow)).scalars()}
    stuck = [(r.contract_id, r.status, r.detail) for r in rows if r.status not in ("accepted", "duplicate")]
    assert not stuck, f"ledger rows not settled: {stuck[:5]} {context}"
    per_contract: dict[str, int] = {}
    for row in rows:
        per_contract[row.contract_id] = per_contract.get(row.contract_id, 0) + row.quantity
    wrong = {c: (per_contract.get(c, 0), book.expected(c)) for c in book.tokens
             if per_contract.get(c, 0) != book.expected(c)}
    assert not wrong, f"contracts whose ledger is off (got, expected): {dict(list(wrong.items())[:5])} {context}"
    counted = {c: s.units_reported for c, s in states.items() if s.units_reported != book.expected(c)}
    assert not counted, f"sync state counts differ from the expected units: {counted} {context}"
    per_dimension: dict[tuple[str, str], int] = {}
    for row in rows:
        per_dimension[(row.contract_id, row.dimension)] = per_dimension.get((row.contract_id, row.dimension), 0) + row.quantity
    expected_rows = {(c, d): units for c in book.tokens for d, units in book.expected_dimensions(c).items()}
    off = {k: (per_dimension.get(k, 0), units) for k, units in expected_rows.items() if per_dimension.get(k, 0) != units}
    off.update({k: (units, 0) for k, units in per_dimension.items() if k not in expected_rows and units})
    assert not off, f"(contract, dimension) ledgers off (got, expected): {dict(list(off.items())[:5])} {context}"
    miscounted = {k: (counts.get(k, 0), units) for k, units in expected_rows.items()
                  if counts.get(k, 0) != units and k[0] in states}
    assert not miscounted, f"per-dimension counts differ (got, expected): {dict(list(miscounted.items())[:5])} {context}"
    # The usage fragments the workers' reads stored equal a computation from the events (docs/architecture.md §6).
    checked, _, differences = verify_fragments(engine)
    assert not differences, f"usage fragments differ from the events ({checked} checked): {differences[:3]} {context}"
    # So do the costs the next hourly run would carry forward (worker/cost_memo.py).
    carried, wrong = hourly.verify_carried(engine, now=now_utc())
    assert not wrong, f"carried costs differ from a computation from scratch ({carried} checked): {wrong[:3]} {context}"
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    return by_status


def now_utc() -> datetime:
    return datetime.now(UTC)
