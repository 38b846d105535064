"""Two workers running the same hour: two fan-outs at once, and every report enqueued again."""

from __future__ import annotations

from rq import Queue
from sqlalchemy import func, select
from sqlmodel import Session

from tests.faults.conftest import BOTH_DATABASES
from worker import jobs
from worker.persistence.ledger import LedgerRow


@BOTH_DATABASES
def test_same_hour_run_twice_by_two_workers(bed) -> None:  # type: ignore[no-untyped-def]
    """Two fan-outs race on two workers, and each contract's report is also queued twice more under
    other ids (alone and in a chunk, side by side): one ledger row per contract and dimension, totals exact."""
    hour = bed.book.stamp.isoformat()
    contracts = sorted(bed.book.tokens)
    sync_queue, urgent = Queue("sync", connection=bed.redis), Queue("urgent", connection=bed.redis)
    # Side by side in one round trip, so the two workers take the twins of a contract together.
    twins = []
    for contract_id in contracts:
        for twin in ("a", "b"):
            twins.append(Queue.prepare_data(jobs.report_contract, (contract_id, hour),
                                            job_id=f"twin-{twin}-{contract_id}"))
    for n in range(0, len(contracts), 27):
        chunk = contracts[n:n + 27]
        twins.append(Queue.prepare_data(jobs.report_contracts, (chunk, hour), job_id=f"chunk-a-{n}"))
        twins.append(Queue.prepare_data(jobs.report_contracts, (chunk, hour), job_id=f"chunk-b-{n}"))
    # Two cron processes' fan-outs, run by the workers (urgent is served first).
    urgent.enqueue_many([Queue.prepare_data(jobs.run_hourly_sync, (hour,), job_id=f"fanout-{n}") for n in (1, 2)])
    sync_queue.enqueue_many(twins)
    bed.fanout()  # and a third one from this process
    recovery = bed.settle()
    bed.assert_exact()
    assert recovery.expired_claims == 0 and recovery.abandoned_jobs == 0, recovery
    with Session(bed.engine) as session:
        rows = dict(session.execute(select(LedgerRow.contract_id, func.count()).group_by(LedgerRow.contract_id)).all())
    # One row per contract and dimension: a dimension with units, or any on AWS (its hourly zero records).
    assert rows == {c: sum(1 for units in bed.book.expected_dimensions(c).values()
                           if units or bed.book.marketplace[c] == "aws") for c in contracts}
    fanouts = [Queue("urgent", connection=bed.redis).fetch_job(f"fanout-{n}").return_value() for n in (1, 2)]
    enqueued = sum(f["enqueued"] for f in fanouts if f)
    assert enqueued <= len(contracts), fanouts  # the hour's marks let each contract in once
