"""Service Control usage (docs/marketplaces.md §4.2, §4.3): ``services.check`` first, then ``services.report``
batched under the 1 MB limit, one operation per record with a deterministic ``operationId``."""
from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta, timezone
from typing import Any, Callable, Iterator, Sequence

from marketplaces.gcp.labels import labels_problem
from marketplaces.base import (
    Outcome,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UsageRecord,
)


# Fixed namespace of every operationId this project sends; never change it, or resends of
# already-reported hours would get new ids and bill twice.
OPERATION_NAMESPACE = uuid.UUID("5f0c1f9e-6a53-4b8e-9d1a-7c3e2b4a6d10")
OPERATION_NAME = "Hourly Usage Report"


MAX_REQUEST_BYTES = 1_000_000
MAX_OPERATIONS_PER_CALL = 100
CHECK_CONCURRENCY = 10  # services.check calls in flight (no batch form); the REST session pools 10 connections

# services.check error codes that mean "this consumer may not be billed for the service".
_NOT_SUBSCRIBED_CHECK_CODES = frozenset(
    {
        "NOT_FOUND",
        "SERVICE_NOT_ACTIVATED",
        "BILLING_DISABLED",
        "PROJECT_DELETED",
        "PROJECT_INVALID",
        "CONSUMER_INVALID",
    }
)
# services.check error codes that say Google could not decide right now.
_UNAVAILABLE_CHECK_CODES = frozenset(
    {
        "NAMESPACE_LOOKUP_UNAVAILABLE",
        "SERVICE_STATUS_UNAVAILABLE",
        "BILLING_STATUS_UNAVAILABLE",
        "CLOUD_RESOURCE_MANAGER_BACKEND_UNAVAILABLE",
    }
)
# google.rpc.Code values inside reportErrors.
_RPC_NOT_SUBSCRIBED = frozenset({5, 7, 9})  # NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION
_RPC_ALREADY_EXISTS = 6
_RPC_RETRYABLE = frozenset({4, 8, 10, 13, 14})  # deadline, exhausted, aborted, internal, unavailable


def operation_id_for(record: UsageRecord) -> str:
    """Return the deterministic Service Control operationId of ``record``.

    It names the contract's (entitlement, dimension, hour) like the ledger key does, so two
    reports for the same hour share one id and Google keeps only the first (docs/marketplaces.md §4.3).
    The entitlement id stands for the contract; ``consumer_id`` only when it is absent. A record
    whose id the sender pinned on its ledger row (``record_id``, the id of its first send) keeps it.
    """
    if record.record_id:
        return record.record_id
    contract = record.identifiers.get("entitlement_id") or record.identifiers.get("consumer_id", "")
    hour = record.hour.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")
    return str(uuid.uuid5(OPERATION_NAMESPACE, f"{contract}/{record.dimension}/{hour}"))


class Metering:
    """The usage part of ``GcpMarketplace`` (needs ``client``, ``service_name``, ``retry``, ``timeout``)."""

    def _checker(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._check_pool is None:
                self._check_pool = ThreadPoolExecutor(self.check_concurrency, thread_name_prefix="gcp-check")
            return self._check_pool

    # Usage ----------------------------------------------------------------------------------

    def build_operation(self, record: UsageRecord) -> Any:
        """Return the Service Control ``Operation`` that reports ``record`` (one without allocations)."""
        return self._operation(record, operation_id_for(record), record.quantity, {})

    def build_operations(self, record: UsageRecord) -> list[Any]:
        """Return the operations that report ``record``: one, or one per label combination of its allocations.

        An operation carries one ``userLabels`` set (docs/marketplaces.md §4.11), so each
        combination is its own operation, its id derived from the record's: a resend carries the
        same ids and Google keeps each combination once.
        """
        if not record.allocations:
            return [self.build_operation(record)]
        base = operation_id_for(record)
        return [self._operation(record, str(uuid.uuid5(OPERATION_NAMESPACE, f"{base}/{_labels_key(tags)}")), units,
                                dict(tags)) for tags, units in record.allocations]

    def _operation(self, record: UsageRecord, operation_id: str, quantity: int, labels: dict[str, str]) -> Any:
        from google.cloud import servicecontrol_v1 as sc

        consumer_id = record.identifiers.get("consumer_id", "")
        # usageReportingId already carries its "project:" prefix: send it verbatim.
        return sc.Operation(
            operation_id=operation_id,
            operation_name=OPERATION_NAME,
            consumer_id=consumer_id,
            start_time=record.hour,
            end_time=record.hour + timedelta(hours=1),
            metric_value_sets=[
                sc.MetricValueSet(
                    metric_name=f"{self.service_name}/{record.dimension}",
                    metric_values=[sc.MetricValue(int64_value=quantity)],
                )
            ],
            user_labels=labels,
        )

    def report(self, records: Sequence[UsageRecord]) -> list[Outcome]:
        """Check then report every record; return one ``Outcome`` per record, in input order.

        Service Control has no batch ``check``: the checks of a batch run concurrently
        (``check_concurrency`` at a time; they have no side effect), then the operations that
        passed go out in as few ``report`` calls as the size limits allow.
        """
        from google.cloud import servicecontrol_v1 as sc

        outcomes: dict[int, Outcome] = {}
        to_check: list[tuple[int, Any]] = []
        first_transient: TransientMarketplaceError | None = None
        for index, record in enumerate(records):
            if not record.identifiers.get("consumer_id"):
                outcomes[index] = Outcome(
                    record.key, OutcomeStatus.REJECTED,
                    "identifiers.consumer_id (the entitlement's usageReportingId) is missing",
                )
                continue
            record_service = record.identifiers.get("service_name")
            if record_service and record_service != self.service_name:
                outcomes[index] = Outcome(
                    record.key, OutcomeStatus.REJECTED,
                    f"record is for service {record_service!r}; this adapter reports to "
                    f"{self.service_name!r}",
                )
                continue
            problem = next((p for p in (labels_problem(dict(tags)) for tags, _ in record.allocations) if p), None)
            if problem:
                # Refused before any combination is sent: a record is reported whole or not at all.
                outcomes[index] = Outcome(record.key, OutcomeStatus.REJECTED, f"userLabels: {problem}")
                continue
            # One check per record (one consumer): with the operation of its first label combination.
            to_check.append((index, self.build_operations(record)[0]))

        def check(item: tuple[int, Any]) -> Any:
            try:
                return self._call(self.client.check,
                                  sc.CheckRequest(service_name=self.service_name, operation=item[1]))
            except TransientMarketplaceError as exc:
                return exc

        if len(to_check) > 1 and self.check_concurrency > 1:
            answers = list(self._checker().map(check, to_check))
        else:
            answers = [check(item) for item in to_check]
        passing: list[tuple[int, Any]] = []
        for (index, operation), response in zip(to_check, answers):
            if isinstance(response, TransientMarketplaceError):
                # check has no side effect: this record was simply not processed.
                first_transient = first_transient or response
                outcomes[index] = Outcome(
                    records[index].key, OutcomeStatus.FAILED, f"check: {response}", operation.operation_id
                )
            elif response.check_errors:
                outcomes[index] = _check_outcome(records[index], operation, response.check_errors)
            else:
                passing.extend((index, op) for op in self.build_operations(records[index]))

        reported_any = False
        parts: dict[int, list[Outcome]] = {}
        for chunk in self._chunks(passing):
            try:
                response = self._call(
                    self.client.report,
                    sc.ReportRequest(
                        service_name=self.service_name, operations=[op for _, op in chunk]
                    ),
                )
            except (TransientMarketplaceError, PermanentMarketplaceError) as exc:
                if isinstance(exc, PermanentMarketplaceError) and not reported_any:
                    raise
                if isinstance(exc, TransientMarketplaceError):
                    first_transient = first_transient or exc
                # Unknown outcome: these may or may not be stored. Resending the identical
                # operations (same operationIds) is harmless, so they are FAILED, not lost.
                for index, op in chunk:
                    parts.setdefault(index, []).append(Outcome(
                        records[index].key, OutcomeStatus.FAILED, f"report: {exc}", op.operation_id
                    ))
                continue
            reported_any = True
            errors = {error.operation_id: error.status for error in response.report_errors}
            for index, op in chunk:
                parts.setdefault(index, []).append(_report_outcome(records[index], op, errors.get(op.operation_id)))
        for index, answers in parts.items():
            outcomes[index] = _merged(records[index], answers)
        if first_transient is not None and all(
            o.status is OutcomeStatus.FAILED for o in outcomes.values()
        ):
            raise TransientMarketplaceError(str(first_transient)) from first_transient
        return [outcomes[i] for i in range(len(records))]

    def _chunks(self, operations: list[tuple[int, Any]]) -> Iterator[list[tuple[int, Any]]]:
        from google.cloud import servicecontrol_v1 as sc

        # Service Control accepts any number of operations but at most 1 MB per request;
        # keep a margin for the envelope.
        budget = self.max_request_bytes - 1024
        chunk: list[tuple[int, Any]] = []
        size = 0
        for item in operations:
            op_size = len(sc.Operation.to_json(item[1], indent=None)) + 1
            if chunk and (len(chunk) >= self.max_operations_per_call or size + op_size > budget):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += op_size
        if chunk:
            yield chunk

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request=request, retry=self.retry, timeout=self.timeout)
        except Exception as exc:  # classified below; anything unknown is re-raised
            raise _classify(exc) from exc


def _labels_key(tags: Sequence[tuple[str, str]]) -> str:
    return json.dumps(sorted(tags), separators=(",", ":"))


def _merged(record: UsageRecord, answers: list[Outcome]) -> Outcome:
    """Return a record's outcome from its operations' (one per label combination).

    Accepted when every combination is stored (now or by an earlier send); otherwise the
    first refusal, else failed — a resend carries the same operationIds, so the combinations
    already stored are kept once.
    """
    if len(answers) == 1:
        return answers[0]
    stored = (OutcomeStatus.ACCEPTED, OutcomeStatus.DUPLICATE)
    # The record's own id (its combinations' ids derive from it): what the ledger row keeps and resends.
    first_id = operation_id_for(record)
    if all(a.status in stored for a in answers):
        if any(a.status is OutcomeStatus.ACCEPTED for a in answers):
            return Outcome(record.key, OutcomeStatus.ACCEPTED, "", first_id, record.quantity)
        return Outcome(record.key, OutcomeStatus.DUPLICATE, answers[0].detail, first_id)
    bad = [a for a in answers if a.status not in stored]
    worst = next((a for a in bad if a.status is not OutcomeStatus.FAILED), bad[0])
    return Outcome(record.key, worst.status, f"{len(bad)} of {len(answers)} label combinations: {worst.detail}",
                   first_id)


def _code_name(code: Any) -> str:
    name = getattr(code, "name", None)
    return str(name) if name else str(code)


def _check_outcome(record: UsageRecord, operation: Any, check_errors: Sequence[Any]) -> Outcome:
    codes = [_code_name(error.code) for error in check_errors]
    detail = "; ".join(
        f"{code}: {error.detail}" if error.detail else code for code, error in zip(codes, check_errors)
    )
    if any(code in _NOT_SUBSCRIBED_CHECK_CODES for code in codes):
        status = OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED
    elif all(code in _UNAVAILABLE_CHECK_CODES for code in codes):
        status = OutcomeStatus.FAILED  # Google could not decide; safe to send again later
    else:
        status = OutcomeStatus.REJECTED
    return Outcome(record.key, status, f"check: {detail}", operation.operation_id)


def _report_outcome(record: UsageRecord, operation: Any, error_status: Any) -> Outcome:
    if error_status is None:
        return Outcome(
            record.key, OutcomeStatus.ACCEPTED, "", operation.operation_id, record.quantity
        )
    code = int(error_status.code)
    detail = f"report: code {code}: {error_status.message}"
    if code in _RPC_NOT_SUBSCRIBED:
        status = OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED
    elif code == _RPC_ALREADY_EXISTS:
        status = OutcomeStatus.DUPLICATE  # an earlier report under this operationId stands
    elif code in _RPC_RETRYABLE:
        status = OutcomeStatus.FAILED
    else:
        status = OutcomeStatus.REJECTED
    return Outcome(record.key, status, detail, operation.operation_id)


def _classify(exc: Exception) -> Exception:
    """Return the marketplace error that says what the caller does with ``exc``."""
    import requests
    from google.api_core import exceptions as core
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, core.RetryError):
        return TransientMarketplaceError(f"Service Control retries exhausted: {exc}")
    if isinstance(exc, core.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else 0
        message = f"Service Control answered {status or type(exc).__name__}: {exc.message}"
        if isinstance(
            exc,
            (
                core.ServiceUnavailable,
                core.InternalServerError,
                core.TooManyRequests,
                core.DeadlineExceeded,
                core.GatewayTimeout,
                core.BadGateway,
            ),
        ) or status in (408, 429) or status >= 500:
            # Ambiguous: the operations may or may not be stored; resend them unchanged.
            return TransientMarketplaceError(message)
        return PermanentMarketplaceError(message)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return TransientMarketplaceError(f"Service Control unreachable: {exc}")
    if isinstance(exc, auth_exceptions.TransportError):
        return TransientMarketplaceError(f"Service Control auth transport failed: {exc}")
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return PermanentMarketplaceError(f"Service Control credentials failed: {exc}")
    return exc
