"""Prices and rating: turn a quantity into an unrounded amount with sub-lines.

Price models and their config shapes follow Orb's (``unit_config``, ``tiered_config``,
``bulk_config``, ``package_config``, ``tiered_package_config``, ``matrix_config``); the
bounds and rules are docs/billing-rules.md §5. Rating never rounds: the one rounding happens per
invoice line in :mod:`billing_core.lines`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import Any, Union

from billing_core.money import (
    FieldError, ZERO, divide_to_integral, exact_number, parse_decimal, parse_optional_decimal,
)
from billing_core.periods import Cadence

__all__ = [
    "ModelType",
    "BillingMode",
    "UnitConfig",
    "Tier",
    "TieredConfig",
    "BulkTier",
    "BulkConfig",
    "PackageConfig",
    "TieredPackageTier",
    "TieredPackageConfig",
    "MatrixValue",
    "MatrixConfig",
    "PriceConfig",
    "Price",
    "SubLine",
    "Rating",
    "InvalidPrice",
    "rate",
    "parse_config",
    "config_to_dict",
]


class InvalidPrice(FieldError):
    """A price's configuration breaks a rule (bounds out of order, zero package size...)."""


class ModelType(StrEnum):
    UNIT = "unit"
    TIERED = "tiered"
    BULK = "bulk"
    PACKAGE = "package"
    TIERED_PACKAGE = "tiered_package"
    MATRIX = "matrix"


class BillingMode(StrEnum):
    IN_ADVANCE = "in_advance"
    IN_ARREAR = "in_arrear"


@dataclass(frozen=True)
class UnitConfig:
    unit_amount: Decimal


@dataclass(frozen=True)
class Tier:
    """A graduated tier ``(first_unit, last_unit]``; ``last_unit`` None for the open last tier."""

    first_unit: Decimal
    last_unit: Decimal | None
    unit_amount: Decimal


@dataclass(frozen=True)
class TieredConfig:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _check_tiers([(t.first_unit, t.last_unit) for t in self.tiers])


@dataclass(frozen=True)
class BulkTier:
    """A volume tier up to ``maximum_units`` (inclusive); None for the open last tier."""

    maximum_units: Decimal | None
    unit_amount: Decimal


@dataclass(frozen=True)
class BulkConfig:
    tiers: tuple[BulkTier, ...]

    def __post_init__(self) -> None:
        if not self.tiers:
            raise InvalidPrice("bulk_config.tiers: at least one tier is needed")
        bounds = [t.maximum_units for t in self.tiers]
        if any(b is None for b in bounds[:-1]):
            raise InvalidPrice("bulk_config.tiers: only the last tier may have no maximum_units")
        finite = [b for b in bounds if b is not None]
        if finite != sorted(set(finite)):
            raise InvalidPrice("bulk_config.tiers: maximum_units must increase")


@dataclass(frozen=True)
class PackageConfig:
    package_amount: Decimal
    package_size: Decimal

    def __post_init__(self) -> None:
        if self.package_size <= 0:
            raise InvalidPrice("package_config.package_size: must be positive")


@dataclass(frozen=True)
class TieredPackageTier:
    """A tier starting above ``tier_lower_bound`` units, charged ``per_unit`` per package."""

    tier_lower_bound: Decimal
    per_unit: Decimal


@dataclass(frozen=True)
class TieredPackageConfig:
    package_size: Decimal
    tiers: tuple[TieredPackageTier, ...]

    def __post_init__(self) -> None:
        if self.package_size <= 0:
            raise InvalidPrice("tiered_package_config.package_size: must be positive")
        if not self.tiers:
            raise InvalidPrice("tiered_package_config.tiers: at least one tier is needed")
        lows = [t.tier_lower_bound for t in self.tiers]
        if lows != sorted(set(lows)) or lows[0] != 0:
            raise InvalidPrice("tiered_package_config.tiers: lower bounds must start at 0 and increase")
        for low in lows:
            if Fraction(low) % Fraction(self.package_size) != 0:  # exact at any exponent
                raise InvalidPrice(
                    f"tiered_package_config.tiers: bound {low} is not a multiple of package_size"
                )


@dataclass(frozen=True)
class MatrixValue:
    dimension_values: tuple[str | None, ...]
    unit_amount: Decimal


@dataclass(frozen=True)
class MatrixConfig:
    dimensions: tuple[str, ...]
    default_unit_amount: Decimal
    matrix_values: tuple[MatrixValue, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.dimensions) <= 2:
            raise InvalidPrice("matrix_config.dimensions: one or two grouping properties")
        for value in self.matrix_values:
            if len(value.dimension_values) != len(self.dimensions):
                raise InvalidPrice("matrix_config.matrix_values: dimension_values must match dimensions")

    def amount_for(self, values: tuple[str, ...]) -> Decimal:
        """Return the unit amount for a group, falling back to ``default_unit_amount``."""
        for candidate in self.matrix_values:  # a plain loop: this runs once per group of every matrix line
            for want, got in zip(candidate.dimension_values, values):
                if want is not None and want != got:
                    break
            else:
                return candidate.unit_amount
        return self.default_unit_amount


PriceConfig = Union[UnitConfig, TieredConfig, BulkConfig, PackageConfig, TieredPackageConfig, MatrixConfig]

_CONFIG_KEY = {
    ModelType.UNIT: "unit_config",
    ModelType.TIERED: "tiered_config",
    ModelType.BULK: "bulk_config",
    ModelType.PACKAGE: "package_config",
    ModelType.TIERED_PACKAGE: "tiered_package_config",
    ModelType.MATRIX: "matrix_config",
}
_CONFIG_TYPE = {
    ModelType.UNIT: UnitConfig,
    ModelType.TIERED: TieredConfig,
    ModelType.BULK: BulkConfig,
    ModelType.PACKAGE: PackageConfig,
    ModelType.TIERED_PACKAGE: TieredPackageConfig,
    ModelType.MATRIX: MatrixConfig,
}


def _check_tiers(bounds: list[tuple[Decimal, Decimal | None]]) -> None:
    if not bounds:
        raise InvalidPrice("tiered_config.tiers: at least one tier is needed")
    if bounds[0][0] != 0:
        raise InvalidPrice("tiered_config.tiers: the first tier must start at 0")
    for i, (first, last) in enumerate(bounds):
        if last is None and i != len(bounds) - 1:
            raise InvalidPrice("tiered_config.tiers: only the last tier may be open")
        if last is not None and last <= first:
            raise InvalidPrice(f"tiered_config.tiers[{i}]: last_unit must exceed first_unit")
        if i and bounds[i - 1][1] != first:
            raise InvalidPrice(f"tiered_config.tiers[{i}]: first_unit must equal the previous last_unit")


@dataclass(frozen=True)
class Price:
    """A price: a model and its config, on a cadence, for one item, optionally metered.

    ``key`` is stable across plan versions (the price's lineage); ``id`` names this exact
    price. A price without ``metric_id`` is a fixed fee charged ``fixed_price_quantity``
    times per period.
    """

    id: str
    key: str
    name: str
    item_id: str
    model_type: ModelType
    config: PriceConfig
    cadence: Cadence = Cadence.MONTHLY
    currency: str = "USD"
    billing_mode: BillingMode = BillingMode.IN_ARREAR
    metric_id: str | None = None
    fixed_price_quantity: Decimal | None = None
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None
    external_price_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = _CONFIG_TYPE[ModelType(self.model_type)]
        if not isinstance(self.config, expected):
            raise InvalidPrice(f"{_CONFIG_KEY[self.model_type]}: is required for model_type {self.model_type}")
        if self.metric_id is None and self.model_type == ModelType.MATRIX:
            raise InvalidPrice("billable_metric_id: a matrix price needs a metric")
        if (self.minimum_amount is not None and self.maximum_amount is not None
                and self.minimum_amount > self.maximum_amount):
            raise InvalidPrice("minimum_amount: exceeds maximum_amount")

    @property
    def is_fixed(self) -> bool:
        """Return whether this is a fixed fee (no billable metric)."""
        return self.metric_id is None

    @property
    def price_type(self) -> str:
        """Return Orb's ``price_type``: ``fixed_price`` or ``usage_price``."""
        return "fixed_price" if self.is_fixed else "usage_price"

    @property
    def group_by(self) -> tuple[str, ...]:
        """Return the event properties usage must be grouped by (matrix dimensions)."""
        return self.config.dimensions if isinstance(self.config, MatrixConfig) else ()

    @property
    def config_key(self) -> str:
        """Return Orb's config field name for this model (``unit_config``...)."""
        return _CONFIG_KEY[self.model_type]


@dataclass(frozen=True)
class SubLine:
    """One tier or matrix group of a line: its quantity and unrounded amount."""

    name: str
    quantity: Decimal
    amount: Decimal
    unit_amount: Decimal
    first_unit: Decimal | None = None
    last_unit: Decimal | None = None
    grouping: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rating:
    """The unrounded result of applying a price model to a quantity."""

    amount: Decimal
    sub_lines: tuple[SubLine, ...] = ()


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral_value() else format(value, "f")


def _rate_graduated(quantity: Decimal, tiers: tuple[Tier, ...], detail: bool = True) -> Rating:
    lines: list[SubLine] = []
    total = ZERO
    for tier in tiers:
        if quantity <= tier.first_unit:
            break
        top = quantity if tier.last_unit is None else min(quantity, tier.last_unit)
        units = top - tier.first_unit
        amount = units * tier.unit_amount
        total += amount
        if not detail:
            continue
        upper = "∞" if tier.last_unit is None else _fmt(tier.last_unit)
        lines.append(SubLine(
            name=f"Tier ({_fmt(tier.first_unit)}, {upper}]", quantity=units, amount=amount,
            unit_amount=tier.unit_amount, first_unit=tier.first_unit, last_unit=tier.last_unit,
        ))
    return Rating(total, tuple(lines))


def _rate_bulk(quantity: Decimal, config: BulkConfig) -> Rating:
    if quantity <= 0:
        return Rating(ZERO)
    lower = ZERO
    for tier in config.tiers:
        if tier.maximum_units is None or quantity <= tier.maximum_units:
            amount = quantity * tier.unit_amount
            upper = "∞" if tier.maximum_units is None else _fmt(tier.maximum_units)
            return Rating(amount, (SubLine(
                name=f"Tier ({_fmt(lower)}, {upper}]", quantity=quantity, amount=amount,
                unit_amount=tier.unit_amount, first_unit=lower, last_unit=tier.maximum_units,
            ),))
        lower = tier.maximum_units
    # Beyond the last bounded tier: Orb rates the excess at the last tier's rate.
    last = config.tiers[-1]
    amount = quantity * last.unit_amount
    return Rating(amount, (SubLine(
        name=f"Tier ({_fmt(lower)}, ∞]", quantity=quantity, amount=amount, unit_amount=last.unit_amount,
        first_unit=lower, last_unit=None,
    ),))


def _packages(quantity: Decimal, size: Decimal) -> Decimal:
    """Return the whole packages that hold ``quantity``, from the exact quotient (no rounded division)."""
    if quantity <= 0:
        return ZERO
    return Decimal(divide_to_integral(quantity, size, ROUND_CEILING))


def _rate_tiered_package(quantity: Decimal, config: TieredPackageConfig) -> Rating:
    size = config.package_size
    rounded = _packages(quantity, size) * size
    tiers = tuple(
        Tier(
            first_unit=t.tier_lower_bound,
            last_unit=config.tiers[i + 1].tier_lower_bound if i + 1 < len(config.tiers) else None,
            unit_amount=t.per_unit,
        )
        for i, t in enumerate(config.tiers)
    )
    lines: list[SubLine] = []
    total = ZERO
    for line in _rate_graduated(rounded, tiers).sub_lines:
        packages = line.quantity / size
        amount = packages * line.unit_amount
        total += amount
        lines.append(SubLine(
            name=line.name, quantity=packages, amount=amount, unit_amount=line.unit_amount,
            first_unit=line.first_unit, last_unit=line.last_unit,
        ))
    return Rating(total, tuple(lines))


def _rate_matrix(config: MatrixConfig, groups: Mapping[tuple[str, ...], Decimal], detail: bool = True) -> Rating:
    lines: list[SubLine] = []
    total = ZERO
    for values in sorted(groups):
        group_q = groups[values]
        unit_amount = config.amount_for(values)
        amount = group_q * unit_amount
        total += amount
        if not detail:
            continue
        name, grouping = _matrix_label(config.dimensions, values)
        lines.append(SubLine(name=name, quantity=group_q, amount=amount, unit_amount=unit_amount, grouping=grouping))
    return Rating(total, tuple(lines))


@lru_cache(maxsize=65536)
def _matrix_label(dimensions: tuple[str, ...], values: tuple[str, ...]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Return a matrix group's sub-line name and grouping (the same few groups recur on every line)."""
    return " / ".join(f"{d}: {v}" for d, v in zip(dimensions, values)), tuple(zip(dimensions, values))


def rate(price: Price, quantity: Decimal,
         groups: Mapping[tuple[str, ...], Decimal] | None = None, *, detail: bool = True) -> Rating:
    """Apply the price model to a quantity (and matrix groups); return the unrounded amount.

    ``detail`` False: the same amount, without the tiers' and groups' sub-lines (only a cost's sum
    is wanted; the amount is added up in the same order either way).
    """
    config = price.config
    if type(config) is UnitConfig:  # the common model first, without the isinstance chain
        return Rating(quantity * config.unit_amount)
    if isinstance(config, UnitConfig):
        return Rating(quantity * config.unit_amount)
    if isinstance(config, TieredConfig):
        return _rate_graduated(quantity, config.tiers, detail)
    if isinstance(config, BulkConfig):
        return _rate_bulk(quantity, config)
    if isinstance(config, PackageConfig):
        return Rating(_packages(quantity, config.package_size) * config.package_amount)
    if isinstance(config, TieredPackageConfig):
        return _rate_tiered_package(quantity, config)
    if isinstance(config, MatrixConfig):
        return _rate_matrix(config, groups or {}, detail)
    raise InvalidPrice(f"unsupported config {type(config).__name__}")


# --- Orb-shaped config (de)serialization --------------------------------------------------

def _num(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def parse_config(model_type: str, raw: Mapping[str, Any]) -> PriceConfig:
    """Build a config from Orb's JSON shape (``{"tiers": [...]}`` etc.), validating it."""
    try:
        model = ModelType(model_type)
    except ValueError:
        raise InvalidPrice(f"model_type: {model_type!r} is not supported") from None
    key = _CONFIG_KEY[model]
    try:
        if model is ModelType.UNIT:
            return UnitConfig(parse_decimal(raw["unit_amount"], f"{key}.unit_amount"))
        if model is ModelType.TIERED:
            return TieredConfig(tuple(
                Tier(parse_decimal(t["first_unit"], f"{key}.tiers.first_unit"),
                     parse_optional_decimal(t.get("last_unit"), f"{key}.tiers.last_unit"),
                     parse_decimal(t["unit_amount"], f"{key}.tiers.unit_amount"))
                for t in raw["tiers"]
            ))
        if model is ModelType.BULK:
            return BulkConfig(tuple(
                BulkTier(parse_optional_decimal(t.get("maximum_units"), f"{key}.tiers.maximum_units"),
                         parse_decimal(t["unit_amount"], f"{key}.tiers.unit_amount"))
                for t in raw["tiers"]
            ))
        if model is ModelType.PACKAGE:
            return PackageConfig(parse_decimal(raw["package_amount"], f"{key}.package_amount"),
                                 parse_decimal(raw["package_size"], f"{key}.package_size"))
        if model is ModelType.TIERED_PACKAGE:
            return TieredPackageConfig(
                parse_decimal(raw["package_size"], f"{key}.package_size"),
                tuple(
                    TieredPackageTier(parse_decimal(t["tier_lower_bound"], f"{key}.tiers.tier_lower_bound"),
                                      parse_decimal(t["per_unit"], f"{key}.tiers.per_unit"))
                    for t in raw["tiers"]
                ),
            )
        dims = tuple(str(d) for d in raw["dimensions"])
        return MatrixConfig(
            dimensions=dims,
            default_unit_amount=parse_decimal(raw["default_unit_amount"], f"{key}.default_unit_amount"),
            matrix_values=tuple(
                MatrixValue(tuple(None if v is None else str(v) for v in mv["dimension_values"]),
                            parse_decimal(mv["unit_amount"], f"{key}.matrix_values.unit_amount"))
                for mv in raw.get("matrix_values", ())
            ),
        )
    except KeyError as missing:
        raise InvalidPrice(f"{key}.{missing.args[0]}: is required") from None
    except (TypeError, AttributeError):
        raise InvalidPrice(f"{key}: has the wrong shape") from None


def config_to_dict(config: PriceConfig) -> dict[str, Any]:
    """Return a config in Orb's JSON shape: amounts as decimal strings, unit counts (tier bounds,
    package size) as exact numbers (``money.exact_number``: an int, or an ``ExactNumber``)."""
    if isinstance(config, UnitConfig):
        return {"unit_amount": _num(config.unit_amount)}
    if isinstance(config, TieredConfig):
        return {"tiers": [
            {"first_unit": exact_number(t.first_unit), "last_unit": exact_number(t.last_unit),
             "unit_amount": _num(t.unit_amount)} for t in config.tiers
        ]}
    if isinstance(config, BulkConfig):
        return {"tiers": [
            {"maximum_units": exact_number(t.maximum_units), "unit_amount": _num(t.unit_amount)}
            for t in config.tiers
        ]}
    if isinstance(config, PackageConfig):
        return {"package_amount": _num(config.package_amount), "package_size": exact_number(config.package_size)}
    if isinstance(config, TieredPackageConfig):
        return {"package_size": _num(config.package_size), "tiers": [
            {"tier_lower_bound": _num(t.tier_lower_bound), "per_unit": _num(t.per_unit)} for t in config.tiers
        ]}
    return {
        "dimensions": list(config.dimensions),
        "default_unit_amount": _num(config.default_unit_amount),
        "matrix_values": [
            {"dimension_values": list(mv.dimension_values), "unit_amount": _num(mv.unit_amount)}
            for mv in config.matrix_values
        ],
    }
