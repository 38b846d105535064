"""``/metrics``: the Prometheus exposition through prometheus_client.

Two parts: ``ServiceStateCollector`` reads the database and Redis on each scrape (reports,
webhooks, contracts, cost errors, flush latency, queues, deadline counters); the latency
histograms of every process of this machine come from ``worker.telemetry``.
"""

from __future__ import annotations

from typing import Any, Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import select
from sqlmodel import Session

from marketplaces import NAMES
from worker import ledger, reports, telemetry
from worker.persistence.ledger import ContractSyncRow
from worker.runtime import QUEUE_NAMES, Runtime

bp = Blueprint("prometheus", __name__)

FLUSH_QUANTILES = (0.5, 0.99)
DEADLINE_COUNTERS = (("marketsync:metrics:deadline_alerts", "marketsync_deadline_alerts_total",
                      "Cancellation deadline alerts raised."),
                     ("marketsync:metrics:deadline_misses", "marketsync_deadline_misses_total",
                      "Cancellation deadlines missed."))


def _cost_errors(engine: Any) -> dict[str, int]:
    """Count contracts in the ``cost_error`` state by reason (``usage_out_of_range``...); every reason shown."""
    from billing_core.errors import InexactAmount, UsageOutOfRange

    counts = {UsageOutOfRange.reason: 0, InexactAmount.reason: 0}
    with Session(engine) as session:
        for error in session.execute(select(ContractSyncRow.last_error).where(
                ContractSyncRow.last_outcome == ledger.COST_ERROR)).scalars():
            reason = (error or "").split(":", 1)[0] or "unknown"
            counts[reason] = counts.get(reason, 0) + 1
    return counts


class ServiceStateCollector:
    """Yield the gauges and counters kept in the database and Redis, read on each scrape."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._redis()

    def _database(self) -> Iterator[Metric]:
        snapshot = reports.metrics_snapshot(self.runtime.engine)
        reported = GaugeMetricFamily("marketsync_reports_total", "Usage reports by marketplace and ledger status.",
                                     labels=("marketplace", "status"))
        units = GaugeMetricFamily("marketsync_reported_units_total", "Units by marketplace and ledger status.",
                                  labels=("marketplace", "status"))
        for marketplace, status, count, summed in snapshot["reports"]:
            reported.add_metric((str(marketplace), str(status)), count)
            units.add_metric((str(marketplace), str(status)), summed or 0)
        yield reported
        yield units
        webhooks = GaugeMetricFamily("marketsync_webhooks_total", "Stored webhook deliveries by source and status.",
                                     labels=("source", "status"))
        for source, status, count in snapshot["inbox"]:
            webhooks.add_metric((str(source), str(status)), count)
        yield webhooks
        contracts = GaugeMetricFamily("marketsync_contracts", "Contracts by marketplace, status and mapping status.",
                                      labels=("marketplace", "status", "mapping"))
        for marketplace, status, mapping, count in snapshot["contracts"]:
            contracts.add_metric((str(marketplace), str(status), str(mapping)), count)
        yield contracts
        cost_errors = GaugeMetricFamily("marketsync_contract_cost_errors",
                                        "Contracts whose costs cannot be computed, by reason.", labels=("reason",))
        for reason, count in sorted(_cost_errors(self.runtime.engine).items()):
            cost_errors.add_metric((reason,), count)
        yield cost_errors
        yield from _expired(self.runtime.engine)
        yield _flush_latency(snapshot["flush_latencies"])

    def _redis(self) -> Iterator[Metric]:
        try:
            depth = GaugeMetricFamily("marketsync_queue_depth", "Jobs waiting per queue.", labels=("queue",))
            for name in QUEUE_NAMES:
                depth.add_metric((name,), self.runtime.queue(name).count)
            counters = [CounterMetricFamily(metric, text, value=int(self.runtime.redis.get(key) or 0))
                        for key, metric, text in DEADLINE_COUNTERS]
        except Exception:  # noqa: BLE001 - metrics still answer when Redis is down, and say so
            yield GaugeMetricFamily("marketsync_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield depth
        yield from counters
        yield GaugeMetricFamily("marketsync_redis_up", "Whether Redis answered this scrape.", value=1)


def _expired(engine: Any) -> Iterator[Metric]:
    """Yield the revenue lost to expired reports per marketplace: units, and amount (units x unit price).

    Both only grow (an expired report never changes), so they are counters; every marketplace is
    shown, at 0 when nothing expired. The ledger keeps the amount exact; the exposition format
    carries it as a float.
    """
    totals = ledger.expired_totals(engine)
    units = CounterMetricFamily("marketsync_expired_units", "Units of reports expired unsent (revenue lost), "
                                "by marketplace.", labels=("marketplace",))
    amount = CounterMetricFamily("marketsync_expired_amount", "Amount of reports expired unsent (units x the "
                                 "dimension's unit price), by marketplace.", labels=("marketplace",))
    unpriced = GaugeMetricFamily("marketsync_expired_unpriced_reports", "Expired reports whose unit price is not "
                                 "known yet (not in marketsync_expired_amount), by marketplace.", labels=("marketplace",))
    for marketplace in (*NAMES, *sorted(set(totals) - set(NAMES))):
        found = totals.get(marketplace, {"units": 0, "amount": 0, "unpriced": 0})
        units.add_metric((marketplace,), found["units"])
        amount.add_metric((marketplace,), found["amount"])
        unpriced.add_metric((marketplace,), found["unpriced"])
    yield units
    yield amount
    yield unpriced


def _flush_latency(latencies: list[float]) -> Metric:
    """Return the cancellation flush latencies (sorted seconds) as a summary with nearest-rank quantiles."""
    summary = Metric("marketsync_flush_latency_seconds", "Cancellation webhook to first flush sent.", "summary")
    for q in FLUSH_QUANTILES:
        value = latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0
        summary.add_sample("marketsync_flush_latency_seconds", {"quantile": str(q)}, value)
    summary.add_sample("marketsync_flush_latency_seconds_count", {}, len(latencies))
    summary.add_sample("marketsync_flush_latency_seconds_sum", {}, sum(latencies))
    return summary


def registry(runtime: Runtime) -> CollectorRegistry:
    """Return a registry of what one scrape shows: the service's state and the latency histograms."""
    built = CollectorRegistry(auto_describe=False)
    built.register(ServiceStateCollector(runtime))
    built.register(telemetry.latency_collector(runtime.settings))
    return built


@bp.get("/metrics")
def metrics() -> Response:
    """Expose the service's state and latencies in the Prometheus text format."""
    runtime = current_app.extensions["marketsync"]
    return Response(generate_latest(registry(runtime)), content_type=CONTENT_TYPE_PLAIN_0_0_4)
