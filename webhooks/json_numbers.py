"""JSON answers that write exact numbers: an ``ExactNumber`` becomes a JSON number, digit for digit.

Flask's default provider writes a ``Decimal`` as a string, and a float cannot hold
``12345678901234567891`` or ``0.1`` exactly. Quantities that Orb's API sends as numbers (tier
bounds, fixed quantities, usage) are ``ExactNumber`` values; this provider writes their plain
decimal text where the number goes, without any float.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from flask.json.provider import DefaultJSONProvider

from billing_core.money import ExactNumber, format_decimal

__all__ = ["ExactJSONProvider"]


class ExactJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, writing ``ExactNumber`` values as JSON numbers."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        numbers: list[str] = []
        # Each number is first written as a quoted placeholder no caller's string can know.
        nonce = secrets.token_hex(8)
        fallback = kwargs.pop("default", self.default)

        def default(value: Any) -> Any:
            if isinstance(value, ExactNumber):
                numbers.append(format_decimal(value))
                return f"{nonce}:{len(numbers) - 1}"
            return fallback(value)

        text = super().dumps(obj, default=default, **kwargs)
        if not numbers:
            return text
        return re.sub(f'"{nonce}:([0-9]+)"', lambda match: numbers[int(match.group(1))], text)
