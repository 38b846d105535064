"""Listing use cases: which billing plan, dimensions and unit prices a marketplace product maps to.

A listing meters one dimension (``dimension`` at ``unit_price``, every price's cost) or several
(``dimensions``: each a name, a unit price and the prices it reports, by price key or item id,
or ``"remaining"``: every price no other dimension names). docs/marketplaces.md §1.9.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from billing_core import PlanNotFound, SqlCatalog, get_for_update
from marketplaces import rules
from marketplaces.base import Marketplace
from worker.contracts import new_id
from worker.errors import Conflict, Invalid, NotFound
from worker.metering import REMAINING
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


def _check_allocations(row: ListingRow) -> None:
    # docs/marketplaces.md §1.12: each marketplace says which tag keys it takes (AWS: at most 5).
    entries = row.usage_allocations or []
    if not entries:
        return
    problem_of = rules(row.marketplace).allocation_keys_problem
    if problem_of is None:
        raise ListingInvalid(f"{row.marketplace} takes no usage allocations", field="usage_allocations")
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry["tag"] in seen:
            raise ListingInvalid(f"{entry['tag']!r} is also usage_allocations.{seen[entry['tag']]}.tag",
                                 field=f"usage_allocations.{i}.tag")
        seen[entry["tag"]] = i
    problem = problem_of([e["tag"] for e in entries])
    if problem:
        bad = next((i for i, e in enumerate(entries) if repr(e["tag"]) in problem), None)
        raise ListingInvalid(problem, field="usage_allocations" if bad is None else f"usage_allocations.{bad}.tag")


def _check_dimensions(session: Session, row: ListingRow) -> None:
    """Refuse dimensions that name a price the billing plan lacks, map a price twice, or leave one out."""
    if not row.dimensions:
        return
    names: dict[str, int] = {}
    rest = None
    for i, dimension in enumerate(row.dimensions):
        if dimension["name"] in names:
            raise ListingInvalid(f"{dimension['name']!r} is also dimensions.{names[dimension['name']]}.name",
                                 field=f"dimensions.{i}.name")
        names[dimension["name"]] = i
        if dimension["prices"] == REMAINING:
            if rest is not None:
                raise ListingInvalid(f"only one dimension may take the remaining prices (dimensions.{rest} does)",
                                     field=f"dimensions.{i}.prices")
            rest = i
    try:
        plan = SqlCatalog(session).get_plan(row.billing_plan_id)
    except PlanNotFound:
        raise ListingInvalid(f"no billing plan {row.billing_plan_id!r} (dimensions name its prices)",
                             field="billing_plan_id") from None
    prices = {p.key: p for version in plan.versions for p in version.prices}  # every version's: keys are stable
    items = {p.item_id for p in prices.values()}
    claimed: dict[str, tuple[str, str]] = {}  # price key -> (field, ref) of the dimension that names it
    for i, dimension in enumerate(row.dimensions):
        if dimension["prices"] == REMAINING:
            continue
        for j, ref in enumerate(dimension["prices"]):
            here = f"dimensions.{i}.prices.{j}"
            if ref not in prices and ref not in items:
                raise ListingInvalid(f"{ref!r} is no price key or item of billing plan {plan.id!r}", field=here)
            for price in prices.values():
                if ref in (price.key, price.item_id):
                    if price.key in claimed:
                        raise ListingInvalid(f"price {price.key!r} is mapped twice (also by "
                                             f"{claimed[price.key][0]}: {claimed[price.key][1]!r})", field=here)
                    claimed[price.key] = (here, ref)
    if rest is None:
        left = sorted(k for k, p in prices.items()
                      if k not in claimed and (p.metric_id is not None or row.include_fixed_fees))
        if left:
            raise ListingInvalid(f"prices {', '.join(map(repr, left))} map to no dimension: name them, or add a "
                                 f'dimension with "prices": "{REMAINING}"', field="dimensions")


def dimensions_view(row: ListingRow) -> list[dict[str, Any]]:
    """Return a listing's dimensions as the API shows them (one dimension taking every price by default)."""
    if row.dimensions:
        return [dict(d) for d in row.dimensions]
    return [{"name": row.dimension, "unit_price": row.unit_price, "prices": REMAINING}]


def listing_as_dict(row: ListingRow) -> dict[str, Any]:
    """Return the API view of a listing (``dimension`` and ``unit_price`` null when it meters several)."""
    several = bool(row.dimensions)
    return {
        "id": row.id, "marketplace": row.marketplace, "product_id": row.product_id,
        "plan_id": row.plan_id or None, "name": row.name, "billing_plan_id": row.billing_plan_id,
        "dimension": None if several else row.dimension, "unit_price": None if several else row.unit_price,
        "dimensions": dimensions_view(row), "currency": row.currency,
        "close_rounding": row.close_rounding, "include_fixed_fees": row.include_fixed_fees,
        "metering_start_date": row.metering_start_date.isoformat() if row.metering_start_date else None,
        "approve_entitlements": row.approve_entitlements,
        "aws_legacy_identifiers": row.aws_legacy_identifiers,
        "aws_concurrent_agreements": row.aws_concurrent_agreements,
        "usage_allocations": [dict(e) for e in row.usage_allocations or []],
        "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
    }


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def create_listing(engine: Engine, values: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Create a listing; raise ``ListingInvalid`` naming the field, or ``ListingConflict`` if its
    product and plan are mapped already."""
    values = dict(values)
    if values.get("dimensions"):
        for name in ("dimension", "unit_price"):
            if values.get(name) is not None:
                raise ListingInvalid("give either dimension and unit_price, or dimensions", field=name)
    else:
        values.pop("dimensions", None)
        for name in ("dimension", "unit_price"):
            if values.get(name) is None:
                raise ListingInvalid("is required (or give dimensions)", field=name)
    row = ListingRow(id=new_id("lst"), created_at=now, updated_at=now, **_row_values(values))
    _check_flags(row)
    _check_allocations(row)
    with Session(engine, expire_on_commit=False) as session:
        _check_dimensions(session, row)
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
        single = [name for name in ("dimension", "unit_price") if name in values]
        if single and values.get("dimensions"):
            raise ListingInvalid("give either dimension and unit_price, or dimensions", field=single[0])
        if single and row.dimensions and "dimensions" not in values:
            raise ListingInvalid("the listing meters several dimensions: change dimensions, or set dimensions "
                                 "to null (one dimension again) in the same request", field=single[0])
        for name, value in _row_values(values).items():
            setattr(row, name, value)
        _check_flags(row)
        _check_allocations(row)
        _check_dimensions(session, row)
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
    if out.get("dimensions"):
        out["dimensions"] = [{"name": d["name"], "unit_price": str(Decimal(str(d["unit_price"]))),
                              "prices": d["prices"] if d["prices"] == REMAINING else list(d["prices"])}
                             for d in out["dimensions"]]
        # The single-dimension columns hold the first dimension (shown only while it is the only one).
        out["dimension"], out["unit_price"] = out["dimensions"][0]["name"], out["dimensions"][0]["unit_price"]
    elif "dimensions" in out:
        out["dimensions"] = None
    if "usage_allocations" in out:
        out["usage_allocations"] = [{"tag": e["tag"], "property": e["property"]}
                                    for e in out["usage_allocations"] or []] or None
    if "unit_price" in out and out["unit_price"] is not None:
        out["unit_price"] = str(Decimal(str(out["unit_price"])))
    if out.get("plan_id") is None and "plan_id" in out:
        out["plan_id"] = ""
    if "metering_start_date" in out and isinstance(out["metering_start_date"], datetime):
        out["metering_start_date"] = out["metering_start_date"].date()
    return out
