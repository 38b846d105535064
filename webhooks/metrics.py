"""``/metrics``: Prometheus text exposition (reports, webhooks, contracts, queues, flush latency)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from sqlalchemy import select
from sqlmodel import Session

from worker import reports, sync
from worker.persistence.ledger import ContractSyncRow
from worker.runtime import QUEUE_NAMES

bp = Blueprint("prometheus", __name__)


def _labels(**values: object) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in values.items())
    return "{" + inner + "}"


def _cost_errors(engine: Any) -> dict[str, int]:
    """Count contracts in the ``cost_error`` state by reason (``usage_out_of_range``...); every reason shown."""
    from billing_core.errors import InexactAmount, UsageOutOfRange

    counts = {UsageOutOfRange.reason: 0, InexactAmount.reason: 0}
    with Session(engine) as session:
        for error in session.execute(select(ContractSyncRow.last_error).where(
                ContractSyncRow.last_outcome == sync.COST_ERROR)).scalars():
            reason = (error or "").split(":", 1)[0] or "unknown"
            counts[reason] = counts.get(reason, 0) + 1
    return counts


@bp.get("/metrics")
def metrics() -> Response:
    """Expose counters and latencies in the Prometheus text format."""
    runtime = current_app.extensions["marketsync"]
    snapshot = reports.metrics_snapshot(runtime.engine)
    lines = [
        "# HELP marketsync_reports_total Usage reports by marketplace and ledger status.",
        "# TYPE marketsync_reports_total gauge",
    ]
    for marketplace, status, count, _units in snapshot["reports"]:
        lines.append(f"marketsync_reports_total{_labels(marketplace=marketplace, status=status)} {count}")
    lines += ["# HELP marketsync_reported_units_total Units by marketplace and ledger status.",
              "# TYPE marketsync_reported_units_total gauge"]
    for marketplace, status, _count, units in snapshot["reports"]:
        lines.append(f"marketsync_reported_units_total{_labels(marketplace=marketplace, status=status)} {units or 0}")
    lines += ["# HELP marketsync_webhooks_total Stored webhook deliveries by source and status.",
              "# TYPE marketsync_webhooks_total gauge"]
    for source, status, count in snapshot["inbox"]:
        lines.append(f"marketsync_webhooks_total{_labels(source=source, status=status)} {count}")
    lines += ["# HELP marketsync_contracts Contracts by marketplace, status and mapping status.",
              "# TYPE marketsync_contracts gauge"]
    for marketplace, status, mapping, count in snapshot["contracts"]:
        lines.append(f"marketsync_contracts{_labels(marketplace=marketplace, status=status, mapping=mapping)} {count}")
    lines += ["# HELP marketsync_contract_cost_errors Contracts whose costs cannot be computed, by reason.",
              "# TYPE marketsync_contract_cost_errors gauge"]
    for reason, count in sorted(_cost_errors(runtime.engine).items()):
        lines.append(f"marketsync_contract_cost_errors{_labels(reason=reason)} {count}")
    latencies = snapshot["flush_latencies"]
    lines += ["# HELP marketsync_flush_latency_seconds Cancellation webhook to first flush sent.",
              "# TYPE marketsync_flush_latency_seconds summary"]
    for q in (0.5, 0.99):
        value = latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0
        lines.append(f"marketsync_flush_latency_seconds{_labels(quantile=q)} {value}")
    lines.append(f"marketsync_flush_latency_seconds_count {len(latencies)}")
    lines.append(f"marketsync_flush_latency_seconds_sum {sum(latencies)}")
    try:
        lines += ["# HELP marketsync_queue_depth Jobs waiting per queue.", "# TYPE marketsync_queue_depth gauge"]
        for name in QUEUE_NAMES:
            lines.append(f"marketsync_queue_depth{_labels(queue=name)} {runtime.queue(name).count}")
        for key, metric in (("marketsync:metrics:deadline_alerts", "marketsync_deadline_alerts_total"),
                            ("marketsync:metrics:deadline_misses", "marketsync_deadline_misses_total")):
            lines += [f"# TYPE {metric} counter", f"{metric} {int(runtime.redis.get(key) or 0)}"]
        lines += ["# TYPE marketsync_redis_up gauge", "marketsync_redis_up 1"]
    except Exception:  # noqa: BLE001 - metrics still answer when Redis is down, and say so
        lines += ["# TYPE marketsync_redis_up gauge", "marketsync_redis_up 0"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
