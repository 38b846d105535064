"""Fixtures shared by the AWS adapter and emulator tests: the session's emulator, reset per test."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from marketplaces.emulators.aws import AwsEmulatorClient
from marketplaces.emulators.server import EmulatorServer

NOW = datetime(2026, 11, 21, 10, 30, tzinfo=timezone.utc)


@pytest.fixture
def server(emulator_servers: dict[str, EmulatorServer]) -> EmulatorServer:
    """The session's AWS emulator (``emu`` resets it)."""
    return emulator_servers["aws"]


@pytest.fixture
def emu(server: EmulatorServer) -> AwsEmulatorClient:
    """Return a control client on a reset emulator whose clock reads ``NOW``."""
    client = AwsEmulatorClient(server.url)
    client.reset()
    client.set_options(rate_limit_rps=0)
    client.set_clock(NOW)
    return client
