"""BatchMeterUsage (docs/marketplaces.md §2.2-§2.5): chunks of at most 25 per product code, per-record ``Outcome``
values, ``UnprocessedRecords`` resent a few times, a call refused for one record split in halves
until the bad record is isolated.

Every call is for one product (AWS fails a whole call that mixes products), and a record carries
one kind of customer identifier: ``CustomerIdentifier`` (legacy listings, with the request's
``ProductCode``) or ``CustomerAWSAccountId`` + ``LicenseArn``. Records marked
``concurrent_agreements`` go out without ``ProductCode`` (the license names the product), in
calls of their own (docs/marketplaces.md §2.1)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from marketplaces.aws.allocations import MAX_ALLOCATIONS, tag_keys_problem, value_problem, wire_allocations
from marketplaces.base import Marketplace, Outcome, OutcomeStatus, TransientMarketplaceError, UsageRecord
from marketplaces.aws.wire import RecordLevelError, license_id


MAX_BATCH = 25
MAX_QUANTITY = 2_147_483_647
MAX_REQUEST_BYTES = 1024 * 1024
TIMESTAMP_OUT_OF_BOUNDS = "TimestampOutOfBoundsException"


class Metering:
    """The metering part of ``AwsMarketplace``: BatchMeterUsage through ``self.client``."""

    def report(self, records: Sequence[UsageRecord]) -> list[Outcome]:
        """Send ``records`` with BatchMeterUsage; return one ``Outcome`` per record, in order."""
        outcomes: dict[str, Outcome] = {}
        # One product per call; requests with and without ProductCode are never mixed either.
        groups: dict[tuple[str, bool], list[tuple[UsageRecord, dict[str, Any]]]] = {}
        for record in records:
            problem = self._local_problem(record)
            if problem:
                outcomes[record.key] = Outcome(record.key, OutcomeStatus.REJECTED, problem)
                continue
            product = str(record.identifiers.get("product_code") or self.product_code)
            groups.setdefault((product, _concurrent(record)), []).append((record, _wire_record(record)))
        try:
            for (product, concurrent), items in groups.items():
                for chunk in _chunks(items, self.max_batch):
                    self._meter(None if concurrent else product, chunk, outcomes, attempt=0)
        except TransientMarketplaceError as err:
            sent = [r for r in records if r.key in outcomes]
            if not sent:
                raise
            # Part of the batch went through: keep those answers, the rest is safe to resend.
            for record in records:
                outcomes.setdefault(
                    record.key, Outcome(record.key, OutcomeStatus.FAILED, f"not sent: {err}")
                )
        return [
            outcomes.get(r.key) or Outcome(r.key, OutcomeStatus.FAILED, "no answer for this record")
            for r in records
        ]

    def _local_problem(self, record: UsageRecord) -> str:
        ids = record.identifiers
        if record.marketplace != Marketplace.AWS:
            return f"not an AWS record ({record.marketplace.value})"
        if not (ids.get("product_code") or self.product_code):
            return "missing product_code"
        current = bool(ids.get("customer_aws_account_id") or ids.get("license_arn"))
        if current and not (ids.get("customer_aws_account_id") and ids.get("license_arn")):
            return "customer_aws_account_id and license_arn go together: one of them is missing"
        if not current and not ids.get("customer_identifier"):
            return "missing customer_aws_account_id + license_arn (or a legacy listing's customer_identifier)"
        if _concurrent(record) and not current:
            return "a Concurrent Agreements record needs customer_aws_account_id + license_arn"
        if record.quantity > MAX_QUANTITY:
            return f"quantity {record.quantity} exceeds {MAX_QUANTITY}"
        if len(record.allocations) > MAX_ALLOCATIONS:
            return f"{len(record.allocations)} allocations: AWS takes at most {MAX_ALLOCATIONS} per record"
        for tags, _units in record.allocations:
            problem = tag_keys_problem([k for k, _ in tags]) or next(
                (p for p in (value_problem(k, v) for k, v in tags) if p), None)
            if problem:
                return f"UsageAllocations: {problem}"
        return ""

    def _meter(
        self,
        product: str | None,
        items: list[tuple[UsageRecord, dict[str, Any]]],
        outcomes: dict[str, Outcome],
        attempt: int,
    ) -> None:
        if len(items) > 1 and len(json.dumps([w for _, w in items], default=str)) > MAX_REQUEST_BYTES // 2:
            half = len(items) // 2
            self._meter(product, items[:half], outcomes, attempt)
            self._meter(product, items[half:], outcomes, attempt)
            return
        if self._pace is not None:
            self._pace()
        try:
            params: dict[str, Any] = {"UsageRecords": [wire for _, wire in items]}
            if product is not None:  # None: Concurrent Agreements, the licenses name the product
                params["ProductCode"] = product
            response = self._call(self.client.batch_meter_usage, **params)
        except RecordLevelError as err:
            if len(items) == 1:
                record = items[0][0]
                # A timestamp out of range alone is too old for AWS (the sender never stamps a
                # future hour): it can never be accepted, so it expires instead of being resent.
                status = OutcomeStatus.EXPIRED if err.code == TIMESTAMP_OUT_OF_BOUNDS else OutcomeStatus.REJECTED
                outcomes[record.key] = Outcome(record.key, status, f"{err.code}: {err.message}")
                return
            # The whole call was refused for some record(s): split until they are isolated.
            half = len(items) // 2
            self._meter(product, items[:half], outcomes, attempt)
            self._meter(product, items[half:], outcomes, attempt)
            return
        pending = {_match_key(wire): [] for _, wire in items}
        for item in items:
            pending[_match_key(item[1])].append(item)
        for result in response.get("Results") or []:
            queue = pending.get(_match_key(result.get("UsageRecord") or {}))
            if not queue:
                continue
            record, _ = queue.pop(0)
            outcomes[record.key] = _outcome(record, result)
        unprocessed: list[tuple[UsageRecord, dict[str, Any]]] = []
        for wire in response.get("UnprocessedRecords") or []:
            queue = pending.get(_match_key(wire))
            if queue:
                unprocessed.append(queue.pop(0))
        for queue in pending.values():
            for record, _ in queue:
                outcomes[record.key] = Outcome(
                    record.key, OutcomeStatus.FAILED, "missing from the BatchMeterUsage response"
                )
        if not unprocessed:
            return
        if attempt >= self.unprocessed_retries:
            for record, _ in unprocessed:
                outcomes[record.key] = Outcome(
                    record.key,
                    OutcomeStatus.FAILED,
                    f"still unprocessed after {attempt + 1} attempts",
                )
            return
        self._sleep(self.backoff_seconds[min(attempt, len(self.backoff_seconds) - 1)])
        self._meter(product, unprocessed, outcomes, attempt + 1)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _concurrent(record: UsageRecord) -> bool:
    return record.identifiers.get("concurrent_agreements") == "true"


def _wire_record(record: UsageRecord) -> dict[str, Any]:
    """The record as BatchMeterUsage takes it: one kind of customer identifier, never both."""
    ids = record.identifiers
    wire: dict[str, Any] = {
        "Timestamp": record.hour,
        "Dimension": record.dimension,
        "Quantity": record.quantity,
    }
    if record.allocations:
        wire["UsageAllocations"] = wire_allocations(record.allocations)
    if ids.get("customer_aws_account_id") and ids.get("license_arn"):
        wire["CustomerAWSAccountId"] = ids["customer_aws_account_id"]
        wire["LicenseArn"] = ids["license_arn"]
    else:
        wire["CustomerIdentifier"] = ids["customer_identifier"]
    return wire


def _match_key(wire: Mapping[str, Any]) -> tuple[Any, ...]:
    stamp = wire.get("Timestamp")
    if isinstance(stamp, datetime):
        stamp = int(stamp.timestamp())
    elif isinstance(stamp, (int, float)):
        stamp = int(stamp)
    return (
        wire.get("CustomerIdentifier") or "",
        wire.get("CustomerAWSAccountId") or "",
        license_id(wire.get("LicenseArn")) or "",
        wire.get("Dimension"),
        stamp,
    )


def _outcome(record: UsageRecord, result: Mapping[str, Any]) -> Outcome:
    status = result.get("Status")
    record_id = result.get("MeteringRecordId")
    if status == "Success":
        return Outcome(record.key, OutcomeStatus.ACCEPTED, marketplace_record_id=record_id)
    if status == "DuplicateRecord":
        return Outcome(
            record.key,
            OutcomeStatus.DUPLICATE,
            "an earlier record for this customer, dimension and hour stands",
            marketplace_record_id=record_id,
        )
    if status == "CustomerNotSubscribed":
        return Outcome(
            record.key,
            OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED,
            "no active subscription for this customer/license",
        )
    return Outcome(record.key, OutcomeStatus.FAILED, f"unknown status {status!r}")
