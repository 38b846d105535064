"""Monthly reconciliation against each marketplace's own record, with planted discrepancies.

Reports go through the real adapters to the emulators (Azure read back through its usageEvents
API, AWS and Google through the emulators' records); then the ledger and the marketplace are
made to disagree in the three ways that matter — a row the marketplace never accepted, an expired
row, an accepted record the ledger lacks — and each must be listed with its cause.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session

from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import (
    DIMENSION, SyncEnv, build_env, ingest, map_contract, point_cli_at, setup_billing, start_of_test_window,
)
from worker import hourly, reconcile
from worker.persistence.contracts import ListingRow
from worker.persistence.ledger import LedgerRow


def _env(marketplace: str, engine: Engine, servers: dict[str, EmulatorServer]) -> SyncEnv:
    environment = build_env(marketplace, engine, servers[marketplace])
    environment.control("POST", "reset")
    setup_billing(engine)  # tokens at 0.001 each; the listings' unit is 0.01: 10 tokens are one unit
    return environment


def _set_status(engine: Engine, contract_id: str, hour: datetime, status: str) -> None:
    with Session(engine) as session:
        session.execute(update(LedgerRow).where(LedgerRow.contract_id == contract_id, LedgerRow.hour == hour)
                        .values(status=status, unit_price="0.01"))
        session.commit()


def _accepted(env: SyncEnv, month: str) -> dict[str, list | None]:
    """What the reconciliation reads of ``env``'s marketplace: the read-back, else the emulator's records."""
    start, end = reconcile.month_bounds(month)
    items = reconcile.read_back(env.adapter, start, end)
    if items is None:
        items = reconcile.emulator_usage(env.server.url, env.marketplace, start, end)
    return {env.marketplace: items}


def _lines(env: SyncEnv, hours: list[datetime], *, now: datetime) -> list[reconcile.Line]:
    """Reconcile every month the hours fall in (a test near a month's end spans two)."""
    out: list[reconcile.Line] = []
    for month in sorted({h.strftime("%Y-%m") for h in hours}):
        out.extend(reconcile.reconcile(env.engine, month, _accepted(env, month), now=now).lines)
    return out


def _planted(env: SyncEnv) -> tuple[str, str, list[datetime], datetime]:
    """Report three hours of a contract, then plant: hour 1 accepted in the ledger but never sent, hour 2
    expired, and a record the marketplace accepted for another contract that the ledger lacks."""
    start = start_of_test_window()
    hours = [start, start + timedelta(hours=1), start + timedelta(hours=2)]
    contract, customer = map_contract(env, start=start)
    other, _ = map_contract(env, start=start)
    ingest(env.engine, customer, 8000, start + timedelta(minutes=5))
    hourly.report_contract(env.engine, env.adapter, contract, hours[0], now=datetime.now(UTC))
    ingest(env.engine, customer, 500, hours[1] + timedelta(minutes=5))
    hourly.prepare(env.engine, contract, hours[1], now=datetime.now(UTC))
    _set_status(env.engine, contract, hours[1], "accepted")  # the answer was never the marketplace's
    ingest(env.engine, customer, 300, hours[2] + timedelta(minutes=5))
    hourly.prepare(env.engine, contract, hours[2], now=datetime.now(UTC))
    _set_status(env.engine, contract, hours[2], "expired")
    # A record the marketplace holds for the other contract, sent outside the ledger.
    with Session(env.engine) as session:
        from worker.persistence.contracts import ContractRow

        row = session.get(ContractRow, other)
        listing = session.get(ListingRow, row.listing_id)  # type: ignore[union-attr]
        session.expunge_all()
    stray = LedgerRow(key=f"planted:{other}", contract_id=other, marketplace=env.marketplace, dimension=DIMENSION,
                      hour=hours[0], period_start=start, quantity=7, created_at=datetime.now(UTC))
    [outcome] = env.adapter.report([hourly.usage_record(stray, row, listing)])  # type: ignore[arg-type]
    assert outcome.status.value == "accepted", outcome
    return contract, other, hours, start


@pytest.mark.parametrize("marketplace", ["aws", "azure", "gcp"])
def test_planted_discrepancies_are_listed_with_their_causes(
        marketplace: str, engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> None:
    """Never accepted, expired and accepted-but-not-in-the-ledger each show on their hour, with a cause."""
    env = _env(marketplace, engine, emulator_servers)
    contract, other, hours, start = _planted(env)
    lines = _lines(env, hours, now=datetime.now(UTC))
    by_hour = {(l.contract_id, l.hour): l for l in lines if l.kind == "hour"}

    good = by_hour[(contract, hours[0])]
    assert (good.reported, good.accepted, good.causes) == (800, Decimal(800), ())
    never = by_hour[(contract, hours[1])]
    assert never.reported == 50 and never.accepted is None and never.ledger_status == "accepted"
    assert never.causes == ("reported but not accepted: the marketplace holds no record of it",)
    expired = by_hour[(contract, hours[2])]
    assert expired.ledger_status == "expired" and expired.accepted is None
    assert expired.causes[0].startswith("expired:") and "30 unit(s), amount 0.30" in expired.causes[0]
    stray = by_hour[(other, hours[0])]
    assert (stray.reported, stray.accepted, stray.causes) == (None, Decimal(7), ("accepted but not in the ledger",))
    # The period: 8,800 tokens at 0.001 = 8.80, 880 units; 800 + 50 + 30 counted as reported.
    [period] = [l for l in lines if l.kind == "period" and l.contract_id == contract]
    assert (period.computed, period.reported, period.causes) == (880, 880, ())
    # Discrepancies come first, and they are exactly the three planted ones.
    month_lines = [l for l in lines if l.contract_id in (contract, other)]
    assert {(l.contract_id, l.hour) for l in month_lines if l.discrepancy} == {
        (contract, hours[1]), (contract, hours[2]), (other, hours[0])}
    if len({h.month for h in hours}) == 1:
        assert all(l.discrepancy for l in lines[:3]) and not any(l.discrepancy for l in lines[3:])


def test_usage_after_the_last_run_is_computed_but_not_reported(
        engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> None:
    """A late event of an hour already reported makes the period's computed units exceed the reported ones."""
    env = _env("aws", engine, emulator_servers)
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 8000, start + timedelta(minutes=5))
    hourly.report_contract(env.engine, env.adapter, contract, start, now=datetime.now(UTC))
    ingest(env.engine, customer, 100, start + timedelta(minutes=6))  # stamped before the run, arrived after
    [period] = [l for l in _lines(env, [start], now=datetime.now(UTC)) if l.kind == "period"]
    assert (period.computed, period.reported) == (810, 800)
    assert period.causes == ("computed 810 ≠ reported 800: 10 unit(s) not reported",)


def test_live_mode_reconciles_against_the_ledger_answers(
        engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> None:
    """Without a read-back API, what the ledger recorded the marketplace answered is the accepted column."""
    env = _env("gcp", engine, emulator_servers)
    contract, _other, hours, _start = _planted(env)
    lines = []
    for month in sorted({h.strftime("%Y-%m") for h in hours}):
        lines.extend(reconcile.reconcile(env.engine, month, {}, now=datetime.now(UTC)).lines)
    by_hour = {(l.contract_id, l.hour): l for l in lines if l.kind == "hour"}
    assert by_hour[(contract, hours[0])].accepted == Decimal(800)
    # The planted "accepted" row cannot be caught without the marketplace's own record; expiry still is.
    assert by_hour[(contract, hours[1])].accepted == Decimal(50) and not by_hour[(contract, hours[1])].causes
    assert by_hour[(contract, hours[2])].causes[0].startswith("expired:")


def test_azure_pipeline_states_are_causes(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> None:
    """Azure's reconStatus Mismatch (processed below submitted) is listed on the hour it concerns."""
    env = _env("azure", engine, emulator_servers)
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 8000, start + timedelta(minutes=5))
    hourly.report_contract(env.engine, env.adapter, contract, start, now=datetime.now(UTC))
    with Session(env.engine) as session:
        from worker.persistence.contracts import ContractRow

        resource = session.get(ContractRow, contract).azure_subscription_id  # type: ignore[union-attr]
    env.control("POST", "recon", {"resource_id": resource, "dimension": DIMENSION, "hour": start.isoformat(),
                                  "recon_status": "Mismatch", "processed_quantity": 799})
    [line] = [l for l in _lines(env, [start], now=datetime.now(UTC)) if l.kind == "hour"]
    assert line.accepted == Decimal(800)
    assert line.causes == ("processed quantity differs from the submitted one (Mismatch, processed 799)",)


def test_bad_month_is_refused(engine: Engine) -> None:
    """A month that is not YYYY-MM is a ValueError naming the expected shape."""
    with pytest.raises(ValueError, match="YYYY-MM"):
        reconcile.reconcile(engine, "2026-13", {}, now=datetime.now(UTC))


def test_csv_neutralises_text_from_outside() -> None:
    """A cell that a spreadsheet would run as a formula is written as text."""
    line = reconcile.Line(contract_id="=cmd()", marketplace="aws", dimension="usage_cost",
                          hour=datetime(2026, 11, 1, tzinfo=UTC), reported=3, accepted=Decimal(3))
    text = reconcile.as_csv(reconcile.Reconciliation(month="2026-11", lines=(line,), sources={}))
    assert text.splitlines()[0].startswith("contract_id,marketplace") and "'=cmd()" in text


# --- the command -----------------------------------------------------------------------------------

from click.testing import CliRunner  # noqa: E402

from tests.worker.test_sync_jobs import aws_server, env as aws_env  # noqa: E402,F401
from worker.cli import main  # noqa: E402


def test_cli_reconcile(aws_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`marketsync reconcile` prints the month's lines, exits 1 on a discrepancy, writes CSV, and refuses a bad month."""
    environment, runtime = aws_env
    point_cli_at(monkeypatch, environment, runtime)
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 4321, start + timedelta(minutes=5))
    hourly.report_contract(environment.engine, environment.adapter, contract, start, now=datetime.now(UTC))
    runner = CliRunner()
    month = f"{start:%Y-%m}"
    clean = runner.invoke(main, ["reconcile", "--month", month])
    assert clean.exit_code == 0, clean.output
    assert "aws: accepted units from the emulator's records" in clean.output
    assert contract in clean.output and "0 discrepancies" in clean.output
    mine = [line.split() for line in clean.output.splitlines() if line.startswith(contract)]
    assert mine == [[contract, "aws", "usage_cost", f"{start:%Y-%m-%d}", f"{start:%H:00}", "432", "432", "accepted"],
                    [contract, "aws", "usage_cost", "from", f"{start:%Y-%m-%d}", f"{start:%H:00}", "432", "432"]]
    _set_status(environment.engine, contract, start, "expired")
    dirty = runner.invoke(main, ["reconcile", "--month", month])
    assert dirty.exit_code == 1, dirty.output
    assert "expired: past the marketplace's window" in dirty.output and "1 discrepancy" in dirty.output
    # Discrepancies first: the first line after the header is the expired hour.
    lines = dirty.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("contract"))
    assert "expired" in lines[header + 1]
    as_csv = runner.invoke(main, ["reconcile", "--month", month, "--csv"])
    assert as_csv.exit_code == 1
    rows = as_csv.output.splitlines()
    assert rows[0] == ",".join(reconcile.CSV_COLUMNS) and any(",expired," in row for row in rows[1:])
    bad = runner.invoke(main, ["reconcile", "--month", "2026-13"])
    assert bad.exit_code == 2 and "--month" in bad.output and "YYYY-MM" in bad.output
    missing = runner.invoke(main, ["reconcile"])
    assert missing.exit_code == 2 and "--month" in missing.output


def test_a_mapped_contract_that_never_reported_is_listed(engine: Engine,
                                                         emulator_servers: dict[str, EmulatorServer]) -> None:
    """A mapped contract with usage but no report in the month (its runs never happened) is a
    discrepancy: the units the billing core computes, none reported; one without usage is not."""
    env = _env("azure", engine, emulator_servers)
    start = start_of_test_window()
    silent, customer = map_contract(env, start=start)
    idle, _ = map_contract(env, start=start)
    ingest(env.engine, customer, 5000, start + timedelta(minutes=5))  # 5.00 at 0.001: 500 units of 0.01
    lines = _lines(env, [start], now=datetime.now(UTC))
    [line] = [l for l in lines if l.contract_id == silent]
    assert (line.computed, line.reported, line.discrepancy) == (500, 0, True)
    assert "no report this month" in line.causes[0]
    assert not [l for l in lines if l.contract_id == idle]
