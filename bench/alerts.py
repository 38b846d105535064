"""Alerts as usage streams in: ingest acknowledged → ``subscription.usage_exceeded`` delivered.

    python -m bench.alerts [--subscriptions 1000] [--rate 2000] [--seconds 60] [--workers 2] [--quick]

Starts gunicorn and real RQ workers (the Procfile's) on a fresh SQLite file and a private Redis,
a local HTTP receiver as the webhook endpoint (standard payloads), and through the API:
``--subscriptions`` customers, each subscribed to a plan pricing a call count, each with a
``usage_exceeded`` alert whose threshold its usage crosses halfway through the run. Then
``--rate`` events a second (batches of 100 over the customers, round robin) for ``--seconds``.

For each subscription, the latency is from the acknowledgment of the ingest request that
carried its usage past the threshold to the receipt of its webhook. Prints p50 / p99 (target:
p99 ≤ 5 s at 2,000 events/s for 1,000 subscriptions), deliveries per second, and how many
alerts arrived (each must arrive exactly once: the threshold fires once per period).
``--quick``: 50 subscriptions, 200 events/s, 10 s (a correctness run, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from bench.common import machine, percentile, start_workers, stop_workers, web_service

API_KEY = "bench-alerts-key"
BATCH = 100


class Receiver:
    """The webhook endpoint: the receipt time of each (type, subscription) it is sent."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                at = time.monotonic()
                if body.get("type") == "subscription.usage_exceeded":
                    with receiver.lock:
                        receiver.arrivals.setdefault(body["subscription"]["id"], []).append(at)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # a real endpoint's listen backlog, not http.server's 5 (SYNs dropped)

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"


def _setup(base: str, http: requests.Session, subscriptions: int, threshold: int, receiver: Receiver,
           style: str) -> list[str]:
    """Create the endpoint, item, metric, plan, customers, subscriptions and alerts; return subscription ids."""
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = http.post(base + "/v1" + path, json=body, timeout=60)
        answer.raise_for_status()
        return answer.json()

    post("/webhook_endpoints", {"url": receiver.url, "payload_style": style,
                                "enabled_event_types": ["subscription.usage_exceeded"]})
    item = post("/items", {"name": "API"})
    metric = post("/metrics", {"name": "Calls", "description": None, "item_id": item["id"],
                               "sql": "SELECT COUNT(*) FROM events WHERE event_name = 'call'"})
    plan = post("/plans", {"currency": "USD", "name": "Metered", "prices": [{"price": {
        "name": "Calls", "item_id": item["id"], "model_type": "unit", "cadence": "monthly",
        "billable_metric_id": metric["id"], "unit_config": {"unit_amount": "0.01"}}}]})
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).isoformat()

    def one(n: int) -> str:
        customer = post("/customers", {"name": f"C{n}", "email": f"c{n}@bench.test", "external_customer_id": f"c{n}",
                                       "currency": "USD"})
        sub = post("/subscriptions", {"customer_id": customer["id"], "plan_id": plan["id"], "start_date": start})
        post(f"/alerts/subscription_id/{sub['id']}", {"type": "usage_exceeded", "metric_id": metric["id"],
                                                      "thresholds": [{"value": threshold}]})
        return str(sub["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(subscriptions)))


def run(subscriptions: int, rate: int, seconds: float, workers: int, style: str = "standard") -> dict[str, Any]:
    """Run the scenario; return its figures."""
    from worker.redis_server import PrivateRedis

    per_sub = max(2, int(rate * seconds / subscriptions))
    threshold = per_sub // 2
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as tmp, PrivateRedis(Path(tmp) / "redis") as redis_server:
        env = {"API_KEYS": API_KEY, "REDIS_URL": redis_server.url, "DATA_DIR": str(Path(tmp) / "data"),
               "LOG_LEVEL": "WARNING"}
        with web_service(Path(tmp) / "data", env, workers=2, threads=8) as base:
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {API_KEY}"
            subs = _setup(base, http, subscriptions, threshold, receiver, style)
            procs = start_workers(workers, {**os.environ, **env, "DATA_DIR": str(Path(tmp) / "data")}, Path(tmp),
                                  name="alerts")
            try:
                crossed_at: dict[int, float] = {}
                counts = [0] * subscriptions
                sent, n, begin = 0, 0, time.monotonic()
                total = int(rate * seconds)
                while sent < total:
                    due = begin + sent / rate
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    batch, touched = [], []
                    for _ in range(min(BATCH, total - sent)):
                        customer = n % subscriptions
                        batch.append({"event_name": "call", "idempotency_key": f"e{n}",
                                      "external_customer_id": f"c{customer}",
                                      "timestamp": (datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
                                      "properties": {}})
                        counts[customer] += 1
                        if counts[customer] == threshold:
                            touched.append(customer)
                        n += 1
                    http.post(base + "/v1/ingest", json={"events": batch}, timeout=60).raise_for_status()
                    acked = time.monotonic()
                    for customer in touched:
                        crossed_at[customer] = acked
                    sent += len(batch)
                ingest_seconds = time.monotonic() - begin
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with receiver.lock:
                        if len(receiver.arrivals) >= len(crossed_at):
                            break
                    time.sleep(0.1)
                time.sleep(1.0)  # anything sent twice arrives now
            finally:
                stop_workers(procs)
    index = {sub: i for i, sub in enumerate(subs)}
    latencies = [min(times) - crossed_at[index[sub]] for sub, times in receiver.arrivals.items()
                 if index[sub] in crossed_at]
    firsts = sorted(min(times) for times in receiver.arrivals.values())
    span = (firsts[-1] - firsts[0]) if len(firsts) > 1 else 0.0
    return {
        "subscriptions": subscriptions, "events": sent, "ingest_rate": round(sent / ingest_seconds),
        "alerts_expected": len(crossed_at), "alerts_received": len(receiver.arrivals),
        "fired_twice": sum(1 for times in receiver.arrivals.values() if len(times) > 1),
        "p50_s": round(percentile(latencies, 50), 3), "p99_s": round(percentile(latencies, 99), 3),
        "deliveries_per_s": round(len(firsts) / span, 1) if span else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--payload-style", choices=("standard", "expanded"), default="standard",
                        help="the endpoint's payload style (expanded renders the full subscription per alert)")
    parser.add_argument("--quick", action="store_true", help="50 subscriptions, 200 events/s for 10 s")
    args = parser.parse_args()
    if args.quick:
        args.subscriptions, args.rate, args.seconds = 50, 200, 10
    print(machine())
    result = run(args.subscriptions, args.rate, args.seconds, args.workers, args.payload_style)
    print(json.dumps(result, indent=2))
    print(f"{args.payload_style} payloads: ingest ack -> webhook delivered: p50 {result['p50_s']} s, p99 {result['p99_s']} s (target p99 <= 5 s); "
          f"{result['deliveries_per_s']} deliveries/s; {result['alerts_received']}/{result['alerts_expected']} alerts, "
          f"{result['fired_twice']} fired twice")


if __name__ == "__main__":
    main()
