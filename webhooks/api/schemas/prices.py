"""Price evaluation (Orb's ``prices.evaluate_multiple`` / ``evaluate_preview_events``) and simulations."""

from __future__ import annotations

from datetime import datetime
from typing import Optional, Union

from pydantic import Field

from webhooks.api.common import Body
from webhooks.api.schemas.base import Money, Quantity, Shape
from webhooks.api.schemas.catalog import NewAdjustment, NewPrice


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


class SinglePriceEvaluate(Body):
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    filter: Optional[str] = None
    grouping_keys: Optional[list[str]] = Field(default=None, max_length=2)
    metric_parameter_overrides: None = None


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


class PriceGroups(Shape):
    data: list[PriceGroup]


# --- simulations ----------------------------------------------------------------------------------

class DraftPrice(Body):
    """A draft price, continuing the plan price it replaces (by id, key or external price id) if named."""

    price: NewPrice
    replaces_price_id: Optional[str] = None


class DraftAdjustment(Body):
    """A draft plan adjustment, continuing the plan adjustment it replaces (by id or key) if named."""

    adjustment: NewAdjustment
    replaces_adjustment_id: Optional[str] = None
    plan_phase_order: None = None


class SimulationCreate(Body):
    """A plan, the pricing to try (``version``, or draft ``prices`` with optional draft ``adjustments``:
    the whole set of the plan's adjustments, the default version's when left out), whose subscriptions
    and when."""

    plan_id: str = Field(min_length=1)
    version: Optional[int] = None
    prices: Optional[list[Union[DraftPrice, NewPrice]]] = None
    adjustments: Optional[list[Union[DraftAdjustment, NewAdjustment]]] = None
    customer_ids: Optional[list[str]] = None
    external_customer_ids: Optional[list[str]] = None
    timeframe_start: datetime
    timeframe_end: Optional[datetime] = None


class Bucket(Shape):
    label: str
    lower_percent: Optional[str]
    upper_percent: Optional[str]
    customers: int


class PriceRevenue(Shape):
    price_key: str
    name: str
    current: Money
    simulated: Money


class CustomerRevenue(Shape):
    customer_id: str
    subscription_ids: list[str]
    periods: int
    current_total: Money
    simulated_total: Money
    change_percent: Optional[str]
    current_adjustments: Money
    simulated_adjustments: Money
    prices: list[PriceRevenue]


class SimulationFailure(Shape):
    subscription_id: str
    customer_id: str
    reason: str


class SimulationResult(Shape):
    plan_id: str
    version: Optional[int]
    currency: str
    timeframe_start: datetime
    timeframe_end: datetime
    subscriptions: int
    periods: int
    current_total: Money
    simulated_total: Money
    change_total: Money
    change_percent: Optional[str]
    current_adjustments: Money
    simulated_adjustments: Money
    distribution: list[Bucket]
    customers: list[CustomerRevenue]
    failures: list[SimulationFailure]
