"""Latency histograms: HTTP requests, jobs and marketplace calls, observed in every process.

The web process's ``/metrics`` shows them for every process of the machine through
prometheus_client's multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is in a process's
environment (``marketsync run`` puts ``DATA_DIR/metrics`` there for its children), prometheus_client
keeps each process's observations in a file of that directory, and ``latency_collector`` merges
the files. Without it each process keeps its own in memory, and ``/metrics`` shows the web
process's alone.

Labels never hold what a request or a job carries: routes are templates
(``/v1/contracts/<contract_id>``), jobs are function names, marketplace operations are
adapter method names.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import prometheus_client
from prometheus_client import Histogram, multiprocess, values
from prometheus_client.registry import Collector

from config import Settings
from marketplaces.base import NotificationError, PermanentMarketplaceError, TransientMarketplaceError
from worker.logs import get_logger

log = get_logger("marketsync.telemetry")

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # 404s and 405s: the raw path may hold anything
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
MARKETPLACE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Instruments:
    """This process's histograms."""

    http: Histogram
    job: Histogram
    marketplace: Histogram

    def collectors(self) -> tuple[Histogram, ...]:
        return (self.http, self.job, self.marketplace)


@functools.cache
def instruments() -> Instruments:
    """Return this process's histograms, built on first use (never at import)."""
    # _created series exist only in memory, not in multiprocess files: leave them out so both
    # modes expose the same series.
    prometheus_client.disable_created_metrics()
    return Instruments(
        http=Histogram("marketsync_http_request_duration_seconds",
                       "HTTP requests by method, route template and status class.",
                       ("method", "route", "status"), buckets=HTTP_BUCKETS, registry=None),
        job=Histogram("marketsync_job_duration_seconds",
                      "RQ jobs by function and outcome (ok, retry, failed).",
                      ("job", "outcome"), buckets=JOB_BUCKETS, registry=None),
        marketplace=Histogram("marketsync_marketplace_call_duration_seconds",
                              "Marketplace adapter calls by marketplace, operation and outcome "
                              "(ok, transient, permanent, rejected_notification, error).",
                              ("marketplace", "operation", "outcome"), buckets=MARKETPLACE_BUCKETS,
                              registry=None),
    )


def _observe(histogram: Histogram, seconds: float, **labels: str) -> None:
    try:
        histogram.labels(**labels).observe(seconds)
    except Exception as exc:  # noqa: BLE001 - a metrics file that cannot be written never fails a request or a job
        log.warning("metric not recorded", labels=labels, error=f"{type(exc).__name__}: {exc}")


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """Record one HTTP request: ``route`` is the matched rule's template, None when none matched."""
    _observe(instruments().http, seconds, method=method if method in HTTP_METHODS else "other",
             route=route or UNMATCHED_ROUTE, status=f"{status // 100}xx")


def observe_job(function: str, outcome: str, seconds: float) -> None:
    """Record one job run: ``function`` is the job's dotted function name."""
    _observe(instruments().job, seconds, job=function, outcome=outcome)


def call_outcome(exc: BaseException | None) -> str:
    """Name a marketplace call's outcome by what the caller does next."""
    if exc is None:
        return "ok"
    if isinstance(exc, TransientMarketplaceError):
        return "transient"
    if isinstance(exc, PermanentMarketplaceError):
        return "permanent"
    if isinstance(exc, NotificationError):
        return "rejected_notification"
    return "error"


class TimedAdapter:
    """A marketplace adapter whose public method calls are timed, by method name.

    Everything else (attributes, ``isinstance`` against the adapter protocol) passes through,
    so the marketplaces package carries no metrics code.
    """

    def __init__(self, marketplace: str, adapter: Any):
        self._marketplace = marketplace
        self._adapter = adapter

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._adapter, name)
        if name.startswith("_") or not inspect.ismethod(value):
            return value
        return self._timed(name, value)

    def _timed(self, operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                return method(*args, **kwargs)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                _observe(instruments().marketplace, time.perf_counter() - started,
                         marketplace=self._marketplace, operation=operation, outcome=call_outcome(failure))

        return call

    def __repr__(self) -> str:
        return f"TimedAdapter({self._adapter!r})"


def is_multiprocess() -> bool:
    """Tell whether this process's observations go to ``PROMETHEUS_MULTIPROC_DIR`` files."""
    # prometheus_client picks its value class once, from the process environment, at import.
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def latency_collector(settings: Settings) -> Collector:
    """Return what shows the histograms on this process's /metrics: every process's, or its own."""
    if is_multiprocess() and settings.PROMETHEUS_MULTIPROC_DIR is not None:
        prepare_directory(settings.PROMETHEUS_MULTIPROC_DIR)
        return multiprocess.MultiProcessCollector(None, path=str(settings.PROMETHEUS_MULTIPROC_DIR))
    return _InProcess(instruments())


class _InProcess:
    """The histograms this process keeps in memory."""

    def __init__(self, held: Instruments):
        self.held = held

    def collect(self) -> Any:
        for histogram in self.held.collectors():
            yield from histogram.collect()


def prepare_directory(path: Path, *, clear: bool = False) -> None:
    """Create the multiprocess directory; ``clear``: drop the files of an earlier run."""
    path.mkdir(parents=True, exist_ok=True)
    if clear:
        # Only prometheus_client's own files: the directory may be one an operator chose.
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)


def process_exited(settings: Settings, pid: int) -> None:
    """Do prometheus_client's bookkeeping for an exited process (its live gauges; none today)."""
    if settings.PROMETHEUS_MULTIPROC_DIR is not None and is_multiprocess():
        multiprocess.mark_process_dead(pid, str(settings.PROMETHEUS_MULTIPROC_DIR))
