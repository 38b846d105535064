"""The database unavailable for two seconds while webhooks, ingest and an hourly run flow.

PostgreSQL: the service's processes (the web app, both workers, the cron's fan-out in this
process) reach the database through a loopback TCP proxy; the outage drops every connection
and refuses new ones (as a restarting server or a network cut does), then lets them in again.
SQLite: another connection holds the write lock (``BEGIN EXCLUSIVE``, as a backup or a long
migration does); the service's 30-second busy timeout outlasts it, so a brief outage is a stall.

Senders keep sending at a steady rate through the outage; a delivery or batch not acknowledged
(a 503, never a 500) is sent again afterwards, as a webhook sender or an ingest client does.
One usage call is held at the Google emulator after it stored the batch and answered only once
the database is gone, so a worker has to record an answer it cannot write. Then the recovery an
operator's cron runs (retries, the fan-out re-run, the ledger and inbox sweepers) and the
verdict: every delivery stored once and applied, every ingested event stored once, every
emulator total exact, nothing pending, processing or failed.
"""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Callable, Iterator

import pytest
import requests
from rq import Queue, Retry
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlmodel import Session

from billing_core.persistence.events import EventRow
from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET, LiveServer
from tests.faults.conftest import BOTH_DATABASES
from tests.faults.harness import wait_quiet
from worker import delivery, queueing
from worker.persistence.contracts import ContractRow, InboxRow, ListingRow
from worker.runtime import QUEUE_NAMES
from worker.standard_webhooks import signed_headers

OUTAGE_SECONDS = 2.0
RATE = 20.0  # requests per second, all senders together: 4 contract events for each ingest batch
SENDERS = 4
INGEST_BATCH = 10
UNSETTLED = ("received", "processing", "failed", "deferred")


# --- the outage ----------------------------------------------------------------------------------

class TcpProxy:
    """A loopback TCP proxy to PostgreSQL: ``cut`` drops every connection and refuses new ones."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self.dropped = 0  # connections cut by the outages
        self._listener: socket.socket | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()

    def start(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # the same port again after a cut
        listener.listen(128)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            pair = (client, server)
            with self._lock:
                if self._listener is not listener:  # cut while this one was connecting
                    self._close(pair)
                    continue
                self._pairs.add(pair)
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        self._close(pair)

    @staticmethod
    def _close(pair: tuple[socket.socket, socket.socket]) -> None:
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        """Refuse new connections (the port is closed) and drop every open one, both ways."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = list(self._pairs), set()
        if listener is not None:
            listener.close()
        for pair in pairs:
            self._close(pair)
        self.dropped += len(pairs)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()


class SqliteWriteLock:
    """Hold the SQLite write lock from another connection (a backup, a VACUUM, a long migration)."""

    def __init__(self, path: str):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def cut(self) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._conn.execute("BEGIN EXCLUSIVE")

    def restore(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None

    def stop(self) -> None:
        self.restore()


@dataclass
class Outage:
    kind: str = "sqlite"
    switch: Any = None


@pytest.fixture
def outage() -> Outage:
    return Outage()


@pytest.fixture
def db_url(request: pytest.FixtureRequest, outage: Outage) -> Iterator[str]:
    """The bed's database, through the proxy on PostgreSQL (the workers and the web app use it too)."""
    if getattr(request, "param", "sqlite") != "postgres":
        url = request.getfixturevalue("sqlite_url")
        outage.kind, outage.switch = "sqlite", SqliteWriteLock(make_url(url).database)
        yield url
        outage.switch.stop()
        return
    url = make_url(request.getfixturevalue("pg_url"))
    if not url.host or url.host.startswith("/"):
        pytest.skip("the PostgreSQL test server is reached over a unix socket: no TCP proxy can cut it")
    proxy = TcpProxy((url.host, url.port or 5432)).start()
    outage.kind, outage.switch = "postgres", proxy
    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.stop()


# --- the senders ---------------------------------------------------------------------------------

def _contract_event(kind: str, n: int, at: datetime) -> dict[str, Any]:
    account = f"{900_000_000_000 + n:012d}"
    unit_price = "0.02" if kind == "modified" else "0.01"
    stamp = at.isoformat().replace("+00:00", "Z")
    return {"id": f"evt_outage_{kind}_{n}", "type": f"contract.{kind}", "occurred_at": stamp,
            "data": {"contract_id": f"ctr_outage{n}", "marketplace": "aws",
                     "cloud_identifiers": {"product_code": "prod-outage", "customer_aws_account_id": account,
                                           "license_arn": f"arn:aws:license-manager::{account}:license:l-{n}"},
                     "buyer": {"name": f"Buyer {n}", "email": f"o{n}@example.test"},
                     "pricing": {"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": unit_price}]},
                     "previous_pricing": None, "effective_at": stamp}}


def _stream(started: datetime) -> Iterator[tuple[str, Any]]:
    """Yield what the senders send, in order: a new contract's created and modified events, and usage batches."""
    for n in itertools.count():
        yield "webhook", _contract_event("created", n, started)
        yield "webhook", _contract_event("modified", n, started + timedelta(seconds=1))
        if n % 2 == 1:
            at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            # Customers no contract maps to (their usage is stored, reported nowhere): the book stays exact.
            yield "ingest", [{"idempotency_key": f"outage-ev-{n}-{k}", "event_name": "api_call",
                              "external_customer_id": f"outage-customer-{n % 7}", "timestamp": at,
                              "properties": {"tokens": 100 + k}} for k in range(INGEST_BATCH)]


@dataclass
class Answer:
    kind: str
    item: Any
    status: int
    started: float  # time.monotonic() when it was sent
    seconds: float
    body: Any = None
    retry_after: str | None = None


@dataclass
class Senders:
    """Senders at a steady rate: each item is sent once; what is not acknowledged is sent again later."""

    base: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._items = _stream(datetime.now(UTC) - timedelta(minutes=20))
        self._lock = threading.Lock()
        self._sent = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(SENDERS)]
        self._t0 = time.monotonic()

    def start(self) -> "Senders":
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def sent(self) -> int:
        return self._sent

    def _run(self) -> None:
        http = requests.Session()
        while not self.stop.is_set():
            with self._lock:
                kind, item = next(self._items)
                due = self._t0 + self._sent / RATE
                self._sent += 1
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                answer = send(http, self.base, kind, item)
            except requests.RequestException as exc:  # recorded, so that it fails the test rather than vanish
                answer = Answer(kind, item, 0, time.monotonic(), 0.0, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.answers.append(answer)

    def unacknowledged(self) -> list[Answer]:
        return [a for a in self.answers if a.status // 100 != 2]


def send(http: requests.Session, base: str, kind: str, item: Any) -> Answer:
    """Deliver one contract event (signed now, as each attempt is) or one ingest batch."""
    started = time.monotonic()
    if kind == "webhook":
        body = json.dumps(item).encode()
        headers = signed_headers(TEST_WEBHOOK_SECRET, f"msg_{item['id']}", int(time.time()), body)
        response = http.post(f"{base}/webhooks/contracts", data=body, timeout=60,
                             headers={**headers, "Content-Type": "application/json"})
    else:
        response = http.post(f"{base}/v1/ingest", json={"events": item}, timeout=60,
                             headers={"Authorization": f"Bearer {TEST_API_KEY}"})
    try:
        body = response.json()
    except ValueError:
        body = response.text[:200]
    return Answer(kind, item, response.status_code, started, time.monotonic() - started, body,
                  response.headers.get("Retry-After"))


def redeliver(base: str, answers: list[Answer], *, attempts: int = 20) -> list[Answer]:
    """Send each unacknowledged item again until it is acknowledged (a sender's retries); return the last answers."""
    http = requests.Session()
    final = []
    for answer in answers:
        for attempt in range(attempts):
            again = send(http, base, answer.kind, answer.item)
            if again.status // 100 == 2:
                break
            time.sleep(0.2 * (attempt + 1))
        final.append(again)
    return final


# --- recovery ------------------------------------------------------------------------------------

def _wait(predicate: Callable[[], bool], timeout: float, what: str, bed: Any) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} (seed {bed.seed})\n" + bed.fleet.logs()
        bed.fleet.supervise()
        time.sleep(0.1)


def _inbox_counts(engine: Any) -> dict[str, int]:
    with Session(engine) as session:
        return dict(session.execute(select(InboxRow.status, func.count()).group_by(InboxRow.status)).all())


def recover_inbox(bed: Any, rounds: int = 6) -> int:
    """Run the inbox sweeper as the cron does every minute, until no delivery is left unsettled.

    The sweeper takes rows ``received`` or ``processing`` for more than 30 s, and ``failed`` ones
    after a minute per attempt; it runs here with its clock ten minutes on, as it would by then.
    """
    sweeps = 0
    for _ in range(rounds):
        wait_quiet(bed.redis, bed.fleet, time.monotonic() + 60)
        counts = _inbox_counts(bed.engine)
        if not any(counts.get(s) for s in UNSETTLED):
            return sweeps
        delivery.sweep(bed.runtime, now=datetime.now(UTC) + timedelta(minutes=10))
        sweeps += 1
    raise AssertionError(f"inbox still unsettled after {sweeps} sweeps: {_inbox_counts(bed.engine)} "
                         f"(seed {bed.seed})\n" + bed.fleet.logs())


# --- the test ------------------------------------------------------------------------------------

@BOTH_DATABASES
def test_database_outage_while_webhooks_and_reports_flow(bed, outage: Outage,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two seconds without a database under steady webhooks, ingest and an hourly run: nothing lost or doubled."""
    from webhooks import create_app

    # The production backoff (10 s, 60 s, ...) scaled down: a report job failing in the outage
    # retries after it rather than spending its retries inside it.
    monkeypatch.setattr(queueing, "REPORT_RETRY", Retry(max=5, interval=[1, 1, 2, 3, 5]))
    now = datetime.now(UTC)
    with Session(bed.engine) as session:
        session.add(ListingRow(id="lst_outage", marketplace="aws", product_id="prod-outage",
                               billing_plan_id="plan_sync", dimension="usage_cost", unit_price="0.01",
                               created_at=now, updated_at=now))
        session.commit()
    app = create_app(bed.runtime.settings)
    server = LiveServer(app)
    senders = None
    gate = bed.markets.gates["gcp"]
    try:
        bed.markets.faults(latency_ms=30)
        gate.arm("after")  # the first Google batch is stored, its answer held until the database is gone
        assert bed.fanout()["enqueued"] == len(bed.book.tokens)
        # The webhooks start once a worker holds that call: a steady stream of deliveries keeps the
        # workers on the contracts queue (served before sync), and could hold the batch back past the wait.
        _wait(gate.tripped.is_set, 60, "the held Google call never came", bed)
        senders = Senders(server.url).start()
        _wait(lambda: senders.sent >= RATE, 30, "the senders did not start", bed)

        outage.switch.cut()
        cut_at = time.monotonic()
        time.sleep(0.3)
        gate.release()  # the worker now records an answer the database cannot take
        time.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.monotonic()))
        outage.switch.restore()
        restored_at = time.monotonic()
        time.sleep(1.0)  # and the flow goes on after it
        senders.join()

        first = list(senders.answers)
        unacknowledged = senders.unacknowledged()
        final = redeliver(server.url, unacknowledged)
    finally:
        gate.release()
        if senders is not None:
            senders.join()
        server.stop()
        app.extensions["marketsync"].close()

    # What the receivers answered: 2xx, or 503 with Retry-After; never a 500.
    wrong = [(a.kind, a.status, a.body) for a in first if a.status not in (200, 202, 503)]
    assert not wrong, f"answers other than 2xx or 503: {wrong[:3]} (seed {bed.seed})"
    for answer in unacknowledged:
        assert answer.retry_after and answer.body["title"] == "Service unavailable", answer.body
    assert all(a.status // 100 == 2 for a in final), [(a.status, a.body) for a in final if a.status // 100 != 2][:3]
    during = [a for a in first if a.started < restored_at and a.started + a.seconds > cut_at]
    assert during, "no request was in flight during the outage"
    slowest = max(a.seconds for a in first)
    if outage.kind == "postgres":
        assert unacknowledged, "no request failed while every database connection was down"
        assert outage.switch.dropped > 0
    else:
        # Within SQLite's busy timeout the writers wait for the lock: a stall, no error.
        assert not unacknowledged, [(a.status, a.body) for a in unacknowledged[:3]]
        assert slowest >= OUTAGE_SECONDS / 2, f"no request waited for the held lock (slowest {slowest:.2f} s)"

    # The recovery: report retries finish, the cron re-runs the hour, the ledger and inbox sweepers run.
    sync_queue = Queue("sync", connection=bed.redis)
    _wait(lambda: ScheduledJobRegistry(queue=sync_queue).count == 0, 60, "report retries still scheduled", bed)
    bed.fanout()
    recovery = bed.settle()
    inbox_sweeps = recover_inbox(bed)
    bed.settle()

    # Every report exact: emulator totals, each contract's ledger and sync state, nothing pending.
    statuses = bed.assert_exact()
    # Every contract event stored once and applied; every contract mapped once, in its final state.
    events = {a.item["id"] for a in first if a.kind == "webhook"}
    batches = [a.item for a in first if a.kind == "ingest"]
    with Session(bed.engine) as session:
        inbox = list(session.execute(select(InboxRow).where(InboxRow.delivery_id.like("msg_evt_outage_%"))).scalars())
        contracts = list(session.execute(select(ContractRow).where(ContractRow.external_id.like("ctr_outage%")))
                         .scalars())
        keys = [e["idempotency_key"] for batch in batches for e in batch]
        stored = session.execute(select(EventRow.idempotency_key, func.count()).where(
            EventRow.idempotency_key.in_(keys)).group_by(EventRow.idempotency_key)).all()
    assert sorted(r.delivery_id for r in inbox) == sorted(f"msg_{e}" for e in events), "one inbox row per event"
    unsettled = [(r.delivery_id, r.status, r.error) for r in inbox if r.status != "done"]
    assert not unsettled, f"{unsettled[:5]} (seed {bed.seed})"
    created = {e.removeprefix("evt_outage_created_") for e in events if e.startswith("evt_outage_created_")}
    assert sorted(c.external_id for c in contracts) == sorted(f"ctr_outage{n}" for n in created)
    for contract in contracts:
        n = contract.external_id.removeprefix("ctr_outage")
        assert contract.mapping_status == "mapped" and contract.subscription_id, (n, contract.mapping_status)
        assert contract.status == "active", (n, contract.status)
        if f"evt_outage_modified_{n}" in events:
            history = [(r.delivery_id, r.status, r.attempts) for r in inbox if r.contract_key == f"ctr_outage{n}"]
            assert contract.pricing["dimensions"][0]["unit_price"] == "0.02", f"{n}: {contract.pricing} {history}"
    assert len({c.subscription_id for c in contracts}) == len(contracts)
    # Every ingested event stored exactly once (a resent batch is deduplicated by its keys).
    assert len(stored) == len(keys) and all(n == 1 for _, n in stored), "ingested events lost or doubled"
    assert bed.fleet.exited == [], f"workers exited: {bed.fleet.exited}"
    failed_jobs: dict[str, int] = {}  # jobs without retries that died in the outage (their work is swept up)
    for name in QUEUE_NAMES:
        queue = Queue(name, connection=bed.redis)
        for job in queue.job_class.fetch_many(FailedJobRegistry(queue=queue).get_job_ids(), connection=bed.redis):
            label = job.func_name.rsplit(".", 1)[-1] if job else "?"
            failed_jobs[label] = failed_jobs.get(label, 0) + 1
    print(f"database outage ({outage.kind}, {OUTAGE_SECONDS:.0f} s): {len(first)} requests "
          f"({len(events)} contract events, {len(batches)} ingest batches), {len(during)} in flight during the outage, "
          f"{len(unacknowledged)} answered 503 and delivered again, slowest answer {slowest:.2f} s; "
          f"connections dropped: {getattr(outage.switch, 'dropped', 0)}; ledger {statuses}; {recovery}; "
          f"inbox sweeps {inbox_sweeps}; failed jobs {failed_jobs}; seed {bed.seed}")
