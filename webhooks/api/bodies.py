"""Orb request bodies read into domain objects: prices, adjustments, anchors, metadata, instants.

Each parser names the offending field in its 400 (``webhooks.api.common.bad``); unknown fields are
refused, and Orb fields this service does not implement are accepted only when null.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing_core import (
    Adjustment, AdjustmentType, BillingAnchor, BillingMode, Cadence, InvalidInput, ModelType, Price, parse_config,
    parse_decimal, parse_optional_decimal, wire,
)
from billing_core.orb_json import ADJUSTMENT_VALUE_FIELD
from webhooks.api.common import NewId, bad, new_id

__all__ = [
    "check_fields", "optional_instant", "parse_adjustment", "parse_anchor", "parse_instant", "parse_metadata",
    "parse_price", "require_list", "require_object",
]

_PRICE_FIELDS = {
    "name", "item_id", "model_type", "cadence", "billable_metric_id", "billed_in_advance", "fixed_price_quantity",
    "currency", "external_price_id", "metadata", "minimum_amount", "maximum_amount",
    "unit_config", "tiered_config", "bulk_config", "package_config", "tiered_package_config", "matrix_config",
}
# Orb fields this core does not implement: accepted only when absent or null.
_IGNORED_WHEN_NULL = {
    "conversion_rate", "conversion_rate_config", "invoice_grouping_key", "invoicing_cycle_configuration",
    "billing_cycle_configuration", "dimensional_price_configuration", "reference_id", "license_type_id",
}


def parse_instant(value: Any, field: str) -> datetime:
    """Parse an ISO-8601 instant (a date means midnight UTC; naive is UTC) in the accepted range."""
    if not isinstance(value, str):
        raise bad(field, "expected an ISO-8601 date-time")
    return wire.parse_instant(value, field)


def optional_instant(value: Any, field: str) -> datetime | None:
    return None if value is None else parse_instant(value, field)


def require_object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise bad(field, "expected an object")
    return value


def require_list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(field, "expected a list")
    return value


def parse_metadata(value: Any, field: str = "metadata") -> dict[str, str]:
    """Read Orb metadata: an object of strings; null values are dropped."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad(field, "expected an object of strings")
    for key, item in value.items():
        if item is not None and not isinstance(item, (str, int, float, bool)):
            raise bad(f"{field}.{key}", "expected a string")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def check_fields(raw: Mapping[str, Any], allowed: set[str], field: str, ignored: set[str] = frozenset()) -> None:
    """Refuse unknown fields (and unsupported Orb fields unless null), naming the first."""
    for key in sorted(raw):
        if key in allowed:
            continue
        if key in ignored and raw[key] is None:
            continue
        prefix = f"{field}." if field else ""
        raise bad(f"{prefix}{key}", "unknown or unsupported field")


def parse_price(raw: Any, *, currency: str, field: str, key: str | None = None,
                id_factory: NewId = new_id) -> Price:
    """Build a Price from Orb's new-price JSON (``model_type`` + its ``*_config``)."""
    raw = require_object(raw, field)
    check_fields(raw, _PRICE_FIELDS, field, _IGNORED_WHEN_NULL)
    model_type = raw.get("model_type")
    if model_type not in {m.value for m in ModelType}:
        raise bad(f"{field}.model_type", f"{model_type!r} is not supported "
                  f"(one of {', '.join(m.value for m in ModelType)})")
    config_key = f"{model_type}_config"
    if not isinstance(raw.get(config_key), Mapping):
        raise bad(f"{field}.{config_key}", "is required for this model_type")
    try:
        config = parse_config(model_type, raw[config_key])
    except InvalidInput as exc:
        raise bad(f"{field}.{exc.field or config_key}", str(exc).split(": ", 1)[-1]) from None
    for other in _PRICE_FIELDS:
        if other.endswith("_config") and other != config_key and raw.get(other) is not None:
            raise bad(f"{field}.{other}", f"does not belong to model_type {model_type}")
    try:
        cadence = Cadence(raw.get("cadence"))
    except ValueError:
        raise bad(f"{field}.cadence", f"{raw.get('cadence')!r} is not supported "
                  f"(one of {', '.join(c.value for c in Cadence)})") from None
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{field}.name", "is required")
    item_id = raw.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise bad(f"{field}.item_id", "is required")
    price_currency = raw.get("currency") or currency
    if price_currency != currency:
        raise bad(f"{field}.currency", f"must be {currency}")
    metric_id = raw.get("billable_metric_id")
    in_advance = bool(raw.get("billed_in_advance"))
    if in_advance and metric_id:
        raise bad(f"{field}.billed_in_advance", "usage prices are billed in arrears")
    if model_type == ModelType.MATRIX and not metric_id:
        raise bad(f"{field}.billable_metric_id", "a matrix price needs a metric")
    quantity = parse_optional_decimal(raw.get("fixed_price_quantity"), f"{field}.fixed_price_quantity")
    if quantity is not None and metric_id:
        raise bad(f"{field}.fixed_price_quantity", "applies to fixed prices only (no billable_metric_id)")
    metadata = parse_metadata(raw.get("metadata"), f"{field}.metadata")
    price_id = id_factory("price")
    return Price(
        id=price_id, key=key or price_id, name=name.strip(), item_id=item_id, model_type=ModelType(model_type),
        config=config, cadence=cadence, currency=currency,
        billing_mode=BillingMode.IN_ADVANCE if in_advance else BillingMode.IN_ARREAR, metric_id=metric_id,
        fixed_price_quantity=(quantity if quantity is not None else (None if metric_id else Decimal(1))),
        minimum_amount=parse_optional_decimal(raw.get("minimum_amount"), f"{field}.minimum_amount"),
        maximum_amount=parse_optional_decimal(raw.get("maximum_amount"), f"{field}.maximum_amount"),
        external_price_id=raw.get("external_price_id"),
        metadata=metadata,
    )


_ADJ_FIELDS = {"adjustment_type", "applies_to_price_ids", "applies_to_all", "is_invoice_level", "item_id",
               "currency", "reason", *ADJUSTMENT_VALUE_FIELD.values()}


def parse_adjustment(raw: Any, field: str, id_factory: NewId = new_id) -> Adjustment:
    """Build an Adjustment from Orb's new-adjustment JSON."""
    raw = require_object(raw, field)
    kind = raw.get("adjustment_type")
    if kind not in ADJUSTMENT_VALUE_FIELD:
        raise bad(f"{field}.adjustment_type", f"{kind!r} is not supported (one of {', '.join(ADJUSTMENT_VALUE_FIELD)})")
    check_fields(raw, _ADJ_FIELDS, field, {"filters", "applies_to_item_ids", "price_type"})
    value_field = ADJUSTMENT_VALUE_FIELD[kind]
    if raw.get(value_field) is None:
        raise bad(f"{field}.{value_field}", "is required")
    names = tuple(str(n) for n in require_list(raw.get("applies_to_price_ids"), f"{field}.applies_to_price_ids"))
    try:
        return Adjustment(id=id_factory("adj"), adjustment_type=AdjustmentType(kind),
                          value=parse_decimal(raw[value_field], f"{field}.{value_field}"),
                          applies_to_price_ids=names, reason=raw.get("reason"))
    except InvalidInput as exc:
        raise bad(f"{field}.{value_field}", str(exc).split(": ", 1)[-1]) from None


def parse_anchor(raw: Any, field: str = "billing_cycle_anchor_configuration") -> BillingAnchor | None:
    if raw is None:
        return None
    raw = require_object(raw, field)
    check_fields(raw, {"day", "month", "year"}, field)
    try:
        return BillingAnchor(day=int(raw["day"]), month=int(raw.get("month") or 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"{field}.day", str(exc) or "is required") from None
