"""Money: currency minor units, the one rounding helper, exact arithmetic, and decimal parsing.

Every amount in the billing core is a ``Decimal``. Amounts are rounded exactly once per
invoice line, by :func:`round_money`, ``ROUND_HALF_UP`` to the currency's minor unit
(docs/billing-rules.md §7). No float ever touches money.

Python's default context keeps 28 significant digits, so ``quantity * price`` would round
silently. Rating runs inside :func:`exact` instead: 400 significant digits with the ``Inexact``
trap set, so every sum and product is exact or raises :class:`InexactAmount` (it cannot happen
within the documented range: quantities below 10^18 with 9 decimal places, prices below 10^31
with 30). The one division of an amount, proration, goes through :func:`divide`: exact when the
quotient terminates, else rounded half-even at ``DIVISION_PLACES`` (100) decimal places, far
below any minor unit, so the rounding of the line gives the cents of the exact fraction.
"""

from __future__ import annotations

import re
import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import (
    ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, DecimalException, DivisionByZero,
    Inexact, InvalidOperation, Overflow, getcontext, localcontext,
)
from functools import lru_cache
from typing import Any

from billing_core.errors import InexactAmount, InvalidInput

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
    "parse_unit_price",
    "PRECISION",
    "DIVISION_PLACES",
    "MAX_PLACES",
    "exact",
    "inexact",
    "divide",
    "divide_to_integral",
    "decimal_shape",
    "ExactNumber",
    "exact_number",
    "exact_json",
]

ZERO = Decimal("0")
# Amounts and quantities beyond 10^±30 are input errors, not money (they would overflow later).
_MAX_EXPONENT = 30
MAX_PLACES = 30  # digits after the point of a price or amount (trailing zeros aside)
PRECISION = 400
DIVISION_PLACES = 100
_SCALE = 10**DIVISION_PLACES
_EXACT = Context(prec=PRECISION, rounding=ROUND_HALF_EVEN, Emin=-999_999, Emax=999_999,
                 traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
# round_money's context: as wide, but discarding digits is its job (HALF_UP, given per call).
_ROUNDING = Context(prec=PRECISION, rounding=ROUND_HALF_UP, Emin=-999_999, Emax=999_999,
                    traps=[InvalidOperation, DivisionByZero, Overflow])

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
    if type(amount) is not Decimal and not isinstance(amount, Decimal):
        raise TypeError(f"round_money needs a Decimal, got {type(amount).__name__}")
    rounded = amount.quantize(_quantum(currency), ROUND_HALF_UP, _ROUNDING)
    # Normalise negative zero so that serialized output is stable.
    return rounded + 0 if rounded.is_zero() else rounded


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Return the rounded amount as an integer count of minor units (12.34 USD -> 1234)."""
    return int(round_money(amount, currency).scaleb(minor_units(currency), context=_ROUNDING))


@contextmanager
def exact() -> Iterator[None]:
    """Run the block's Decimal arithmetic exactly (400 digits; an inexact step raises InexactAmount).

    Also a decorator (``@exact()``). Nested uses cost one context lookup.
    """
    current = getcontext()
    if current.prec == PRECISION and current.traps[Inexact]:
        yield
        return
    with localcontext(_EXACT):
        try:
            yield
        except DecimalException as exc:
            raise inexact(exc) from None


def inexact(exc: DecimalException) -> InexactAmount:
    """Return the domain error for a trapped signal of the exact context."""
    return InexactAmount(f"an amount needs more than {PRECISION} significant digits ({type(exc).__name__}); "
                         "its quantities or prices are far outside the supported range")


def divide(numerator: Decimal, denominator: Decimal) -> Decimal:
    """Return ``numerator / denominator``: exact when it terminates within ``DIVISION_PLACES``
    decimal places, else rounded half-even there (the only rounding besides ``round_money``)."""
    # In integers (every prorated line comes here): numerator / denominator = (p * s) / (q * r).
    p, q = numerator.as_integer_ratio()
    r, s = denominator.as_integer_ratio()
    top, bottom = p * s * _SCALE, q * r
    if bottom < 0:
        top, bottom = -top, -bottom
    whole, rest = divmod(top, bottom)  # ZeroDivisionError for a zero denominator, as ever
    if rest == 0:
        # Terminating: the exact quotient, in its shortest exponent.
        with localcontext(_EXACT):
            return numerator / denominator
    if 2 * rest > bottom or (2 * rest == bottom and whole % 2):  # half-even
        whole += 1
    return Decimal(whole).scaleb(-DIVISION_PLACES, context=_EXACT)


def divide_to_integral(numerator: Decimal, denominator: Decimal, rounding: str) -> int:
    """Return ``numerator / denominator`` as an integer, rounded per ``rounding`` from the exact
    fraction (``ROUND_FLOOR``, ``ROUND_CEILING`` or ``ROUND_HALF_UP``)."""
    p, q = numerator.as_integer_ratio()  # in integers: (p * s) / (q * r)
    r, s = denominator.as_integer_ratio()
    top, bottom = p * s, q * r
    if bottom < 0:
        top, bottom = -top, -bottom
    if rounding == ROUND_FLOOR:
        return top // bottom
    if rounding == ROUND_CEILING:
        return -(-top // bottom)
    if rounding == ROUND_HALF_UP:
        magnitude = (2 * abs(top) + bottom) // (2 * bottom)  # floor(|ratio| + 1/2)
        return magnitude if top >= 0 else -magnitude
    raise ValueError(f"unsupported rounding {rounding}")


def decimal_shape(value: Decimal) -> tuple[int, int]:
    """Return (significant digits, digits after the point) of a finite Decimal, trailing zeros aside."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    end = len(digits)
    while end > 1 and digits[end - 1] == 0:
        end -= 1
    exponent += len(digits) - end
    return end, max(0, -exponent)


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
    if result.as_tuple().exponent < -MAX_PLACES and decimal_shape(result)[1] > MAX_PLACES:  # type: ignore[operator]
        raise InvalidAmount(f"{field}: {value!r} is out of range (at most {MAX_PLACES} digits after the point)")
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


def parse_unit_price(value: object, field: str = "unit_price") -> Decimal:
    """Read a price per unit: a decimal string or integer above 0, in the range of billing prices."""
    if isinstance(value, float):
        raise InvalidAmount(f'{field}: must be a decimal string such as "0.01", not a float')
    price = parse_decimal(value, field)
    if price <= 0:
        raise InvalidAmount(f"{field}: must be greater than 0")
    return price


class ExactNumber(Decimal):
    """A quantity that JSON answers write as a number, digit for digit (not a string, never a float)."""

    __slots__ = ()


def exact_number(value: Decimal | None) -> int | ExactNumber | None:
    """Return a quantity for a JSON answer: an int when whole (exact at any size), else an ``ExactNumber``."""
    if value is None:
        return None
    if value == value.to_integral_value():
        return int(value)
    return ExactNumber(value)


def exact_json(obj: Any, dumps: Callable[..., str] = json.dumps, **kwargs: Any) -> str:
    """Return ``obj`` as JSON text with each ``ExactNumber`` written as a JSON number, digit for digit.

    ``dumps`` is the serializer to extend (``json.dumps``, or a JSON provider's); ``kwargs`` go to it
    (``default`` included: called for what is not an ``ExactNumber``).
    """
    numbers: list[str] = []
    # Each number is first written as a quoted placeholder no caller's string can know.
    nonce = secrets.token_hex(8)
    fallback = kwargs.pop("default", None)

    def default(value: Any) -> Any:
        if isinstance(value, ExactNumber):
            numbers.append(format_decimal(value))
            return f"{nonce}:{len(numbers) - 1}"
        if fallback is None:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        return fallback(value)

    text = dumps(obj, default=default, **kwargs)
    if not numbers:
        return text
    return re.sub(f'"{nonce}:([0-9]+)"', lambda match: numbers[int(match.group(1))], text)
