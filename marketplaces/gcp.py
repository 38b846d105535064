"""Google Cloud Marketplace (integrated SaaS): Service Control usage reports, Partner
Procurement calls and verified Pub/Sub push notifications.

Usage goes out as one Service Control ``Operation`` per record: ``services.check`` first
(a consumer whose service is not active must not be billed), then ``services.report`` for
the records that passed, batched under the 1 MB request limit. Each operation's
``operationId`` is a UUID v5 derived from the record's ledger key, dimension and hour, so
resending after an ambiguous failure can never bill twice (reference §3.3, §6.3).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

from config.settings import Settings
from marketplaces.base import (
    MarketplaceRules,
    ContractNotification,
    Marketplace,
    MalformedNotification,
    NotificationKind,
    Outcome,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UnverifiedNotification,
    UsageRecord,
)

# Fixed namespace of every operationId this project sends; never change it, or resends of
# already-reported hours would get new ids and bill twice.
OPERATION_NAMESPACE = uuid.UUID("5f0c1f9e-6a53-4b8e-9d1a-7c3e2b4a6d10")
OPERATION_NAME = "Hourly Usage Report"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
SANDBOX_PUSH_SERVICE_ACCOUNT = "marketplace-push@marketsync-sandbox.iam.gserviceaccount.com"
SANDBOX_PROVIDER_ID = "marketsync-sandbox"
SANDBOX_SERVICE_NAME = "marketsync-sandbox.endpoints.marketsync-sandbox.cloud.goog"
EMULATOR_CERTS_PATH = "/_emulator/oauth2/v1/certs"
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

# eventType -> (kind, approval needed). Anything not listed is understood but ignored: the
# worker GETs the entitlement or account and acts on its current state (reference §3.1).
_EVENT_KINDS: dict[str, NotificationKind] = {
    "ENTITLEMENT_ACTIVE": NotificationKind.CREATED,
    "ENTITLEMENT_OFFER_ACCEPTED": NotificationKind.CREATED,
    "ENTITLEMENT_CREATION_REQUESTED": NotificationKind.PENDING,
    "ENTITLEMENT_PLAN_CHANGE_REQUESTED": NotificationKind.PENDING,
    "ENTITLEMENT_PLAN_CHANGED": NotificationKind.MODIFIED,
    "ENTITLEMENT_CANCELLING": NotificationKind.CANCELED,
    "ENTITLEMENT_CANCELLED": NotificationKind.CANCELED,
    "ENTITLEMENT_RENEWED": NotificationKind.RENEWED,
    "ENTITLEMENT_SUSPENDED": NotificationKind.SUSPENDED,
}
_APPROVALS = {
    "ENTITLEMENT_CREATION_REQUESTED": "entitlement",
    "ENTITLEMENT_PLAN_CHANGE_REQUESTED": "plan_change",
}


def operation_id_for(record: UsageRecord) -> str:
    """Return the deterministic Service Control operationId of ``record``.

    It names the contract's (entitlement, dimension, hour) like the ledger key does, so two
    reports for the same hour share one id and Google keeps only the first (reference §6.3).
    The entitlement id stands for the contract; ``consumer_id`` only when it is absent.
    """
    contract = record.identifiers.get("entitlement_id") or record.identifiers.get("consumer_id", "")
    hour = record.hour.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:00:00Z")
    return str(uuid.uuid5(OPERATION_NAMESPACE, f"{contract}/{record.dimension}/{hour}"))


# Push-token verification ------------------------------------------------------------------


@dataclass
class PushTokenVerifier:
    """Verify the OIDC bearer token of a Pub/Sub push and return its claims.

    With ``certs_url`` unset the token is checked against Google's published keys
    (``verify_oauth2_token``); with it set (sandbox) the PEM certificates by key id are
    fetched from that URL, cached, and fetched again once when a token names an unknown key.
    """

    audience: str
    service_account: str
    certs_url: str | None = None
    http: Any = None  # a requests.Session-like object for the certs URL
    clock_skew_seconds: int = 10
    refetch_interval_seconds: float = 30.0
    _fetched_at: float = field(default=float("-inf"), repr=False)
    _certs: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, authorization: str | None) -> Mapping[str, Any]:
        """Return the verified claims of ``Authorization: Bearer <token>``."""
        if not self.audience:
            raise UnverifiedNotification("no push audience is configured (GCP_PUSH_AUDIENCE)")
        if not self.service_account:
            raise UnverifiedNotification(
                "no push service account is configured (GCP_PUSH_SERVICE_ACCOUNT)"
            )
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnverifiedNotification("missing bearer token")
        claims = self._decode(token.strip())
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise UnverifiedNotification(f"unexpected token issuer {claims.get('iss')!r}")
        if claims.get("email") != self.service_account:
            raise UnverifiedNotification(f"token email {claims.get('email')!r} is not the push account")
        if claims.get("email_verified") is not True:
            raise UnverifiedNotification("token email is not verified")
        return claims

    def _decode(self, token: str) -> Mapping[str, Any]:
        from google.auth import exceptions as auth_exceptions

        try:
            if self.certs_url is None:
                import google.auth.transport.requests
                from google.oauth2 import id_token

                request = google.auth.transport.requests.Request(session=self.http)
                return id_token.verify_oauth2_token(
                    token, request, audience=self.audience,
                    clock_skew_in_seconds=self.clock_skew_seconds,
                )
            return self._decode_with_certs(token)
        except UnverifiedNotification:
            raise
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise UnverifiedNotification(f"push token rejected: {exc}") from None

    def _decode_with_certs(self, token: str) -> Mapping[str, Any]:
        import jwt as pyjwt
        from google.auth import jwt

        try:
            kid = pyjwt.get_unverified_header(token).get("kid")
        except pyjwt.PyJWTError:
            raise UnverifiedNotification("push token is not a JWT") from None
        with self._lock:
            certs = dict(self._certs)
            # Refetch for an unknown key id (rotation), but not on every forged token.
            stale = time.monotonic() - self._fetched_at > self.refetch_interval_seconds
        if not certs or (kid and kid not in certs and stale):
            certs = self._fetch_certs()
        return jwt.decode(
            token, certs=certs, audience=self.audience,
            clock_skew_in_seconds=self.clock_skew_seconds,
        )

    def _fetch_certs(self) -> dict[str, str]:
        import requests

        http = self.http or requests.Session()
        try:
            response = http.get(self.certs_url, timeout=10)
            response.raise_for_status()
            certs = {str(k): str(v) for k, v in response.json().items()}
        except (requests.RequestException, ValueError, AttributeError) as exc:
            # Cannot check the signature now; Pub/Sub redelivers what we do not ack.
            raise UnverifiedNotification(f"cannot fetch signing certificates: {exc}") from None
        with self._lock:
            self._certs = certs
            self._fetched_at = time.monotonic()
        return certs


# The adapter ------------------------------------------------------------------------------


class GcpMarketplace:
    """Report usage to Service Control and speak to the Partner Procurement API."""

    marketplace = Marketplace.GCP

    def __init__(
        self,
        client: Any,
        *,
        service_name: str,
        procurement: Any = None,
        provider_id: str | None = None,
        push_verifier: Callable[[str | None], Mapping[str, Any]] | None = None,
        max_operations_per_call: int = MAX_OPERATIONS_PER_CALL,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        timeout: float = 30.0,
        retry: Any = None,
        check_concurrency: int = CHECK_CONCURRENCY,
    ):
        """Wrap a ``servicecontrol_v1.ServiceControllerClient`` and optional procurement resource.

        ``procurement`` is the ``cloudcommerceprocurement`` v1 discovery resource; ``retry``
        is passed to the Service Control calls (default none: the job retries with backoff).
        """
        if not service_name:
            raise PermanentMarketplaceError("GCP service name is not configured (GCP_SERVICE_NAME)")
        self.client = client
        self.service_name = service_name
        self.procurement = procurement
        self.provider_id = provider_id
        self.push_verifier = push_verifier
        self.max_operations_per_call = max_operations_per_call
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.retry = retry
        self.check_concurrency = check_concurrency
        self._check_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _checker(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._check_pool is None:
                self._check_pool = ThreadPoolExecutor(self.check_concurrency, thread_name_prefix="gcp-check")
            return self._check_pool

    # Usage ----------------------------------------------------------------------------------

    def build_operation(self, record: UsageRecord) -> Any:
        """Return the Service Control ``Operation`` that reports ``record``."""
        from google.cloud import servicecontrol_v1 as sc

        consumer_id = record.identifiers.get("consumer_id", "")
        # usageReportingId already carries its "project:" prefix: send it verbatim.
        return sc.Operation(
            operation_id=operation_id_for(record),
            operation_name=OPERATION_NAME,
            consumer_id=consumer_id,
            start_time=record.hour,
            end_time=record.hour + timedelta(hours=1),
            metric_value_sets=[
                sc.MetricValueSet(
                    metric_name=f"{self.service_name}/{record.dimension}",
                    metric_values=[sc.MetricValue(int64_value=record.quantity)],
                )
            ],
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
            to_check.append((index, self.build_operation(record)))

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
                passing.append((index, operation))

        reported_any = False
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
                    outcomes[index] = Outcome(
                        records[index].key, OutcomeStatus.FAILED, f"report: {exc}", op.operation_id
                    )
                continue
            reported_any = True
            errors = {error.operation_id: error.status for error in response.report_errors}
            for index, op in chunk:
                outcomes[index] = _report_outcome(records[index], op, errors.get(op.operation_id))
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

    # Partner Procurement --------------------------------------------------------------------

    def get_entitlement(self, entitlement_id: str) -> dict[str, Any] | None:
        """Return the entitlement, or None when it does not exist (deleted)."""
        return self._procure(
            lambda p: p.entitlements().get(name=self._name("entitlements", entitlement_id)),
            none_on_404=True,
        )

    def list_entitlements(self, filter: str | None = None, page_size: int | None = None) -> list[dict[str, Any]]:
        """Return every entitlement matching ``filter`` (e.g. ``state=ENTITLEMENT_ACTIVE``)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"parent": f"providers/{self._provider()}"}
            if filter:
                params["filter"] = filter
            if page_size:
                params["pageSize"] = page_size
            if token:
                params["pageToken"] = token
            page = self._procure(lambda p: p.entitlements().list(**params))
            items.extend(page.get("entitlements", []))
            token = page.get("nextPageToken")
            if not token:
                return items

    def approve_entitlement(self, entitlement_id: str, properties: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Approve a requested entitlement (billing starts once it is active)."""
        body: dict[str, Any] = {"properties": dict(properties)} if properties else {}
        return self._procure(
            lambda p: p.entitlements().approve(name=self._name("entitlements", entitlement_id), body=body)
        )

    def reject_entitlement(self, entitlement_id: str, reason: str) -> dict[str, Any]:
        """Reject a requested entitlement with a reason shown to the customer."""
        return self._procure(
            lambda p: p.entitlements().reject(
                name=self._name("entitlements", entitlement_id), body={"reason": reason}
            )
        )

    def approve_plan_change(self, entitlement_id: str, pending_plan_name: str) -> dict[str, Any]:
        """Approve the pending plan change to ``pending_plan_name``."""
        return self._procure(
            lambda p: p.entitlements().approvePlanChange(
                name=self._name("entitlements", entitlement_id),
                body={"pendingPlanName": pending_plan_name},
            )
        )

    def reject_plan_change(self, entitlement_id: str, pending_plan_name: str, reason: str) -> dict[str, Any]:
        """Reject the pending plan change to ``pending_plan_name``."""
        return self._procure(
            lambda p: p.entitlements().rejectPlanChange(
                name=self._name("entitlements", entitlement_id),
                body={"pendingPlanName": pending_plan_name, "reason": reason},
            )
        )

    def get_account(self, account_id: str) -> dict[str, Any] | None:
        """Return the procurement account, or None when it does not exist."""
        return self._procure(
            lambda p: p.accounts().get(name=self._name("accounts", account_id)), none_on_404=True
        )

    def approve_account(self, account_id: str, approval_name: str = "signup", reason: str = "") -> dict[str, Any]:
        """Approve the account's ``approval_name`` approval (the customer signed up)."""
        body: dict[str, Any] = {"approvalName": approval_name}
        if reason:
            body["reason"] = reason
        return self._procure(
            lambda p: p.accounts().approve(name=self._name("accounts", account_id), body=body)
        )

    def _provider(self) -> str:
        if not self.provider_id:
            raise PermanentMarketplaceError("GCP provider id is not configured (GCP_PROVIDER_ID)")
        return self.provider_id

    def _name(self, collection: str, resource_id: str) -> str:
        return f"providers/{self._provider()}/{collection}/{resource_id}"

    def _procure(self, make_request: Callable[[Any], Any], none_on_404: bool = False) -> Any:
        if self.procurement is None:
            raise PermanentMarketplaceError("no Partner Procurement client is configured")
        from googleapiclient.errors import HttpError

        try:
            return make_request(self.procurement.providers()).execute()
        except HttpError as exc:
            status = int(getattr(exc.resp, "status", 0) or 0)
            if none_on_404 and status == 404:
                return None
            message = f"procurement call failed with HTTP {status}: {exc._get_reason()}"  # noqa: SLF001
            if status in (408, 429) or status >= 500:
                raise TransientMarketplaceError(message) from exc
            raise PermanentMarketplaceError(message) from exc
        except (OSError, TimeoutError) as exc:
            raise TransientMarketplaceError(f"procurement call failed: {exc}") from exc
        except Exception as exc:
            import httplib2

            if isinstance(exc, httplib2.HttpLib2Error):
                raise TransientMarketplaceError(f"procurement call failed: {exc}") from exc
            raise

    # Notifications --------------------------------------------------------------------------

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> ContractNotification:
        """Verify a Pub/Sub push (OIDC bearer token) and normalize the procurement event."""
        if self.push_verifier is None:
            raise UnverifiedNotification("no push verifier is configured")
        authorization = _header(headers, "authorization")
        claims = self.push_verifier(authorization)
        return parse_push_envelope(body, provider_id=self.provider_id, claims=claims)


def parse_push_envelope(
    body: bytes, *, provider_id: str | None = None, claims: Mapping[str, Any] | None = None
) -> ContractNotification:
    """Normalize an already-verified Pub/Sub push body into a ``ContractNotification``."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("push body is not JSON", field="body") from None
    if not isinstance(envelope, dict):
        raise MalformedNotification("push body is not a JSON object", field="body")
    message = envelope.get("message")
    if not isinstance(message, dict):
        raise MalformedNotification("push envelope has no message object", field="message")
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise MalformedNotification("push message has no data", field="message.data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedNotification("message.data is not valid base64", field="message.data") from None
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("message.data is not JSON", field="message.data") from None
    if not isinstance(event, dict):
        raise MalformedNotification("message.data is not a JSON object", field="message.data")
    event_type = event.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedNotification("event has no eventType", field="eventType")
    event_provider = event.get("providerId")
    if provider_id and event_provider and event_provider != provider_id:
        raise MalformedNotification(
            f"event is for provider {event_provider!r}, not {provider_id!r}", field="providerId"
        )

    message_id = message.get("messageId") or message.get("message_id")
    delivery_id = event.get("eventId") or message_id
    if not delivery_id:
        raise MalformedNotification("event has neither eventId nor messageId", field="eventId")

    identifiers: dict[str, str] = {}
    if event_provider or provider_id:
        identifiers["provider_id"] = str(event_provider or provider_id)
    subject: dict[str, Any]
    if isinstance(event.get("entitlement"), dict):
        subject = event["entitlement"]
        id_field, id_name = "entitlement.id", "entitlement_id"
    elif isinstance(event.get("account"), dict):
        subject = event["account"]
        id_field, id_name = "account.id", "account_id"
    else:
        raise MalformedNotification("event has neither entitlement nor account", field="entitlement")
    if not isinstance(subject.get("id"), str) or not subject["id"]:
        raise MalformedNotification(f"event has no {id_field}", field=id_field)
    identifiers[id_name] = subject["id"]

    kind = _EVENT_KINDS.get(event_type, NotificationKind.IGNORED)
    if id_name == "account_id":
        kind = NotificationKind.IGNORED  # accounts: the worker GETs the account and links it
    new_plan = subject.get("newPlan") or subject.get("newPendingPlan")
    extra: dict[str, Any] = {"event_type": event_type}
    if event_type in _APPROVALS:
        extra["approval"] = _APPROVALS[event_type]
    if new_plan:
        extra["new_plan"] = new_plan
    for source, target in (
        ("newOfferDuration", "new_offer_duration"),
        ("newPendingOfferDuration", "new_offer_duration"),
    ):
        if subject.get(source):
            extra[target] = subject[source]
    if message_id:
        extra["message_id"] = str(message_id)
    publish_time = message.get("publishTime") or message.get("publish_time")
    if publish_time:
        extra["publish_time"] = publish_time
    if envelope.get("subscription"):
        extra["subscription"] = envelope["subscription"]
    if claims and claims.get("email"):
        extra["pushed_by"] = claims["email"]

    return ContractNotification(
        marketplace=Marketplace.GCP,
        delivery_id=str(delivery_id),
        kind=kind,
        action=event_type,
        identifiers=identifiers,
        plan=new_plan if kind is NotificationKind.MODIFIED else None,
        effective_at=parse_rfc3339(subject.get("updateTime")) or parse_rfc3339(publish_time),
        extra=extra,
    )


# Helpers ------------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def parse_rfc3339(value: Any) -> datetime | None:
    """Parse an RFC 3339 instant as Google writes it (up to nanoseconds); None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Google writes up to nanoseconds; Python parses up to microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+23:59 has no UTC value
        return None


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


# Composition --------------------------------------------------------------------------------


def build_gcp_adapter(settings: Settings, **overrides: Any) -> GcpMarketplace:
    """Build the adapter from settings: the emulator in sandbox mode, Google in live mode.

    ``overrides`` replace constructor arguments (``client``, ``procurement``,
    ``push_verifier``, ``service_name``, ``provider_id``, ...) or pass ``http`` (a
    requests session for the sandbox certs URL).
    """
    from google.cloud import servicecontrol_v1
    from googleapiclient.discovery import build

    http = overrides.pop("http", None)
    sandbox = settings.MARKETPLACE_MODE == "sandbox"
    if sandbox:
        from google.auth.credentials import AnonymousCredentials

        base_url = settings.emulator_url("gcp")
        credentials: Any = AnonymousCredentials()
        endpoint_options: dict[str, Any] = {"api_endpoint": base_url}
        service_name = settings.GCP_SERVICE_NAME or SANDBOX_SERVICE_NAME
        provider_id = settings.GCP_PROVIDER_ID or SANDBOX_PROVIDER_ID
        service_account = settings.GCP_PUSH_SERVICE_ACCOUNT or SANDBOX_PUSH_SERVICE_ACCOUNT
        certs_url: str | None = base_url + EMULATOR_CERTS_PATH
    else:
        credentials = None  # application default credentials (the linked service account)
        endpoint_options = {}
        service_name = settings.GCP_SERVICE_NAME
        provider_id = settings.GCP_PROVIDER_ID
        service_account = settings.GCP_PUSH_SERVICE_ACCOUNT
        certs_url = None

    if "client" not in overrides:
        client_kwargs: dict[str, Any] = {}
        if sandbox:
            client_kwargs = {
                "transport": "rest",
                "credentials": credentials,
                "client_options": endpoint_options,
            }
        overrides["client"] = servicecontrol_v1.ServiceControllerClient(**client_kwargs)
    if "procurement" not in overrides:
        build_kwargs: dict[str, Any] = {"static_discovery": True, "cache_discovery": False}
        if sandbox:
            build_kwargs.update(credentials=credentials, client_options=endpoint_options)
        overrides["procurement"] = build("cloudcommerceprocurement", "v1", **build_kwargs)
    overrides.setdefault(
        "push_verifier",
        PushTokenVerifier(
            audience=settings.GCP_PUSH_AUDIENCE,
            service_account=service_account,
            certs_url=certs_url,
            http=http,
        ),
    )
    overrides.setdefault("service_name", service_name)
    overrides.setdefault("provider_id", provider_id)
    client = overrides.pop("client")
    return GcpMarketplace(client, **overrides)


def _gcp_record_identifiers(columns: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, str]:
    identifiers = {"consumer_id": ids.get("usage_reporting_id") or ids.get("consumer_id", ""),
                   "entitlement_id": columns.get("gcp_entitlement_id") or ids.get("entitlement_id", "")}
    if ids.get("service_name"):
        identifiers["service_name"] = ids["service_name"]
    return identifiers


RULES = MarketplaceRules(
    marketplace=Marketplace.GCP,
    # No per-call record limit (report calls are split at 100 operations or 1 MB), but one
    # services.check per record: larger batches let the adapter run more checks at once.
    batch_size=100,
    final_usage_window=timedelta(hours=24),
    hourly_zero_record=False,
    flush_lookback_hours=0,
    contract_key_fields=("entitlement_id",),
    product_fields=("product_id", "product", "product_external_name"),
    record_identifiers=_gcp_record_identifiers,
    customer_identity=lambda ids: ids.get("gcp_account_id") or ids.get("account_id") or ids.get("gcp_entitlement_id"),
)
