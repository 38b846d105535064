"""``/v1/plans``: create with prices, fetch, list, versions, set the default version."""

from __future__ import annotations

from typing import Any, Mapping

from flask import request
from sqlalchemy.orm import Session

from billing_core import Price, SqlCatalog, service_plans
from billing_core.orb_json import plan_json, plan_version_json
from webhooks.api.bodies import (
    check_fields, parse_adjustment, parse_metadata, parse_price, require_list, require_object,
)
from webhooks.api.common import (
    api_blueprint, bad, cursor_id, engine, json_body, new_id, now, page_json, page_limit,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import Page, Plan, PlanCreate, PlanQuery, PlanVersion, PlanVersionCreate, SetDefaultVersion
from worker.db import session_scope

bp = api_blueprint("billing_plans", __name__)

_PLAN_FIELDS = {"name", "currency", "prices", "adjustments", "description", "external_plan_id", "metadata",
                "net_terms", "status", "default_invoice_memo"}


def _unwrap_price(raw: Any, field: str) -> tuple[Mapping[str, Any], str]:
    """Accept Orb's ``{"price": {...}}`` wrapper or a bare price object."""
    raw = require_object(raw, field)
    if "price" in raw:
        check_fields(raw, {"price", "plan_phase_order", "allocation_price", "license_allocation_price"}, field)
        return require_object(raw["price"], f"{field}.price"), f"{field}.price"
    return raw, field


def _item_names(session: Session) -> dict[str, str]:
    return SqlCatalog(session).item_names()


@bp.post("/plans")
@documented(body=PlanCreate, response=Plan, status=201, links={
    f"billing_plans.{endpoint}": {"plan_id": "$response.body#/id"}
    for endpoint in ("fetch_plan", "list_plan_versions", "create_plan_version", "set_default_version")})
def create_plan():
    """Create a plan and its version 1."""
    body = require_object(json_body(), "body")
    check_fields(body, _PLAN_FIELDS, "")
    currency = body.get("currency")
    if not isinstance(currency, str) or len(currency) != 3:
        raise bad("currency", "an ISO 4217 code is required")
    if not isinstance(body.get("name"), str) or not body["name"].strip():
        raise bad("name", "is required")
    prices_raw = require_list(body.get("prices"), "prices")
    if not prices_raw:
        raise bad("prices", "at least one price is required")
    prices: list[Price] = []
    for i, raw in enumerate(prices_raw):
        price_raw, field = _unwrap_price(raw, f"prices[{i}]")
        prices.append(parse_price(price_raw, currency=currency.upper(), field=field))
    adjustments = []
    for i, raw in enumerate(require_list(body.get("adjustments"), "adjustments")):
        raw = require_object(raw, f"adjustments[{i}]")
        check_fields(raw, {"adjustment", "plan_phase_order"}, f"adjustments[{i}]")
        adjustments.append(parse_adjustment(raw.get("adjustment"), f"adjustments[{i}].adjustment"))
    with session_scope(engine()) as session:
        plan = service_plans.create_plan_with_prices(
            session, plan_id=new_id("plan"), name=body["name"].strip(), currency=currency.upper(), prices=prices,
            adjustments=adjustments, now=now(), external_plan_id=body.get("external_plan_id"),
            description=body.get("description") or "",
            metadata=parse_metadata(body.get("metadata")))
        return plan_json(plan, item_names=_item_names(session)), 201


@bp.get("/plans/<plan_id>")
@documented(response=Plan)
def fetch_plan(plan_id: str):
    """Fetch a plan at its default version."""
    with session_scope(engine()) as session:
        return plan_json(SqlCatalog(session).get_plan(plan_id), item_names=_item_names(session))


@bp.get("/plans/external_plan_id/<external_plan_id>")
@documented(response=Plan)
def fetch_plan_by_external_id(external_plan_id: str):
    """Fetch a plan by its external id."""
    with session_scope(engine()) as session:
        return plan_json(SqlCatalog(session).get_plan_by_external_id(external_plan_id), item_names=_item_names(session))


@bp.get("/plans")
@documented(query=PlanQuery, response=Page[Plan])
def list_plans():
    """List plans, newest first."""
    limit = page_limit()
    with session_scope(engine()) as session:
        plans, nxt = SqlCatalog(session).list_plans(limit=limit, cursor=cursor_id(), status=request.args.get("status"))
        names = _item_names(session)
        return page_json([plan_json(p, item_names=names) for p in plans], nxt)


@bp.get("/plans/<plan_id>/versions/<int:version>")
@documented(response=PlanVersion)
def fetch_plan_version(plan_id: str, version: int):
    """Fetch one immutable plan version."""
    with session_scope(engine()) as session:
        return plan_version_json(SqlCatalog(session).get_plan(plan_id), version, _item_names(session))


@bp.get("/plans/<plan_id>/versions")
@documented(response=Page[PlanVersion])
def list_plan_versions(plan_id: str):
    """List every version of a plan, oldest first."""
    with session_scope(engine()) as session:
        plan = SqlCatalog(session).get_plan(plan_id)
        names = _item_names(session)
        data = [plan_version_json(plan, v.version, names) for v in plan.versions]
    return {"data": data, "pagination_metadata": {"has_more": False, "next_cursor": None}}


@bp.post("/plans/<plan_id>/versions")
@documented(body=PlanVersionCreate, response=Plan, status=201)
def create_plan_version(plan_id: str):
    """Create version n+1 from the latest version with add / remove / replace of prices and adjustments."""
    body = require_object(json_body(), "body")
    check_fields(body, {"version", "add_prices", "remove_prices", "replace_prices", "add_adjustments",
                        "remove_adjustments", "replace_adjustments", "set_as_default"}, "",
                 {"plan_phases"})
    if not isinstance(body.get("version"), int):
        raise bad("version", "an integer is required")
    with session_scope(engine()) as session:
        # Two requests for version n+1: the second waits for the first and sees its version.
        plan = SqlCatalog(session).get_plan(plan_id, for_update=True)
        latest = plan.version(plan.latest_version)
        prices = list(latest.prices)
        for i, raw in enumerate(require_list(body.get("remove_prices"), "remove_prices")):
            name = require_object(raw, f"remove_prices[{i}]").get("price_id")
            if not any(p.id == name for p in prices):
                raise bad(f"remove_prices[{i}].price_id", f"price {name} is not in version {latest.version}")
            prices = [p for p in prices if p.id != name]
        for i, raw in enumerate(require_list(body.get("replace_prices"), "replace_prices")):
            raw = require_object(raw, f"replace_prices[{i}]")
            old = next((p for p in prices if p.id == raw.get("replaces_price_id")), None)
            if old is None:
                raise bad(f"replace_prices[{i}].replaces_price_id", "is not a price of the latest version")
            new = parse_price(raw.get("price"), currency=plan.currency, field=f"replace_prices[{i}].price", key=old.key)
            prices = [new if p.id == old.id else p for p in prices]
        for i, raw in enumerate(require_list(body.get("add_prices"), "add_prices")):
            price_raw, field = _unwrap_price(raw, f"add_prices[{i}]")
            prices.append(parse_price(price_raw, currency=plan.currency, field=field))
        adjustments = list(latest.adjustments)
        for i, raw in enumerate(require_list(body.get("remove_adjustments"), "remove_adjustments")):
            adj_id = require_object(raw, f"remove_adjustments[{i}]").get("adjustment_id")
            if not any(a.id == adj_id for a in adjustments):
                raise bad(f"remove_adjustments[{i}].adjustment_id", f"adjustment {adj_id} is not in version {latest.version}")
            adjustments = [a for a in adjustments if a.id != adj_id]
        replaced: dict[str, str] = {}
        for i, raw in enumerate(require_list(body.get("replace_adjustments"), "replace_adjustments")):
            raw = require_object(raw, f"replace_adjustments[{i}]")
            check_fields(raw, {"adjustment", "replaces_adjustment_id", "plan_phase_order"}, f"replace_adjustments[{i}]")
            old_id = raw.get("replaces_adjustment_id")
            if not any(a.id == old_id for a in adjustments):
                raise bad(f"replace_adjustments[{i}].replaces_adjustment_id",
                          f"is not an adjustment of version {latest.version}")
            new = parse_adjustment(raw.get("adjustment"), f"replace_adjustments[{i}].adjustment")
            replaced[new.id] = old_id
            adjustments = [new if a.id == old_id else a for a in adjustments]
        for i, raw in enumerate(require_list(body.get("add_adjustments"), "add_adjustments")):
            raw = require_object(raw, f"add_adjustments[{i}]")
            adjustments.append(parse_adjustment(raw.get("adjustment"), f"add_adjustments[{i}].adjustment"))
        plan = service_plans.create_plan_version(session, plan, version=body["version"], prices=prices,
                                                 adjustments=adjustments, now=now(),
                                                 set_as_default=bool(body.get("set_as_default")),
                                                 replaced_adjustments=replaced)
        return plan_json(plan, body["version"], _item_names(session)), 201


@bp.post("/plans/<plan_id>/set_default_version")
@documented(body=SetDefaultVersion, response=Plan)
def set_default_version(plan_id: str):
    """Make a version the default for new subscriptions."""
    body = require_object(json_body(), "body")
    check_fields(body, {"version"}, "")
    if not isinstance(body.get("version"), int):
        raise bad("version", "an integer is required")
    with session_scope(engine()) as session:
        plan = SqlCatalog(session).get_plan(plan_id, for_update=True)
        if body["version"] not in {v.version for v in plan.versions}:
            raise bad("version", f"plan {plan_id} has no version {body['version']}")
        plan = service_plans.set_plan_default_version(session, plan, body["version"])
        return plan_json(plan, item_names=_item_names(session))
