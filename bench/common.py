"""Shared helpers for the benchmarks: machine facts, a private Redis, gunicorn on loopback."""

from __future__ import annotations

import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator

import requests

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """Return one line describing this machine (cores, CPU, Python, SQLite)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}")


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], pct: float) -> float:
    """Return the pct-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def server_cpu_seconds(port: str | int) -> float:
    """Return the CPU seconds used so far by the gunicorn processes serving ``port``."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"gunicorn" not in cmdline or f"127.0.0.1:{port}".encode() not in cmdline:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextmanager
def web_service(data_dir: Path, env_extra: dict[str, str], *, workers: int = 2, threads: int = 8,
                worker_class: str = "gthread") -> Iterator[str]:
    """Run migrations, a private Redis and gunicorn (gthread) on a free port; yield its base URL."""
    from worker import db
    from worker.redis_server import PrivateRedis

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with PrivateRedis(data_dir / "redis") as redis_server:
        env = {**os.environ, "DATA_DIR": str(data_dir), "REDIS_URL": redis_server.url, "PORT": str(port),
               "LOG_LEVEL": "WARNING", **env_extra}
        engine = db.build_engine(f"sqlite:///{data_dir / 'marketsync.db'}")
        db.upgrade(engine)
        engine.dispose()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
             "--worker-class", worker_class, "--threads", str(threads), "--log-level", "warning",
             "webhooks:create_app()"],
            cwd=ROOT, env=env, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(base + "/readyz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.2)
            else:
                raise RuntimeError("gunicorn did not become ready")
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_workers(count: int, env: dict[str, str], log_dir: Path, *, name: str = "bench") -> list[subprocess.Popen[bytes]]:
    """Start ``count`` rq workers as the Procfile does, each in its own process group, logging to ``log_dir``."""
    rq = str(Path(sys.executable).parent / "rq")
    procs = []
    for n in range(count):
        log = open(log_dir / f"worker{n}.log", "wb")
        procs.append(subprocess.Popen(
            [rq, "worker", "--url", env["REDIS_URL"], "--with-scheduler", "--worker-class", "worker.rq_worker.MarketsyncWorker",
             "--name", f"{name}-worker-{n}-{os.getpid()}", "--logging_level", "WARNING", "urgent", "webhooks", "contracts", "sync"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the workers (a warm shutdown), then whatever is left in their process groups (the scheduler)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Emulators:
    """The three emulators in this process, on loopback ports, driven through their control API.

    ``hours``: widen AWS's and Azure's age limits to cover that many past hour stamps (the soak
    compresses hours into minutes). ``products`` names each marketplace's product and
    ``dimension`` the metered dimension of the customers ``new_customer`` creates.
    """

    def __init__(self, products: dict[str, str], dimension: str, *, hours: int | None = None) -> None:
        from marketplaces.emulators.aws import create_aws_emulator
        from marketplaces.emulators.azure import create_azure_emulator
        from marketplaces.emulators.gcp import create_gcp_emulator
        from marketplaces.emulators.server import EmulatorServer

        self.products = products
        self.dimension = dimension
        aws_options: dict[str, Any] = {}
        azure_options: dict[str, Any] = {}
        if hours is not None:
            aws_options["max_age_seconds"] = max(6 * 3600, (hours + 2) * 3600)
            azure_options["usage_window_seconds"] = max(24, hours + 2) * 3600
        self.servers = {"aws": EmulatorServer(create_aws_emulator(**aws_options)),
                        "azure": EmulatorServer(create_azure_emulator(**azure_options)),
                        "gcp": EmulatorServer(create_gcp_emulator())}
        self.http = requests.Session()

    def __enter__(self) -> "Emulators":
        for server in self.servers.values():
            server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers.values():
            server.stop()

    def control(self, marketplace: str, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.servers[marketplace].url}/_emulator/{path}", json=body,
                                     timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def new_customer(self, marketplace: str, started: datetime | None = None) -> dict[str, str]:
        """Create a marketplace customer able to receive usage; return the contract's cloud identifiers."""
        products = self.products
        if marketplace == "aws":
            body: dict[str, Any] = {"product_code": products["aws"], "dimensions": [self.dimension],
                                    "legacy_identifier": False}
            if started is not None:
                body["started_at"] = started.isoformat().replace("+00:00", "Z")
            ids = self.control("aws", "POST", "customers", body)["identifiers"]
            return {"product_code": products["aws"], "customer_aws_account_id": ids["customer_aws_account_id"],
                    "license_arn": ids["license_arn"]}
        if marketplace == "azure":
            sub = self.control("azure", "POST", "subscriptions", {"plan_id": "payg", "dimensions": [self.dimension],
                                                                  "offer_id": products["azure"]})
            return {"azure_subscription_id": sub["subscription"]["id"], "plan_id": "payg",
                    "offer_id": products["azure"]}
        ids = self.control("gcp", "POST", "entitlements", {"approve": True})["identifiers"]
        return {"gcp_entitlement_id": ids["entitlement_id"], "usage_reporting_id": ids["consumer_id"],
                "entitlement_id": ids["entitlement_id"], "product_id": products["gcp"]}

    def totals(self, marketplace: str) -> int:
        """Return every unit the emulator accepted."""
        rows = self.control(marketplace, "GET", "usage")["totals"]
        return int(sum(Decimal(str(r["quantity"])) for r in rows))

    def set_latency(self, latency_ms: float) -> None:
        for marketplace in self.servers:
            self.control(marketplace, "POST", "faults", {"latency_ms": latency_ms})

    def environment(self) -> dict[str, str]:
        """Return the settings that point the service's sandbox adapters at these emulators."""
        return {"MARKETPLACE_MODE": "sandbox", "EMULATOR_HOST": "127.0.0.1",
                "AWS_EMULATOR_PORT": str(self.servers["aws"].port),
                "AZURE_EMULATOR_PORT": str(self.servers["azure"].port),
                "GCP_EMULATOR_PORT": str(self.servers["gcp"].port),
                "GCP_PUSH_AUDIENCE": "http://127.0.0.1/unused"}
