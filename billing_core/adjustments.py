"""Adjustments: discounts, minimums and maximums applied to one line.

Order (docs/billing-rules.md §6): usage discount (units, before rating) → amount discount
→ percentage discount (0–1) → minimum → maximum. A plan- or subscription-level adjustment
applies to the prices it names (by price id or stable price key), or to every line when it
names none. All arithmetic is on unrounded amounts; the line is rounded once afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from billing_core.money import FieldError, ZERO

__all__ = [
    "AdjustmentType",
    "Adjustment",
    "AppliedAdjustment",
    "AdjustedAmount",
    "InvalidAdjustment",
    "ORDER",
    "applies_to",
    "discount_quantity",
    "discount_groups",
    "adjust_amount",
]


class InvalidAdjustment(FieldError):
    """An adjustment's value is out of range (a percentage above 1, a negative minimum...)."""


class AdjustmentType(StrEnum):
    USAGE_DISCOUNT = "usage_discount"
    AMOUNT_DISCOUNT = "amount_discount"
    PERCENTAGE_DISCOUNT = "percentage_discount"
    MINIMUM = "minimum"
    MAXIMUM = "maximum"


ORDER = (
    AdjustmentType.USAGE_DISCOUNT,
    AdjustmentType.AMOUNT_DISCOUNT,
    AdjustmentType.PERCENTAGE_DISCOUNT,
    AdjustmentType.MINIMUM,
    AdjustmentType.MAXIMUM,
)


@dataclass(frozen=True)
class Adjustment:
    """One adjustment: its type, its value, and the prices it applies to (empty = all).

    ``value`` is units for a usage discount, an amount for amount discounts, minimums and
    maximums, and a fraction in [0, 1] for a percentage discount.
    """

    id: str
    adjustment_type: AdjustmentType
    value: Decimal
    applies_to_price_ids: tuple[str, ...] = ()
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.value < 0:
            raise InvalidAdjustment(f"{self.adjustment_type}: must not be negative")
        if self.adjustment_type == AdjustmentType.PERCENTAGE_DISCOUNT and self.value > 1:
            raise InvalidAdjustment("percentage_discount: must be between 0 and 1")


@dataclass(frozen=True)
class AppliedAdjustment:
    """What one adjustment did to a line: its id, type and the signed change it made."""

    adjustment_id: str
    adjustment_type: AdjustmentType
    amount: Decimal


@dataclass(frozen=True)
class AdjustedAmount:
    """A line's amount after adjustments (unrounded) and each adjustment's effect."""

    subtotal: Decimal
    total: Decimal
    applied: tuple[AppliedAdjustment, ...]


def applies_to(adjustment: Adjustment, price_id: str, price_key: str) -> bool:
    """Return whether an adjustment covers a price, named by id or key (no names = all)."""
    names = adjustment.applies_to_price_ids
    return not names or price_id in names or price_key in names


def _id(adjustment: Adjustment) -> str:
    return adjustment.id


def _of(adjustments: Iterable[Adjustment], kind: AdjustmentType) -> list[Adjustment]:
    return sorted((a for a in adjustments if a.adjustment_type == kind), key=_id)


def discount_quantity(quantity: Decimal, adjustments: Iterable[Adjustment]) -> tuple[Decimal, tuple[Adjustment, ...]]:
    """Subtract usage discounts (units) from a quantity, never below zero."""
    used = tuple(_of(adjustments, AdjustmentType.USAGE_DISCOUNT))
    units = sum((a.value for a in used), ZERO)
    return max(quantity - units, ZERO), used


def discount_groups(groups: Mapping[tuple[str, ...], Decimal],
                    adjustments: Iterable[Adjustment]) -> dict[tuple[str, ...], Decimal]:
    """Subtract usage discounts from grouped quantities, group by group in sorted order."""
    remaining = sum((a.value for a in _of(adjustments, AdjustmentType.USAGE_DISCOUNT)), ZERO)
    result: dict[tuple[str, ...], Decimal] = {}
    for key in sorted(groups):
        take = min(groups[key], remaining)
        remaining -= take
        result[key] = groups[key] - take
    return result


def adjust_amount(subtotal: Decimal, adjustments: Iterable[Adjustment], *,
                  minimum_amount: Decimal | None = None,
                  maximum_amount: Decimal | None = None) -> AdjustedAmount:
    """Apply amount discount → percentage discount → minimum → maximum to an unrounded subtotal.

    The price's own ``minimum_amount`` / ``maximum_amount`` take part in the minimum and maximum
    steps; the highest minimum and the lowest maximum win.
    """
    adjustments = list(adjustments)
    if not adjustments and minimum_amount is None and maximum_amount is None:
        return AdjustedAmount(subtotal=subtotal, total=subtotal, applied=())
    applied: list[AppliedAdjustment] = []
    total = subtotal
    by_kind: dict[AdjustmentType, list[Adjustment]] = {}
    for adj in adjustments:  # one pass (every rated line comes here), each kind in id order below
        by_kind.setdefault(adj.adjustment_type, []).append(adj)

    for adj in sorted(by_kind.get(AdjustmentType.AMOUNT_DISCOUNT, ()), key=_id):
        new = max(total - adj.value, ZERO)
        applied.append(AppliedAdjustment(adj.id, adj.adjustment_type, new - total))
        total = new

    for adj in sorted(by_kind.get(AdjustmentType.PERCENTAGE_DISCOUNT, ()), key=_id):
        new = total - total * adj.value
        applied.append(AppliedAdjustment(adj.id, adj.adjustment_type, new - total))
        total = new

    minimums = [(a.value, a.id) for a in by_kind.get(AdjustmentType.MINIMUM, ())]
    if minimum_amount is not None:
        minimums.append((minimum_amount, "price.minimum_amount"))
    if minimums:
        value, source = max(minimums)
        if total < value:
            applied.append(AppliedAdjustment(source, AdjustmentType.MINIMUM, value - total))
            total = value

    maximums = [(a.value, a.id) for a in by_kind.get(AdjustmentType.MAXIMUM, ())]
    if maximum_amount is not None:
        maximums.append((maximum_amount, "price.maximum_amount"))
    if maximums:
        value, source = min(maximums)
        if total > value:
            applied.append(AppliedAdjustment(source, AdjustmentType.MAXIMUM, value - total))
            total = value

    return AdjustedAmount(subtotal=subtotal, total=total, applied=tuple(applied))
