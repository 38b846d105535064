"""The command line: wrong settings fail at start, and `marketsync run` starts and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from worker.cli import procfile_commands

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "PORT"}}
    env.update(DATA_DIR=str(tmp_path / "data"), **extra)
    return env


def test_wrong_settings_fail_at_start(tmp_path: Path) -> None:
    """`PORT=abc DATABASE_URL=nope://` exits 2 with one message naming both."""
    result = subprocess.run(
        [str(BIN / "marketsync"), "run"], env=_env(tmp_path, PORT="abc", DATABASE_URL="nope://"),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr and "DATABASE_URL" in result.stderr
    assert result.stderr.count("invalid configuration") == 1


def test_procfile_has_the_three_processes() -> None:
    """The Procfile declares web (gunicorn app factory), worker (four queues) and cron."""
    commands = procfile_commands()
    assert set(commands) == {"web", "worker", "cron"}
    assert '"webhooks:create_app()"' in commands["web"]
    assert commands["worker"].endswith("urgent webhooks contracts sync")
    assert "rq cron" in commands["cron"] and "worker/schedule.py" in commands["cron"]


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, pp, _ in rows if pp in frontier} - found
        found |= children
        frontier = children
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text().split()
            if stat[2] != "Z":
                alive.add(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_run_starts_everything_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    """`marketsync run` answers /readyz 200, and on Ctrl-C or SIGTERM leaves no process behind."""
    port = _free_port()
    env = _env(tmp_path, PORT=str(port), AWS_EMULATOR_PORT=str(_free_port()),
               AZURE_EMULATOR_PORT=str(_free_port()), GCP_EMULATOR_PORT=str(_free_port()))
    proc = subprocess.Popen([str(BIN / "marketsync"), "run"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    ready = True
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        assert ready, "service did not become ready"
        # Let every process (worker, cron) finish starting before it is asked to stop.
        time.sleep(1.5)
        children = _descendants(proc.pid)
        assert len(children) >= 4  # redis, web, worker, cron (+ gunicorn workers, emulators)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
        assert "stopped" in output
        time.sleep(0.5)
        assert _alive(children) == set(), f"orphans left: {_alive(children)}"
    finally:
        if proc.poll() is None:
            proc.kill()
