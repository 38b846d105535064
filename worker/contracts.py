"""Contract use cases: apply lifecycle events, map contracts to billing subscriptions.

The billing core is reached through ``BillingGateway`` (implemented over ``billing_core`` by
``worker.billing_gateway``), so these use cases stay testable and the import rules hold.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from billing_core import SubscriptionNotFound, get_for_update
from marketplaces import rules
from worker import entitlements, ledger, notices
from worker.contract_events import ContractEvent
from worker.errors import Conflict, Invalid, NotFound
from worker.persistence.contracts import ContractRow, ListingRow
from worker.statuses import ContractStatus, InboxStatus, MappingStatus

# Where the plan lives among the identifiers (the product: the marketplace's rules).
_PLAN_FIELDS = ("plan_id", "plan")
_COLUMN_IDENTIFIERS = ("product_code", "customer_aws_account_id", "license_arn", "customer_identifier",
                       "azure_subscription_id", "gcp_entitlement_id", "offer_id", "plan_id")


class BillingGateway(Protocol):
    """What the contract use cases need from the billing core."""

    def ensure_customer(self, *, external_customer_id: str, name: str, email: str, currency: str) -> str:
        """Return the id of the customer with this external id, creating it if needed."""
        ...

    def create_subscription(self, *, idempotency_key: str, customer_id: str, plan_id: str,
                            start: datetime, external_marketplace: str, reporting_id: str) -> str:
        """Create (once per idempotency key) a subscription; return its id."""
        ...

    def subscription_customer(self, subscription_id: str) -> str | None:
        """Return the customer id of a subscription, or None if it does not exist."""
        ...

    def end_subscription(self, subscription_id: str, *, at: datetime, now: datetime) -> None:
        """End the subscription at ``at`` (usage after it is not billed)."""
        ...

    def change_plan(self, subscription_id: str, *, plan_id: str, at: datetime, now: datetime) -> None:
        """Move the subscription to ``plan_id`` from ``at`` (usage before keeps the old prices)."""
        ...


class BillingUnavailable(Exception):
    """The billing core refused a mapping step; the message is shown to operators."""


@dataclass(frozen=True)
class Applied:
    """What applying an event did."""

    outcome: str  # done, deferred, ignored
    contract_id: str | None = None
    detail: str = ""


def new_id(prefix: str) -> str:
    """Return a new opaque id such as ``ctr_3f9a...``."""
    return f"{prefix}_{secrets.token_hex(10)}"


def _first(values: Mapping[str, str], names: tuple[str, ...]) -> str:
    return next((values[n] for n in names if values.get(n)), "")


def external_customer_id(event_marketplace: str, identifiers: Mapping[str, str], contract_key: str) -> str:
    """Return the billing customer's external id, derived from the marketplace identity."""
    who = rules(event_marketplace).customer_identity(identifiers)
    return f"{event_marketplace}:{who or contract_key}"


def find_listing(session: Session, marketplace: str, identifiers: Mapping[str, str],
                 plan: str | None = None) -> ListingRow | None:
    """Return the listing for the contract's product and plan (an exact plan beats 'any plan')."""
    product = _first(identifiers, rules(marketplace).product_fields)
    plan_id = plan or _first(identifiers, _PLAN_FIELDS)
    if not product:
        return None
    rows = session.exec(  # type: ignore[call-overload]
        select(ListingRow).where(ListingRow.marketplace == marketplace, ListingRow.product_id == product)
    ).scalars().all()
    exact = [r for r in rows if plan_id and r.plan_id == plan_id]
    anyplan = [r for r in rows if r.plan_id == ""]
    return (exact or anyplan or [None])[0]


def _load(session: Session, source: str, key: str) -> ContractRow | None:
    return session.exec(  # type: ignore[call-overload]
        select(ContractRow).where(ContractRow.source == source, ContractRow.external_id == key)
    ).scalars().first()


def _fill(row: ContractRow, event: ContractEvent) -> None:
    merged = dict(row.cloud_identifiers or {})
    merged.update({k: v for k, v in event.identifiers.items() if v})
    row.cloud_identifiers = merged
    for name in _COLUMN_IDENTIFIERS:
        if merged.get(name):
            setattr(row, name, merged[name])
    if event.buyer_name:
        row.buyer_name = event.buyer_name
    if event.buyer_email:
        row.buyer_email = event.buyer_email


def apply_event(engine: Engine, event: ContractEvent, billing: BillingGateway, *, now: datetime) -> Applied:
    """Apply one contract event; idempotent, and convergent whatever the delivery order."""
    if event.kind in ("ignored", "subscription_confirmation", "pending"):
        return Applied(InboxStatus.IGNORED, detail=f"{event.action or event.kind}: nothing to apply")
    if not event.contract_key:
        return Applied(InboxStatus.IGNORED, detail="the event names no contract")
    with Session(engine, expire_on_commit=False) as session:
        row = _load(session, event.source, event.contract_key)
        before = (row.status, row.mapping_status) if row is not None else (None, None)
        if row is None and event.kind != "created":
            # Out of order: applied once the contract exists (see process_deferred).
            return Applied(InboxStatus.DEFERRED, detail=f"{event.kind} before created")
        if row is None:
            row = ContractRow(
                id=new_id("ctr"), source=event.source, external_id=event.contract_key,
                marketplace=event.marketplace, status=ContractStatus.PENDING, created_at=now, updated_at=now,
                started_at=event.effective_at,
            )
            session.add(row)
            try:
                # Committed on its own: no write lock may be held while the billing core writes
                # (SQLite has one writer at a time; the gateway uses its own connection).
                session.commit()
            except IntegrityError:
                session.rollback()
                row = _load(session, event.source, event.contract_key)
                assert row is not None
        if event.entitlements is not None:
            # Stored first, on its own and locked (an operator's PATCH may write them too), so no
            # run ever reports the contract without what it includes.
            session.commit()
            record_included(engine, row.id, event.entitlements, event.effective_at, source=event.source)
        with session.no_autoflush:
            _fill(row, event)
            handler = _HANDLERS[event.kind]
            detail = handler(session, row, event, billing, now)
        row.updated_at = now
        session.add(row)
        notices.contract_changed(session, row, before, now=now)
        session.commit()
        return Applied(InboxStatus.DONE, contract_id=row.id, detail=detail)


def _include(row: ContractRow, included: Mapping[str, int], at: datetime, source: str) -> None:
    """Put ``included`` in effect from ``at`` on the (locked) row: usage measured up to then keeps what it included."""
    row.entitlements = entitlements.as_json(entitlements.with_change(
        entitlements.history(row.entitlements), included, at, source))


def record_included(engine: Engine, contract_id: str, included: Mapping[str, int], at: datetime, *,
                    source: str) -> None:
    """Store what a contract with consumption includes from ``at`` (one locked read-modify-write)."""
    with Session(engine) as session:
        row = get_for_update(session, ContractRow, contract_id)
        if row is None:
            raise ContractNotFound(f"no contract {contract_id!r}")
        _include(row, included, at, source)
        session.add(row)
        session.commit()


def _created(session: Session, row: ContractRow, event: ContractEvent, billing: BillingGateway,
             now: datetime) -> str:
    if event.pricing is not None and row.pricing is None:
        # Only the first pricing: a creation applied again (two drains took it, or its outcome went
        # unrecorded when the database or the worker went away) must not undo a later modification.
        row.pricing = dict(event.pricing)
    if row.started_at is None:
        row.started_at = event.effective_at
    if row.status in (ContractStatus.PENDING, ContractStatus.SUSPENDED) and row.canceled_at is None:
        row.status = ContractStatus.ACTIVE
    detail = map_contract(session, row, billing, plan=event.plan)
    if row.canceled_at is not None and row.subscription_id and row.cancel_effective_at:
        # Canceled before this (late) creation mapped it: bill from start to the cancellation only.
        try:
            billing.end_subscription(row.subscription_id, at=row.cancel_effective_at, now=now)
        except BillingUnavailable as exc:
            return f"{detail}; ending the subscription failed: {exc}"
    return detail


def map_contract(session: Session, row: ContractRow, billing: BillingGateway, *, plan: str | None = None) -> str:
    """Create or attach the billing subscription of a contract, recording why when it cannot."""
    if row.subscription_id:
        row.mapping_status, row.mapping_reason = MappingStatus.MAPPED, ""
        return "already mapped"
    if row.operator_unmapped:
        return "left unmapped: an operator unmapped this contract (map it with PATCH /v1/contracts/{id})"
    with session.no_autoflush:  # keep our changes unflushed (no write lock) while billing writes
        listing = find_listing(session, row.marketplace, row.cloud_identifiers or {}, plan)
    if listing is None:
        product = _first(row.cloud_identifiers or {}, rules(row.marketplace).product_fields) or "(none)"
        plan_id = plan or _first(row.cloud_identifiers or {}, _PLAN_FIELDS)
        row.mapping_status = MappingStatus.UNMAPPED
        row.mapping_reason = (f"no listing for {row.marketplace} product {product!r}"
                              + (f" plan {plan_id!r}" if plan_id else "")
                              + ": create one (POST /v1/listings), then map the contract")
        return row.mapping_reason
    row.listing_id = listing.id
    currency = (row.pricing or {}).get("currency") or listing.currency
    try:
        customer_id = billing.ensure_customer(
            external_customer_id=external_customer_id(row.marketplace, row.cloud_identifiers or {}, row.external_id),
            name=row.buyer_name or row.external_id, email=row.buyer_email, currency=currency,
        )
        subscription_id = billing.create_subscription(
            idempotency_key=row.id, customer_id=customer_id, plan_id=listing.billing_plan_id,
            start=row.started_at or row.created_at, external_marketplace=row.marketplace,
            reporting_id=row.id,
        )
    except BillingUnavailable as exc:
        row.mapping_status, row.mapping_reason = MappingStatus.ERROR, str(exc)
        return row.mapping_reason
    row.customer_id, row.subscription_id = customer_id, subscription_id
    row.mapping_status, row.mapping_reason = MappingStatus.MAPPED, ""
    return f"mapped to subscription {subscription_id}"


def _modified(session: Session, row: ContractRow, event: ContractEvent, billing: BillingGateway,
              now: datetime) -> str:
    if event.pricing is not None and event.pricing != row.pricing:
        row.previous_pricing = dict(event.previous_pricing) if event.previous_pricing else row.pricing
        row.pricing = dict(event.pricing)
    details = []
    if event.plan:
        # _fill has already copied a plan_id identifier onto the row: compare listings, not plan ids.
        row.plan_id = event.plan
        with session.no_autoflush:  # as in map_contract: no write lock while change_plan writes
            listing = find_listing(session, row.marketplace, row.cloud_identifiers or {}, event.plan)
        if listing and row.subscription_id and listing.id != row.listing_id:
            try:
                billing.change_plan(row.subscription_id, plan_id=listing.billing_plan_id,
                                    at=event.effective_at, now=now)
                row.listing_id = listing.id
                details.append(f"plan changed to {listing.billing_plan_id} from {event.effective_at.isoformat()}")
            except BillingUnavailable as exc:
                row.mapping_status, row.mapping_reason = MappingStatus.ERROR, str(exc)
                details.append(str(exc))
        elif listing is None:
            details.append(f"no listing for plan {event.plan!r}; subscription unchanged")
    if event.quantity is not None:
        merged = dict(row.cloud_identifiers or {})
        merged["quantity"] = str(event.quantity)
        row.cloud_identifiers = merged
    if not row.subscription_id and row.mapping_status != MappingStatus.MAPPED:
        details.append(map_contract(session, row, billing, plan=event.plan))
    return "; ".join(details) or "recorded"


def _canceled(session: Session, row: ContractRow, event: ContractEvent, billing: BillingGateway,
              now: datetime) -> str:
    if row.status in (ContractStatus.CANCELED, ContractStatus.CLOSED):
        return "already canceled"
    row.status = ContractStatus.CANCELED
    row.canceled_at = now
    row.cancel_effective_at = event.effective_at
    if row.subscription_id:
        try:
            billing.end_subscription(row.subscription_id, at=event.effective_at, now=now)
        except BillingUnavailable as exc:
            return f"canceled; ending the subscription failed: {exc}"
        return f"canceled; subscription ends at {event.effective_at.isoformat()}"
    return "canceled (no subscription was mapped)"


def _renewed(session: Session, row: ContractRow, event: ContractEvent, billing: BillingGateway,
             now: datetime) -> str:
    return "renewal recorded"


def _suspended(session: Session, row: ContractRow, event: ContractEvent, billing: BillingGateway,
               now: datetime) -> str:
    if row.status == ContractStatus.ACTIVE:
        row.status = ContractStatus.SUSPENDED
    return "suspended"


def _reinstated(session: Session, row: ContractRow, event: ContractEvent, billing: BillingGateway,
                now: datetime) -> str:
    if row.status == ContractStatus.SUSPENDED:
        row.status = ContractStatus.ACTIVE
    # Reports held while the subscription took no usage go out at the next send, in this transaction
    # with the status: what is still inside the marketplace's window is reported, the rest expires.
    released = ledger.release_holds(session, row.id)
    return f"reinstated; {released} held report(s) released" if released else "reinstated"


_HANDLERS = {
    "created": _created, "modified": _modified, "canceled": _canceled, "renewed": _renewed,
    "suspended": _suspended, "reinstated": _reinstated,
}


def contract_as_dict(row: ContractRow) -> dict[str, Any]:
    """Return the API view of a contract."""
    association = {"mapped_object": {"id": row.subscription_id} if row.subscription_id else None}
    return {
        "id": row.id, "source": row.source, "external_id": row.external_id,
        "marketplace": row.marketplace, "status": row.status, "listing_id": row.listing_id,
        "cloud_identifiers": dict(row.cloud_identifiers or {}),
        "buyer": {"name": row.buyer_name, "email": row.buyer_email},
        "pricing": row.pricing, "previous_pricing": row.previous_pricing,
        "custom_properties": dict(row.custom_properties or {}),
        "entitlements": list(row.entitlements or []),
        "mapping": {"status": row.mapping_status, "reason": row.mapping_reason or None,
                    "customer_id": row.customer_id, "subscription_id": row.subscription_id},
        # ``orb`` as Clazar's Orb integration reads it; ``billing`` is the older alias, kept for existing clients.
        "external_associations": {"orb": association, "billing": dict(association)},
        "started_at": _iso(row.started_at), "canceled_at": _iso(row.canceled_at),
        "cancel_effective_at": _iso(row.cancel_effective_at), "closed_at": _iso(row.closed_at),
        "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else (text if value.tzinfo else text + "Z")


# --- queries and operator actions ------------------------------------------------------------------

class ContractNotFound(NotFound, LookupError):
    """No contract has this id."""


class MappingConflict(Conflict):
    """The subscription cannot be attached to this contract (another customer or contract)."""


class InvalidProperties(Invalid, ValueError):
    """Custom properties outside the limits below; ``field`` names the offending one."""

    def __init__(self, message: str, field: str = "custom_properties"):
        super().__init__(message, field=field)


MAX_PROPERTIES = 100  # per contract, after the merge
MAX_KEY_LENGTH = 100
MAX_VALUE_LENGTH = 1000
MAX_INTEGER = 2**53 - 1  # beyond it JSON clients (JavaScript) silently change the number


def check_properties(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return the changes if every key and value is within the limits (API and dashboard alike)."""
    if len(changes) > MAX_PROPERTIES:
        raise InvalidProperties(f"custom_properties: at most {MAX_PROPERTIES} properties")
    for key, value in changes.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
            shown = repr(key) if len(str(key)) <= 40 else repr(str(key)[:40]) + "..."
            raise InvalidProperties(f"custom_properties: keys must be 1 to {MAX_KEY_LENGTH} characters ({shown})")
        field = f"custom_properties.{key}"
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            if len(value) > MAX_VALUE_LENGTH:
                raise InvalidProperties(f"{field}: longer than {MAX_VALUE_LENGTH} characters", field)
        elif isinstance(value, int):
            if abs(value) > MAX_INTEGER:
                raise InvalidProperties(f"{field}: integers are at most {MAX_INTEGER} in size", field)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidProperties(f"{field}: numbers must be finite", field)
        else:
            raise InvalidProperties(f"{field}: values must be strings, numbers, booleans or null", field)
    return dict(changes)


FILTERS = {
    "marketplace": ContractRow.marketplace, "status": ContractRow.status,
    "mapping_status": ContractRow.mapping_status, "listing_id": ContractRow.listing_id,
    "product_code": ContractRow.product_code, "customer_aws_account_id": ContractRow.customer_aws_account_id,
    "license_arn": ContractRow.license_arn, "customer_identifier": ContractRow.customer_identifier,
    "azure_subscription_id": ContractRow.azure_subscription_id,
    "gcp_entitlement_id": ContractRow.gcp_entitlement_id, "subscription_id": ContractRow.subscription_id,
    "external_id": ContractRow.external_id,
}


def list_contracts(engine: Engine, filters: Mapping[str, str], *, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Return a page of contracts matching every filter (exact values), and the total count."""
    from sqlalchemy import func

    query = select(ContractRow)
    count = select(func.count()).select_from(ContractRow)
    for name, value in filters.items():
        column = FILTERS[name]
        query = query.where(column == value)
        count = count.where(column == value)
    with Session(engine) as session:
        total = session.execute(count).scalar_one()
        rows = session.execute(query.order_by(ContractRow.created_at, ContractRow.id).offset(offset).limit(limit)).scalars().all()
        return [contract_as_dict(r) for r in rows], int(total)


def get_contract(engine: Engine, contract_id: str) -> dict[str, Any]:
    """Return one contract with its inbox history; raise ``ContractNotFound``."""
    from worker import inbox

    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        if row is None:
            raise ContractNotFound(f"no contract {contract_id!r}")
        view = contract_as_dict(row)
    view["inbox"] = [
        {**item, "received_at": _iso(item["received_at"]), "processed_at": _iso(item["processed_at"])}
        for item in inbox.history(engine, contract_id=contract_id, contract_key=view["external_id"])
    ]
    return view


def patch_contract(engine: Engine, contract_id: str, billing: BillingGateway, *, subscription_id: str | None,
                   custom_properties: Mapping[str, Any] | None, now: datetime, unmap: bool = False,
                   included: tuple[Mapping[str, int], datetime] | None = None) -> dict[str, Any]:
    """Attach a subscription and/or merge custom properties (a None value removes the key); ``included``
    (units per dimension, from an instant) sets what a contract with consumption includes from then.

    ``unmap`` detaches the contract from its subscription (nothing to do when it has none): the
    contract becomes unmapped and stops reporting (refused while it is canceled and owes its
    final report: ``MappingConflict``); the subscription itself is left as it is, and
    the contract keeps its customer, so it can only be mapped again to that customer's subscriptions.

    Atomic: the row is read under the write lock (``get_for_update``), so concurrent patches
    of different keys all survive.
    """
    if unmap and subscription_id is not None:
        raise ValueError("give subscription_id or unmap, not both")
    if custom_properties is not None:
        check_properties(custom_properties)
    with Session(engine, expire_on_commit=False) as session:
        row = get_for_update(session, ContractRow, contract_id)
        if row is None:
            raise ContractNotFound(f"no contract {contract_id!r}")
        before = (row.status, row.mapping_status)
        if unmap and row.subscription_id and row.status == ContractStatus.CANCELED:
            # Its final usage is still owed to the marketplace, and only a mapped contract reports.
            raise MappingConflict(
                f"contract {contract_id} is canceled and still owes its final usage report: it can be "
                "unmapped once it is closed")
        if unmap and row.subscription_id:
            previous = row.subscription_id
            row.subscription_id = None
            row.mapping_status, row.operator_unmapped = MappingStatus.UNMAPPED, True
            row.mapping_reason = (f"unmapped from subscription {previous!r} by an operator: "
                                  "map it to a subscription (PATCH /v1/contracts/{id})")
        if subscription_id is not None and subscription_id != row.subscription_id:
            owner = billing.subscription_customer(subscription_id)
            if owner is None:
                raise SubscriptionNotFound(f"no subscription {subscription_id!r}")
            if row.customer_id and owner != row.customer_id:
                raise MappingConflict(
                    f"subscription {subscription_id!r} belongs to customer {owner!r}, "
                    f"not to this contract's customer {row.customer_id!r}")
            other = session.execute(
                select(ContractRow.id).where(ContractRow.subscription_id == subscription_id, ContractRow.id != row.id)
            ).scalar_one_or_none()
            if other:
                raise MappingConflict(f"subscription {subscription_id!r} is already mapped to contract {other!r}")
            if row.subscription_id:
                raise MappingConflict(f"contract is already mapped to subscription {row.subscription_id!r}")
            row.subscription_id, row.customer_id = subscription_id, owner
            row.mapping_status, row.mapping_reason, row.operator_unmapped = MappingStatus.MAPPED, "", False
        if custom_properties is not None:
            merged = dict(row.custom_properties or {})
            for key, value in custom_properties.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            if len(merged) > MAX_PROPERTIES:
                raise InvalidProperties(f"custom_properties: a contract has at most {MAX_PROPERTIES} properties "
                                        f"({len(merged)} after this change)")
            row.custom_properties = merged
        if included is not None:
            _include(row, included[0], included[1], "operator")
        row.updated_at = now
        session.add(row)
        try:
            notices.contract_changed(session, row, before, now=now)
            session.commit()
        except IntegrityError:
            raise MappingConflict(f"subscription {subscription_id!r} is already mapped to another contract") from None
    return get_contract(engine, contract_id)
