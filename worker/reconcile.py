"""Monthly reconciliation: units computed vs reported vs accepted, every discrepancy with its cause.

For a month (``YYYY-MM``, UTC) the reconciliation puts three records of the same usage side by side:

- **reported**: the usage ledger's rows of the month's hours, with their status;
- **accepted**: what the marketplace holds. Azure lists it (``GET /api/usageEvents``, read through
  the adapter: ``marketplaces.base.read_back``); AWS and Google have no such API, so in sandbox
  mode their emulators' records (``GET /_emulator/usage``) stand in for it and in live mode the
  answers the ledger recorded (an ``accepted`` or ``duplicate`` row) are all there is;
- **computed**: per contract, dimension and billing period, the whole units the billing core's
  cost gives (``floor(cost / unit price)``, the listing's close rounding once the final report
  was written; for a contract with consumption, only the units above what it included then,
  docs/billing-rules.md §12.6), compared with the units the ledger counts as reported for that period. A period
  still open is computed as of the last run that wrote to it (what that run saw), a closed one
  as of now (usage that arrived after its last report shows up as a difference). A mapped
  contract with no report stamped in the month gets a period line too when its billing period,
  as of the month's end, holds units it never reported (its runs never happened).

``lines`` holds one line per (contract, dimension, hour) of the month — and per marketplace
record no ledger row explains — plus one period line per (contract, dimension, billing period).
A line with causes is a discrepancy. Quantities are exact: reported and computed units are
integers, accepted ones Decimals as the marketplace wrote them.

``reconcile`` is pure over the database and the accepted records it is given; ``accepted_usage``
(called by the CLI and the dashboard) gathers those records from the marketplaces or emulators.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping, Sequence

import requests
from sqlalchemy import Engine, select
from sqlmodel import Session

from billing_core import OutOfRange, SqlSubscriptions, Subscription, usage_source
from marketplaces import rules
from marketplaces.base import AcceptedUsage, Marketplace, MarketplaceError, read_back
from worker import hourly
from worker.ledger import COUNTED, TRUEUP, amount_of, utc
from worker.logs import get_logger
from worker.metering import UnmappedPrice, overage, plan_allocations, units_for
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.ledger import LedgerRow
from worker.reports import month_bounds, safe_cell
from worker.statuses import ContractStatus, LedgerStatus

__all__ = ["CSV_COLUMNS", "EMULATOR", "LEDGER", "READ_BACK", "Line", "Reconciliation", "accepted_usage", "as_csv",
           "as_rows", "emulator_usage", "marketplaces_in_use", "month_bounds", "read_back", "reconcile", "record_identifiers", "units_text"]

log = get_logger("marketsync.reconcile")

READ_BACK = "read back from the marketplace"
EMULATOR = "the emulator's records (/_emulator/usage)"
LEDGER = "the answers recorded in the ledger (no read-back API)"
# Azure's reconStatus values that say its pipeline did not take the quantity as submitted.
_NOT_TAKEN = {"Rejected": "rejected in the marketplace's pipeline",
              "Mismatch": "processed quantity differs from the submitted one"}
CSV_COLUMNS = ("contract_id", "marketplace", "dimension", "hour", "period_start", "computed", "reported",
               "accepted", "ledger_status", "causes", "marketplace_identifiers")


@dataclass(frozen=True)
class Line:
    """One row of the reconciliation: an hour of a contract's dimension, or one of its billing periods."""

    contract_id: str | None  # None: a marketplace record that matches no contract
    marketplace: str
    dimension: str
    hour: datetime | None = None  # None on a period line
    period_start: datetime | None = None
    computed: int | None = None  # period lines only
    reported: int | None = None
    accepted: Decimal | None = None
    ledger_status: str = ""
    causes: tuple[str, ...] = ()
    identifiers: Mapping[str, str] = field(default_factory=dict)  # of an unmatched marketplace record

    @property
    def kind(self) -> str:
        return "period" if self.hour is None else "hour"

    @property
    def discrepancy(self) -> bool:
        return bool(self.causes)


@dataclass(frozen=True)
class Reconciliation:
    """A month's reconciliation: its lines (discrepancies first) and where each marketplace's accepted units came from."""

    month: str
    lines: tuple[Line, ...]
    sources: Mapping[str, str]

    @property
    def discrepancies(self) -> list[Line]:
        return [line for line in self.lines if line.discrepancy]


# --- gathering what the marketplaces accepted --------------------------------------------------------

def accepted_usage(runtime: Any, month: str, marketplaces: Iterable[str] | None = None,
                   ) -> tuple[dict[str, list[AcceptedUsage] | None], dict[str, str]]:
    """Return, per marketplace, the usage it holds for the month's hours (None: take the ledger's answers),
    and a sentence saying where each came from.

    The adapter's read-back first (Azure); else, in sandbox mode, the emulator's records; else
    the ledger. A read that fails is said in the source sentence and the ledger's answers stand in.
    """
    start, end = month_bounds(month)
    settings = runtime.settings
    accepted: dict[str, list[AcceptedUsage] | None] = {}
    sources: dict[str, str] = {}
    for name in marketplaces or [m.value for m in Marketplace]:
        try:
            items = read_back(runtime.adapter(name), start, end)
            if items is not None:
                accepted[name], sources[name] = items, READ_BACK
                continue
            if settings.MARKETPLACE_MODE == "sandbox":
                accepted[name] = emulator_usage(settings.emulator_url(name), name, start, end)
                sources[name] = EMULATOR
                continue
        except (MarketplaceError, requests.RequestException, ValueError) as exc:
            log.warning("reconcile_read_failed", marketplace=name, error=type(exc).__name__)
            accepted[name] = None
            sources[name] = f"{LEDGER}; the read failed: {type(exc).__name__}: {_first_line(exc)}"
            continue
        accepted[name], sources[name] = None, LEDGER
    return accepted, sources


def marketplaces_in_use(engine: Engine) -> list[str]:
    """Return the marketplaces that have contracts (only those are asked what they accepted)."""
    with Session(engine) as session:
        return sorted(str(m) for m in session.execute(select(ContractRow.marketplace).distinct()).scalars())


def emulator_usage(base_url: str, marketplace: str, start: datetime, end: datetime,
                   session: requests.Session | None = None) -> list[AcceptedUsage]:
    """Return an emulator's accepted usage (``GET /_emulator/usage`` totals) for hours in [start, end)."""
    http = session or requests
    response = http.get(f"{base_url}/_emulator/usage", timeout=10)
    response.raise_for_status()
    out = []
    for total in response.json(parse_float=Decimal).get("totals", []):
        hour = utc(datetime.fromisoformat(str(total["hour"]).replace("Z", "+00:00")))
        if not start <= hour < end:  # type: ignore[operator]
            continue
        identifiers = {k: str(v) for k, v in total.items()
                       if k not in ("dimension", "hour", "quantity") and isinstance(v, str) and v}
        out.append(AcceptedUsage(marketplace=Marketplace(marketplace), identifiers=identifiers,
                                 dimension=str(total["dimension"]), hour=hour,  # type: ignore[arg-type]
                                 quantity=Decimal(str(total["quantity"]))))
    return out


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


# --- matching marketplace records to contracts ---------------------------------------------------------

class _Matcher:
    """Finds the contract a marketplace record belongs to from the identifiers both carry."""

    def __init__(self, contracts: Sequence[ContractRow], listings: Mapping[str, ListingRow]):
        self._ids: dict[str, dict[str, str]] = {}
        self._index: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for contract in contracts:
            listing = listings.get(contract.listing_id or "")
            ids = record_identifiers(contract, listing)
            self._ids[contract.id] = ids
            product = set(rules(contract.marketplace).product_fields)
            for name, value in ids.items():
                if value and name not in product:
                    self._index[(contract.marketplace, name, value)].add(contract.id)

    def contract_of(self, usage: AcceptedUsage) -> str | None:
        """Return the one contract whose identifiers agree with the record's, or None (none, or several)."""
        marketplace = usage.marketplace.value
        product = set(rules(marketplace).product_fields)
        candidates: set[str] = set()
        for name, value in usage.identifiers.items():
            if value and name not in product:
                candidates |= self._index.get((marketplace, name, value), set())
        agreeing = [cid for cid in candidates
                    if all(self._ids[cid].get(name) in (None, "", value) for name, value in usage.identifiers.items())]
        return agreeing[0] if len(agreeing) == 1 else None


def record_identifiers(contract: ContractRow, listing: ListingRow | None) -> dict[str, str]:
    """Return the identifiers the contract's usage records carry (the marketplace's rules decide them)."""
    columns = {**(listing.model_dump() if listing is not None else {}), **contract.model_dump()}
    ids = rules(contract.marketplace).record_identifiers(columns, dict(contract.cloud_identifiers or {}))
    return {name: str(value) for name, value in ids.items() if value}


# --- the reconciliation ------------------------------------------------------------------------------

def reconcile(engine: Engine, month: str, accepted: Mapping[str, list[AcceptedUsage] | None], *,
              now: datetime, sources: Mapping[str, str] | None = None) -> Reconciliation:
    """Reconcile ``month`` (``YYYY-MM``; ValueError otherwise): computed vs reported vs accepted units.

    ``accepted`` gives, per marketplace, what it holds for the month's hours; a marketplace
    missing from it, or given None, is reconciled against the answers the ledger recorded.
    """
    start, end = month_bounds(month)
    with Session(engine) as session:
        rows = list(session.execute(select(LedgerRow).where(LedgerRow.hour >= start, LedgerRow.hour < end)
                                    .order_by(LedgerRow.contract_id, LedgerRow.dimension, LedgerRow.hour))
                    .scalars())
        marketplaces = {r.marketplace for r in rows} | {m for m, items in accepted.items() if items}
        contracts = list(session.execute(select(ContractRow).where(ContractRow.marketplace.in_(marketplaces)))
                         .scalars()) if marketplaces else []
        listings = {l.id: l for l in session.execute(select(ListingRow).where(
            ListingRow.id.in_({c.listing_id for c in contracts if c.listing_id}))).scalars()}
        subs = SqlSubscriptions(session).get_many({c.subscription_id for c in contracts if c.subscription_id})
        session.expunge_all()
    by_id = {c.id: c for c in contracts}
    matcher = _Matcher(contracts, listings)

    # What each marketplace holds, by (contract, dimension, hour); records no contract explains apart.
    held: dict[tuple[str, str, datetime], list[AcceptedUsage]] = defaultdict(list)
    strays: list[AcceptedUsage] = []
    for marketplace, items in accepted.items():
        for usage in items or ():
            if not start <= usage.hour < end:
                continue
            contract_id = matcher.contract_of(usage)
            if contract_id is None:
                strays.append(usage)
            else:
                held[(contract_id, usage.dimension, usage.hour)].append(usage)

    lines: list[Line] = []
    for row in rows:
        key = (row.contract_id, row.dimension, utc(row.hour))
        from_marketplace = accepted.get(row.marketplace)
        records = held.pop(key, [])  # type: ignore[arg-type]
        contract = by_id.get(row.contract_id)
        lines.append(_hour_line(row, contract, records, read=from_marketplace is not None))
    for (contract_id, dimension, hour), records in sorted(held.items()):
        quantity = _sum(records)
        if quantity:
            lines.append(Line(contract_id=contract_id, marketplace=records[0].marketplace.value, dimension=dimension,
                              hour=hour, reported=None, accepted=quantity,
                              causes=("accepted but not in the ledger",)))
    for usage in strays:
        if usage.quantity:
            lines.append(Line(contract_id=None, marketplace=usage.marketplace.value, dimension=usage.dimension,
                              hour=usage.hour, accepted=usage.quantity, identifiers=dict(usage.identifiers),
                              causes=("accepted but not in the ledger: the record matches no contract",)))
    lines.extend(_period_lines(engine, rows, by_id, listings, subs, now=now))
    lines.extend(_silent_lines(engine, {r.contract_id for r in rows}, start, end, now=now))
    ordered = sorted(lines, key=lambda l: (not l.discrepancy, l.contract_id or "", l.dimension, l.kind == "period",
                                           l.hour or l.period_start or start))
    used = {line.marketplace for line in lines}
    told = {m: (sources or {}).get(m) or (READ_BACK if accepted.get(m) is not None else LEDGER) for m in sorted(used)}
    return Reconciliation(month=month, lines=tuple(ordered), sources=told)


def units_text(value: Decimal | int | None) -> str:
    """Return a quantity as exact text, whole numbers without a fraction (``800.0`` is ``800``)."""
    if value is None:
        return ""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    return str(value)


def _sum(records: Sequence[AcceptedUsage]) -> Decimal:
    return sum((r.quantity for r in records), Decimal(0))


def _hour_line(row: LedgerRow, contract: ContractRow | None, records: list[AcceptedUsage], *, read: bool) -> Line:
    """Return the line of one ledger row against what the marketplace holds for its hour."""
    status = LedgerStatus(row.status)
    causes: list[str] = []
    if read:
        accepted: Decimal | None = _sum(records) if records else None
    else:  # no record of the marketplace's own: its answers, as the ledger recorded them
        accepted = Decimal(row.quantity) if status in (LedgerStatus.ACCEPTED, LedgerStatus.DUPLICATE) else None
    if status is LedgerStatus.PENDING:
        suspended = contract is not None and contract.status == ContractStatus.SUSPENDED
        causes.append("held: the subscription takes no usage now (sent after reinstatement)"
                      if row.held_until is not None or suspended else "pending: not answered yet")
    elif status is LedgerStatus.EXPIRED:
        amount = amount_of(row.quantity, row.unit_price)
        causes.append(f"expired: past the marketplace's window, never accepted (revenue lost: "
                      f"{row.quantity} unit(s){f', amount {amount}' if amount is not None else ''})")
    elif status in (LedgerStatus.REJECTED, LedgerStatus.FAILED):
        causes.append(f"reported but not accepted: {status.value}{f' ({row.detail})' if row.detail else ''}")
    elif accepted is None:
        if row.quantity:
            causes.append("reported but not accepted: the marketplace holds no record of it")
    elif accepted != row.quantity:
        what = "the marketplace kept an earlier record" if status is LedgerStatus.DUPLICATE else "accepted"
        causes.append(f"accepted {units_text(accepted)} ≠ reported {row.quantity} ({what})")
    if read and records and status not in (LedgerStatus.ACCEPTED, LedgerStatus.DUPLICATE):
        causes.append(f"accepted {units_text(_sum(records))} although the ledger says {status.value}")
    for record in records:
        if record.status in _NOT_TAKEN:
            processed = f", processed {units_text(record.processed)}" if record.processed is not None else ""
            causes.append(f"{_NOT_TAKEN[record.status]} ({record.status}{processed})")
    return Line(contract_id=row.contract_id, marketplace=row.marketplace, dimension=row.dimension,
                hour=utc(row.hour), period_start=utc(row.period_start), reported=row.quantity, accepted=accepted,
                ledger_status=status.value, causes=tuple(causes))


def _period_lines(engine: Engine, rows: Sequence[LedgerRow], contracts: Mapping[str, ContractRow],
                  listings: Mapping[str, ListingRow], subs: Mapping[str, Subscription], *, now: datetime) -> list[Line]:
    """Return one line per (contract, dimension, billing period) the month's rows fall in: computed vs reported."""
    periods: dict[tuple[str, datetime], datetime] = {}  # (contract, period start) -> latest hour stamp in the month
    for row in rows:
        key = (row.contract_id, utc(row.period_start))
        periods[key] = max(periods.get(key, utc(row.hour)), utc(row.hour))  # type: ignore[arg-type, type-var]
    if not periods:
        return []
    with Session(engine) as session:
        period_rows = list(session.execute(select(LedgerRow).where(
            LedgerRow.contract_id.in_({cid for cid, _ in periods}))).scalars())
        session.expunge_all()
    reported: dict[tuple[str, datetime, str], int] = defaultdict(int)
    last_run: dict[tuple[str, datetime], datetime] = {}
    final: set[tuple[str, datetime]] = set()
    for row in period_rows:
        key = (row.contract_id, utc(row.period_start))
        if key not in periods:
            continue
        if row.status in COUNTED and row.kind != TRUEUP:  # a true-up is on top of the computed units
            reported[(*key, row.dimension)] += row.quantity  # type: ignore[arg-type]
        created = utc(row.created_at)
        last_run[key] = max(last_run.get(key, created), created)  # type: ignore[arg-type, type-var]
        if row.kind == "final":
            final.add(key)  # type: ignore[arg-type]
    out: list[Line] = []
    for (contract_id, period_start), stamp in sorted(periods.items()):
        contract = contracts.get(contract_id)
        listing = listings.get(contract.listing_id or "") if contract else None
        sub = subs.get(contract.subscription_id or "") if contract else None
        marketplace = contract.marketplace if contract else ""
        names = sorted({d for (c, p, d) in reported if (c, p) == (contract_id, period_start)} |
                       {r.dimension for r in rows if (r.contract_id, utc(r.period_start)) == (contract_id, period_start)})
        if contract is None or listing is None or sub is None:
            why = "no contract" if contract is None else "no listing" if listing is None else "no subscription"
            out.extend(Line(contract_id=contract_id, marketplace=marketplace, dimension=name, period_start=period_start,
                            reported=reported[(contract_id, period_start, name)],
                            causes=(f"cannot compute: {why}",)) for name in names)
            continue
        try:
            _, window_end, _ = hourly.cost_window(sub, contract, listing, stamp=stamp, now=now)
            # A closed period is computed whole; an open one as of the last run that wrote to it.
            as_of = now if window_end < now else last_run.get((contract_id, period_start), now)
            cost, _ = hourly.contract_cost(engine, sub, contract, listing, stamp=stamp, now=as_of)
            dims = hourly.dimensions(contract, listing)
            policy = listing.close_rounding if (contract_id, period_start) in final else "floor"
            units = _units((contract, listing, sub, *hourly.cost_window(sub, contract, listing, stamp=stamp,
                                                                         now=as_of)), cost, usage_source(engine), policy)
        except (OutOfRange, UnmappedPrice, InvalidOperation, ValueError) as exc:
            out.extend(Line(contract_id=contract_id, marketplace=marketplace, dimension=name, period_start=period_start,
                            reported=reported[(contract_id, period_start, name)],
                            causes=(f"cannot compute: {type(exc).__name__}: {_first_line(exc)}",)) for name in names)
            continue
        for dim in sorted(dims, key=lambda d: d.name):
            computed = units[dim.name]
            count = reported[(contract_id, period_start, dim.name)]
            causes: tuple[str, ...] = ()
            if computed > count:
                causes = (f"computed {computed} ≠ reported {count}: {computed - count} unit(s) not reported",)
            elif computed < count:
                causes = (f"computed {computed} ≠ reported {count}: over-reported by {count - computed} unit(s) "
                          "(the cost fell after they were reported)",)
            out.append(Line(contract_id=contract_id, marketplace=marketplace, dimension=dim.name,
                            period_start=period_start, computed=computed, reported=count, causes=causes))
    return out


def _units(window: Any, cost: Mapping[str, Decimal], source: Any, policy: str) -> dict[str, int]:
    """Return each dimension's whole units computed from its cost to date as the sync computes them: per tag
    combination, summed, when the listing allocates usage (docs/marketplaces.md §1.12); above what the
    contract includes at the window's end, for a contract with consumption."""
    contract, listing = window[0], window[1]
    split = hourly.window_split(window, source)
    free = hourly.included(contract, window[4])
    return {d.name: overage(units_for(cost.get(d.name, Decimal(0)), d.unit_price, policy), free.get(d.name, 0))
            if split is None
            else plan_allocations(dict(split.get(d.name, ())), d.unit_price, {}, final=True,
                                  close_policy=policy, included=free.get(d.name, 0)).units_total
            for d in hourly.dimensions(contract, listing)}


def _silent_lines(engine: Engine, reporting: set[str], start: datetime, end: datetime, *,
                  now: datetime) -> list[Line]:
    """Return a line for each mapped contract with no report stamped in the month whose billing
    period, as of the month's end (or now), holds whole units it has not reported."""
    with Session(engine) as session:
        contracts = [c for c in session.execute(select(ContractRow).where(
            ContractRow.subscription_id.is_not(None), ContractRow.listing_id.is_not(None))).scalars()
            if c.id not in reporting and c.status != ContractStatus.PENDING]
        listings = {l.id: l for l in session.execute(select(ListingRow).where(
            ListingRow.id.in_({c.listing_id for c in contracts}))).scalars()}
        subs = SqlSubscriptions(session).get_many({c.subscription_id for c in contracts})
        counted = [(r.contract_id, utc(r.period_start), r.dimension, r.quantity) for r in session.execute(
            select(LedgerRow).where(LedgerRow.contract_id.in_([c.id for c in contracts]),
                                    LedgerRow.status.in_(list(COUNTED)), LedgerRow.kind != TRUEUP)).scalars()]
        session.expunge_all()
    reported: dict[tuple[str, datetime, str], int] = defaultdict(int)
    for contract_id, period_start, dimension, quantity in counted:
        reported[(contract_id, period_start, dimension)] += quantity  # type: ignore[index]
    until = min(end, now)
    stamp = hourly.hour_floor(until - timedelta(microseconds=1))
    windows = []
    for contract in contracts:
        listing, sub = listings.get(contract.listing_id or ""), subs.get(contract.subscription_id or "")
        if listing is not None and sub is not None and until > utc(sub.start):  # type: ignore[operator]
            window = (contract, listing, sub, *hourly.cost_window(sub, contract, listing, stamp=stamp, now=until))
            if window[4] > window[3]:
                windows.append(window)
    source = usage_source(engine)
    costs, failed = hourly.window_costs(windows, source)  # in bulk, not one read each
    out: list[Line] = []
    for window in windows:
        contract, listing, period_start = window[0], window[1], window[5]
        if contract.id not in failed:
            try:
                units = _units(window, costs[contract.id], source, "floor")
            except (OutOfRange, UnmappedPrice) as exc:
                failed[contract.id] = exc
        if contract.id in failed:
            exc = failed[contract.id]
            out.append(Line(contract_id=contract.id, marketplace=contract.marketplace, dimension="",
                            period_start=None, causes=(f"cannot compute: {type(exc).__name__}: {_first_line(exc)}",)))
            continue
        for dim in sorted(hourly.dimensions(contract, listing), key=lambda d: d.name):
            computed = units[dim.name]
            count = reported[(contract.id, utc(period_start), dim.name)]  # type: ignore[index]
            if computed > count:
                out.append(Line(contract_id=contract.id, marketplace=contract.marketplace, dimension=dim.name,
                                period_start=period_start, computed=computed, reported=count,
                                causes=(f"computed {computed} ≠ reported {count}: no report this month "
                                        f"({contract.status}, mapped)",)))
    return out


# --- output ------------------------------------------------------------------------------------------

def as_rows(result: Reconciliation) -> list[dict[str, Any]]:
    """Return the lines as plain dicts (instants as ISO text, quantities as exact text)."""
    return [{
        "contract_id": line.contract_id, "marketplace": line.marketplace, "dimension": line.dimension,
        "kind": line.kind, "hour": line.hour.isoformat() if line.hour else None,
        "period_start": line.period_start.isoformat() if line.period_start else None,
        "computed": line.computed, "reported": line.reported,
        "accepted": None if line.accepted is None else units_text(line.accepted),
        "ledger_status": line.ledger_status, "causes": list(line.causes), "identifiers": dict(line.identifiers),
    } for line in result.lines]


def as_csv(result: Reconciliation) -> str:
    """Return the lines as CSV (text from outside neutralised for spreadsheets)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in as_rows(result):
        writer.writerow([
            safe_cell(row["contract_id"] or ""), row["marketplace"], safe_cell(row["dimension"]), row["hour"] or "",
            row["period_start"] or "", "" if row["computed"] is None else row["computed"],
            "" if row["reported"] is None else row["reported"], row["accepted"] or "", row["ledger_status"],
            safe_cell("; ".join(row["causes"])),
            safe_cell(";".join(f"{k}={v}" for k, v in sorted(row["identifiers"].items()))),
        ])
    return buffer.getvalue()
