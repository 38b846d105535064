"""Orb's event endpoints: ``POST /v1/ingest``, ``POST /v1/events/search``, amend and deprecate.

Ingest is the hot path: the body is parsed once with exact decimals, validated by a plain loop
(``billing_core.events.validate_batch``) and written with one multi-row insert; no pydantic
model is built per event.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Response, current_app, request
from flask.typing import ResponseReturnValue

from billing_core import (
    EventValidationFailed, GroupCommitWriter, IdempotencyConflict, SqlBackfillStore, SqlCustomerRepository,
    SqlEventStore, amend_event, close_backfill, create_backfill, deprecate_event, ingest_into_backfill,
    process_local, revert_backfill, store_records, to_micros, validate_batch, wire, write_lock,
)
from billing_core.orb_json import backfill_json, event_json
from webhooks.api.common import api_blueprint, bad, engine, json_object, new_id, now, page_limit, paginated
from webhooks.api.openapi import documented
from webhooks.api.schemas import (
    Amended, Backfill as BackfillShape, BackfillCreate, CursorQuery, Deprecated, EventAmend, EventList, EventSearch,
    IngestBody, IngestQuery, IngestResult, Page,
)
from webhooks.errors import error_response
from worker import queueing
from worker.db import session_scope

bp = api_blueprint("events", __name__)

SEARCH_DEFAULT_WINDOW = timedelta(days=7)
MAX_SEARCH_IDS = 500


def _exact_json() -> Any:
    """Parse the body with numbers kept exact (``Decimal``), or answer 400."""
    data = request.get_data(cache=False)
    if not data:
        raise bad("body", "empty; JSON expected")
    try:
        return wire.loads(data, exact=True)  # NaN and Infinity are refused there
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("body", f"not valid JSON: {exc}") from None


def _flag(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0", ""):
        return False
    raise bad(name, "expected true or false")


def _writer(db: Any) -> GroupCommitWriter:
    """Return this process's group-commit writer for ``db`` (built on first use)."""
    return process_local(db, "events_writer", lambda: GroupCommitWriter(db))


def _usage_arrived() -> None:
    """Ask for an alert evaluation over the usage just stored (from a background thread: no wait here)."""
    queueing.alert_signal(current_app.extensions["marketsync"]).request()


def _failed(exc: EventValidationFailed | IdempotencyConflict) -> Response:
    if isinstance(exc, IdempotencyConflict):
        failures = [{"idempotency_key": exc.key, "validation_errors": [str(exc)]}]
        return error_response(409, "Resource conflict", str(exc), validation_failed=failures)
    failures = [{"idempotency_key": key, "validation_errors": problems} for key, problems in exc.failures]
    return error_response(400, "Request validation error", str(exc), validation_failed=failures)


@bp.post("/ingest")
@documented(body=IngestBody, query=IngestQuery, response=IngestResult)
def ingest() -> ResponseReturnValue:
    """Ingest up to 500 events: all stored, or none (400 listing every failing event, 409 on a reused key)."""
    for name in request.args:
        if name not in ("debug", "backfill_id"):
            raise bad(name, "unknown query parameter")
    backfill_id = request.args.get("backfill_id") or None
    debug = _flag("debug")
    payload = json_object(_exact_json(), {"events"})
    events = payload.get("events")
    if not isinstance(events, list):
        raise bad("events", "must be a list")
    db = engine()
    try:
        records = validate_batch(events, now=now())
        if db.dialect.name == "sqlite" and backfill_id is None and not debug:
            _writer(db).submit(records, sent=len(events))
            _usage_arrived()
            return {"validation_failed": []}
        with write_lock(db), session_scope(db) as session:
            store = SqlEventStore(session)
            existing = store.existing_keys([r[0] for r in records]) if debug else set()
            if backfill_id is None:
                result = store_records(store, records, sent=len(events))
            else:
                result = ingest_into_backfill(store, SqlBackfillStore(session), backfill_id, records,
                                              sent=len(events))
    except (EventValidationFailed, IdempotencyConflict) as exc:
        return _failed(exc)
    _usage_arrived()
    body: dict[str, Any] = {"validation_failed": []}
    if debug:
        body["debug"] = {
            "duplicate": [k for k in result.keys if k in existing],
            "ingested": [k for k in result.keys if k not in existing],
        }
    return body


@bp.post("/events/backfills")
@documented(body=BackfillCreate, response=BackfillShape, links={
    f"events.{endpoint}": {"backfill_id": "$response.body#/id"}
    for endpoint in ("fetch_backfill", "close_backfill_view", "revert_backfill_view")})
def create_backfill_view() -> ResponseReturnValue:
    """Open a backfill: events ingested with its id count only once it is closed."""
    payload = json_object(_exact_json(), {"timeframe_start", "timeframe_end", "customer_id", "external_customer_id",
                                      "replace_existing_events", "close_time", "deprecation_filter"})
    for name in ("close_time", "deprecation_filter"):
        if payload.get(name) is not None:
            raise bad(name, "not supported (close a backfill with POST /v1/events/backfills/{id}/close)")
    start, end = _instant(payload, "timeframe_start"), _instant(payload, "timeframe_end")
    if start is None or end is None:
        missing = "timeframe_start" if start is None else "timeframe_end"
        raise bad(missing, "required")
    replace_existing = payload.get("replace_existing_events", False)
    if not isinstance(replace_existing, bool):
        raise bad("replace_existing_events", "must be a boolean")
    with session_scope(engine()) as session:
        customer_id = payload.get("customer_id")
        if payload.get("external_customer_id") is not None:
            if customer_id is not None:
                raise bad("customer_id", "give customer_id or external_customer_id, not both")
            customer_id = SqlCustomerRepository(session).get_by_external_id(payload["external_customer_id"]).id
        elif customer_id is not None:
            customer_id = SqlCustomerRepository(session).get(customer_id).id
        backfill = create_backfill(
            SqlBackfillStore(session), backfill_id=new_id(), timeframe_start=_utc(start), timeframe_end=_utc(end),
            now=now(), customer_id=customer_id, replace_existing_events=replace_existing,
        )
    return backfill_json(backfill)


@bp.get("/events/backfills")
@documented(query=CursorQuery, response=Page[BackfillShape])
def list_backfills() -> ResponseReturnValue:
    """List backfills, newest first."""
    for name in request.args:
        if name not in ("cursor", "limit"):
            raise bad(name, "unknown query parameter")
    limit = page_limit()
    with session_scope(engine()) as session:
        page, cursor = SqlBackfillStore(session).list(limit=limit, cursor=request.args.get("cursor") or None)
    return paginated([backfill_json(b) for b in page], has_more=cursor is not None, next_cursor=cursor)


@bp.get("/events/backfills/<backfill_id>")
@documented(response=BackfillShape)
def fetch_backfill(backfill_id: str) -> ResponseReturnValue:
    """Fetch a backfill."""
    with session_scope(engine()) as session:
        return backfill_json(SqlBackfillStore(session).get(backfill_id))


@bp.post("/events/backfills/<backfill_id>/close")
@documented(response=BackfillShape)
def close_backfill_view(backfill_id: str) -> ResponseReturnValue:
    """Close a backfill: its events count from now on (replacing the window's, if it said so)."""
    db = engine()
    with write_lock(db), session_scope(db) as session:
        return backfill_json(close_backfill(SqlBackfillStore(session), backfill_id, now=now()))


@bp.post("/events/backfills/<backfill_id>/revert")
@documented(response=BackfillShape)
def revert_backfill_view(backfill_id: str) -> ResponseReturnValue:
    """Revert a backfill: its events stop counting and the events it replaced count again."""
    db = engine()
    with write_lock(db), session_scope(db) as session:
        return backfill_json(revert_backfill(SqlBackfillStore(session), backfill_id, now=now()))


def _utc(instant: datetime) -> datetime:
    return instant.replace(tzinfo=timezone.utc) if instant.tzinfo is None else instant.astimezone(timezone.utc)


def _instant(payload: dict[str, Any], name: str) -> datetime | None:
    raw = payload.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise bad(name, "not an ISO 8601 instant")
    return wire.parse_instant(raw, name)


@bp.post("/events/search")
@documented(body=EventSearch, response=EventList)
def search() -> ResponseReturnValue:
    """Return the current version of the named events inside the timeframe (default: the last week)."""
    payload = json_object(_exact_json(), {"event_ids", "timeframe_start", "timeframe_end"})
    ids = payload.get("event_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise bad("event_ids", "must be a list of strings")
    if len(ids) > MAX_SEARCH_IDS:
        raise bad("event_ids", f"at most {MAX_SEARCH_IDS}")
    end = _instant(payload, "timeframe_end") or now()
    start = _instant(payload, "timeframe_start") or (end - SEARCH_DEFAULT_WINDOW)
    with session_scope(engine()) as session:
        found = SqlEventStore(session).search(ids, start=to_micros(start), end=to_micros(end))
    text = '{"data":[' + ",".join(event_json(e) for e in found) + "]}"
    return Response(text, mimetype="application/json")


@bp.put("/events/<path:event_id>")
@documented(body=EventAmend, response=Amended)
def amend(event_id: str) -> ResponseReturnValue:
    """Amend an event: its new body replaces the old one in every metric (the original is kept)."""
    if event_id.endswith("/deprecate"):
        return deprecate(event_id[: -len("/deprecate")])
    payload = json_object(
        _exact_json(), {"event_name", "properties", "timestamp", "customer_id", "external_customer_id"}
    )
    db = engine()
    try:
        with write_lock(db), session_scope(db) as session:
            amend_event(SqlEventStore(session), event_id, payload, now=now())
    except EventValidationFailed as exc:
        return _failed(exc)
    return {"amended": event_id}


@bp.route("/events/<path:event_id>/deprecate", methods=["PUT", "POST"])
@documented(response=Deprecated)
def deprecate(event_id: str) -> ResponseReturnValue:
    """Deprecate an event: every metric ignores it from now on (idempotent)."""
    db = engine()
    with write_lock(db), session_scope(db) as session:
        deprecate_event(SqlEventStore(session), event_id)
    return {"deprecated": event_id}
