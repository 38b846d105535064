"""Manual true-ups (docs/marketplaces.md §1.11): a CSV file of adjustments, previewed, then confirmed.

A file has the columns ``contract``, ``dimension``, ``units``, ``reason`` (a header line first,
in any order). ``check`` reads it against what is stored and answers a ``Preview``: every row
with its status (``new``, or ``already_applied`` when an earlier confirmation reported it) and
every error, each naming its line and column. ``confirm`` applies a file only when it has no
error at all (``TrueupRefused`` lists every one) and, given the digest its preview showed, only
that very file (``TrueupChanged``).

The ledger's rules hold: each adjustment is keyed (``adjustment_key``: a digest of contract,
dimension, units and reason, unique in ``trueups``), so a file confirmed twice, or by two
operators at once, reports each adjustment once; its units go out as a ``pending`` ledger row of
kind ``trueup`` under the current hour — the one stamp every marketplace still accepts — and one
row per (contract, dimension) holds the file's adjustments of that pair (each marketplace takes
one record per contract, dimension and hour). True-up units are on top of the computed usage:
they never enter the reported counts the hourly run subtracts from (``ledger._uncount`` leaves
them alone too).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import Engine, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from worker import hourly
from worker.errors import Conflict, Contention, Invalid
from worker.ledger import TRUEUP, utc
from worker.logs import get_logger
from worker.metering import hour_floor, ledger_key
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import LedgerRow
from worker.persistence.trueups import TrueupRow
from worker.statuses import ContractStatus, LedgerStatus

log = get_logger("marketsync.trueups")
COLUMNS = ("contract", "dimension", "units", "reason")
MAX_ROWS = 10_000
MAX_FILE_CHARS = 2_000_000  # characters of one file (the API and the dashboard refuse more)
MAX_UNITS = 2**31 - 1  # the ledger's quantity column
MAX_REASON = 500
ATTEMPTS = 3  # confirmations retried when another writer took a key or a stamp meanwhile
# Contracts a true-up may report for: a canceled one's remaining hours belong to its final reports.
_OPEN = (ContractStatus.ACTIVE, ContractStatus.SUSPENDED)


@dataclass(frozen=True)
class RowError:
    """One problem of a file: its line (1 is the header), the column, and what is wrong."""

    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass(frozen=True)
class Adjustment:
    """One row of a file as read (``contract_id`` resolved when the contract exists)."""

    line: int
    contract: str
    dimension: str
    units: int
    reason: str
    contract_id: str = ""
    status: str = "new"  # new; in a confirmation's answer applied (now) or already_applied (earlier)

    @property
    def key(self) -> str:
        """Return the adjustment's key (``adjustment_key``)."""
        return adjustment_key(self.contract_id, self.dimension, self.units, self.reason)


@dataclass(frozen=True)
class Preview:
    """A file read against what is stored: its digest, its rows and every error."""

    digest: str
    rows: tuple[Adjustment, ...]
    errors: tuple[RowError, ...]
    stamp: datetime
    applied: tuple[int, ...] = field(default=())  # ledger ids written by a confirmation

    @property
    def ok(self) -> bool:
        return not self.errors


class TrueupRefused(Invalid):
    """A file with bad rows: nothing of it is applied; ``errors`` lists every one."""

    def __init__(self, errors: Sequence[RowError]):
        shown = "; ".join(str(e) for e in errors[:50]) + ("; ..." if len(errors) > 50 else "")
        super().__init__(f"the file has {len(errors)} error(s), nothing was applied: {shown}", field="csv")
        self.errors = tuple(errors)


class TrueupChanged(Conflict):
    """The file confirmed is not the file previewed (its digest differs)."""


def adjustment_key(contract_id: str, dimension: str, units: int, reason: str) -> str:
    """Return the key that makes an adjustment apply once: sha256 of its four values."""
    return hashlib.sha256("\x1f".join((contract_id, dimension, str(units), reason)).encode()).hexdigest()


def digest_of(text: str) -> str:
    """Return the digest a preview shows and a confirmation names: sha256 of the file's text, line breaks
    normalized (a browser sends a form's text back with CRLF line breaks; the file is the same)."""
    return hashlib.sha256(text.replace("\r\n", "\n").replace("\r", "\n").encode()).hexdigest()


def parse(text: str) -> tuple[list[Adjustment], list[RowError]]:
    """Read a file's rows and the errors of its shape and cells (pure: nothing is looked up)."""
    errors: list[RowError] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return [], [RowError(1, "header", f"not CSV: {exc}")]
    names = [h.strip().lower() for h in header or []]
    missing = [c for c in COLUMNS if c not in names]
    unknown = [n for n in names if n not in COLUMNS]
    if header is None or missing or unknown or len(set(names)) != len(names):
        detail = (f"missing {', '.join(missing)}; " if missing else "") + (
            f"unknown {', '.join(unknown)}; " if unknown else "")
        return [], [RowError(1, "header", f"{detail}the header must name the columns {', '.join(COLUMNS)} once each")]
    at = {name: names.index(name) for name in COLUMNS}
    rows: list[Adjustment] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(rows) >= MAX_ROWS:
                errors.append(RowError(line, "contract", f"a file holds at most {MAX_ROWS} adjustments"))
                break
            if len(cells) != len(names):
                errors.append(RowError(line, "contract", f"{len(cells)} cells, the header names {len(names)}"))
                continue
            value = {name: cells[at[name]].strip() for name in COLUMNS}
            bad = len(errors)
            for name in ("contract", "dimension", "reason"):
                if not value[name]:
                    errors.append(RowError(line, name, "required"))
            if len(value["reason"]) > MAX_REASON:
                errors.append(RowError(line, "reason", f"at most {MAX_REASON} characters"))
            units = _units(value["units"])
            if units is None:
                errors.append(RowError(line, "units", f"{value['units']!r} is not a whole number of units in "
                                                      f"1..{MAX_UNITS} (marketplaces take no negative usage)"))
            if len(errors) == bad:
                rows.append(Adjustment(line, value["contract"], value["dimension"], units or 0, value["reason"]))
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, "contract", f"not CSV: {exc}"))
    if not rows and not errors:
        errors.append(RowError(1, "header", "the file holds no adjustment"))
    return rows, errors


def _units(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    units = int(text)
    return units if 1 <= units <= MAX_UNITS else None


def check(engine: Engine, text: str, *, now: datetime) -> Preview:
    """Read a file against what is stored: resolve contracts, check dimensions and the window, mark applied rows."""
    stamp = hour_floor(now)
    rows, errors = parse(text)
    found = _contracts(engine, {r.contract for r in rows})
    loaded = hourly.load_many(engine, sorted({c.id for c in found.values() if isinstance(c, ContractRow)}))
    resolved: list[Adjustment] = []
    for row in rows:
        contract = found.get(row.contract)
        if not isinstance(contract, ContractRow):
            errors.append(RowError(row.line, "contract", contract or f"no contract {row.contract!r} "
                                                                    "(a marketsync contract id or external id)"))
            continue
        one = loaded[contract.id]
        if isinstance(one, Exception):
            errors.append(RowError(row.line, "contract", str(one)))
            continue
        if contract.status not in _OPEN:
            errors.append(RowError(row.line, "contract", f"contract {contract.id} is {contract.status}: a true-up "
                                   "reports for an active or suspended contract only"))
            continue
        names = [d.name for d in hourly.dimensions(contract, one[1])]
        if row.dimension not in names:
            errors.append(RowError(row.line, "dimension", f"{row.dimension!r} is not a dimension of listing "
                                   f"{one[1].id} (its dimensions: {', '.join(names)})"))
            continue
        resolved.append(Adjustment(row.line, row.contract, row.dimension, row.units, row.reason, contract.id))
    first_line: dict[str, int] = {}
    for row in resolved:
        if row.key in first_line:
            errors.append(RowError(row.line, "reason", f"repeats line {first_line[row.key]} (same contract, "
                                   "dimension, units and reason): give each adjustment its own reason"))
        first_line.setdefault(row.key, row.line)
    # The stamps first, then the keys: a confirmation commits its ledger rows and its keys together, so
    # a stamp seen taken by one is seen with its keys (the adjustment is then already applied, no error).
    taken = _taken(engine, {(r.contract_id, r.dimension) for r in resolved}, stamp)
    applied = _applied_keys(engine, [r.key for r in resolved])
    resolved = [replace(r, status="already_applied") if r.key in applied else r for r in resolved]
    for row in resolved:
        if row.status == "new" and (row.contract_id, row.dimension) in taken:
            errors.append(RowError(row.line, "dimension", f"contract {row.contract_id} already has a {row.dimension} "
                                   f"report in the hour {stamp.isoformat()}: confirm the file again next hour"))
    return Preview(digest_of(text), tuple(sorted(resolved, key=lambda r: r.line)),
                   tuple(sorted(errors, key=lambda e: (e.line, COLUMNS.index(e.column) if e.column in COLUMNS else -1))),
                   stamp)


def confirm(engine: Engine, text: str, *, digest: str | None, now: datetime) -> Preview:
    """Apply a file's new adjustments (all of them, or none when any row is bad); return what it did."""
    if digest is not None and digest != digest_of(text):
        raise TrueupChanged("the file differs from the one previewed (its digest changed): preview it again",
                            field="digest")
    for _attempt in range(ATTEMPTS):
        preview = check(engine, text, now=now)
        if preview.errors:
            raise TrueupRefused(preview.errors)
        written = _write(engine, preview, now=now)
        if written is not None:
            for ledger_id, rows in written.items():
                log.info("trueup_applied", ledger_id=ledger_id, contract=rows[0].contract_id,
                         dimension=rows[0].dimension, units=sum(r.units for r in rows), file=preview.digest[:12])
            rows = tuple(replace(r, status="applied") if r.status == "new" else r for r in preview.rows)
            return Preview(preview.digest, rows, (), preview.stamp, applied=tuple(sorted(written)))
    raise Contention("other writers kept taking these adjustments' keys or hour; confirm again")


def _write(engine: Engine, preview: Preview, *, now: datetime) -> dict[int, list[Adjustment]] | None:
    """Write the new adjustments in one transaction: a ledger row per (contract, dimension), a true-up row each.

    None (nothing written) when another writer took a key or the stamp meanwhile.
    """
    groups: dict[tuple[str, str], list[Adjustment]] = defaultdict(list)
    for row in preview.rows:
        if row.status == "new":
            groups[(row.contract_id, row.dimension)].append(row)
    if not groups:
        return {}
    loaded = hourly.load_many(engine, sorted({c for c, _ in groups}))
    ledger_t, trueup_t = LedgerRow.__table__, TrueupRow.__table__
    out: dict[int, list[Adjustment]] = {}
    try:
        with Session(engine) as session:
            for (contract_id, dimension), rows in sorted(groups.items()):
                one = loaded[contract_id]
                if isinstance(one, Exception):
                    return None  # unmapped meanwhile: the next pass's check names it
                contract, listing, sub = one
                _, _, period_start = hourly.cost_window(sub, contract, listing, stamp=preview.stamp, now=now)
                price = next(d.unit_price for d in hourly.dimensions(contract, listing) if d.name == dimension)
                units = sum(r.units for r in rows)
                [ledger_id] = session.execute(insert(ledger_t).returning(ledger_t.c.id), [{
                    "key": ledger_key(contract_id, dimension, preview.stamp), "contract_id": contract_id,
                    "marketplace": contract.marketplace, "product": hourly.product_of(contract),
                    "dimension": dimension, "hour": preview.stamp, "period_start": period_start, "quantity": units,
                    "kind": TRUEUP, "cost_to_date": "0", "units_total": 0, "unit_price": str(price),
                    "status": LedgerStatus.PENDING.value,
                    "detail": "true-up: " + "; ".join(r.reason for r in rows)[:1900],
                    "attempts": 0, "created_at": now,
                }]).scalars().all()
                session.execute(insert(trueup_t), [{
                    "key": r.key, "contract_id": contract_id, "dimension": dimension, "units": r.units,
                    "reason": r.reason, "ledger_id": ledger_id, "file_digest": preview.digest, "line": r.line,
                    "created_at": now,
                } for r in rows])
                out[ledger_id] = rows
            session.commit()
    except IntegrityError:
        return None
    return out


def _contracts(engine: Engine, names: set[str]) -> dict[str, ContractRow | str]:
    """Return each name's contract (by marketsync id, else external id), or why it names none."""
    if not names:
        return {}
    with Session(engine) as session:
        rows = list(session.execute(select(ContractRow).where(
            or_(ContractRow.id.in_(names), ContractRow.external_id.in_(names)))).scalars())
        session.expunge_all()
    out: dict[str, ContractRow | str] = {}
    for name in names:
        by_id = [r for r in rows if r.id == name]
        by_external = [r for r in rows if r.external_id == name]
        if by_id:
            out[name] = by_id[0]
        elif len(by_external) == 1:
            out[name] = by_external[0]
        elif by_external:
            out[name] = (f"{name!r} is the external id of {len(by_external)} contracts "
                         f"({', '.join(sorted(r.id for r in by_external))}): name one by its id")
    return out


def _applied_keys(engine: Engine, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    with Session(engine) as session:
        return set(session.execute(select(TrueupRow.key).where(TrueupRow.key.in_(list(keys)))).scalars())


def _taken(engine: Engine, pairs: set[tuple[str, str]], stamp: datetime) -> set[tuple[str, str]]:
    """Return the (contract, dimension) pairs whose report under ``stamp`` already exists."""
    if not pairs:
        return set()
    with Session(engine) as session:
        found = session.execute(select(LedgerRow.contract_id, LedgerRow.dimension).where(
            LedgerRow.contract_id.in_({c for c, _ in pairs}), LedgerRow.hour == stamp)).all()
    return {(c, d) for c, d in found} & pairs


def history(engine: Engine, *, limit: int = 100) -> list[dict[str, Any]]:
    """Return the latest applied adjustments, newest first, with their report's status."""
    with Session(engine) as session:
        rows = session.execute(select(TrueupRow, LedgerRow.status, LedgerRow.hour).join(
            LedgerRow, LedgerRow.id == TrueupRow.ledger_id).order_by(TrueupRow.id.desc()).limit(limit)).all()
    return [{"contract_id": t.contract_id, "dimension": t.dimension, "units": t.units, "reason": t.reason,
             "ledger_id": t.ledger_id, "status": status, "hour": utc(hour).isoformat(),  # type: ignore[union-attr]
             "line": t.line, "file_digest": t.file_digest, "created_at": utc(t.created_at).isoformat()}  # type: ignore[union-attr]
            for t, status, hour in rows]


def as_dict(preview: Preview) -> dict[str, Any]:
    """Return a preview (or a confirmation's answer) as JSON-ready data."""
    return {"digest": preview.digest, "hour": preview.stamp.isoformat(), "ok": preview.ok,
            "rows": [{"line": r.line, "contract": r.contract, "contract_id": r.contract_id or None,
                      "dimension": r.dimension, "units": r.units, "reason": r.reason, "status": r.status}
                     for r in preview.rows],
            "errors": [{"line": e.line, "column": e.column, "message": e.message} for e in preview.errors],
            "applied_ledger_ids": list(preview.applied),
            "counts": {status: sum(1 for r in preview.rows if r.status == status)
                       for status in ("new", "applied", "already_applied")}}
