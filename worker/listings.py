"""Listing use cases: which billing plan, dimension and unit price a marketplace product maps to."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from billing_core import get_for_update
from marketplaces.base import Marketplace
from worker.contracts import new_id
from worker.errors import Conflict, Invalid, NotFound
from worker.persistence.contracts import ListingRow

CLOSE_ROUNDING = ("floor", "half_up", "ceil")
MARKETPLACES = tuple(m.value for m in Marketplace)


class ListingNotFound(NotFound, LookupError):
    """No listing has this id."""


class ListingConflict(Conflict):
    """Another listing already maps this marketplace product and plan."""


class ListingInvalid(Invalid):
    """The listing's fields contradict each other."""


def _check_flags(row: ListingRow) -> None:
    # docs/marketplaces.md §2.1: legacy listings meter by CustomerIdentifier, which needs the
    # request's ProductCode; Concurrent Agreements listings send none. The two exclude each other.
    for name in ("aws_legacy_identifiers", "aws_concurrent_agreements"):
        if getattr(row, name) and row.marketplace != Marketplace.AWS.value:
            raise ListingInvalid(f"{name} applies to aws listings only", field=name)
    if row.aws_legacy_identifiers and row.aws_concurrent_agreements:
        raise ListingInvalid("a legacy (CustomerIdentifier) listing cannot use Concurrent Agreements",
                             field="aws_concurrent_agreements")


def listing_as_dict(row: ListingRow) -> dict[str, Any]:
    """Return the API view of a listing."""
    return {
        "id": row.id, "marketplace": row.marketplace, "product_id": row.product_id,
        "plan_id": row.plan_id or None, "name": row.name, "billing_plan_id": row.billing_plan_id,
        "dimension": row.dimension, "unit_price": row.unit_price, "currency": row.currency,
        "close_rounding": row.close_rounding, "include_fixed_fees": row.include_fixed_fees,
        "metering_start_date": row.metering_start_date.isoformat() if row.metering_start_date else None,
        "approve_entitlements": row.approve_entitlements,
        "aws_legacy_identifiers": row.aws_legacy_identifiers,
        "aws_concurrent_agreements": row.aws_concurrent_agreements,
        "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
    }


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def create_listing(engine: Engine, values: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Create a listing; raise ``ListingConflict`` if its product and plan are mapped already."""
    row = ListingRow(id=new_id("lst"), created_at=now, updated_at=now, **_row_values(values))
    _check_flags(row)
    with Session(engine, expire_on_commit=False) as session:
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            raise ListingConflict(
                f"a listing for {row.marketplace} product {row.product_id!r}"
                + (f" plan {row.plan_id!r}" if row.plan_id else "") + " exists already"
            ) from None
        return listing_as_dict(row)


def update_listing(engine: Engine, listing_id: str, values: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Change a listing's fields; raise ``ListingNotFound`` or ``ListingConflict``."""
    with Session(engine, expire_on_commit=False) as session:
        row = get_for_update(session, ListingRow, listing_id)  # one PATCH at a time: the answer is what is stored
        if row is None:
            raise ListingNotFound(f"no listing {listing_id!r}")
        for name, value in _row_values(values).items():
            setattr(row, name, value)
        _check_flags(row)
        row.updated_at = now
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            raise ListingConflict("another listing maps this product and plan") from None
        return listing_as_dict(row)


def get_listing(engine: Engine, listing_id: str) -> dict[str, Any]:
    """Return one listing or raise ``ListingNotFound``."""
    with Session(engine) as session:
        row = session.get(ListingRow, listing_id)
        if row is None:
            raise ListingNotFound(f"no listing {listing_id!r}")
        return listing_as_dict(row)


def list_listings(engine: Engine, *, marketplace: str | None, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Return a page of listings and the total count."""
    query = select(ListingRow)
    count = select(func.count()).select_from(ListingRow)
    if marketplace:
        query = query.where(ListingRow.marketplace == marketplace)
        count = count.where(ListingRow.marketplace == marketplace)
    with Session(engine) as session:
        total = session.execute(count).scalar_one()
        rows = session.execute(query.order_by(ListingRow.created_at, ListingRow.id).offset(offset).limit(limit)).scalars().all()
        return [listing_as_dict(r) for r in rows], int(total)


def _row_values(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "unit_price" in out and out["unit_price"] is not None:
        out["unit_price"] = str(Decimal(str(out["unit_price"])))
    if out.get("plan_id") is None and "plan_id" in out:
        out["plan_id"] = ""
    if "metering_start_date" in out and isinstance(out["metering_start_date"], datetime):
        out["metering_start_date"] = out["metering_start_date"].date()
    return out
