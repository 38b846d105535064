"""Money: currency minor units, the one rounding helper, and decimal parsing.

Every amount in the billing core is a ``Decimal``. Amounts are rounded exactly once per
invoice line, by :func:`round_money`, ``ROUND_HALF_UP`` to the currency's minor unit
(billing.md §1 "Rounding"). No float ever touches money.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

from billing_core.errors import InvalidInput

__all__ = [
    "MINOR_UNITS",
    "InvalidAmount",
    "FieldError",
    "ZERO",
    "minor_units",
    "parse_decimal",
    "parse_optional_decimal",
    "round_money",
    "to_minor_units",
    "format_decimal",
]

ZERO = Decimal("0")
# Amounts and quantities beyond 10^±30 are input errors, not money (they would overflow later).
_MAX_EXPONENT = 30

# ISO 4217 exponents that differ from the default of 2.
_ZERO_DECIMAL = {
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
    "VND", "VUV", "XAF", "XOF", "XPF",
}
_THREE_DECIMAL = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}

MINOR_UNITS: dict[str, int] = {
    **{code: 0 for code in _ZERO_DECIMAL},
    **{code: 3 for code in _THREE_DECIMAL},
}


_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


class FieldError(InvalidInput, ValueError):
    """A rating-side input error whose message starts with the offending field (``field: why``)."""

    def __init__(self, message: str, *, field: str | None = None):
        match = _FIELD.match(message)
        super().__init__(message, field=field or (match.group(1) if match else None))


class InvalidAmount(FieldError):
    """A value could not be read as a finite decimal amount."""


def minor_units(currency: str) -> int:
    """Return the number of decimals of the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    return MINOR_UNITS.get(currency.upper(), 2)


@lru_cache(maxsize=256)
def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round an amount ROUND_HALF_UP to the currency's minor unit (the only rounding of money)."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"round_money needs a Decimal, got {type(amount).__name__}")
    rounded = amount.quantize(_quantum(currency), rounding=ROUND_HALF_UP)
    # Normalise negative zero so that serialized output is stable.
    return rounded + 0 if rounded.is_zero() else rounded


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Return the rounded amount as an integer count of minor units (12.34 USD -> 1234)."""
    return int(round_money(amount, currency).scaleb(minor_units(currency)))


def parse_decimal(value: object, field: str = "amount") -> Decimal:
    """Read a decimal from a string, int or Decimal; floats and non-finite values are refused."""
    if isinstance(value, bool):
        raise InvalidAmount(f"{field}: expected a decimal, got a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        # A float is accepted only through its shortest repr, so 0.1 stays 0.1.
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidAmount(f"{field}: {value!r} is not a decimal") from None
    else:
        raise InvalidAmount(f"{field}: expected a decimal, got {type(value).__name__}")
    if not result.is_finite():
        raise InvalidAmount(f"{field}: {value!r} is not a finite decimal")
    if not result.is_zero() and not -_MAX_EXPONENT <= result.adjusted() <= _MAX_EXPONENT:
        raise InvalidAmount(f"{field}: {value!r} is out of range")
    return result


def parse_optional_decimal(value: object, field: str = "amount") -> Decimal | None:
    """Read a decimal like :func:`parse_decimal`, passing ``None`` through."""
    return None if value is None else parse_decimal(value, field)


def format_decimal(value: Decimal) -> str:
    """Return a stable plain-notation string for a Decimal (no exponent, no trailing zeros lost)."""
    if value.is_zero():
        value = abs(value)
    text = format(value, "f")
    return text
