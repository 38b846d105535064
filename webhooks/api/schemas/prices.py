"""Price evaluation (Orb's ``prices.evaluate_multiple`` / ``evaluate_preview_events``) and simulations."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional, Union

from pydantic import Field

from webhooks.api.common import Body
from webhooks.api.schemas.base import Money, Quantity, Shape
from webhooks.api.schemas.catalog import NewPrice


# --- price evaluation -----------------------------------------------------------------------------

class PriceEvaluationInput(Body):
    """One price to evaluate: exactly one of ``price_id``, ``external_price_id`` or an inline ``price``."""

    price_id: Optional[str] = None
    external_price_id: Optional[str] = None
    price: Optional[NewPrice] = None
    filter: Optional[str] = None
    grouping_keys: Optional[list[str]] = Field(default=None, max_length=2)
    metric_parameter_overrides: None = None


class PriceEvaluate(Body):
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    price_evaluations: list[PriceEvaluationInput] = Field(min_length=1, max_length=100)


class PreviewEvent(Body):
    event_name: str = Field(min_length=1)
    timestamp: datetime
    properties: dict[str, Union[str, int, float, bool]]
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None


class PriceEvaluatePreview(PriceEvaluate):
    events: list[PreviewEvent] = Field(max_length=500)


class PriceGroup(Shape):
    amount: Money
    grouping_values: list[str]
    quantity: Quantity


class EvaluatedPrice(Shape):
    currency: str
    price_groups: list[PriceGroup]
    price_id: Optional[str]
    external_price_id: Optional[str]
    inline_price_index: Optional[int]


class PriceEvaluations(Shape):
    data: list[EvaluatedPrice]
