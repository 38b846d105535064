"""Usage events (docs/marketplaces.md §3.2): batches of at most 25, zero quantities never sent, a batch refused
whole split in halves until the bad event is isolated; per-event results become ``Outcome`` values
(``ResourceNotActive``: held until reinstatement, ``Expired``: expired)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from marketplaces.base import Outcome, OutcomeStatus, TransientMarketplaceError, UsageRecord
from marketplaces.azure.wire import (
    BATCH_LIMIT,
    ZERO_QUANTITY_DETAIL,
    _EXPIRED_STATUSES,
    _NOT_ACTIVE_STATUSES,
    _NOT_SUBSCRIBED_STATUSES,
    _error_message,
    _parse_time,
)


@dataclass(frozen=True)
class _Event:
    """One record as it goes on the wire, with its position in the caller's list."""

    index: int
    body: dict[str, Any]

    @property
    def match_key(self) -> tuple[str, str, str]:
        return (self.body["resourceId"], self.body["dimension"], self.body["effectiveStartTime"])


class Metering:
    """The metering part of ``AzureMarketplace``."""

    def report(self, records: Sequence[UsageRecord]) -> list[Outcome]:
        """Send ``records`` as batch usage events; return one ``Outcome`` per record, in order.

        A zero-quantity record is never sent (Azure rejects quantity 0 with InvalidQuantity
        and expects no event for an hour without usage); it comes back ``ACCEPTED`` with no
        marketplace record id and the detail ``"zero quantity: nothing to report"``, so the
        ledger can close that hour. Records without ``resource_id``/``plan_id`` are
        ``REJECTED`` without a call. An ``Expired`` answer (older than the 24-hour window; the
        sender expires such rows before sending them) is ``EXPIRED``. A ``ResourceNotActive``
        answer (a suspended subscription) is ``NOT_ACTIVE``: the sender holds the record and
        sends it again after reinstatement. A batch the API refuses as a whole (HTTP 400) is
        split in halves until the offending event is isolated and rejected alone. If a later batch
        fails transiently after earlier ones went through, its records come back ``FAILED``
        (safe to resend: Azure dedupes per resource/dimension/hour); if nothing was sent,
        ``TransientMarketplaceError`` propagates.
        """
        outcomes: list[Outcome | None] = [None] * len(records)
        events: list[_Event] = []
        for index, record in enumerate(records):
            if record.quantity == 0:
                outcomes[index] = Outcome(record.key, OutcomeStatus.ACCEPTED, ZERO_QUANTITY_DETAIL)
                continue
            missing = [n for n in ("resource_id", "plan_id") if not record.identifiers.get(n)]
            if missing:
                outcomes[index] = Outcome(
                    record.key, OutcomeStatus.REJECTED, f"missing identifiers: {', '.join(missing)}"
                )
                continue
            events.append(_Event(index, _event_body(record)))

        sent_any = False
        for start in range(0, len(events), BATCH_LIMIT):
            chunk = events[start : start + BATCH_LIMIT]
            try:
                results = self._send_batch(chunk)
            except TransientMarketplaceError as exc:
                if not sent_any:
                    raise
                for event in chunk:
                    key = records[event.index].key
                    outcomes[event.index] = Outcome(key, OutcomeStatus.FAILED, str(exc))
                continue
            sent_any = True
            for event, result in results:
                outcomes[event.index] = _outcome(records[event.index].key, result)
        return [o for o in outcomes if o is not None]

    def _send_batch(self, chunk: list[_Event]) -> list[tuple[_Event, dict[str, Any]]]:
        """POST one batch; return (event, result) pairs, splitting on a whole-batch 400."""
        response = self._call(
            "POST", "/batchUsageEvent", json_body={"request": [e.body for e in chunk]}
        )
        if response.status_code == 400:
            message = _error_message(response)
            if len(chunk) == 1:
                return [(chunk[0], {"status": "BadArgument", "message": message})]
            middle = len(chunk) // 2
            return self._send_batch(chunk[:middle]) + self._send_batch(chunk[middle:])
        self._raise_for_status(response)
        results = response.json().get("result") or []
        return _pair_results(chunk, results)


def _event_body(record: UsageRecord) -> dict[str, Any]:
    return {
        "resourceId": record.identifiers["resource_id"],
        "quantity": float(record.quantity),
        "dimension": record.dimension,
        "effectiveStartTime": record.hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "planId": record.identifiers["plan_id"],
    }


def _pair_results(
    chunk: list[_Event], results: list[dict[str, Any]]
) -> list[tuple[_Event, dict[str, Any]]]:
    """Match results to events: by position when the counts agree, else by event key.

    An event left without a result gets ``{}``, which becomes ``FAILED`` (safe to resend).
    """
    if len(results) == len(chunk):
        return list(zip(chunk, results))
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    for result in results:
        try:
            hour = _hour_stamp(result["effectiveStartTime"])
            by_key.setdefault((result["resourceId"], result["dimension"], hour), result)
        except (KeyError, ValueError):
            continue
    return [(event, by_key.get(event.match_key, {})) for event in chunk]


def _hour_stamp(value: str) -> str:
    moment = _parse_time(value)
    return moment.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _outcome(key: str, result: Mapping[str, Any]) -> Outcome:
    status = str(result.get("status") or "")
    if not status:
        return Outcome(key, OutcomeStatus.FAILED, "no result returned for this event")
    if status == "Accepted":
        return Outcome(key, OutcomeStatus.ACCEPTED, marketplace_record_id=result.get("usageEventId"))
    if status == "Duplicate":
        error = result.get("error") or {}
        accepted = (error.get("additionalInfo") or {}).get("acceptedMessage") or {}
        quantity = accepted.get("quantity")
        kept = None if quantity is None else int(float(quantity))
        return Outcome(
            key,
            OutcomeStatus.DUPLICATE,
            detail=f"Duplicate: accepted quantity {kept}",
            marketplace_record_id=accepted.get("usageEventId"),
            accepted_quantity=kept,
        )
    message = _result_message(result)
    detail = f"{status}: {message}" if message else status
    if status in _NOT_SUBSCRIBED_STATUSES:
        return Outcome(key, OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED, detail)
    if status in _NOT_ACTIVE_STATUSES:
        return Outcome(key, OutcomeStatus.NOT_ACTIVE, detail)
    if status in _EXPIRED_STATUSES:
        return Outcome(key, OutcomeStatus.EXPIRED, detail)
    # InvalidDimension, InvalidQuantity, BadArgument, Error and anything new.
    return Outcome(key, OutcomeStatus.REJECTED, detail)


def _result_message(result: Mapping[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, Mapping):
        details = error.get("details") or []
        parts = [d.get("message", "") for d in details if isinstance(d, Mapping)]
        return "; ".join(p for p in parts if p) or str(error.get("message") or "")
    return str(result.get("message") or "")
