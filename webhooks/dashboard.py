"""``/ops/``: the ops dashboard (server-rendered HTML; only the countdowns use JavaScript).

Login takes an API key (one of ``API_KEYS``) and keeps a signed session cookie holding a
fingerprint of that key, so removing a key from ``API_KEYS`` ends its sessions, and the id of a
server-side session (``webhooks.sessions``) that logout deletes. Failed logins count towards
the per-address throttle (``webhooks.throttle``). Every form carries the session's CSRF token
and every POST is checked against it (400 otherwise).
Actions go through the same use cases and jobs as the API: mapping follows the PATCH rules,
retries and "sync now" go through ``worker.reporting.request_report``, as the API's sync does.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint, Response, abort, current_app, flash, g, make_response, redirect, render_template, request, session,
    url_for,
)
from flask.typing import ResponseReturnValue

from webhooks import sessions, throttle
from billing_core import NotFound
from worker import contracts, jobs, ledger, ops, plan_migrations, queueing, reconcile, reporting, trueups
from worker.runtime import QUEUE_NAMES

bp = Blueprint("ops", __name__, url_prefix="/ops", template_folder="templates",
               static_folder="static", static_url_path="/static")
SESSION_HOURS = 12
_OPEN = {"ops.login", "ops.static"}


def _runtime() -> Any:
    return current_app.extensions["marketsync"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _fingerprint(key: str) -> str:
    return hashlib.sha256(f"marketsync-ops|{key}".encode()).hexdigest()[:32]


def _valid_fingerprint(value: str) -> bool:
    keys = _runtime().settings.API_KEYS
    return bool(value) and any(hmac.compare_digest(value, _fingerprint(k)) for k in keys)


def csrf_token() -> str:
    """Return this session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _safe_next(target: str | None) -> str:
    """Return ``target`` when it is a path of the dashboard, else the overview (no open redirect)."""
    # Control characters (CR/LF) cannot go into a Location header; a long target is no page of ours.
    if target and len(target) <= 2000 and target.isprintable():
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/ops") and "\\" not in target:
            return target
    return url_for("ops.overview")


@bp.record_once
def _configure(state: Any) -> None:
    state.app.permanent_session_lifetime = timedelta(hours=SESSION_HOURS)
    state.app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    if state.app.config.get("SESSION_COOKIE_SAMESITE") is None:
        state.app.config["SESSION_COOKIE_SAMESITE"] = "Lax"


@bp.before_request
def _guard() -> ResponseReturnValue | None:
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return _page_error(400, "The form expired or did not come from this dashboard. Reload the page and try again.")
    if request.endpoint in _OPEN:
        return None
    fingerprint = session.get("key", "")
    try:
        alive = _valid_fingerprint(fingerprint) and sessions.session_alive(_session_store(), session.get("sid", ""),
                                                                           fingerprint)
    except sessions.SessionStoreUnavailable:
        return _page_error(503, _STORE_DOWN)
    if not alive:
        session.pop("key", None)
        session.pop("sid", None)
        return redirect(url_for("ops.login", next=request.full_path.rstrip("?")))
    g.ops_user = True
    return None


_STORE_DOWN = "Dashboard sessions are kept in Redis, which did not answer. Try again when it is back."


def _session_store() -> Any:
    """Return the Redis connection that keeps the sessions (``SessionStoreUnavailable`` if there is none)."""
    try:
        return _runtime().redis
    except RuntimeError as exc:  # REDIS_URL unset
        raise sessions.SessionStoreUnavailable(str(exc)) from None


@bp.after_request
def _headers(response: Response) -> Response:
    if request.endpoint != "ops.static":
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "fmt_time": fmt_time, "fmt_duration": fmt_duration,
            "public_error": ops.public_error}


def fmt_time(value: datetime | str | None) -> str:
    """Return a UTC timestamp as ``2026-11-21 10:05:00 UTC`` (empty for None)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    value = ops.utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def fmt_duration(seconds: float | None) -> str:
    """Return a duration as ``1 h 02 min`` / ``4 min 05 s`` / ``12 s``."""
    if seconds is None:
        return ""
    sign, seconds = ("-" if seconds < 0 else ""), abs(int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours} h {minutes:02d} min"
    if minutes:
        return f"{sign}{minutes} min {secs:02d} s"
    return f"{sign}{secs} s"


def _page_error(status: int, message: str) -> tuple[str, int]:
    return render_template("ops/error.html", status=status, message=message), status


# --- login -----------------------------------------------------------------------------------------

@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Show the login form; a valid API key starts a session."""
    target = _safe_next(request.values.get("next"))
    error = ""
    status = 200
    if request.method == "POST":
        runtime = _runtime()
        client = request.remote_addr or "unknown"
        key = request.form.get("api_key", "").strip()
        wait = throttle.retry_after(runtime, client)
        if wait:
            error, status = f"Too many failed attempts from your address. Try again in {fmt_duration(wait)}.", 429
        elif key and any(hmac.compare_digest(key.encode(), k.encode()) for k in runtime.settings.API_KEYS):
            try:
                session_id = sessions.start_session(_session_store(), _fingerprint(key), SESSION_HOURS * 3600)
            except sessions.SessionStoreUnavailable:
                return _page_error(503, _STORE_DOWN)
            throttle.clear_failures(runtime, client)
            session.clear()  # a new session: nothing from before the login survives (no fixation)
            session.permanent = True
            session["key"] = _fingerprint(key)
            session["sid"] = session_id
            csrf_token()
            return redirect(target)
        elif runtime.settings.API_KEYS:
            if key:
                throttle.record_failure(runtime, client)
            error, status = "That API key is not valid.", 401
        else:
            error, status = "No API key is configured (set API_KEYS), so nobody can log in.", 401
    response = make_response(render_template("ops/login.html", next=target, error=error), status)
    if status == 429:
        response.headers["Retry-After"] = str(wait)
    return response


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session: its id is deleted server-side, so a copy of the old cookie no longer works."""
    try:
        sessions.end_session(_session_store(), session.get("sid", ""))
    except sessions.SessionStoreUnavailable:
        return _page_error(503, _STORE_DOWN)
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("ops.login"))


# --- overview --------------------------------------------------------------------------------------

@bp.get("/")
def overview() -> ResponseReturnValue:
    """Contracts by marketplace and status, reports of the last 24 h, attention, deadlines, queues."""
    runtime = _runtime()
    now = _now()
    data = ops.overview(runtime.engine, now=now)
    return render_template("ops/overview.html", data=data, queues=_queues(now), now=now,
                           marketplaces=ops.MARKETPLACES, statuses=ops.STATUSES,
                           mapping_statuses=ops.MAPPING_STATUSES, ledger_statuses=ops.LEDGER_STATUSES)


def _queues(now: datetime) -> dict[str, Any]:
    """Return queue depths, workers, cron heartbeat and the hourly runs (or why Redis did not answer)."""
    from rq import Worker
    from rq.registry import FailedJobRegistry

    runtime = _runtime()
    minute = runtime.settings.HOURLY_SYNC_MINUTE
    out: dict[str, Any] = {"next_run": ops.next_hourly_run(now, minute), "minute": minute, "error": ""}
    try:
        conn = runtime.redis
        out["depths"] = {name: runtime.queue(name).count for name in QUEUE_NAMES}
        out["failed"] = sum(FailedJobRegistry(queue=runtime.queue(name)).count for name in QUEUE_NAMES)
        workers = Worker.all(connection=conn)
        out["workers"] = [{"name": w.name, "state": w.get_state(), "queues": ", ".join(w.queue_names()),
                           "heartbeat": w.last_heartbeat} for w in workers]
        heartbeat = conn.get(jobs.CRON_HEARTBEAT_KEY)
        out["cron"] = _parse_time(heartbeat)
        fanout = _parse_time(conn.get("marketsync:sync:last_fanout"))
        out["last_run"] = ops.last_run(runtime.engine, fanout)
    except Exception as exc:  # noqa: BLE001 - the page still renders when Redis is down, and says so
        out["error"] = f"Redis did not answer ({type(exc).__name__})"
    return out


def _parse_time(raw: bytes | str | None) -> datetime | None:
    if not raw:
        return None
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        return ops.utc(datetime.fromisoformat(text))
    except ValueError:
        return None


# --- contracts -------------------------------------------------------------------------------------

@bp.get("/contracts")
def contract_list() -> ResponseReturnValue:
    """The contracts table: filters, search, sort and pages from the query string."""
    query = ops.ContractQuery.from_args(request.args)
    page = ops.list_contracts(_runtime().engine, query, now=_now())
    listings = ops.listing_rows(_runtime().engine)
    if len(page["rows"]) == 1 and query.q and page["total"] == 1 and request.args.get("go") == "1":
        return redirect(url_for("ops.contract_detail", contract_id=page["rows"][0]["id"]))
    return render_template("ops/contracts.html", query=query, page=page, listings=listings,
                           marketplaces=ops.MARKETPLACES, statuses=ops.STATUSES,
                           mapping_statuses=ops.MAPPING_STATUSES, now=_now())


@bp.get("/contracts/<contract_id>")
def contract_detail(contract_id: str) -> ResponseReturnValue:
    """Everything about one contract, with the mapping, retry and sync actions."""
    return _render_contract(contract_id)


def _render_contract(contract_id: str, *, status: int = 200, errors: dict[str, str] | None = None,
                     form: dict[str, str] | None = None) -> ResponseReturnValue:
    try:
        detail = ops.contract_detail(_runtime().engine, contract_id, now=_now())
    except contracts.ContractNotFound:
        return _page_error(404, f"There is no contract {contract_id}.")
    return render_template("ops/contract.html", d=detail, c=detail["contract"], errors=errors or {},
                           form=form or {}, now=_now()), status


@bp.post("/contracts/<contract_id>/map")
def map_contract(contract_id: str) -> ResponseReturnValue:
    """Attach an existing subscription (the rules of ``PATCH /v1/contracts/{id}``)."""
    subscription_id = request.form.get("subscription_id", "").strip()
    form = {"subscription_id": subscription_id}
    if not subscription_id:
        return _render_contract(contract_id, status=400, errors={"subscription_id": "Enter a subscription id."}, form=form)
    if len(subscription_id) > 64:
        return _render_contract(contract_id, status=400,
                                errors={"subscription_id": "A subscription id has at most 64 characters."}, form=form)
    runtime = _runtime()
    try:
        contracts.patch_contract(runtime.engine, contract_id, runtime.billing_gateway(),
                                 subscription_id=subscription_id, custom_properties=None, now=_now())
    except contracts.ContractNotFound:
        return _page_error(404, f"There is no contract {contract_id}.")
    except contracts.SubscriptionNotFound as exc:
        return _render_contract(contract_id, status=404, errors={"subscription_id": _sentence(exc)}, form=form)
    except contracts.MappingConflict as exc:
        return _render_contract(contract_id, status=409, errors={"subscription_id": _sentence(exc)}, form=form)
    flash(f"Mapped to subscription {subscription_id}.", "ok")
    return redirect(url_for("ops.contract_detail", contract_id=contract_id))


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


@bp.post("/contracts/<contract_id>/properties")
def edit_properties(contract_id: str) -> ResponseReturnValue:
    """Change, remove or add custom properties (merged, as the PATCH API does)."""
    changes: dict[str, Any] = {}
    for key in request.form.getlist("key"):
        if request.form.get(f"remove:{key}"):
            changes[key] = None
        elif f"value:{key}" in request.form:
            changes[key] = request.form.get(f"value:{key}", "")
    new_key = request.form.get("new_key", "").strip()
    new_value = request.form.get("new_value", "")
    form = {"new_key": new_key, "new_value": new_value}
    if new_key or new_value:
        if not new_key:
            return _render_contract(contract_id, status=400, errors={"new_key": "Enter a name for the new property."},
                                    form=form)
        if len(new_key) > contracts.MAX_KEY_LENGTH:
            return _render_contract(contract_id, status=400, errors={
                "new_key": f"A name has at most {contracts.MAX_KEY_LENGTH} characters."}, form=form)
        changes[new_key] = new_value
    try:
        contracts.check_properties(changes)  # the API's limits, for the keys the form posts back too
    except contracts.InvalidProperties as exc:
        return _render_contract(contract_id, status=400, errors={"new_value": _property_error(exc)}, form=form)
    if not changes:
        flash("Nothing to change.", "info")
        return redirect(url_for("ops.contract_detail", contract_id=contract_id) + "#properties")
    runtime = _runtime()
    try:
        contracts.patch_contract(runtime.engine, contract_id, runtime.billing_gateway(), subscription_id=None,
                                 custom_properties=changes, now=_now())
    except contracts.ContractNotFound:
        return _page_error(404, f"There is no contract {contract_id}.")
    except contracts.InvalidProperties as exc:
        return _render_contract(contract_id, status=400, errors={"new_value": _property_error(exc)}, form=form)
    flash("Custom properties saved.", "ok")
    return redirect(url_for("ops.contract_detail", contract_id=contract_id) + "#properties")


def _property_error(exc: contracts.InvalidProperties) -> str:
    return _sentence(Exception(str(exc).removeprefix("custom_properties: ").removeprefix("custom_properties.")))


def _syncable(contract_id: str) -> str:
    """Return why the contract cannot be reported now ("" when it can)."""
    try:
        reporting.check_reportable(_runtime().engine, contract_id)
    except reporting.NotReportable as exc:
        if not exc.mapped:
            return "The contract is not mapped to a subscription: map it first."
        return f"The contract is {exc.status}: nothing is reported for it any more."
    return ""


@bp.post("/contracts/<contract_id>/ledger/<int:ledger_id>/retry")
def retry_report(contract_id: str, ledger_id: int) -> ResponseReturnValue:
    """Report a failed or rejected report's units again, under an unused hour stamp."""
    try:
        reason = _syncable(contract_id)
    except contracts.ContractNotFound:
        return _page_error(404, f"There is no contract {contract_id}.")
    entry = ledger.ledger_entry(_runtime().engine, contract_id, ledger_id)
    if entry is None:
        return _page_error(404, f"Contract {contract_id} has no report {ledger_id}.")
    if entry.status not in ops.ATTENTION:
        flash(f"That report is {entry.status}: only failed or rejected reports are retried.", "error")
    elif reason:
        flash(reason, "error")
    else:
        queued = reporting.request_report(_runtime(), contract_id, reason=f"retry{ledger_id}", now=_now())
        flash(_stamp_message(f"Retry queued ({queued.job_id}).", ops.utc(entry.hour), queued.stamp, queued.run_at),
              "ok")
    return redirect(url_for("ops.contract_detail", contract_id=contract_id) + "#ledger")


def _stamp_message(head: str, used: datetime | None, stamp: datetime, run_at: datetime | None) -> str:
    parts = [head]
    if used is not None:
        parts.append(f"The hour {fmt_time(used)} already has its one report, so the units go under "
                     f"the hour {fmt_time(stamp)}.")
    if run_at is not None:
        parts.append(f"This hour's stamp is used too: the report runs at {fmt_time(run_at)}.")
    return " ".join(parts)


@bp.post("/contracts/<contract_id>/sync")
def sync_now(contract_id: str) -> ResponseReturnValue:
    """Report the contract's outstanding units (``reporting.manual_stamp``: this hour, else the next)."""
    try:
        reason = _syncable(contract_id)
    except contracts.ContractNotFound:
        return _page_error(404, f"There is no contract {contract_id}.")
    if reason:
        flash(reason, "error")
    else:
        queued = reporting.request_report(_runtime(), contract_id, reason="manual", now=_now())
        flash(_stamp_message(f"Sync queued ({queued.job_id}) under the hour {fmt_time(queued.stamp)}.", None,
                             queued.stamp, queued.run_at), "ok")
    return redirect(url_for("ops.contract_detail", contract_id=contract_id) + "#ledger")


# --- listings and failed jobs ----------------------------------------------------------------------

@bp.get("/listings")
def listing_list() -> ResponseReturnValue:
    """Every listing: product and plan, billing plan, dimension, unit price, close rounding."""
    return render_template("ops/listings.html", listings=ops.listing_rows(_runtime().engine))


@bp.get("/migrations")
def migration_list() -> ResponseReturnValue:
    """Plan migrations: status, progress, counts, the subscriptions in conflict or skipped (with why), cancel."""
    return render_template("ops/migrations.html", rows=ops.migration_rows(_runtime().engine))


@bp.post("/migrations/<migration_id>/cancel")
def cancel_migration(migration_id: str) -> ResponseReturnValue:
    """Cancel a migration: stop the rest at once, then revert its edits not yet effective in RQ jobs."""
    from billing_core import BillingError, MigrationNotFound

    runtime = _runtime()
    try:
        migration = plan_migrations.get(runtime.engine, None, migration_id)
        canceled = plan_migrations.cancel(runtime.engine, migration.plan_id, migration_id, now=_now())
    except MigrationNotFound:
        return _page_error(404, f"There is no migration {migration_id}.")
    except BillingError as exc:  # already canceled
        flash(_sentence(exc), "error")
    else:
        if canceled.to_revert:
            queueing.enqueue_plan_migration_revert(runtime, migration_id)
        flash(f"Migration {migration_id} canceled: {canceled.to_revert} edit(s) to revert (in the background), "
              f"{canceled.counts.get('canceled', 0)} subscription(s) stopped.", "ok")
    return redirect(url_for("ops.migration_list"))


@bp.get("/reconciliation")
def reconciliation() -> ResponseReturnValue:
    """A month's reconciliation (``?month=YYYY-MM``, default this month): computed vs reported vs accepted
    units per contract, dimension and hour, discrepancies first, each with its cause."""
    month = (request.args.get("month") or _now().strftime("%Y-%m")).strip()
    try:
        reconcile.month_bounds(month)
    except ValueError as exc:
        error = f"month: {exc}"
        return render_template("ops/reconciliation.html", month=month[:20], result=None, rows=[], error=error), 400
    runtime = _runtime()
    accepted, sources = reconcile.accepted_usage(runtime, month, reconcile.marketplaces_in_use(runtime.engine))
    result = reconcile.reconcile(runtime.engine, month, accepted, now=_now(), sources=sources)
    return render_template("ops/reconciliation.html", month=month, result=result, rows=reconcile.as_rows(result),
                           error=None)


@bp.get("/trueups")
def trueup_page() -> ResponseReturnValue:
    """Upload a CSV of manual true-ups (contract, dimension, units, reason); the latest applied ones."""
    return render_template("ops/trueups.html", preview=None, text="", history=trueups.history(_runtime().engine))


@bp.post("/trueups/preview")
def trueup_preview() -> ResponseReturnValue:
    """Preview an uploaded file: every row with its status, every error with its line and column."""
    upload = request.files.get("file")
    text = ""
    if upload is not None and upload.filename:
        try:
            text = upload.read(trueups.MAX_FILE_CHARS + 1).decode("utf-8")
        except UnicodeDecodeError:
            return _trueup_form_error("The file is not UTF-8 text: save it as CSV (UTF-8) and upload it again.")
    if not text.strip():
        return _trueup_form_error("Choose a CSV file to upload (header: contract,dimension,units,reason).")
    if len(text) > trueups.MAX_FILE_CHARS:
        return _trueup_form_error(f"The file is larger than {trueups.MAX_FILE_CHARS} characters: split it.")
    result = trueups.check(_runtime().engine, text, now=_now())
    return render_template("ops/trueups.html", preview=result, text=text, history=[]), 200 if result.ok else 400


def _trueup_form_error(message: str) -> tuple[str, int]:
    return render_template("ops/trueups.html", preview=None, text="", history=trueups.history(_runtime().engine),
                           error=message), 400


@bp.post("/trueups/confirm")
def trueup_confirm() -> ResponseReturnValue:
    """Apply the previewed file (the same text and digest the preview showed); nothing when any row is bad."""
    text, digest = request.form.get("csv", ""), request.form.get("digest", "")
    if not text or len(text) > trueups.MAX_FILE_CHARS:
        return _trueup_form_error("Nothing to confirm: upload the file and preview it first.")
    try:
        result = trueups.confirm(_runtime().engine, text, digest=digest, now=_now())
    except trueups.TrueupRefused as exc:
        refused = trueups.Preview(trueups.digest_of(text), (), exc.errors, _now())
        return render_template("ops/trueups.html", preview=refused, text=text, history=[]), 400
    except trueups.TrueupChanged as exc:
        return _trueup_form_error(_sentence(exc))
    counts = trueups.as_dict(result)["counts"]
    flash(f"Applied {counts['applied']} adjustment(s) under the hour {fmt_time(result.stamp)}"
          + (f"; {counts['already_applied']} were already applied." if counts["already_applied"] else "."), "ok")
    return redirect(url_for("ops.trueup_page"))


# --- outbound webhooks and alerts ------------------------------------------------------------------

@bp.get("/webhooks")
def webhook_list() -> ResponseReturnValue:
    """Every webhook endpoint: url, state, event types, deliveries by status (never a secret)."""
    return render_template("ops/webhooks.html", endpoints=ops.webhook_endpoints(_runtime().engine))


@bp.get("/webhooks/<endpoint_id>")
def webhook_detail(endpoint_id: str) -> ResponseReturnValue:
    """One endpoint's delivery log: attempts, status codes, last error, and a replay button each."""
    try:
        detail = ops.webhook_endpoint_detail(_runtime().engine, endpoint_id)
    except NotFound:
        return _page_error(404, f"There is no webhook endpoint {endpoint_id}.")
    return render_template("ops/webhook.html", d=detail, e=detail["endpoint"])


@bp.post("/webhooks/<endpoint_id>/deliveries/<int:delivery_id>/replay")
def replay_delivery(endpoint_id: str, delivery_id: int) -> ResponseReturnValue:
    """Send one delivery again now."""
    try:
        ops.replay_delivery(_runtime().engine, endpoint_id, delivery_id, now=_now())
    except NotFound:
        return _page_error(404, f"Webhook endpoint {endpoint_id} has no delivery {delivery_id}.")
    queueing.webhook_signal(_runtime()).request()
    flash(f"Delivery {delivery_id} queued to be sent again.", "ok")
    return redirect(url_for("ops.webhook_detail", endpoint_id=endpoint_id))


@bp.get("/alerts")
def alert_list() -> ResponseReturnValue:
    """Alerts per subscription (or plan): type, metric, thresholds, enabled, when one last fired."""
    return render_template("ops/alerts.html", groups=ops.alerts_by_subscription(_runtime().engine))


# --- simulations -----------------------------------------------------------------------------------

CHART_WIDTH, CHART_HEIGHT, CHART_LABELS = 720, 220, 40
SIMULATION_ROWS = 50


def histogram_bars(buckets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the SVG geometry of one bar per bucket (height by customers, tallest bar full height)."""
    tallest = max((b["customers"] for b in buckets), default=0) or 1
    width = CHART_WIDTH / max(len(buckets), 1)
    bars = []
    for i, bucket in enumerate(buckets):
        height = round((CHART_HEIGHT - CHART_LABELS) * bucket["customers"] / tallest)
        bars.append({"x": round(i * width + 4), "width": round(width - 8), "height": height,
                     "y": CHART_HEIGHT - CHART_LABELS - height, "label": bucket["label"],
                     "customers": bucket["customers"], "center": round(i * width + width / 2)})
    return bars


@bp.get("/simulations")
def simulations() -> ResponseReturnValue:
    """Replay past periods of a plan's subscriptions under another version: totals, a histogram of the
    customers' % change and the customers that move most (``?plan_id=&version=&since=&until=&customers=``)."""
    from billing_core import InvalidInput, NotFound, SqlCatalog, service_plans, usage_source, wire
    from worker.db import session_scope

    engine = _runtime().engine
    now = _now()
    args = {k: (request.args.get(k) or "").strip()[:200] for k in ("plan_id", "version", "since", "until", "customers")}
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    args["since"] = args["since"] or (month_start - timedelta(days=85)).replace(day=1).strftime("%Y-%m-%d")
    args["until"] = args["until"] or month_start.strftime("%Y-%m-%d")
    with session_scope(engine) as session:
        plans, _ = SqlCatalog(session).list_plans(limit=100)
    result, error = None, ""
    if args["plan_id"]:
        try:
            if not args["version"].isdigit():
                raise InvalidInput("version: a version number is required", field="version")
            start = wire.parse_instant(args["since"], "since")
            end = wire.parse_instant(args["until"], "until")
            customers = [c.strip() for c in args["customers"].split(",") if c.strip()] or None
            with session_scope(engine) as session:
                result = service_plans.simulation(
                    session, usage_source(engine), plan_id=args["plan_id"], version=int(args["version"]), draft=None,
                    customer_ids=customers, start=start, end=end, now=now).to_dict(int(args["version"]))
        except (InvalidInput, NotFound, ValueError) as exc:
            error = str(exc)
    rows = []
    if result:
        rows = sorted(result["customers"], key=lambda c: abs(Decimal(c["simulated_total"]) - Decimal(c["current_total"])),
                      reverse=True)[:SIMULATION_ROWS]
    bars = histogram_bars(result["distribution"]) if result else []
    return render_template("ops/simulations.html", plans=plans, args=args, result=result, rows=rows, bars=bars,
                           error=error, chart={"width": CHART_WIDTH, "height": CHART_HEIGHT, "labels": CHART_LABELS}), (
        400 if error else 200)


@bp.get("/jobs/failed")
def failed_jobs() -> ResponseReturnValue:
    """Failed jobs of the three queues, newest first, with retry."""
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    runtime = _runtime()
    found: list[dict[str, Any]] = []
    error = ""
    try:
        for name in QUEUE_NAMES:
            registry = FailedJobRegistry(queue=runtime.queue(name))
            ids = registry.get_job_ids(0, ops.FAILED_JOB_LIMIT - 1, desc=True)
            for job in Job.fetch_many(ids, connection=runtime.redis):
                if job is None:
                    continue
                found.append({"id": job.id, "queue": name, "func": job.func_name, "args": _args(job),
                              "ended_at": ops.utc(job.ended_at), "error": _last_line(job)})
    except Exception as exc:  # noqa: BLE001 - shown, not raised
        error = f"Redis did not answer ({type(exc).__name__})"
    found.sort(key=lambda j: j["ended_at"] or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
    return render_template("ops/jobs.html", jobs=found, error=error)


def _scrub(text: str) -> str:
    for secret in _runtime().settings.secrets():
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _args(job: Any) -> str:
    try:
        return _scrub(", ".join(repr(a) for a in job.args))[:300]
    except Exception:  # noqa: BLE001 - an unreadable payload is shown as such
        return "(unreadable)"


def _last_line(job: Any) -> str:
    """Return the exception line of a job's traceback, without the SQL and parameters SQLAlchemy adds."""
    info = job.exc_info or ""
    lines = [line for line in info.strip().splitlines() if line.strip()]
    # SQLAlchemy continues the exception line with [SQL: ...], [parameters: ...] and a link.
    heads = [line for line in lines if not line[:1].isspace() and not line.startswith(("[", "(Background"))]
    return _scrub(ops.public_error(heads[-1] if heads else lines[-1] if lines else ""))


@bp.post("/jobs/failed/<queue_name>/<path:job_id>/retry")
def retry_job(queue_name: str, job_id: str) -> ResponseReturnValue:
    """Put one failed job back on its queue."""
    from rq.exceptions import InvalidJobOperation, InvalidJobOperationError, NoSuchJobError
    from rq.registry import FailedJobRegistry

    if queue_name not in QUEUE_NAMES:
        abort(404)
    registry = FailedJobRegistry(queue=_runtime().queue(queue_name))
    shown = job_id if len(job_id) <= 80 else job_id[:80] + "..."  # the flash message lives in the cookie
    try:
        registry.requeue(job_id)
    except (InvalidJobOperationError, InvalidJobOperation, NoSuchJobError, ValueError, TypeError):
        # ValueError: rq refuses ids that are not job ids at all (only a forged form sends one).
        flash(f"Job {shown} is no longer in the failed jobs of {queue_name}.", "error")
    else:
        flash(f"Job {shown} is back on the {queue_name} queue.", "ok")
    return redirect(url_for("ops.failed_jobs"))
