"""Shared plumbing for the marketplace emulators: a threaded loopback HTTP server and faults.

Each emulator is a WSGI app (Flask) with its own in-memory state. ``EmulatorServer`` serves
one app on a loopback port in a daemon thread (tests, benchmarks) or in the foreground
(``marketsync emulators``). ``Faults`` lets tests inject latency, error rates, throttling
and outages through each emulator's control API (``POST /_emulator/faults``).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey


@dataclass
class Faults:
    """Injectable misbehaviour, shared by every request of one emulator."""

    latency_ms: float = 0.0
    error_rate: float = 0.0  # share of calls answered with a 5xx
    throttle_rate: float = 0.0  # share of calls answered as throttled
    outage: bool = False  # every call fails (connection-level 503)
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **values: Any) -> None:
        """Set the given fault values (unknown names raise ``KeyError``)."""
        with self._lock:
            for name, value in values.items():
                if name.startswith("_") or not hasattr(self, name):
                    raise KeyError(name)
                setattr(self, name, value)
            if "seed" in values and values["seed"] is not None:
                self._rng.seed(values["seed"])

    def reset(self) -> None:
        """Clear every fault."""
        self.update(latency_ms=0.0, error_rate=0.0, throttle_rate=0.0, outage=False)

    def draw(self) -> str | None:
        """Sleep for the latency, then return ``"outage"``, ``"error"``, ``"throttle"`` or None."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        with self._lock:
            if self.outage:
                return "outage"
            roll = self._rng.random()
            if roll < self.error_rate:
                return "error"
            if roll < self.error_rate + self.throttle_rate:
                return "throttle"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "throttle_rate": self.throttle_rate,
            "outage": self.outage,
        }


class ControlDefaults:
    """The plain parts of every emulator state's control API (``marketplaces.emulators.control``)."""

    faults: Faults

    def faults_view(self) -> dict[str, Any]:
        return self.faults.as_dict()

    def set_faults(self, values: dict[str, Any]) -> None:
        """Set faults; unknown names raise ``KeyError``."""
        self.faults.update(**values)

    def clock_moved(self, base_url: str) -> dict[str, Any]:
        """Act on a clock change; nothing by default."""
        return {}


def self_signed_certificate_pem(key: "RSAPrivateKey", common_name: str) -> bytes:
    """Return a ten-year self-signed certificate for ``key`` (PEM), as the emulators publish."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class EmulatorServer:
    """Serve a WSGI app on ``host:port`` (port 0 picks a free one) in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> "EmulatorServer":
        """Start serving in a background thread and return self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"emulator:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
