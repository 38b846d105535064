"""The marketplaces failing and throttling 20 % of calls (Google's errors after storing them)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import Session

from worker.persistence.ledger import LedgerRow


def test_errors_and_throttling_deliver_exactly_once(bed) -> None:  # type: ignore[no-untyped-def]
    """10 % 5xx and 10 % throttling on every emulator: retries and sweeps deliver every unit once."""
    bed.markets.faults(error_rate=0.1, throttle_rate=0.1, seed=bed.seed, fail_after_store=True)
    bed.fanout()
    recovery = bed.settle()
    bed.markets.faults(error_rate=0.0, throttle_rate=0.0)
    statuses = bed.assert_exact()
    assert recovery.expired_claims == 0, recovery  # no worker died: every claim was released or settled
    with Session(bed.engine) as session:
        retried = session.execute(select(func.count()).select_from(LedgerRow).where(LedgerRow.attempts > 1)).scalar_one()
    assert retried > 0, "no send was retried: the faults did not bite"
    print(f"faults: {retried} rows sent more than once by us, statuses {statuses}, {recovery}")
