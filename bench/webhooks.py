"""Sustained signed contract deliveries to gunicorn on loopback: deliveries/s and p50/p99 latency.

    python -m bench.webhooks [--deliveries 20000] [--clients 16] [--workers 3] [--worker-class sync|gthread --threads N]

Each delivery is a distinct, validly signed `contract.created` event (Standard Webhooks); the
receiver verifies it, stores it in the inbox (SQLite, WAL) and enqueues its processing job in
Redis before answering 202. Target on a 2-core machine: >= 1,000 deliveries/s, p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from bench.common import machine, percentile, server_cpu_seconds, web_service
from worker.standard_webhooks import signed_headers

SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="


def _payload(i: int) -> bytes:
    return json.dumps({
        "id": f"evt_{i}", "type": "contract.created", "occurred_at": "2026-11-21T10:00:00Z",
        "data": {"contract_id": f"ctr_{i}", "marketplace": "aws",
                 "cloud_identifiers": {"product_code": "prod-bench", "customer_aws_account_id": f"{i:012d}",
                                       "license_arn": f"arn:aws:license-manager::{i:012d}:license:l-{i:032x}"},
                 "buyer": {"name": f"Buyer {i}", "email": f"b{i}@example.test"},
                 "pricing": {"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": "0.01"}]},
                 "effective_at": "2026-11-21T10:00:00Z"},
    }).encode()


def run(deliveries: int, clients: int, workers: int, threads: int = 1, worker_class: str = "sync") -> dict[str, float]:
    """Send ``deliveries`` signed events from ``clients`` concurrent senders; return figures.

    Bodies are encoded and signed before the clock starts (they stay inside the 5-minute
    tolerance), so the load generator's share of the two cores is the HTTP client only.
    """
    now = int(time.time())
    prepared = []
    for i in range(deliveries):
        body = _payload(i)
        headers = signed_headers(SECRET, f"msg_{i}", now, body)
        headers["Content-Type"] = "application/json"
        prepared.append((body, headers))
    with tempfile.TemporaryDirectory() as tmp, web_service(Path(tmp), {"WEBHOOK_SECRETS": SECRET},
                                                             workers=workers, threads=threads, worker_class=worker_class) as base:
        host, port = base.removeprefix("http://").split(":")
        latencies: list[float] = []
        errors: list[int] = []
        lock = threading.Lock()
        counter = iter(prepared)

        def client() -> None:
            # Keep-alive (gthread); http.client reconnects after each answer of a sync worker.
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            local: list[float] = []
            bad = 0
            while True:
                with lock:
                    item = next(counter, None)
                if item is None:
                    break
                body, headers = item
                started = time.perf_counter()
                conn.request("POST", "/webhooks/contracts", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                local.append((time.perf_counter() - started) * 1000)
                if response.status != 202:
                    bad += 1
            conn.close()
            with lock:
                latencies.extend(local)
                errors.append(bad)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        server_cpu = server_cpu_seconds(port)
        client_cpu = time.process_time()
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = server_cpu_seconds(port) - server_cpu
    return {"deliveries": deliveries, "seconds": elapsed, "per_second": deliveries / elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "errors": sum(errors),
            "server_cpu_us": server_cpu / deliveries * 1e6, "client_cpu_us": client_cpu / deliveries * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (the Procfile's default)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (gthread)")
    parser.add_argument("--worker-class", default="sync", choices=("sync", "gthread"),
                        help="the Procfile's default is sync (WEB_THREADS=1)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    figures = run(args.deliveries, args.clients, args.workers, args.threads, args.worker_class)
    print(f"bench/webhooks: {figures['deliveries']} signed deliveries in {figures['seconds']:.1f} s "
          f"with {args.clients} clients, gunicorn {args.workers} workers x {args.threads} threads ({args.worker_class})")
    print(f"  deliveries/s: {figures['per_second']:.0f}   (target >= 1000)")
    print(f"  latency p50: {figures['p50_ms']:.1f} ms   p99: {figures['p99_ms']:.1f} ms   (target p99 < 50 ms)")
    print(f"  CPU per delivery: server {figures['server_cpu_us']:.0f} us, load generator {figures['client_cpu_us']:.0f} us "
          f"(both on this machine's {os.cpu_count()} cores)")
    print(f"  non-202 answers: {figures['errors']}")


if __name__ == "__main__":
    main()
