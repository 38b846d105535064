"""``/v1/simulations``: replay past periods of a plan's subscriptions under a version or draft pricing.

Synchronous: the answer is the result (``billing_core.simulations``); nothing is stored. A plan's
10,000 subscriptions over three months take seconds (``bench.simulate``); ``marketsync simulate``
runs the same use case from the command line with a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from billing_core import (
    Adjustment, CustomerNotFound, Price, SqlCatalog, SqlCustomerRepository, service_plans, usage_source,
)
from webhooks.api.bodies import (
    check_fields, parse_adjustment, parse_instant, parse_price, require_list, require_object,
)
from webhooks.api.common import api_blueprint, bad, engine, json_body, now
from webhooks.api.openapi import documented
from webhooks.api.schemas import SimulationCreate, SimulationResult
from worker.db import session_scope

bp = api_blueprint("billing_simulations", __name__)

_FIELDS = {"plan_id", "version", "prices", "adjustments", "customer_ids", "external_customer_ids", "timeframe_start",
           "timeframe_end"}
MAX_CUSTOMERS = 10_000


def _draft(raw_prices: list[Any], currency: str) -> list[tuple[Price, str | None]]:
    """Read draft prices: Orb's new-price objects, bare or ``{"price": ..., "replaces_price_id": ...}``."""
    draft = _drafted(raw_prices, "prices", "price", "replaces_price_id", "expected a price id",
                     lambda raw, field: parse_price(raw, currency=currency, field=field))
    if not draft:
        raise bad("prices", "at least one price is required")
    return draft


def _draft_adjustments(raw_adjustments: list[Any]) -> list[tuple[Adjustment, str | None]]:
    """Read draft adjustments: ``{"adjustment": ..., "replaces_adjustment_id": ...}`` (as ``add_adjustments``
    and ``replace_adjustments`` take them) or a bare new-adjustment object; an empty list means none."""
    return _drafted(raw_adjustments, "adjustments", "adjustment", "replaces_adjustment_id", "expected an adjustment id",
                    parse_adjustment, ignored={"plan_phase_order"})


def _drafted(raw_list: list[Any], name: str, key: str, replaces_key: str, expected: str,
             parse: Callable[[Any, str], Any], ignored: set[str] = frozenset()) -> list[tuple[Any, str | None]]:  # type: ignore[assignment]
    """Read a draft list: each entry a bare object, or ``{key: object, replaces_key: id}``; parsed with ``parse``."""
    draft = []
    for i, raw in enumerate(raw_list):
        field = f"{name}[{i}]"
        raw = require_object(raw, field)
        replaces = None
        if key in raw:
            check_fields(raw, {key, replaces_key}, field, ignored)
            replaces = raw.get(replaces_key)
            if replaces is not None and (not isinstance(replaces, str) or not replaces):
                raise bad(f"{field}.{replaces_key}", expected)
            raw, field = require_object(raw[key], f"{field}.{key}"), f"{field}.{key}"
        draft.append((parse(raw, field), replaces))
    return draft


def _customers(session: Session, body: Mapping[str, Any]) -> list[str] | None:
    ids = require_list(body.get("customer_ids"), "customer_ids")
    external = require_list(body.get("external_customer_ids"), "external_customer_ids")
    if body.get("customer_ids") is None and body.get("external_customer_ids") is None:
        return None  # every subscription on the plan
    if len(ids) + len(external) > MAX_CUSTOMERS:
        raise bad("customer_ids", f"at most {MAX_CUSTOMERS} customers (leave both lists out for every subscription)")
    repo = SqlCustomerRepository(session)
    found = []
    for name, values, lookup in (("customer_ids", ids, repo.get), ("external_customer_ids", external, repo.get_by_external_id)):
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise bad(f"{name}[{i}]", "expected a non-empty string")
            try:
                found.append(lookup(value).id)
            except CustomerNotFound:
                raise bad(f"{name}[{i}]", f"no customer {value!r}") from None
    return found


@bp.post("/simulations")
@documented(body=SimulationCreate, response=SimulationResult)
def create_simulation():
    """Replay ended billing periods under a plan version or draft prices and adjustments (nothing is written)."""
    body = require_object(json_body(), "body")
    check_fields(body, _FIELDS, "")
    plan_id = body.get("plan_id")
    if not isinstance(plan_id, str) or not plan_id:
        raise bad("plan_id", "is required")
    version = body.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise bad("version", "expected an integer")
    if (version is None) == (body.get("prices") is None):
        raise bad("version", "give exactly one of version and prices")
    if body.get("adjustments") is not None and body.get("prices") is None:
        raise bad("adjustments", "draft adjustments go with draft prices (a version brings its own)")
    at = now()
    start = parse_instant(body.get("timeframe_start"), "timeframe_start")
    end = at if body.get("timeframe_end") is None else parse_instant(body["timeframe_end"], "timeframe_end")
    if end <= start:
        raise bad("timeframe_end", "must be after timeframe_start")
    if start >= at:
        raise bad("timeframe_start", "must be in the past (simulations replay ended periods)")
    with session_scope(engine()) as session:
        plan = SqlCatalog(session).get_plan(plan_id)
        draft = None if body.get("prices") is None else _draft(require_list(body["prices"], "prices"), plan.currency)
        adjustments = (None if body.get("adjustments") is None
                       else _draft_adjustments(require_list(body["adjustments"], "adjustments")))
        result = service_plans.simulation(session, usage_source(engine()), plan_id=plan.id, version=version,
                                          draft=draft, draft_adjustments=adjustments,
                                          customer_ids=_customers(session, body), start=start, end=end, now=at)
    return result.to_dict(version)
