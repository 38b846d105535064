"""Exact JSON-ready encodings of the rating domain, for storage snapshots.

Decimals are strings, instants ISO-8601 UTC; ``*_from_dict`` inverts ``*_to_dict`` exactly,
so a stored plan version, subscription timeline or issued invoice reads back equal.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Mapping

from billing_core.adjustments import Adjustment, AdjustmentType, AppliedAdjustment
from billing_core.invoices import Invoice
from billing_core.lines import LineItem, LineTrace, iso
from billing_core.metric_definition import (
    AllOf, AnyOf, Condition, Filter, InvalidMetric, MetricDefinition, Scalar, to_decimal,
)
from billing_core.money import format_decimal
from billing_core.periods import BillingAnchor, Cadence
from billing_core.plan_migrations import Undo
from billing_core.plans import ChangeKind, Lineage, PlanVersion
from billing_core.pricing import (
    BillingMode, BulkConfig, MatrixConfig, ModelType, PackageConfig, Price, SubLine, TieredConfig,
    TieredPackageConfig, UnitConfig, parse_config,
)
from billing_core.subscriptions import AdjustmentInterval, PlanPhase, PriceInterval, Subscription, TimelineEdit

__all__ = [
    "price_to_dict", "price_from_dict", "adjustment_to_dict", "adjustment_from_dict",
    "version_to_dict", "version_from_dict", "subscription_to_dict", "subscription_from_dict",
    "invoice_to_dict", "invoice_from_dict", "undo_to_dict", "undo_from_dict", "instant", "definition_to_dict", "definition_from_dict",
]


def _d(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


def _dp(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def instant(value: str | None) -> datetime | None:
    """Parse an ISO-8601 instant written by :func:`iso`."""
    return None if value is None else _instant(value)


@lru_cache(maxsize=65536)
def _instant(value: str) -> datetime:
    # Timelines repeat the same few instants (plan starts, anchors) across thousands of
    # subscriptions; loading them all parses each text once.
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _config_to_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, UnitConfig):
        return {"unit_amount": _d(config.unit_amount)}
    if isinstance(config, TieredConfig):
        return {"tiers": [{"first_unit": _d(t.first_unit), "last_unit": _d(t.last_unit),
                           "unit_amount": _d(t.unit_amount)} for t in config.tiers]}
    if isinstance(config, BulkConfig):
        return {"tiers": [{"maximum_units": _d(t.maximum_units), "unit_amount": _d(t.unit_amount)}
                          for t in config.tiers]}
    if isinstance(config, PackageConfig):
        return {"package_amount": _d(config.package_amount), "package_size": _d(config.package_size)}
    if isinstance(config, TieredPackageConfig):
        return {"package_size": _d(config.package_size),
                "tiers": [{"tier_lower_bound": _d(t.tier_lower_bound), "per_unit": _d(t.per_unit)}
                          for t in config.tiers]}
    assert isinstance(config, MatrixConfig)
    return {"dimensions": list(config.dimensions), "default_unit_amount": _d(config.default_unit_amount),
            "matrix_values": [{"dimension_values": list(v.dimension_values), "unit_amount": _d(v.unit_amount)}
                              for v in config.matrix_values]}


def price_to_dict(price: Price) -> dict[str, Any]:
    """Encode a price exactly."""
    return {
        "id": price.id, "key": price.key, "name": price.name, "item_id": price.item_id,
        "model_type": price.model_type.value, "config": _config_to_dict(price.config),
        "cadence": price.cadence.value, "currency": price.currency, "billing_mode": price.billing_mode.value,
        "metric_id": price.metric_id, "fixed_price_quantity": _d(price.fixed_price_quantity),
        "minimum_amount": _d(price.minimum_amount), "maximum_amount": _d(price.maximum_amount),
        "external_price_id": price.external_price_id, "metadata": dict(sorted(price.metadata.items())),
    }


def price_from_dict(data: dict[str, Any]) -> Price:
    """Decode a price written by :func:`price_to_dict`."""
    return Price(
        id=data["id"], key=data["key"], name=data["name"], item_id=data["item_id"],
        model_type=ModelType(data["model_type"]), config=parse_config(data["model_type"], data["config"]),
        cadence=Cadence(data["cadence"]), currency=data["currency"], billing_mode=BillingMode(data["billing_mode"]),
        metric_id=data.get("metric_id"), fixed_price_quantity=_dp(data.get("fixed_price_quantity")),
        minimum_amount=_dp(data.get("minimum_amount")), maximum_amount=_dp(data.get("maximum_amount")),
        external_price_id=data.get("external_price_id"), metadata=dict(data.get("metadata") or {}),
    )


def adjustment_to_dict(adj: Adjustment) -> dict[str, Any]:
    return {"id": adj.id, "adjustment_type": adj.adjustment_type.value, "value": _d(adj.value),
            "applies_to_price_ids": list(adj.applies_to_price_ids), "reason": adj.reason}


def adjustment_from_dict(data: dict[str, Any]) -> Adjustment:
    return Adjustment(id=data["id"], adjustment_type=AdjustmentType(data["adjustment_type"]),
                      value=Decimal(data["value"]), applies_to_price_ids=tuple(data["applies_to_price_ids"]),
                      reason=data.get("reason"))


def version_to_dict(version: PlanVersion) -> dict[str, Any]:
    return {"version": version.version, "prices": [price_to_dict(p) for p in version.prices],
            "adjustments": [adjustment_to_dict(a) for a in version.adjustments],
            "created_at": iso(version.created_at),
            "lineage": [{"kind": e.kind, "key": e.key, "change": e.change.value, "id": e.id,
                         "previous_id": e.previous_id} for e in version.lineage]}


def version_from_dict(data: dict[str, Any]) -> PlanVersion:
    return PlanVersion(version=data["version"], prices=tuple(price_from_dict(p) for p in data["prices"]),
                       adjustments=tuple(adjustment_from_dict(a) for a in data["adjustments"]),
                       created_at=instant(data.get("created_at")),
                       lineage=tuple(Lineage(e["kind"], e["key"], ChangeKind(e["change"]), e["id"], e["previous_id"])
                                     for e in data.get("lineage", ())))


def _phase_to_dict(p: PlanPhase) -> dict[str, Any]:
    return {"plan_id": p.plan_id, "plan_version": p.plan_version, "start": iso(p.start), "end": iso(p.end)}


def _phase_from_dict(p: dict[str, Any]) -> PlanPhase:
    return PlanPhase(p["plan_id"], p["plan_version"], instant(p["start"]), instant(p["end"]))  # type: ignore[arg-type]


def _interval_to_dict(i: PriceInterval) -> dict[str, Any]:
    return {"id": i.id, "price": price_to_dict(i.price), "start": iso(i.start), "end": iso(i.end),
            "plan_id": i.plan_id, "plan_version": i.plan_version, "source": i.source}


def _interval_from_dict(i: dict[str, Any], price: Any = None) -> PriceInterval:
    return PriceInterval(id=i["id"], price=(price or price_from_dict)(i["price"]), start=instant(i["start"]),  # type: ignore[arg-type]
                         end=instant(i["end"]), plan_id=i["plan_id"], plan_version=i["plan_version"],
                         source=i["source"])


def _adjustment_interval_to_dict(a: AdjustmentInterval) -> dict[str, Any]:
    return {"id": a.id, "adjustment": adjustment_to_dict(a.adjustment), "start": iso(a.start),
            "end": iso(a.end), "plan_version": a.plan_version,
            "applies_to_price_interval_ids": list(a.applies_to_price_interval_ids)}


def _adjustment_interval_from_dict(a: dict[str, Any]) -> AdjustmentInterval:
    return AdjustmentInterval(
        id=a["id"], adjustment=adjustment_from_dict(a["adjustment"]), start=instant(a["start"]),  # type: ignore[arg-type]
        end=instant(a["end"]), plan_version=a["plan_version"],
        applies_to_price_interval_ids=tuple(a["applies_to_price_interval_ids"]))


def undo_to_dict(undo: Undo) -> dict[str, Any]:
    """Encode what one migration edit changed (see ``plan_migrations.Undo``)."""
    return {"instant": iso(undo.instant), "intervals": [_interval_to_dict(i) for i in undo.intervals],
            "adjustments": [_adjustment_interval_to_dict(a) for a in undo.adjustments],
            "phases": [_phase_to_dict(p) for p in undo.phases],
            "added_intervals": list(undo.added_intervals), "added_adjustments": list(undo.added_adjustments),
            "added_phase": _phase_to_dict(undo.added_phase) if undo.added_phase else None}


def undo_from_dict(data: dict[str, Any]) -> Undo:
    return Undo(instant=instant(data["instant"]),  # type: ignore[arg-type]
                intervals=tuple(_interval_from_dict(i) for i in data["intervals"]),
                adjustments=tuple(_adjustment_interval_from_dict(a) for a in data["adjustments"]),
                phases=tuple(_phase_from_dict(p) for p in data["phases"]),
                added_intervals=tuple(data["added_intervals"]), added_adjustments=tuple(data["added_adjustments"]),
                added_phase=_phase_from_dict(data["added_phase"]) if data.get("added_phase") else None)


def subscription_to_dict(sub: Subscription) -> dict[str, Any]:
    """Encode a subscription with its whole timeline and edit log."""
    return {
        "id": sub.id, "customer_id": sub.customer_id, "currency": sub.currency,
        "start": iso(sub.start), "end": iso(sub.end),
        "anchor": {"day": sub.anchor.day, "month": sub.anchor.month}, "cadence": sub.cadence.value,
        "phases": [_phase_to_dict(p) for p in sub.phases],
        "intervals": [_interval_to_dict(i) for i in sub.intervals],
        "adjustment_intervals": [_adjustment_interval_to_dict(a) for a in sub.adjustment_intervals],
        "edits": [{"sequence": e.sequence, "kind": e.kind, "effective_at": iso(e.effective_at),
                   "recorded_at": iso(e.recorded_at), "details": [list(d) for d in e.details]} for e in sub.edits],
        "external_marketplace": sub.external_marketplace,
        "external_marketplace_reporting_id": sub.external_marketplace_reporting_id,
        "metadata": dict(sorted(sub.metadata.items())), "created_at": iso(sub.created_at),
    }


def subscription_from_dict(data: dict[str, Any], price_cache: dict[tuple[str, str], Price] | None = None) -> Subscription:
    """Decode a subscription written by :func:`subscription_to_dict`.

    ``price_cache`` lets a caller decoding many subscriptions from one database share decoded
    prices: there a price id (with its key) names one immutable definition.
    """
    def price(raw: dict[str, Any]) -> Price:
        if price_cache is None:
            return price_from_dict(raw)
        cache_key = (raw["id"], raw["key"])
        found = price_cache.get(cache_key)
        if found is None:
            found = price_cache[cache_key] = price_from_dict(raw)
        return found

    return Subscription(
        id=data["id"], customer_id=data["customer_id"], currency=data["currency"],
        start=instant(data["start"]), end=instant(data.get("end")),  # type: ignore[arg-type]
        anchor=BillingAnchor(**data["anchor"]), cadence=Cadence(data["cadence"]),
        phases=tuple(_phase_from_dict(p) for p in data["phases"]),
        intervals=tuple(_interval_from_dict(i, price) for i in data["intervals"]),
        adjustment_intervals=tuple(_adjustment_interval_from_dict(a) for a in data["adjustment_intervals"]),
        edits=tuple(TimelineEdit(e["sequence"], e["kind"], instant(e["effective_at"]), instant(e["recorded_at"]),  # type: ignore[arg-type]
                                 tuple(tuple(d) for d in e["details"])) for e in data["edits"]),
        external_marketplace=data.get("external_marketplace"),
        external_marketplace_reporting_id=data.get("external_marketplace_reporting_id"),
        metadata=dict(data.get("metadata") or {}), created_at=instant(data.get("created_at")),
    )


def invoice_to_dict(invoice: Invoice) -> dict[str, Any]:
    """Encode an invoice with every line's full price, for an issued snapshot."""
    body = invoice.to_dict()
    by_id = {line.id: line for line in invoice.line_items}
    for line in body["line_items"]:
        line["price"] = price_to_dict(by_id[line["id"]].price)
    return body


def invoice_from_dict(data: dict[str, Any]) -> Invoice:
    """Decode an invoice written by :func:`invoice_to_dict`."""
    lines = []
    for raw in data["line_items"]:
        trace = raw["trace"]
        lines.append(LineItem(
            id=raw["id"], kind=raw["kind"], name=raw["name"], price=price_from_dict(raw["price"]),
            start=instant(raw["start_date"]), end=instant(raw["end_date"]),  # type: ignore[arg-type]
            quantity=Decimal(raw["quantity"]), subtotal_unrounded=Decimal(raw["subtotal_unrounded"]),
            amount_unrounded=Decimal(raw["amount_unrounded"]), amount=Decimal(raw["amount"]),
            currency=data["currency"],
            trace=LineTrace(price_id=trace["price_id"], price_key=trace["price_key"],
                            price_interval_id=trace["price_interval_id"], plan_id=trace["plan_id"],
                            plan_version=trace["plan_version"], metric_id=trace["metric_id"],
                            timeframe_start=instant(trace["timeframe_start"]),  # type: ignore[arg-type]
                            timeframe_end=instant(trace["timeframe_end"]),  # type: ignore[arg-type]
                            event_count=trace["event_count"], skipped=trace["skipped"]),
            sub_lines=tuple(SubLine(name=s["name"], quantity=Decimal(s["quantity"]), amount=Decimal(s["amount"]),
                                    unit_amount=Decimal(s["unit_amount"]), first_unit=_dp(s["first_unit"]),
                                    last_unit=_dp(s["last_unit"]), grouping=tuple(tuple(g) for g in s["grouping"]))
                            for s in raw["sub_line_items"]),
            adjustments=tuple(AppliedAdjustment(a["adjustment_id"], AdjustmentType(a["adjustment_type"]),
                                                Decimal(a["amount"])) for a in raw["adjustments"]),
            proration=_dp(raw["proration"]), corrects_invoice_id=raw["corrects_invoice_id"],
            corrects_line_id=raw["corrects_line_id"], corrects_period_start=instant(raw["corrects_period_start"]),
        ))
    return Invoice(
        subscription_id=data["subscription_id"], customer_id=data["customer_id"], currency=data["currency"],
        period_start=instant(data["period_start"]), period_end=instant(data["period_end"]),  # type: ignore[arg-type]
        line_items=tuple(lines), status=data["status"], id=data["id"], issued_at=instant(data["issued_at"]),
        invoice_number=data.get("invoice_number"),
    )


# Metric definitions (storage and the structured HTTP form) -----------------------------------


def _scalar_to_json(value: Scalar) -> Any:
    if isinstance(value, Decimal):
        return {"number": str(value)}
    return value


def _scalar_from_json(value: Any) -> Scalar:
    if isinstance(value, dict) and set(value) == {"number"}:
        return to_decimal(value["number"])
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return to_decimal(str(value))
    raise InvalidMetric(f"unsupported filter value {value!r}")


def _filter_to_dict(item: Filter) -> dict[str, Any]:
    if isinstance(item, Condition):
        value = (
            [_scalar_to_json(v) for v in item.value]
            if isinstance(item.value, tuple)
            else _scalar_to_json(item.value)
        )
        return {"property": item.property, "operator": item.operator, "value": value}
    key = "all_of" if isinstance(item, AllOf) else "any_of"
    return {key: [_filter_to_dict(part) for part in item.parts]}


def _filter_from_dict(data: Any) -> Filter:
    if not isinstance(data, dict):
        raise InvalidMetric("each filter must be an object")
    if set(data) == {"all_of"} or set(data) == {"any_of"}:
        (key, parts), = data.items()
        if not isinstance(parts, list) or not parts:
            raise InvalidMetric(f"{key} needs a non-empty list of filters")
        built = tuple(_filter_from_dict(part) for part in parts)
        return AllOf(built) if key == "all_of" else AnyOf(built)
    unknown = set(data) - {"property", "operator", "value"}
    if unknown:
        raise InvalidMetric(f"unknown filter field {sorted(unknown)[0]!r}")
    operator = data.get("operator")
    raw = data.get("value")
    if operator in ("in", "not in"):
        if not isinstance(raw, list):
            raise InvalidMetric(f"{operator} needs a list value")
        value: Scalar | tuple[Scalar, ...] = tuple(_scalar_from_json(v) for v in raw)
    else:
        value = _scalar_from_json(raw)
    return Condition(property=data.get("property"), operator=operator, value=value)  # type: ignore[arg-type]


def definition_to_dict(definition: MetricDefinition) -> dict[str, Any]:
    """Return the definition as plain JSON-ready data (numbers as ``{"number": "1.5"}``)."""
    return {
        "event_name": definition.event_name,
        "aggregation": definition.aggregation,
        "property": definition.property,
        "filters": [_filter_to_dict(item) for item in definition.filters],
        "group_by": list(definition.group_by),
    }


def definition_from_dict(data: Mapping[str, Any]) -> MetricDefinition:
    """Build a definition from ``definition_to_dict`` data (plain JSON numbers accepted too)."""
    if not isinstance(data, Mapping):
        raise InvalidMetric("definition must be an object")
    unknown = set(data) - {"event_name", "aggregation", "property", "filters", "group_by"}
    if unknown:
        raise InvalidMetric(f"unknown definition field {sorted(unknown)[0]!r}")
    filters = data.get("filters") or []
    group_by = data.get("group_by") or []
    if not isinstance(filters, list) or not isinstance(group_by, list):
        raise InvalidMetric("filters and group_by must be lists")
    return MetricDefinition(
        event_name=data.get("event_name"),  # type: ignore[arg-type]
        aggregation=data.get("aggregation"),  # type: ignore[arg-type]
        property=data.get("property"),
        filters=tuple(_filter_from_dict(item) for item in filters),
        group_by=tuple(group_by),
    )
