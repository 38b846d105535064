"""Manual true-ups (worker/trueups.py): a CSV previewed, then confirmed, through the ledger and the AWS emulator with
the real boto3 client — keyed, once, under the current hour, every bad row listed and nothing applied."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from config import Settings
from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import (
    TWO_DIMENSIONS, SyncEnv, fresh_env, ingest, map_contract, point_cli_at, setup_two_dimension_billing,
    start_of_test_window,
)
from worker import hourly, ledger, trueups
from worker.cli import main
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import DimensionSyncRow, LedgerRow
from worker.persistence.trueups import TrueupRow
from worker.runtime import Runtime


@pytest.fixture
def env(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    environment = fresh_env("aws", engine, emulator_servers)
    setup_two_dimension_billing(engine)
    return environment


@pytest.fixture
def runtime(settings: Settings, env: SyncEnv) -> Iterator[Runtime]:
    """A runtime on the test's database whose AWS adapter talks to the emulator (what the CLI builds)."""
    built = Runtime(settings.model_copy(update={"AWS_EMULATOR_PORT": env.server.port, "EMULATOR_HOST": "127.0.0.1"}))
    yield built
    built.close()


def _file(*rows: str) -> str:
    return "\n".join(("contract,dimension,units,reason", *rows)) + "\n"


def _count(engine: Engine, table: Any) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())


def _trueup_rows(engine: Engine) -> list[LedgerRow]:
    with Session(engine) as session:
        return list(session.execute(select(LedgerRow).where(LedgerRow.kind == ledger.TRUEUP)
                                    .order_by(LedgerRow.id)).scalars())


def test_preview_then_confirm_reports_each_adjustment_once(env: SyncEnv) -> None:
    """A preview changes nothing; the confirmation writes one pending row per contract and dimension (two adjustments of
    one pair summed) under the current hour, the emulator accepts it, and confirming the file again reports nothing."""
    start = start_of_test_window()
    contract, _ = map_contract(env, start=start, plan_id="plan_dims", dimensions=TWO_DIMENSIONS)
    other, _ = map_contract(env, start=start)
    with Session(env.engine) as session:
        external = session.get(ContractRow, other).external_id
    text = _file(f"{contract},api_calls,40,credit note 17", f"{contract},api_calls,2,credit note 18",
                 f"{external},usage_cost,7,missed hour 03:00")
    now = datetime.now(UTC)

    preview = trueups.check(env.engine, text, now=now)
    assert preview.ok and [r.status for r in preview.rows] == ["new"] * 3
    assert [r.contract_id for r in preview.rows] == [contract, contract, other]  # by id or external id
    assert _count(env.engine, LedgerRow) == 0 and _count(env.engine, TrueupRow) == 0

    applied = trueups.confirm(env.engine, text, digest=preview.digest, now=now)
    assert [r.status for r in applied.rows] == ["applied"] * 3 and len(applied.applied) == 2
    rows = _trueup_rows(env.engine)
    assert sorted((r.contract_id, r.dimension, r.quantity, r.status, r.hour.replace(tzinfo=UTC)) for r in rows) == sorted([
        (contract, "api_calls", 42, "pending", hour_floor(now)), (other, "usage_cost", 7, "pending", hour_floor(now))])
    hourly.send_pending(env.engine, env.adapter, "aws", now=now)
    assert env.totals_by_dimension() == {"api_calls": 42, "usage_cost": 7}

    again = trueups.confirm(env.engine, text, digest=preview.digest, now=now + timedelta(minutes=1))
    assert [r.status for r in again.rows] == ["already_applied"] * 3 and again.applied == ()
    assert trueups.as_dict(again)["counts"] == {"new": 0, "applied": 0, "already_applied": 3}
    assert _count(env.engine, TrueupRow) == 3 and len(_trueup_rows(env.engine)) == 2
    assert env.totals_by_dimension() == {"api_calls": 42, "usage_cost": 7}


def test_bad_rows_refuse_the_whole_file_with_every_error(env: SyncEnv) -> None:
    """Every bad cell is listed with its line and column, the good rows included nothing is applied."""
    start = start_of_test_window()
    contract, _ = map_contract(env, start=start)
    text = _file(f"{contract},usage_cost,5,good row",  # line 2
                 "ctr_nope,usage_cost,5,unknown contract",  # 3
                 f"{contract},no_such_dimension,5,bad dimension",  # 4
                 f"{contract},usage_cost,-3,negative",  # 5
                 f"{contract},usage_cost,1.5,fraction",  # 6
                 f"{contract},usage_cost,5,",  # 7
                 f"{contract},usage_cost,5,good row",  # 8 repeats line 2
                 f"{contract},usage_cost")  # 9
    preview = trueups.check(env.engine, text, now=datetime.now(UTC))
    assert [(e.line, e.column) for e in preview.errors] == [
        (3, "contract"), (4, "dimension"), (5, "units"), (6, "units"), (7, "reason"), (8, "reason"), (9, "contract")]
    assert "no contract 'ctr_nope'" in preview.errors[0].message
    assert "its dimensions: usage_cost" in preview.errors[1].message
    assert "repeats line 2" in preview.errors[5].message

    with pytest.raises(trueups.TrueupRefused) as refused:
        trueups.confirm(env.engine, text, digest=None, now=datetime.now(UTC))
    assert len(refused.value.errors) == 7 and "line 9, column contract" in str(refused.value)
    assert refused.value.field == "csv"
    assert _count(env.engine, LedgerRow) == 0 and _count(env.engine, TrueupRow) == 0


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("", "must name the columns", id="empty"),
    pytest.param("contract,units,reason\nc,1,r\n", "missing dimension", id="missing-column"),
    pytest.param("contract,dimension,units,reason,extra\n", "unknown extra", id="unknown-column"),
    pytest.param("contract,dimension,units,reason\n", "holds no adjustment", id="no-rows"),
])
def test_a_bad_header_names_line_one(text: str, message: str) -> None:
    """A file whose header is not the four columns (or with no row) is one error on line 1, column header."""
    rows, errors = trueups.parse(text)
    assert rows == [] and [(e.line, e.column) for e in errors] == [(1, "header")] and message in errors[0].message


def test_the_window_and_the_contract_state_are_checked(env: SyncEnv) -> None:
    """A true-up needs the current hour of its contract and dimension free, and an active or suspended contract."""
    start = start_of_test_window()
    busy, customer = map_contract(env, start=start)
    canceled, _ = map_contract(env, start=start)
    now = datetime.now(UTC)
    ingest(env.engine, customer, 3000, now - timedelta(seconds=1))
    assert hourly.prepare(env.engine, busy, hour_floor(now), now=now).outcome == "queued"
    with Session(env.engine) as session:
        row = session.get(ContractRow, canceled)
        row.status, row.canceled_at = "canceled", now
        session.add(row)
        session.commit()
    preview = trueups.check(env.engine, _file(f"{busy},usage_cost,5,late", f"{canceled},usage_cost,5,late"), now=now)
    assert [(e.line, e.column) for e in preview.errors] == [(2, "dimension"), (3, "contract")]
    assert "confirm the file again next hour" in preview.errors[0].message
    assert "is canceled" in preview.errors[1].message
    # Next hour the stamp is free again.
    later = trueups.check(env.engine, _file(f"{busy},usage_cost,5,late"), now=now + timedelta(hours=1))
    assert later.ok


def test_true_up_units_stay_outside_the_computed_counts(env: SyncEnv) -> None:
    """The hourly run reports the computed units whatever the true-ups, and a rejected true-up uncounts nothing."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 3000, start + timedelta(minutes=5))  # 300 units
    now = datetime.now(UTC)
    trueups.confirm(env.engine, _file(f"{contract},usage_cost,50,goodwill"), digest=None, now=now)
    assert hourly.prepare(env.engine, contract, start, now=now).quantity == 300
    [row] = _trueup_rows(env.engine)
    ledger.fail(env.engine, [row], "refused", now=now)
    with Session(env.engine) as session:
        assert session.get(DimensionSyncRow, (contract, "usage_cost")).units_reported == 300


def test_concurrent_confirmations_apply_once(env: SyncEnv) -> None:
    """Two confirmations of one file at once write its adjustment once: one ledger row, one true-up row."""
    contract, _ = map_contract(env, start=start_of_test_window())
    text = _file(f"{contract},usage_cost,9,race")
    now = datetime.now(UTC)
    barrier = threading.Barrier(2)
    answers: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            answers.append(trueups.confirm(env.engine, text, digest=None, now=now))
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            answers.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(a, trueups.Preview) for a in answers), answers
    assert sorted(len(a.applied) for a in answers) == [0, 1]
    assert _count(env.engine, TrueupRow) == 1 and [r.quantity for r in _trueup_rows(env.engine)] == [9]


def test_cli_previews_then_confirms(env: SyncEnv, runtime: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """``marketsync trueup FILE`` previews (exit 0, nothing written); ``--confirm`` applies; a bad file exits 1 with
    every error on stderr."""
    point_cli_at(monkeypatch, env, runtime)
    contract, _ = map_contract(env, start=start_of_test_window())
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(_file(f"{contract},usage_cost,3,cli"))
    bad.write_text(_file(f"{contract},usage_cost,x,cli", "ctr_nope,usage_cost,1,cli"))
    runner = CliRunner()

    preview = runner.invoke(main, ["trueup", str(good)])
    assert preview.exit_code == 0, preview.output
    assert "1 to apply" in preview.output and _count(env.engine, TrueupRow) == 0
    applied = runner.invoke(main, ["trueup", str(good), "--confirm"])
    assert applied.exit_code == 0 and "applied 1 adjustment(s)" in applied.output
    again = runner.invoke(main, ["trueup", str(good), "--confirm"])
    assert again.exit_code == 0 and "applied 0 adjustment(s)" in again.output and "1 already applied" in again.output
    refused = runner.invoke(main, ["trueup", str(bad), "--confirm"])
    assert refused.exit_code == 1
    assert "line 2, column units" in refused.output and "line 3, column contract" in refused.output
    assert _count(env.engine, TrueupRow) == 1
