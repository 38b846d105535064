"""Fixtures shared by the AWS adapter and emulator tests: one emulator per module, reset per test."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import pytest

from marketplaces.emulators.aws import AwsEmulatorClient, create_aws_emulator
from marketplaces.emulators.server import EmulatorServer

NOW = datetime(2026, 11, 21, 10, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """Run one AWS emulator for the test module."""
    with EmulatorServer(create_aws_emulator()) as running:
        yield running


@pytest.fixture
def emu(server: EmulatorServer) -> AwsEmulatorClient:
    """Return a control client on a reset emulator whose clock reads ``NOW``."""
    client = AwsEmulatorClient(server.url)
    client.reset()
    client.set_options(rate_limit_rps=0)
    client.set_clock(NOW)
    return client
