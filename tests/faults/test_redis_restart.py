"""Redis stopped in the middle of an hourly run and started again, empty, on the same socket."""

from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlmodel import Session

from worker.persistence.ledger import LedgerRow


def _settled_rows(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(LedgerRow)
                                   .where(LedgerRow.status != "pending")).scalar_one())


def test_redis_restart_mid_run(bed) -> None:  # type: ignore[no-untyped-def]
    """Jobs, marks and registrations are lost with Redis; the fan-out re-run and the sweeper finish
    the hour, and every total is exact."""
    bed.markets.faults(latency_ms=30)
    bed.fanout()
    deadline = time.monotonic() + 60
    while _settled_rows(bed.engine) < 10:
        assert time.monotonic() < deadline, bed.fleet.logs()
        time.sleep(0.05)
    bed.redis_server.stop()
    time.sleep(1.0)
    bed.redis_server.start()
    bed.fanout()  # the cron's next tick (or an operator) re-runs the hour
    recovery = bed.settle()
    bed.assert_exact()
    print(f"redis restart: workers that exited and were restarted: {bed.fleet.exited}, {recovery}")
