"""``/v1/prices/evaluate`` and ``/v1/prices/evaluate_preview_events``: Orb's price evaluation.

Existing prices (by id or external id) or inline prices, rated over a customer's stored usage in
a timeframe or over up to 500 preview events (``billing_core.evaluation``). Nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from billing_core import (
    MAX_PREVIEW_EVENTS, MAX_PRICE_EVALUATIONS, Customer, EvaluatedPrice, EventValidationFailed, InvalidInput,
    MetricDefinition, MetricNotFound, PriceEvaluation, PriceNotFound, SqlCatalog, SqlCustomerRepository,
    SqlUsageSource, evaluate_prices, filter_from_sql, format_decimal, exact_number, preview_usage_source,
)
from webhooks.api.bodies import check_fields, parse_instant, parse_price, require_list, require_object
from webhooks.api.common import api_blueprint, bad, engine, json_body, now
from webhooks.api.openapi import documented
from webhooks.api.schemas import (
    PriceEvaluate, PriceEvaluatePreview, PriceEvaluations, PriceGroups, SinglePriceEvaluate,
)
from worker.db import session_scope

bp = api_blueprint("billing_prices", __name__)

_BODY_FIELDS = {"timeframe_start", "timeframe_end", "customer_id", "external_customer_id", "price_evaluations"}
_EVALUATION_FIELDS = {"price_id", "external_price_id", "price", "filter", "grouping_keys"}


def _customer(session: Session, body: Mapping[str, Any]) -> Customer:
    customer_id, external_id = body.get("customer_id"), body.get("external_customer_id")
    if (customer_id is None) == (external_id is None):
        raise bad("customer_id", "give exactly one of customer_id and external_customer_id")
    repo = SqlCustomerRepository(session)
    if customer_id is not None:
        if not isinstance(customer_id, str):
            raise bad("customer_id", "expected a string")
        return repo.get(customer_id)
    if not isinstance(external_id, str):
        raise bad("external_customer_id", "expected a string")
    return repo.get_by_external_id(external_id)


def _timeframe(body: Mapping[str, Any]) -> tuple[datetime, datetime]:
    start = parse_instant(body.get("timeframe_start"), "timeframe_start")
    end = parse_instant(body.get("timeframe_end"), "timeframe_end")
    if end <= start:
        raise bad("timeframe_end", "must be after timeframe_start")
    return start, end


def _at(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _evaluation(session: Session, raw: Any, field: str, index: int | None) -> PriceEvaluation:
    """Read one price evaluation (``field`` names it in errors: ``price_evaluations[i]``, or "" for the body)."""
    raw = require_object(raw, field or "body")
    check_fields(raw, _EVALUATION_FIELDS, field, {"metric_parameter_overrides"})
    named = [k for k in ("price_id", "external_price_id", "price") if raw.get(k) is not None]
    if len(named) != 1:
        raise bad(field or "price_id", "give exactly one of price_id, external_price_id and price")
    inline = None
    if named[0] == "price":
        price_raw = require_object(raw["price"], _at(field, "price"))
        currency = price_raw.get("currency")
        if not isinstance(currency, str) or len(currency) != 3:
            raise bad(_at(field, "price.currency"), "an ISO 4217 code is required")
        price = parse_price(price_raw, currency=currency, field=_at(field, "price"))
        inline = index
    else:
        name = raw[named[0]]
        if not isinstance(name, str) or not name:
            raise bad(_at(field, named[0]), "expected a non-empty string")
        try:
            price = SqlCatalog(session).get_price(name)
        except PriceNotFound:
            raise bad(_at(field, named[0]), f"no price {name!r}") from None
        if named[0] == "external_price_id" and price.external_price_id != name:
            raise bad(_at(field, "external_price_id"), f"no price with external_price_id {name!r}")
    if price.is_fixed:
        raise bad(field or "price_id", f"price {price.id} is a fixed fee; only usage prices are evaluated over events")
    filters: tuple[Any, ...] = ()
    if raw.get("filter") is not None:
        try:
            filters = filter_from_sql(raw["filter"])
        except InvalidInput as exc:
            raise bad(_at(field, "filter"), str(exc)) from None
    keys = require_list(raw.get("grouping_keys"), _at(field, "grouping_keys"))
    if not all(isinstance(k, str) for k in keys):
        raise bad(_at(field, "grouping_keys"), "expected a list of property names")
    if keys:
        try:
            MetricDefinition(event_name="-", aggregation="count", group_by=tuple(keys))
        except InvalidInput as exc:
            raise bad(_at(field, "grouping_keys"), str(exc)) from None
    return PriceEvaluation(price=price, filters=filters, grouping_keys=tuple(keys), inline_index=inline)


def _evaluations(session: Session, body: Mapping[str, Any]) -> list[PriceEvaluation]:
    raws = require_list(body.get("price_evaluations"), "price_evaluations")
    if not 1 <= len(raws) <= MAX_PRICE_EVALUATIONS:
        raise bad("price_evaluations", f"give 1 to {MAX_PRICE_EVALUATIONS} prices (got {len(raws)})")
    return [_evaluation(session, raw, f"price_evaluations[{i}]", i) for i, raw in enumerate(raws)]


def _definitions(source: SqlUsageSource, evaluations: list[PriceEvaluation]) -> dict[str, MetricDefinition]:
    """Read every asked price's metric, refusing a price whose metric does not exist (400 naming it)."""
    found = {}
    for i, evaluation in enumerate(evaluations):
        metric_id = evaluation.price.metric_id
        if metric_id is None:
            continue  # a fixed fee: evaluate_prices names it
        try:
            found[metric_id] = source.definition(metric_id)
        except MetricNotFound:
            where = "price.billable_metric_id" if evaluation.inline_index is not None else "price_id"
            raise bad(f"price_evaluations[{i}].{where}", f"no billable metric {metric_id!r}") from None
    return found


def _answer(results: list[EvaluatedPrice]) -> dict[str, Any]:
    data = []
    for result in results:
        price, inline = result.evaluation.price, result.evaluation.inline_index
        data.append({
            "currency": price.currency,
            "price_groups": [{"amount": format_decimal(g.amount), "grouping_values": list(g.grouping_values),
                              "quantity": exact_number(g.quantity)} for g in result.groups],
            "price_id": None if inline is not None else price.id,
            "external_price_id": None if inline is not None else price.external_price_id,
            "inline_price_index": inline,
        })
    return {"data": data}


@bp.post("/prices/evaluate")
@documented(body=PriceEvaluate, response=PriceEvaluations)
def evaluate():
    """Evaluate prices over a customer's usage in a timeframe (nothing is written)."""
    body = require_object(json_body(), "body")
    check_fields(body, _BODY_FIELDS, "")
    start, end = _timeframe(body)
    with session_scope(engine()) as session:
        customer = _customer(session, body)
        evaluations = _evaluations(session, body)
        source = SqlUsageSource(session)
        _definitions(source, evaluations)
        return _answer(evaluate_prices(evaluations, source, customer_id=customer.id, start=start, end=end))


@bp.post("/prices/<price_id>/evaluate")
@documented(body=SinglePriceEvaluate, response=PriceGroups)
def evaluate_one(price_id: str):
    """Evaluate one existing price over a customer's usage in a timeframe (Orb's ``prices.evaluate``)."""
    body = require_object(json_body(), "body")
    check_fields(body, {"timeframe_start", "timeframe_end", "customer_id", "external_customer_id", "filter",
                        "grouping_keys"}, "", {"metric_parameter_overrides"})
    start, end = _timeframe(body)
    with session_scope(engine()) as session:
        customer = _customer(session, body)
        try:
            SqlCatalog(session).get_price(price_id)
        except PriceNotFound:
            raise PriceNotFound(f"price {price_id} not found", field="price_id") from None
        raw = {"price_id": price_id, "filter": body.get("filter"), "grouping_keys": body.get("grouping_keys")}
        evaluation = _evaluation(session, raw, "", None)
        source = SqlUsageSource(session)
        _definitions(source, [evaluation])
        result = evaluate_prices([evaluation], source, customer_id=customer.id, start=start, end=end)
        return {"data": _answer(result)["data"][0]["price_groups"]}


@bp.post("/prices/evaluate_preview_events")
@documented(body=PriceEvaluatePreview, response=PriceEvaluations)
def evaluate_preview_events():
    """Evaluate prices over up to 500 preview events instead of stored usage (nothing is written)."""
    body = require_object(json_body(), "body")
    check_fields(body, _BODY_FIELDS | {"events"}, "")
    start, end = _timeframe(body)
    events = require_list(body.get("events"), "events")
    if len(events) > MAX_PREVIEW_EVENTS:
        raise bad("events", f"{len(events)} preview events; the limit is {MAX_PREVIEW_EVENTS}")
    with session_scope(engine()) as session:
        customer = _customer(session, body)
        evaluations = _evaluations(session, body)
        definitions = _definitions(SqlUsageSource(session), evaluations)
    try:
        # Preview events may lie ahead (a price calculator): accepted up to the timeframe's end.
        source = preview_usage_source(events, customer_id=customer.id,
                                      external_customer_id=customer.external_customer_id,
                                      definitions=definitions, now=max(now(), end))
    except EventValidationFailed as exc:
        where, problems = exc.failures[0]
        raise bad(where, problems[0]) from None
    try:
        return _answer(evaluate_prices(evaluations, source, customer_id=customer.id, start=start, end=end))
    finally:
        source.bind.dispose()  # the request's private in-memory database
