"""JSON answers that write exact numbers: an ``ExactNumber`` becomes a JSON number, digit for digit.

Flask's default provider writes a ``Decimal`` as a string, and a float cannot hold
``12345678901234567891`` or ``0.1`` exactly. Quantities that Orb's API sends as numbers (tier
bounds, fixed quantities, usage) are ``ExactNumber`` values; this provider writes their plain
decimal text where the number goes, without any float (``billing_core.money.exact_json``, which the
outbox uses for webhook bodies too).
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from billing_core import exact_json

__all__ = ["ExactJSONProvider"]


class ExactJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, writing ``ExactNumber`` values as JSON numbers."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        return exact_json(obj, super().dumps, **kwargs)
