"""Workers SIGKILLed mid-report: before the send, after the marketplace stored it, at random.

Each test runs the hourly fan-out of 81 contracts on two real worker processes, kills
workers, starts replacements, lets the recovery run, and asserts every emulator total and
every contract's ledger equal the expected units exactly, with nothing left pending.
"""

from __future__ import annotations

import random
import time

from tests.faults.conftest import BOTH_DATABASES
from tests.faults.harness import MARKETPLACES


def _kill_at_gates(bed, when: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Hold the first usage call of each marketplace, SIGKILL the worker that made it, replace it."""
    for name in MARKETPLACES:
        bed.markets.gates[name].arm(when)
    assert bed.fanout()["enqueued"] == len(bed.book.tokens)
    tripped: list[str] = []
    deadline = time.monotonic() + 90
    while len(tripped) < len(MARKETPLACES):
        assert time.monotonic() < deadline, f"gates tripped: {tripped}\n" + bed.fleet.logs()
        for name in MARKETPLACES:
            gate = bed.markets.gates[name]
            if name in tripped or not gate.tripped.is_set():
                continue
            owner = bed.fleet.owner(gate.client_port)
            assert owner is not None, f"no live worker owns the held {name} call"
            bed.fleet.kill(owner)
            gate.release()
            bed.fleet.start(1)
            tripped.append(name)
        time.sleep(0.02)
    return tripped


@BOTH_DATABASES
def test_killed_between_ledger_write_and_send(bed) -> None:  # type: ignore[no-untyped-def]
    """A worker killed with its batch claimed but not sent: the claim expires, the sweeper sends it once."""
    _kill_at_gates(bed, "before")
    recovery = bed.settle()
    bed.assert_exact()
    assert len(bed.fleet.killed) == 3
    assert recovery.expired_claims >= 3 and recovery.abandoned_jobs >= 3, recovery


def test_killed_between_send_and_record(bed) -> None:  # type: ignore[no-untyped-def]
    """A worker killed after the marketplace stored its batch: the resend is deduplicated, totals stay exact."""
    _kill_at_gates(bed, "after")
    recovery = bed.settle()
    statuses = bed.assert_exact()
    assert recovery.expired_claims >= 3, recovery
    assert statuses.get("duplicate", 0) >= 3, statuses


def test_killed_at_random_points(bed) -> None:  # type: ignore[no-untyped-def]
    """Three SIGKILLs at random instants of a run with 30 ms marketplace latency; replacements finish it."""
    rng = random.Random(bed.seed)
    bed.markets.faults(latency_ms=30)
    bed.fanout()
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 1.5))
        live = bed.fleet.live
        bed.fleet.kill(rng.choice(live))
        bed.fleet.start(1)
    bed.settle()
    bed.assert_exact()
