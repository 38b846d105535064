"""/metrics through prometheus_client: the service's gauges and counters, and the latency histograms."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from config import Settings
from marketplaces.base import MalformedNotification, PermanentMarketplaceError, TransientMarketplaceError
from tests.conftest import TEST_API_KEY
from tests.worker.sync_support import ingest, map_contract, start_of_test_window
from tests.worker.test_sync_jobs import aws_server, env  # noqa: F401
from webhooks import create_app
from worker import inbox, jobs, telemetry

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Every series /metrics exposed before prometheus_client, with its labels: (family, type) -> labels.
# Counters are named without ``_total`` by the parser; their samples keep it.
PREVIOUS = {
    ("marketsync_reports_total", "gauge"): {"marketplace", "status"},
    ("marketsync_reported_units_total", "gauge"): {"marketplace", "status"},
    ("marketsync_webhooks_total", "gauge"): {"source", "status"},
    ("marketsync_contracts", "gauge"): {"marketplace", "status", "mapping"},
    ("marketsync_contract_cost_errors", "gauge"): {"reason"},
    ("marketsync_flush_latency_seconds", "summary"): {"quantile"},
    ("marketsync_queue_depth", "gauge"): {"queue"},
    ("marketsync_deadline_alerts", "counter"): set(),
    ("marketsync_deadline_misses", "counter"): set(),
    ("marketsync_redis_up", "gauge"): set(),
}
HISTOGRAMS = {
    "marketsync_http_request_duration_seconds": {"method", "route", "status"},
    "marketsync_job_duration_seconds": {"job", "outcome"},
    "marketsync_marketplace_call_duration_seconds": {"marketplace", "operation", "outcome"},
}


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _count(families: dict[str, Any], histogram: str, **labels: str) -> float:
    """Return the ``_count`` of ``histogram``'s series with ``labels`` (0 when absent)."""
    family = families.get(histogram)
    return sum(s.value for s in (family.samples if family else [])
               if s.name == f"{histogram}_count" and all(s.labels.get(k) == v for k, v in labels.items()))


def _exposition() -> str:
    """Return this process's histograms in the text format (tests run without a multiprocess directory)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(telemetry.latency_collector(Settings.from_env({})))
    return generate_latest(registry).decode()


def _label_values(families: dict[str, Any]) -> list[str]:
    return [value for family in families.values() for sample in family.samples for value in sample.labels.values()]


def test_exposition_keeps_every_previous_metric_with_its_labels(env, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """The exposition parses, has the 0.0.4 content type, and shows every earlier metric with its labels."""
    environment, runtime = env
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 8000, start + timedelta(minutes=5))
    jobs.report_contract(contract, start.isoformat())
    inbox.store_delivery(environment.engine, source="aws", delivery_id="d-1", event_type="entitlement-updated",
                         body=b"{}", headers={}, normalized=None, status="ignored", contract_key="",
                         now=datetime.now(UTC))
    answer = create_app(runtime.settings, runtime).test_client().get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = _families(answer.get_data(as_text=True))
    for (name, kind), labels in PREVIOUS.items():
        assert name in families and families[name].type == kind, name
        assert families[name].samples, name
        for sample in families[name].samples:
            if not sample.name.endswith(("_count", "_sum")):
                assert set(sample.labels) == labels, (sample.name, sample.labels)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("marketsync_reports_total", (("marketplace", "aws"), ("status", "accepted")))] == 1
    assert samples[("marketsync_reported_units_total", (("marketplace", "aws"), ("status", "accepted")))] == 800
    assert samples[("marketsync_webhooks_total", (("source", "aws"), ("status", "ignored")))] == 1
    assert samples[("marketsync_contracts", (("mapping", "mapped"), ("marketplace", "aws"), ("status", "active")))] == 1
    assert samples[("marketsync_contract_cost_errors", (("reason", "usage_out_of_range"),))] == 0
    assert samples[("marketsync_deadline_alerts_total", ())] == 0
    assert samples[("marketsync_queue_depth", (("queue", "urgent"),))] == 0
    assert samples[("marketsync_redis_up", ())] == 1
    assert {("marketsync_flush_latency_seconds", (("quantile", q),)) for q in ("0.5", "0.99")} <= samples.keys()
    for name, labels in HISTOGRAMS.items():
        assert families[name].type == "histogram"
        assert all(set(s.labels) - {"le"} == labels for s in families[name].samples), name


def test_expired_reports_count_as_revenue_lost_per_marketplace(env) -> None:  # type: ignore[no-untyped-def]
    """A report expired past AWS's window shows in /metrics: its units and amount (units x unit price) under aws,
    and every other marketplace at 0."""
    from worker import hourly

    environment, runtime = env
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 4321, start + timedelta(minutes=5))  # 432 units of 0.01
    hourly.prepare(environment.engine, contract, start, now=datetime.now(UTC))
    assert hourly.send_pending(environment.engine, environment.adapter, "aws",
                               now=start + timedelta(hours=6)) == {"expired": 1}
    families = _families(create_app(runtime.settings, runtime).test_client().get("/metrics").get_data(as_text=True))
    assert families["marketsync_expired_units"].type == "counter"
    samples = {(s.name, s.labels["marketplace"]): s.value for name in ("marketsync_expired_units",
               "marketsync_expired_amount", "marketsync_expired_unpriced_reports") for s in families[name].samples}
    assert samples == {
        ("marketsync_expired_units_total", "aws"): 432, ("marketsync_expired_units_total", "azure"): 0,
        ("marketsync_expired_units_total", "gcp"): 0,
        ("marketsync_expired_amount_total", "aws"): 4.32, ("marketsync_expired_amount_total", "azure"): 0,
        ("marketsync_expired_amount_total", "gcp"): 0,
        ("marketsync_expired_unpriced_reports", "aws"): 0, ("marketsync_expired_unpriced_reports", "azure"): 0,
        ("marketsync_expired_unpriced_reports", "gcp"): 0,
    }
    reports = {(s.labels["marketplace"], s.labels["status"]): s.value for s in families["marketsync_reports_total"].samples}
    assert reports[("aws", "expired")] == 1


def test_redis_down_still_answers_and_says_so(settings: Settings) -> None:
    """With Redis unreachable /metrics still answers: the database gauges, and marketsync_redis_up 0."""
    unreachable = settings.model_copy(update={"REDIS_URL": "redis://127.0.0.1:1/0"})
    families = _families(create_app(unreachable).test_client().get("/metrics").get_data(as_text=True))
    assert families["marketsync_redis_up"].samples[0].value == 0
    assert "marketsync_queue_depth" not in families and "marketsync_contracts" in families


def test_request_is_observed_by_route_template_never_raw_path(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Requests count by method, route template and status class (413s too); no label holds an id, path or secret."""
    before = _families(client.get("/metrics").get_data(as_text=True))
    route = "/v1/contracts/<contract_id>"
    assert client.get("/v1/contracts/ctr_private42?token=hunter2", headers=auth_headers).status_code == 404
    assert client.get("/no/such/page-sekrit").status_code == 404
    wrong_key = {"Authorization": "Bearer wrong-key-xyz"}
    assert client.get("/v1/contracts/ctr_private42", headers=wrong_key).status_code == 401
    too_large = b"x" * (client.application.config["MAX_CONTENT_LENGTH"] + 1)
    assert client.post("/v1/ingest", data=too_large, headers=auth_headers).status_code == 413
    after = _families(client.get("/metrics").get_data(as_text=True))
    http = "marketsync_http_request_duration_seconds"
    for labels, grew in (({"method": "GET", "route": route, "status": "4xx"}, 2),
                         ({"method": "GET", "route": telemetry.UNMATCHED_ROUTE, "status": "4xx"}, 1),
                         ({"method": "GET", "route": "/metrics", "status": "2xx"}, 1),
                         ({"method": "POST", "route": "/v1/ingest", "status": "4xx"}, 1)):
        assert _count(after, http, **labels) - _count(before, http, **labels) == grew, labels
    values = " ".join(_label_values(after))
    for secret in ("ctr_private42", "hunter2", "page-sekrit", "wrong-key-xyz", TEST_API_KEY):
        assert secret not in values


def test_report_to_the_emulator_is_observed_per_marketplace_and_operation(env) -> None:  # type: ignore[no-untyped-def]
    """A report sent to the AWS emulator and a refused notification count in the marketplace histogram."""
    environment, runtime = env
    client = create_app(runtime.settings, runtime).test_client()
    before = _families(client.get("/metrics").get_data(as_text=True))
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 3000, start + timedelta(minutes=5))
    jobs.report_contract(contract, start.isoformat())
    with pytest.raises(MalformedNotification):
        runtime.adapter("aws").parse_notification({}, b"not json")
    after = _families(client.get("/metrics").get_data(as_text=True))
    call = "marketsync_marketplace_call_duration_seconds"
    for labels in ({"marketplace": "aws", "operation": "report", "outcome": "ok"},
                   {"marketplace": "aws", "operation": "parse_notification", "outcome": "rejected_notification"}):
        assert _count(after, call, **labels) - _count(before, call, **labels) == 1, labels


def test_timed_adapter_passes_attributes_and_errors_through() -> None:
    """The timing wrapper hands attributes, results and errors through, and counts a failed call by outcome."""
    class Adapter:
        marketplace = "azure"

        def report(self, records: list[int]) -> list[int]:
            return records

        def get_subscription(self, subscription_id: str) -> dict[str, str]:
            raise TransientMarketplaceError("503 from the fulfillment API")

    wrapped = telemetry.TimedAdapter("azure", Adapter())
    labels = {"marketplace": "azure", "operation": "get_subscription", "outcome": "transient"}
    before = _count(_families(_exposition()), "marketsync_marketplace_call_duration_seconds", **labels)
    assert wrapped.marketplace == "azure" and wrapped.report([1, 2]) == [1, 2]
    with pytest.raises(TransientMarketplaceError):
        wrapped.get_subscription("sub-1")
    after = _count(_families(_exposition()), "marketsync_marketplace_call_duration_seconds", **labels)
    assert after - before == 1


@pytest.mark.parametrize("exc, outcome", [
    (None, "ok"),
    (TransientMarketplaceError("throttled"), "transient"),
    (PermanentMarketplaceError("bad credentials"), "permanent"),
    (MalformedNotification("not json"), "rejected_notification"),
    (ValueError("a bug"), "error"),
], ids=["ok", "transient", "permanent", "notification", "other"])
def test_call_outcome_names_what_the_caller_does_next(exc: BaseException | None, outcome: str) -> None:
    """A marketplace call's outcome label follows the exception tree of marketplaces.base."""
    assert telemetry.call_outcome(exc) == outcome


def test_clearing_the_directory_drops_only_metrics_files(tmp_path: Path) -> None:
    """marketsync run's start-up clear removes prometheus_client's files and nothing else."""
    (tmp_path / "histogram_1.db").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("keep")
    telemetry.prepare_directory(tmp_path / "new")
    telemetry.prepare_directory(tmp_path, clear=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "notes.txt"]


def test_empty_multiproc_dir_setting_is_unset() -> None:
    """An empty PROMETHEUS_MULTIPROC_DIR means unset; marketsync run then uses DATA_DIR/metrics."""
    settings = Settings.from_env({"PROMETHEUS_MULTIPROC_DIR": "", "DATA_DIR": "/srv/ms"})
    assert settings.PROMETHEUS_MULTIPROC_DIR is None and settings.metrics_dir == Path("/srv/ms/metrics")


# --- several processes ------------------------------------------------------------------------------

@pytest.fixture
def multiprocess_env(tmp_path: Path, settings: Settings, redis_conn) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Return the environment of processes started as ``marketsync run`` starts them (a metrics directory)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    environ.update(DATA_DIR=str(settings.DATA_DIR), DATABASE_URL=settings.DATABASE_URL, REDIS_URL=settings.REDIS_URL,
                   API_KEYS=TEST_API_KEY, LOG_LEVEL="WARNING", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                   PYTHONPATH=str(REPO) + os.pathsep + environ.get("PYTHONPATH", ""))
    return environ


@pytest.fixture
def gunicorn(multiprocess_env: dict[str, str]) -> Iterator[str]:
    """Serve the app with two gunicorn worker processes; yield its base URL."""
    from bench.common import free_port

    port = free_port()
    proc = subprocess.Popen([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
                             "--log-level", "warning", "webhooks:create_app()"],
                            cwd=REPO, env=multiprocess_env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_job_run_by_a_worker_process_shows_on_the_web_processes_metrics(
        gunicorn: str, multiprocess_env: dict[str, str], redis_conn) -> None:  # type: ignore[no-untyped-def]
    """Jobs run by a real rq worker process, and requests served by two gunicorn workers, all show in /metrics."""
    queue = Queue("urgent", connection=redis_conn)
    queue.enqueue("worker.jobs.record_cron_heartbeat")
    queue.enqueue("worker.jobs.no_such_job")
    worker = subprocess.run([str(BIN / "rq"), "worker", "--url", multiprocess_env["REDIS_URL"], "--burst",
                             "--worker-class", "worker.rq_worker.MarketsyncWorker", "urgent"],
                            cwd=REPO, env=multiprocess_env, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    for _ in range(6):
        assert requests.get(f"{gunicorn}/readyz", timeout=5).status_code in (200, 503)
    families = _families(requests.get(f"{gunicorn}/metrics", timeout=10).text)
    job = "marketsync_job_duration_seconds"
    assert _count(families, job, job="worker.jobs.record_cron_heartbeat", outcome="ok") == 1
    assert _count(families, job, job="worker.jobs.no_such_job", outcome="failed") == 1
    assert _count(families, "marketsync_http_request_duration_seconds", route="/readyz") == 6
    assert len(list(Path(multiprocess_env["PROMETHEUS_MULTIPROC_DIR"]).glob("histogram_*.db"))) >= 2
    assert "marketsync_reports_total" in families and "marketsync_redis_up" in families
