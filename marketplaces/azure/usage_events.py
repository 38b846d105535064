"""Reading back accepted usage (docs/marketplaces.md §3.2a): ``GET /api/usageEvents``.

The metering service lists the usage events posted for a time range with each one's
reconciliation state (``reconStatus``: Submitted, Accepted, Rejected, Mismatch, TestHeaders,
DryRun), its ``submittedQuantity`` and the ``processedQuantity`` Partner Center analytics
matched. It is the same API, behind the same token, as the usage events themselves. The answer
is a JSON array; Microsoft documents no paging for it. Quantities are read as exact decimals.
"""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping
from urllib.parse import urlencode

from marketplaces.base import AcceptedUsage, Marketplace, PermanentMarketplaceError
from marketplaces.azure.wire import _parse_time

# What the read names the usage by; only the resource identifies the contract (a plan changes).
_EXTRA_FIELDS = ("planId", "offerId", "azureSubscriptionId", "submittedCount", "usageDate")


def usage_query(start: datetime, end: datetime, **filters: str) -> str:
    """Return the query string of a read over [start, end) (``filters``: offerId, planId, dimension,
    azureSubscriptionId, reconStatus, as the API names them)."""
    params = {"usageStartDate": _date_time(start), "UsageEndDate": _date_time(end)}
    params.update({name: value for name, value in filters.items() if value})
    return urlencode(params)


class UsageEvents:
    """The read-back part of ``AzureMarketplace`` (``marketplaces.base.UsageReadBack``)."""

    def read_usage(self, start: datetime, end: datetime, **filters: str) -> list[AcceptedUsage]:
        """Return the usage events Azure lists for hours in [start, end), one per resource, dimension and hour.

        The API's end date defaults to today and its bounds are not documented as half-open, so
        items outside [start, end) are dropped here. An item that cannot be read (no resource,
        no date, a quantity that is not a number) raises ``PermanentMarketplaceError`` naming it:
        a reconciliation must not silently skip what the marketplace holds.
        """
        response = self._call("GET", f"/usageEvents?{usage_query(start, end, **filters)}")  # type: ignore[attr-defined]
        self._raise_for_status(response)  # type: ignore[attr-defined]
        try:
            items = response.json(parse_float=Decimal)
        except ValueError:
            raise PermanentMarketplaceError("usageEvents answered something that is not JSON") from None
        if not isinstance(items, list):
            raise PermanentMarketplaceError("usageEvents answered no list of usage events")
        out = []
        for index, item in enumerate(items):
            usage = _accepted(item, index)
            if start <= usage.hour < end:
                out.append(usage)
        return out


def _accepted(item: Any, index: int) -> AcceptedUsage:
    if not isinstance(item, Mapping):
        raise PermanentMarketplaceError(f"usageEvents[{index}] is not an object")
    try:
        resource = str(item["usageResourceId"])
        dimension = str(item["dimension"])
        moment = _parse_time(str(item["usageDate"]))
        quantity = _decimal(item.get("submittedQuantity"))
        processed = item.get("processedQuantity")
    except (KeyError, ValueError, InvalidOperation) as exc:
        raise PermanentMarketplaceError(f"usageEvents[{index}] cannot be read: {exc}") from None
    return AcceptedUsage(
        marketplace=Marketplace.AZURE,
        identifiers={"resource_id": resource},
        dimension=dimension,
        hour=moment.replace(minute=0, second=0, microsecond=0),
        quantity=quantity,
        processed=None if processed is None else _decimal(processed),
        status=str(item.get("reconStatus") or ""),
        extra={name: item[name] for name in _EXTRA_FIELDS if name in item},
    )


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a quantity: {value!r}")
    number = Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"not a quantity: {value!r}")
    return number


def _date_time(moment: datetime) -> str:
    # The documented shape: ISO 8601 without seconds, UTC (e.g. 2020-12-03T15:00).
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M")
