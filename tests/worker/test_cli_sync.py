"""The operator commands: `marketsync sync [--dry-run]`, `marketsync contracts`, `marketsync ledger`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from worker.cli import main
from tests.worker.test_sync_jobs import aws_server, env  # noqa: F401
from tests.worker.sync_support import ingest, map_contract, start_of_test_window


def test_sync_dry_run_then_real(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A dry run prints what would be sent and sends nothing; the real run sends it once."""
    environment, runtime = env
    for key, value in {"DATABASE_URL": runtime.settings.database_url, "REDIS_URL": runtime.settings.REDIS_URL,
                       "AWS_EMULATOR_PORT": str(environment.server.port), "EMULATOR_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 4321, start + timedelta(minutes=5))
    runner = CliRunner()
    dry = runner.invoke(main, ["sync", "--dry-run", "--hour", start.isoformat()])
    assert dry.exit_code == 0, dry.output
    assert f"{contract}" in dry.output and "would send 432" in dry.output
    assert environment.totals() == 0
    real = runner.invoke(main, ["sync", "--contract", contract, "--hour", start.isoformat()])
    assert real.exit_code == 0, real.output
    assert "sent 432" in real.output and environment.totals() == 432
    table = runner.invoke(main, ["contracts"])
    assert contract in table.output and "accepted" in table.output
    ledger = runner.invoke(main, ["ledger", contract])
    assert "432" in ledger.output and "accepted" in ledger.output
    bad = runner.invoke(main, ["sync", "--hour", "yesterday"])
    assert bad.exit_code != 0 and "--hour" in bad.output
