"""The hourly report (docs/architecture.md §4, docs/billing-rules.md §12): cost window, prepare, report, send.

Two steps, each safe to repeat and to run in several processes at once:

1. ``prepare``: compute the contract's unrounded cost to date for its billing period, split
   it over the listing's dimensions, convert each to whole units (above what a contract with
   consumption includes at the window's end: ``included``), and write each difference to
   the usage ledger as a ``pending`` row keyed (contract, dimension, hour stamp) — ``ledger.record``, a compare-and-swap on the contract's
   sync state in the same transaction, so no two runs ever count the same units.
2. ``send_pending``: expire the pending rows past the marketplace's window (never sent, their
   units revenue lost), claim up to a batch of pending rows of one marketplace (across
   contracts; held ones wait: a suspended contract, a "not active" answer), send them through the
   adapter, and record each answer. A crash before the answer is recorded leaves the row
   pending; it is sent again, identical (a wire id the marketplace dedupes on is pinned on the
   row before the first send), and the marketplace's dedupe answers.

A contract whose costs cannot be computed (``OutOfRange``: its usage is beyond the supported
range; ``UnmappedPrice``: a price of its subscription maps to no dimension of its listing)
reports nothing and is put in the ``cost_error`` state — ``last_outcome`` of its sync state,
with the reason in ``last_error`` — shown on the dashboard and counted in ``/metrics``.
It is not retried (the same data gives the same answer); the other contracts of its chunk are
reported as usual, and the next run that can compute its costs clears the state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence

from sqlalchemy import Engine, select
from sqlmodel import Session

from billing_core import (
    BatchSqlUsageSource, OutOfRange, SqlSubscriptions, Subscription, billing_period, costs, costs_each, usage_source, watermark,
)
from billing_core.money import exact
from marketplaces import rules
from marketplaces.base import Marketplace, PermanentMarketplaceError, TransientMarketplaceError, UsageRecord
from worker import allocations, cost_memo, entitlements, ledger
from worker.errors import Permanent, Transient
from worker.ledger import COST_ERROR, Due, Part, Prepared, utc
from worker.logs import get_logger
from worker.metering import Dimension, UnmappedPrice, cost_by_dimension, dimensions_of, hour_floor
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.ledger import LedgerRow
from worker.statuses import SYNCABLE, MappingStatus

log = get_logger("marketsync.sync")
# The contract columns a marketplace's record identifiers are read from.
_COLUMN_IDENTIFIERS = ("product_code", "license_arn", "customer_aws_account_id", "customer_identifier",
                       "azure_subscription_id", "plan_id", "gcp_entitlement_id")
# The listing's flags a marketplace's record identifiers depend on (its rules decide what they mean).
_LISTING_FLAGS = ("aws_legacy_identifiers", "aws_concurrent_agreements")
_Loaded = tuple[ContractRow, ListingRow, Subscription]


class SyncError(Permanent):
    """A contract cannot be reported as it is (unmapped, no listing, ...); shown, not retried."""


def batch_size(marketplace: str) -> int:
    """Return how many ledger rows of ``marketplace`` go out in one send."""
    return rules(marketplace).batch_size


def dimensions(contract: ContractRow, listing: ListingRow) -> tuple[Dimension, ...]:
    """Return the listing's dimensions with their unit prices (a contract's own pricing wins, by name)."""
    overrides = {str(d["name"]): Decimal(str(d["unit_price"]))
                 for d in (contract.pricing or {}).get("dimensions", []) or []
                 if d.get("name") and d.get("unit_price")}
    return dimensions_of(listing.dimension, listing.unit_price, listing.dimensions, overrides)


def unit_price(contract: ContractRow, listing: ListingRow) -> Decimal | None:
    """Return the unit price of a single-dimension listing (None when it meters several)."""
    found = dimensions(contract, listing)
    return found[0].unit_price if len(found) == 1 else None


def _metering_start(listing: ListingRow) -> datetime | None:
    if listing.metering_start_date is None:
        return None
    return datetime.combine(listing.metering_start_date, datetime.min.time(), tzinfo=timezone.utc)


def cost_window(sub: Subscription, contract: ContractRow, listing: ListingRow, *, stamp: datetime,
                now: datetime) -> tuple[datetime, datetime, datetime]:
    """Return (start, end, period start) of the costs to read: the billing period the stamp falls in, to now."""
    ends = [now]
    for limit in (utc(sub.end), utc(contract.cancel_effective_at)):
        if limit is not None:
            ends.append(limit)
    end = min(ends)
    reference = min(stamp, end - timedelta(microseconds=1))
    reference = max(reference, utc(sub.start))  # type: ignore[type-var]
    period = billing_period(sub, reference)
    start = period.start
    metering_start = _metering_start(listing)
    if metering_start is not None:
        start = max(start, metering_start)
    return start, min(end, period.end), period.start


def _costs(result: Any, contract: ContractRow, listing: ListingRow) -> dict[str, Decimal]:
    """Return the unrounded cost of each dimension from the prices' costs (``metering.cost_by_dimension``)."""
    if result is None:
        return {d.name: Decimal(0) for d in dimensions(contract, listing)}
    return cost_by_dimension(result.per_price_costs, dimensions(contract, listing),
                             include_fixed_fees=listing.include_fixed_fees)


def contract_cost(engine: Engine, sub: Subscription, contract: ContractRow, listing: ListingRow, *,
                  stamp: datetime, now: datetime) -> tuple[dict[str, Decimal], datetime]:
    """Return the unrounded cost to date per dimension of the billing period the stamp falls in, and its start."""
    start, end, period_start = cost_window(sub, contract, listing, stamp=stamp, now=now)
    if end <= start:
        return _costs(None, contract, listing), period_start
    return _costs(costs(sub, start, end, usage_source(engine)), contract, listing), period_start


def _load(engine: Engine, contract_id: str) -> _Loaded:
    """Return the contract with its listing and subscription (SyncError when it cannot be reported)."""
    loaded = load_many(engine, [contract_id])[contract_id]
    if isinstance(loaded, SyncError):
        raise loaded
    return loaded


def load_many(engine: Engine, contract_ids: Sequence[str]) -> dict[str, _Loaded | SyncError]:
    """Load many contracts with their listings and subscriptions in three queries."""
    out: dict[str, _Loaded | SyncError] = {}
    with Session(engine) as session:
        contracts = {c.id: c for c in session.execute(
            select(ContractRow).where(ContractRow.id.in_(list(contract_ids)))).scalars()}
        listings = {row.id: row for row in session.execute(select(ListingRow).where(
            ListingRow.id.in_({c.listing_id for c in contracts.values() if c.listing_id}))).scalars()}
        subs = SqlSubscriptions(session).get_many({c.subscription_id for c in contracts.values() if c.subscription_id})
        for contract_id in contract_ids:
            contract = contracts.get(contract_id)
            if contract is None:
                out[contract_id] = SyncError(f"no contract {contract_id!r}")
            elif contract.mapping_status != MappingStatus.MAPPED or not contract.subscription_id:
                out[contract_id] = SyncError(f"contract {contract_id} is not mapped to a subscription")
            elif not contract.listing_id or contract.listing_id not in listings:
                out[contract_id] = SyncError(f"contract {contract_id} has no listing")
            elif contract.subscription_id not in subs:
                out[contract_id] = SyncError(f"subscription {contract.subscription_id} of contract {contract_id} "
                                             "does not exist")
            else:
                out[contract_id] = (contract, listings[contract.listing_id], subs[contract.subscription_id])
        session.expunge_all()
    return out


def _unreportable(contract: ContractRow, listing: ListingRow, sub: Subscription, stamp: datetime) -> Prepared | None:
    """Return why the contract reports nothing under ``stamp`` (skipped), or None when it may report."""
    if contract.status not in SYNCABLE:
        return Prepared("skipped", f"contract is {contract.status}")
    first_hour = hour_floor(utc(sub.start))  # type: ignore[arg-type]
    metering_start = _metering_start(listing)
    if metering_start is not None:
        first_hour = max(first_hour, metering_start)
    if stamp < first_hour:
        # No marketplace accepts usage stamped before the buyer's use began.
        return Prepared("skipped", f"hour {stamp.isoformat()} is before the contract's first billable hour")
    return None


def product_of(contract: ContractRow) -> str:
    """Return the product a contract's reports name: AWS product code, Azure offer, Google product."""
    return contract.product_code or contract.offer_id or str((contract.cloud_identifiers or {}).get("product_id", ""))


def included(contract: ContractRow, at: datetime) -> dict[str, int]:
    """Return the units each dimension of a contract with consumption includes at ``at`` (the end of the
    usage measured: an entitlement change counts from its instant; docs/billing-rules.md §12.6)."""
    return entitlements.included_at(entitlements.history(contract.entitlements), at)


def _due(contract: ContractRow, listing: ListingRow, cost: dict[str, Decimal], period_start: datetime,
         window_end: datetime, split: allocations.Split | None = None) -> Due:
    free = included(contract, window_end)
    parts = tuple(Part(d.name, d.unit_price, cost.get(d.name, Decimal(0)),
                       allocations=None if split is None else split.get(d.name, ()), included=free.get(d.name, 0))
                  for d in dimensions(contract, listing))
    return Due(contract_id=contract.id, marketplace=contract.marketplace, product=product_of(contract), parts=parts,
               close_rounding=listing.close_rounding, period_start=period_start,
               zero_record=rules(contract.marketplace).hourly_zero_record)


def prepare(engine: Engine, contract_id: str, stamp: datetime, *, now: datetime, final: bool = False,
            kind: str = "hourly") -> Prepared:
    """Write the contract's outstanding units under ``stamp`` to the ledger (pending)."""
    stamp = hour_floor(stamp)
    contract, listing, sub = _load(engine, contract_id)
    skipped = _unreportable(contract, listing, sub, stamp)
    if skipped is not None:
        return skipped
    try:
        cost, period_start = contract_cost(engine, sub, contract, listing, stamp=stamp, now=now)
        window = cost_window(sub, contract, listing, stamp=stamp, now=now)
        split = window_split((contract, listing, sub, *window), usage_source(engine))
    except (OutOfRange, UnmappedPrice) as exc:
        ledger.mark_cost_errors(engine, {contract_id: exc}, now=now)
        return Prepared(COST_ERROR, ledger.cost_error_text(exc))
    window_end = window[1]
    result = ledger.record(engine, [_due(contract, listing, cost, period_start, window_end, split)], stamp, now=now,
                           kind=kind, final=final)[contract_id]
    if isinstance(result, Exception):
        raise result
    return result


def _windows(engine: Engine, contract_ids: Sequence[str], stamp: datetime, *, now: datetime,
             skipped: dict[str, Prepared | Exception]) -> list[cost_memo.Window]:
    """Load the contracts and return the cost window of each that may report under ``stamp``;
    each one that cannot goes to ``skipped`` with its ``SyncError`` or ``Prepared("skipped")``."""
    todo: list[cost_memo.Window] = []
    for contract_id, loaded in load_many(engine, contract_ids).items():
        if isinstance(loaded, SyncError):
            skipped[contract_id] = loaded
            continue
        contract, listing, sub = loaded
        reason = _unreportable(contract, listing, sub, stamp)
        if reason is not None:
            skipped[contract_id] = reason
            continue
        todo.append((contract, listing, sub, *cost_window(sub, contract, listing, stamp=stamp, now=now)))
    return todo


def window_costs(windows: Sequence[cost_memo.Window], source: Any
                 ) -> tuple[dict[str, dict[str, Decimal]], dict[str, OutOfRange | UnmappedPrice]]:
    """Compute the windows' costs per dimension in bulk (one grouped read per metric): return
    (costs by contract id, the error of each contract whose cost cannot be computed)."""
    results = costs_each([(sub, start, end) for _, _, sub, start, end, _ in windows], source)
    totals: dict[str, dict[str, Decimal]] = {}
    failed: dict[str, OutOfRange | UnmappedPrice] = {}
    for (contract, listing, *_rest), result in zip(windows, results):
        if isinstance(result, OutOfRange):
            failed[contract.id] = result
            continue
        try:
            totals[contract.id] = _costs(result, contract, listing)
        except UnmappedPrice as exc:
            failed[contract.id] = exc
    return totals, failed


def prepare_many(engine: Engine, contract_ids: Sequence[str], stamp: datetime, *, now: datetime,
                 kind: str = "hourly") -> dict[str, Prepared | Exception]:
    """``prepare`` many contracts under ``stamp``, reading their costs in bulk (one grouped query per metric).

    A contract that cannot be reported maps to its ``SyncError``; one whose costs cannot be
    computed to ``Prepared("cost_error")`` (and that state); one whose state kept changing to
    ``Contention``.
    """
    stamp = hour_floor(stamp)
    out: dict[str, Prepared | Exception] = {}
    todo = _windows(engine, contract_ids, stamp, now=now, skipped=out)
    priced = [t for t in todo if t[4] > t[3]]
    # An hourly run carries forward the cost of a contract where nothing changed (cost_memo.py);
    # the watermark is read before any usage, so what is stored holds every change up to it.
    carry = kind == "hourly"
    position = watermark(engine) if carry else 0
    # A listing that allocates usage is split per tag combination from a fresh read every run.
    totals: dict[str, dict[str, Decimal]] = (
        cost_memo.reuse(engine, [t for t in priced if not allocations.enabled(t[1])], position=position, until=now)
        if carry else {})
    fresh = [t for t in priced if t[0].id not in totals]
    source = usage_source(engine)
    computed, failed = window_costs(fresh, source)
    totals.update(computed)
    if carry:
        cost_memo.store(engine, _memos([t for t in fresh if not allocations.enabled(t[1])], totals, failed, source),
                        position=position, now=now)
    splits = _splits(todo, source, failed)
    ledger.mark_cost_errors(engine, failed, now=now)
    out.update({contract_id: Prepared(COST_ERROR, ledger.cost_error_text(exc)) for contract_id, exc in failed.items()})
    dues = [_due(contract, listing, totals.get(contract.id) or _costs(None, contract, listing), period_start, end,
                 splits.get(contract.id))
            for contract, listing, _sub, _start, end, period_start in todo if contract.id not in failed]
    out.update(ledger.record(engine, dues, stamp, now=now, kind=kind))
    return out


def window_split(window: cost_memo.Window, source: Any) -> allocations.Split | None:
    """Return each dimension's cost per tag combination when the listing allocates usage (else None)."""
    contract, listing, sub, start, end, _period_start = window
    if not allocations.enabled(listing):
        return None
    return allocations.split_costs(sub, listing, dimensions(contract, listing), start, end, source)


def _splits(windows: Sequence[cost_memo.Window], source: Any,
            failed: dict[str, OutOfRange | UnmappedPrice]) -> dict[str, allocations.Split]:
    """Return the split of each window whose listing allocates usage; one that cannot be computed goes to ``failed``."""
    out: dict[str, allocations.Split] = {}
    for window in windows:
        contract_id = window[0].id
        if contract_id in failed:
            continue
        try:
            split = window_split(window, source)
        except (OutOfRange, UnmappedPrice) as exc:
            failed[contract_id] = exc
            continue
        if split is not None:
            out[contract_id] = split
    return out


def verify_carried(engine: Engine, *, now: datetime) -> tuple[int, list[str]]:
    """Check every cost the next hourly run would carry forward against a computation from
    scratch; return (checked, differences) (``marketsync verify``, the fault suite, bench.sync)."""
    position = watermark(engine)
    ids = syncable_contracts(engine)
    windows = [w for chunk in range(0, len(ids), 500)
               for w in _windows(engine, ids[chunk:chunk + 500], hour_floor(now), now=now, skipped={}) if w[4] > w[3]]
    carried = cost_memo.reuse(engine, windows, position=position, until=now)
    todo = [w for w in windows if w[0].id in carried]
    differences: list[str] = []
    raw = BatchSqlUsageSource(engine)  # from the events themselves, not from fragments
    for chunk in range(0, len(todo), 500):
        fresh, failed = window_costs(todo[chunk:chunk + 500], raw)
        for contract_id, cost in {**fresh, **failed}.items():
            if cost != carried[contract_id]:
                differences.append(f"contract {contract_id}: carried {carried[contract_id]} != from scratch {cost}")
    return len(carried), differences


def _memos(fresh: Sequence[cost_memo.Window], totals: dict[str, dict[str, Decimal]], failed: Any,
           source: Any) -> list[cost_memo.Computed]:
    """The costs just computed, with what they rest on, for the next run to carry forward."""
    out: list[cost_memo.Computed] = []
    names: dict[str, str | None] = {}
    for window in fresh:
        if window[0].id in failed or window[0].id not in totals:
            continue
        digest, metrics = cost_memo.basis(window)
        for metric_id in metrics - set(names):
            try:
                names[metric_id] = source.definition(metric_id).event_name
            except Exception:  # noqa: BLE001 - a metric the engine cannot name: never carried forward
                names[metric_id] = None
        events = {names[m] for m in metrics}
        if None not in events:
            out.append((window, digest, frozenset(events), totals[window[0].id]))  # type: ignore[arg-type]
    return out


def preview(engine: Engine, contract_id: str, stamp: datetime, *, now: datetime, final: bool = False) -> dict[str, Any]:
    """Return what ``prepare`` would write for the contract, per dimension and in all, without writing anything."""
    stamp = hour_floor(stamp)
    contract, listing, sub = _load(engine, contract_id)
    cost, period_start = contract_cost(engine, sub, contract, listing, stamp=stamp, now=now)
    window = cost_window(sub, contract, listing, stamp=stamp, now=now)
    split = window_split((contract, listing, sub, *window), usage_source(engine))
    counts = {c["dimension"]: c for c in ledger.dimension_counts(engine, contract_id)}
    taken = ledger.stamp_taken(engine, contract_id, stamp)
    window_end = window[1]
    lines = []
    for part in _due(contract, listing, cost, period_start, window_end, split).parts:
        count = counts.get(part.dimension)
        reported = count["units_reported"] if count and count["period_start"] == period_start else 0
        prior = ledger.allocated_before(count and count["period_start"], count and count["allocated"], period_start,
                                        reported)
        plan, _ = ledger.plan_part(part, prior, reported, final=final, close_policy=listing.close_rounding)
        lines.append({"dimension": part.dimension, "cost": str(part.cost), "unit_price": str(part.unit_price),
                      "included": part.included, "units_total": plan.units_total, "units_reported": reported,
                      "would_send": 0 if taken else plan.delta, "over_reported": plan.over_reported})
    with exact():
        total_cost = sum((Decimal(line["cost"]) for line in lines), Decimal(0))
    single = lines[0]["unit_price"] if len(lines) == 1 else None
    return {"contract_id": contract_id, "marketplace": contract.marketplace, "hour": stamp.isoformat(),
            "period_start": period_start.isoformat(), "cost": str(total_cost), "unit_price": single,
            **{name: sum(line[name] for line in lines)
               for name in ("units_total", "units_reported", "would_send", "over_reported")},
            "stamp_used": taken, "status": contract.status, "dimensions": lines}


# --- sending ---------------------------------------------------------------------------------------

def usage_record(row: LedgerRow, contract: ContractRow, listing: ListingRow | None = None) -> UsageRecord:
    """Build the adapter's record for a ledger row from the contract's cloud identifiers and its
    listing's flags (without a listing, the flags' defaults); a wire id pinned on the row goes with it."""
    columns: dict[str, Any] = {name: getattr(contract, name) for name in _COLUMN_IDENTIFIERS}
    if listing is not None:
        columns.update({name: getattr(listing, name) for name in _LISTING_FLAGS})
    identifiers = rules(contract.marketplace).record_identifiers(columns, dict(contract.cloud_identifiers or {}))
    return UsageRecord(key=row.key, marketplace=Marketplace(contract.marketplace), identifiers=identifiers,
                       dimension=row.dimension, hour=utc(row.hour),  # type: ignore[arg-type]
                       quantity=row.quantity,
                       record_id=row.marketplace_record_id if rules(contract.marketplace).pinned_record_id else None,
                       allocations=tuple((tuple((str(k), str(v)) for k, v in a["tags"]), int(a["quantity"]))
                                         for a in row.allocations or ()))


def expire_overdue(engine: Engine, marketplace: str, *, now: datetime) -> int:
    """Mark the pending reports past ``marketplace``'s window ``expired`` (never sent); return how many.

    Every expired report gets its unit price (rows written before it was recorded take their
    dimension's current one), so its amount (units x unit price) can be shown as revenue lost.
    """
    window = rules(marketplace).report_window
    expired = ledger.expire(engine, marketplace, now=now, window=window) if window is not None else []
    price_expired(engine)
    return len(expired)


def price_expired(engine: Engine) -> None:
    """Give expired rows without a unit price the current unit price of their contract's dimension."""
    missing = ledger.unpriced_expired(engine)
    if not missing:
        return
    loaded = _load_listings(engine, {contract_id for _, contract_id, _ in missing})
    prices: dict[int, Decimal] = {}
    for row_id, contract_id, dimension in missing:
        found = loaded.get(contract_id)
        if found is None:
            continue
        price = next((d.unit_price for d in dimensions(*found) if d.name == dimension), None)
        if price is not None:
            prices[row_id] = price
    ledger.set_unit_prices(engine, prices)


def _load_listings(engine: Engine, contract_ids: set[str]) -> dict[str, tuple[ContractRow, ListingRow]]:
    with Session(engine) as session:
        contracts = {c.id: c for c in session.execute(
            select(ContractRow).where(ContractRow.id.in_(contract_ids))).scalars()}
        listings = {row.id: row for row in session.execute(select(ListingRow).where(
            ListingRow.id.in_({c.listing_id for c in contracts.values() if c.listing_id}))).scalars()}
        session.expunge_all()
    return {c.id: (c, listings[c.listing_id]) for c in contracts.values() if c.listing_id in listings}


def send_pending(engine: Engine, adapter: Any, marketplace: str, *, now: datetime, first: str | None = None,
                 max_batches: int = 4) -> dict[str, int]:
    """Send pending ledger rows of ``marketplace`` in batches (``batch_size``); return counts by outcome.

    First the rows past the marketplace's window become ``expired`` (never sent). ``first`` puts
    one contract's rows at the head of the first batch. Held rows (a suspended contract, a "not
    active" answer) wait. Transient failures release the claim and propagate (the job retries);
    permanent ones mark the rows failed.
    """
    totals: dict[str, int] = {}
    marketplace_rules = rules(marketplace)
    expired = expire_overdue(engine, marketplace, now=now)
    if expired:
        totals["expired"] = expired
    for _ in range(max_batches):
        token, rows = ledger.claim(engine, marketplace, now=now, first=first, limit=batch_size(marketplace),
                                   window=marketplace_rules.report_window,
                                   hold_suspended=marketplace_rules.hold_while_suspended)
        if not rows:
            break
        with Session(engine) as session:
            contracts = {c.id: c for c in session.execute(
                select(ContractRow).where(ContractRow.id.in_({r.contract_id for r in rows}))).scalars()}
            listings = {row.id: row for row in session.execute(select(ListingRow).where(
                ListingRow.id.in_({c.listing_id for c in contracts.values() if c.listing_id}))).scalars()}
            session.expunge_all()
        records = [usage_record(r, contracts[r.contract_id], listings.get(contracts[r.contract_id].listing_id or ""))
                   for r in rows]
        if marketplace_rules.pinned_record_id is not None:
            # The wire id is stored before the first send: a resend carries the same one (§4.3).
            pinned = ledger.pin_record_ids(engine, rows, {row.id: marketplace_rules.pinned_record_id(record)
                                                          for row, record in zip(rows, records)})
            records = [replace(record, record_id=pinned.get(row.id)) for row, record in zip(rows, records)]
        try:
            outcomes = adapter.report(records)
        except TransientMarketplaceError as exc:
            ledger.release(engine, token, f"transient: {exc}")
            raise
        except PermanentMarketplaceError as exc:
            ledger.fail(engine, rows, f"permanent: {exc}", now=now)
            log.error("report_failed", marketplace=marketplace, rows=len(rows), error=str(exc))
            totals["failed"] = totals.get("failed", 0) + len(rows)
            continue
        counts = ledger.settle(engine, rows, {o.key: o for o in outcomes}, now=now)
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
        log.info("reported", marketplace=marketplace, records=len(rows), **counts)
        if counts.get("expired"):
            price_expired(engine)
        if counts.get("pending"):
            break  # the marketplace left some unprocessed: leave them for the retry
    return totals


def send_all_pending(engine: Engine, adapter_for: Callable[[str], Any], *, now: datetime,
                     max_batches: int = 4) -> dict[str, dict[str, int]]:
    """Send the pending reports of every marketplace that has some; return counts per marketplace."""
    return {marketplace: send_pending(engine, adapter_for(marketplace), marketplace, now=now,
                                      max_batches=max_batches)
            for marketplace in ledger.marketplaces_with_pending(engine)}


# --- reporting one contract, or a chunk of them ------------------------------------------------------

def report_contract(engine: Engine, adapter: Any, contract_id: str, stamp: datetime, *, now: datetime,
                    final: bool = False, kind: str = "hourly") -> dict[str, Any]:
    """Prepare one contract's report under ``stamp`` and send it at once (with others' pending rows)."""
    prepared = prepare(engine, contract_id, stamp, now=now, final=final, kind=kind)
    marketplace = marketplace_of(engine, contract_id)
    sent = send_pending(engine, adapter, marketplace, now=now, first=contract_id)
    return {"contract_id": contract_id, "hour": stamp.isoformat(), "outcome": prepared.outcome,
            "detail": prepared.detail, "quantity": prepared.quantity, "cost": str(prepared.cost),
            "dimensions": dict(prepared.dimensions), "sent": sent}


def report_many(engine: Engine, adapter_for: Callable[[str], Any], contract_ids: Sequence[str], stamp: datetime, *,
                now: datetime) -> dict[str, Any]:
    """The hourly report of many contracts: prepare each (costs read in bulk), then send full
    batches of usage.

    Rows below a full batch, and zero-quantity heartbeats, wait for the fan-out's drain jobs. A
    contract that cannot be reported is counted and skipped; a transient failure (sending, or a
    sync state that kept changing) propagates after the others are done, so the job retries.
    """
    prepared = prepare_many(engine, contract_ids, stamp, now=now)
    outcomes: dict[str, int] = {}
    errors: dict[str, str] = {}
    transient: Exception | None = None
    for contract_id, result in prepared.items():
        if isinstance(result, Prepared):
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            if result.outcome == COST_ERROR:
                errors[contract_id] = result.detail
            continue
        errors[contract_id] = str(result)
        if isinstance(result, (Transient, TransientMarketplaceError)):
            transient = transient or result
        else:
            log.error("sync_error", contract=contract_id, error=str(result))
    with Session(engine) as session:
        marketplaces = sorted(set(session.execute(select(ContractRow.marketplace).where(
            ContractRow.id.in_([c for c, r in prepared.items() if isinstance(r, Prepared) and r.ledger_id]))).scalars()))
    sent: dict[str, dict[str, int]] = {}
    for marketplace in marketplaces:
        # Full batches of usage go out now; zero-quantity heartbeats (AWS, paced at 10 calls/s)
        # wait for the fan-out's drain jobs, so they never hold up the other chunks' reports.
        full = ledger.pending_count(engine, marketplace, usage_only=True) // batch_size(marketplace)
        if full:
            sent[marketplace] = send_pending(engine, adapter_for(marketplace), marketplace, now=now, max_batches=full)
    if transient is not None:
        raise transient
    return {"hour": hour_floor(stamp).isoformat(), "contracts": len(contract_ids), "outcomes": outcomes,
            "errors": errors, "sent": sent}


def syncable_contracts(engine: Engine) -> list[str]:
    """Return ids of mapped contracts that still report (active, suspended, canceled-not-closed)."""
    with Session(engine) as session:
        return list(session.execute(select(ContractRow.id).where(
            ContractRow.mapping_status == MappingStatus.MAPPED, ContractRow.status.in_(SYNCABLE),
        ).order_by(ContractRow.id)).scalars())


def marketplace_of(engine: Engine, contract_id: str) -> str:
    """Return the contract's marketplace (SyncError if there is no such contract)."""
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
        if contract is None:
            raise SyncError(f"no contract {contract_id!r}")
        return contract.marketplace
