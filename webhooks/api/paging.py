"""Page-number pagination for the mapping API: ``{"count", "total_count", "page_count", "next",
"previous", "results"}`` with ``?page=N&page_size=M`` (the billing API uses Orb's cursors)."""

from __future__ import annotations

import math
from typing import Any, Sequence
from urllib.parse import urlencode

from flask import request

from webhooks.api.common import bad

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad(name, f"not an integer ({raw!r})") from None
    if not low <= value <= high:
        raise bad(name, f"must be between {low} and {high}")
    return value


def page_params() -> tuple[int, int]:
    """Return (page, page_size) from the query string (1-based page, default size 50)."""
    return _int_arg("page", 1, 1, 10**9), _int_arg("page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)


def _page_url(page: int) -> str:
    args = request.args.to_dict(flat=False)
    args["page"] = [str(page)]
    return f"{request.base_url}?{urlencode(args, doseq=True)}"


def page_envelope(results: Sequence[Any], *, total: int, page: int, size: int) -> dict[str, Any]:
    """Return the envelope for one page of ``results`` out of ``total``."""
    page_count = max(1, math.ceil(total / size)) if total else 0
    return {
        "count": len(results),
        "total_count": total,
        "page_count": page_count,
        "next": _page_url(page + 1) if page < page_count else None,
        "previous": _page_url(page - 1) if page > 1 and total else None,
        "results": list(results),
    }
