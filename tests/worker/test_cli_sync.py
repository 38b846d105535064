"""The operator commands: `marketsync sync [--dry-run]`, `marketsync contracts`, `marketsync ledger`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from worker.cli import main
from tests.worker.test_sync_jobs import aws_server, env  # noqa: F401
from tests.worker.sync_support import ingest, map_contract, point_cli_at, start_of_test_window


def test_sync_dry_run_then_real(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A dry run prints what would be sent and sends nothing; the real run sends it once."""
    environment, runtime = env
    point_cli_at(monkeypatch, environment, runtime)
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


def test_sync_and_ledger_show_each_dimension(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A two-dimension contract's dry run, run and ledger print each dimension's units."""
    from tests.worker.sync_support import TWO_DIMENSIONS, setup_two_dimension_billing

    environment, runtime = env
    point_cli_at(monkeypatch, environment, runtime)
    setup_two_dimension_billing(environment.engine)
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start, plan_id="plan_dims", dimensions=TWO_DIMENSIONS)
    for n in range(3):
        ingest(environment.engine, customer, 415, start + timedelta(minutes=5 + n))  # 3 calls, 1245 tokens
    runner = CliRunner()
    dry = runner.invoke(main, ["sync", "--dry-run", "--contract", contract, "--hour", start.isoformat()])
    assert dry.exit_code == 0, dry.output
    assert "would send 126" in dry.output
    assert "  api_calls  cost 0.0021  at 0.001  units 2  reported 0  would send 2" in dry.output
    assert "  usage_fee  cost 1.245  at 0.01  units 124  reported 0  would send 124" in dry.output
    real = runner.invoke(main, ["sync", "--contract", contract, "--hour", start.isoformat()])
    assert real.exit_code == 0 and "sent 126 (api_calls 2, usage_fee 124)" in real.output, real.output
    assert environment.totals_by_dimension() == {"api_calls": 2, "usage_fee": 124}
    lines = runner.invoke(main, ["ledger", contract]).output.splitlines()
    assert "dimension" in lines[0]
    assert [line.split()[1:4] for line in lines[1:3]] == [["api_calls", "hourly", "2"], ["usage_fee", "hourly", "124"]]


def test_ledger_shows_an_expired_report_and_the_revenue_lost(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`marketsync ledger` marks a report expired past AWS's window with its amount, and sums what was lost."""
    from datetime import UTC, datetime

    from worker import hourly

    environment, runtime = env
    point_cli_at(monkeypatch, environment, runtime)
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 4321, start + timedelta(minutes=5))
    hourly.prepare(environment.engine, contract, start, now=datetime.now(UTC))
    hourly.send_pending(environment.engine, environment.adapter, "aws", now=start + timedelta(hours=6))
    output = CliRunner().invoke(main, ["ledger", contract]).output
    [line] = [line for line in output.splitlines() if " expired " in line and not line.startswith("revenue lost")]
    assert "432" in line and "lost 432 x 0.01 = 4.32" in line
    assert "revenue lost on usage_cost: 1 expired report(s), 432 units, amount 4.32" in output


def test_contracts_and_dry_run_show_what_a_contract_includes(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A contract with consumption: `marketsync contracts` prints what it includes, the dry run the
    included units per dimension and only the overage to send, and the run sends only that."""
    from sqlalchemy import update
    from sqlmodel import Session

    from worker import entitlements
    from worker.persistence.contracts import ContractRow

    environment, runtime = env
    point_cli_at(monkeypatch, environment, runtime)
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    included = entitlements.with_change((), {"usage_cost": 400}, start)
    with Session(environment.engine) as session:
        session.execute(update(ContractRow).where(ContractRow.id == contract).values(
            entitlements=entitlements.as_json(included)))
        session.commit()
    ingest(environment.engine, customer, 4321, start + timedelta(minutes=5))  # 432 units: 32 above the 400
    runner = CliRunner()
    table = runner.invoke(main, ["contracts"])
    assert table.exit_code == 0 and "includes usage_cost 400" in table.output, table.output
    dry = runner.invoke(main, ["sync", "--dry-run", "--contract", contract, "--hour", start.isoformat()])
    assert "  usage_cost  cost 4.321  at 0.01  included 400  units 32  reported 0  would send 32" in dry.output, dry.output
    real = runner.invoke(main, ["sync", "--contract", contract, "--hour", start.isoformat()])
    assert real.exit_code == 0 and "sent 32" in real.output, real.output
    assert environment.totals() == 32
