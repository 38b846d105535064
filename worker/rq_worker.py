"""The RQ worker class the Procfile starts: RQ's ``SimpleWorker`` that times every job."""

from __future__ import annotations

import os
import time
from typing import Any

from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.queue import Queue

from worker import runtime, telemetry


class MarketsyncWorker(SimpleWorker):
    """A ``SimpleWorker`` (jobs run in the worker process) that records each job's duration.

    ``rq worker --worker-class worker.rq_worker.MarketsyncWorker ...``
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        directory = runtime.current().settings.PROMETHEUS_MULTIPROC_DIR
        if directory is not None and telemetry.is_multiprocess():
            telemetry.prepare_directory(directory)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        started = time.perf_counter()
        ok = False
        try:
            ok = super().perform_job(job, queue)
            return ok
        finally:
            telemetry.observe_job(_function(job), _outcome(job, ok), time.perf_counter() - started)

    def teardown(self) -> None:
        super().teardown()
        if not self.is_horse:
            telemetry.process_exited(runtime.current().settings, os.getpid())


def _function(job: Job) -> str:
    try:
        return job.func_name or "unknown"
    except Exception:  # noqa: BLE001 - a job whose data cannot be read is still timed
        return "unknown"


def _outcome(job: Job, ok: bool) -> str:
    if not ok:
        return "failed"  # raised (and retried when enqueued with Retry), or timed out
    # A job that returned rq's Retry asked to run again: neither done nor failed.
    return "ok" if job.get_status(refresh=False) == JobStatus.FINISHED else "retry"
