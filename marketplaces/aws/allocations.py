"""AWS ``UsageAllocations`` (docs/marketplaces.md §2.12): a record's quantity split over tag combinations.

BatchMeterUsage takes, per record, up to 2,500 allocations whose ``AllocatedUsageQuantity``
values sum to the record's ``Quantity``, each with up to 5 tags (``Key`` 1-100 characters,
``Value`` 1-256, both of ``[a-zA-Z0-9+ -=._:/@]``), one tag set per allocation; an allocation
without tags holds the untagged usage. A listing names at most 5 tag keys, so every
combination fits.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

MAX_TAG_KEYS = 5
MAX_ALLOCATIONS = 2500
_TAG_TEXT = re.compile(r"[a-zA-Z0-9+ \-=._:/@]+")


def tag_keys_problem(keys: Sequence[str]) -> str | None:
    """Return why a listing's tag keys cannot be AWS allocation tags (None: they can)."""
    if len(keys) > MAX_TAG_KEYS:
        return f"AWS takes at most {MAX_TAG_KEYS} tag keys per allocation ({len(keys)} given)"
    for key in keys:
        if not 1 <= len(key) <= 100 or not _TAG_TEXT.fullmatch(key):
            return f"tag key {key!r}: AWS tag keys are 1-100 characters of letters, digits, space and + - = . _ : / @"
    return None


def value_problem(key: str, value: str) -> str | None:
    """Return why a tag value cannot be sent to AWS (None: it can)."""
    if not 1 <= len(value) <= 256 or not _TAG_TEXT.fullmatch(value):
        return (f"tag {key!r} value {value[:60]!r}: AWS tag values are 1-256 characters of letters, digits, space "
                "and + - = . _ : / @")
    return None


def wire_allocations(allocations: Sequence[tuple[Sequence[tuple[str, str]], int]]) -> list[dict[str, Any]]:
    """Return ``UsageAllocations`` as BatchMeterUsage takes them (an untagged combination carries no ``Tags``)."""
    out: list[dict[str, Any]] = []
    for tags, quantity in allocations:
        item: dict[str, Any] = {"AllocatedUsageQuantity": quantity}
        if tags:
            item["Tags"] = [{"Key": k, "Value": v} for k, v in tags]
        out.append(item)
    return out
