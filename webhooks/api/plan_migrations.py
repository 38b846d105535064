"""``/v1/plans/{plan_id}/migrations``: start (or dry-run), list, fetch with outcomes, cancel."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import current_app

from billing_core import (
    EffectiveTime, MigrationRequest, Overrides, SqlCatalog, SqlPlanMigrations, format_decimal, iso,
    parse_effective_time, usage_source,
)
from billing_core.orb_json import migration_json
from webhooks.api.bodies import check_fields, require_list, require_object
from webhooks.api.common import api_blueprint, bad, cursor_id, engine, json_body, new_id, now, page_json, page_limit
from webhooks.api.openapi import documented
from webhooks.api.schemas import MigrationQuery, Page, PlanMigration, PlanMigrationCreate, PlanMigrationDetail, PlanMigrationDryRun
from worker import plan_migrations, queueing
from worker.db import session_scope

bp = api_blueprint("plan_migrations", __name__)

_FIELDS = {"to_version", "from_versions", "subscription_ids", "effective_time", "overrides", "dry_run"}


def _request(body: Any) -> tuple[MigrationRequest, bool]:
    body = require_object(body, "body")
    check_fields(body, _FIELDS, "")
    to_version = body.get("to_version")
    if not isinstance(to_version, int) or isinstance(to_version, bool) or to_version < 1:
        raise bad("to_version", "a version number is required")
    from_versions = None
    if body.get("from_versions") is not None:
        from_versions = require_list(body["from_versions"], "from_versions")
        for i, v in enumerate(from_versions):
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad(f"from_versions[{i}]", "must be a version number")
    subscription_ids = None
    if body.get("subscription_ids") is not None:
        subscription_ids = require_list(body["subscription_ids"], "subscription_ids")
        for i, s in enumerate(subscription_ids):
            if not isinstance(s, str) or not s:
                raise bad(f"subscription_ids[{i}]", "must be a subscription id")
    raw_time = body.get("effective_time")
    effective = EffectiveTime.END_OF_INVOICE if raw_time is None else parse_effective_time(raw_time)
    overrides = body.get("overrides") or "keep"
    if overrides not in {o.value for o in Overrides}:
        raise bad("overrides", "must be keep or replace")
    dry = body.get("dry_run")
    if dry is not None and not isinstance(dry, bool):
        raise bad("dry_run", "must be a boolean")
    return MigrationRequest(to_version=to_version, from_versions=from_versions, subscription_ids=subscription_ids,
                            effective_time=effective, overrides=Overrides(overrides)), bool(dry)


def _total(values: list[Decimal]) -> str:
    return format_decimal(sum(values, Decimal("0.00")))


@bp.post("/plans/<plan_id>/migrations")
@documented(body=PlanMigrationCreate, response=PlanMigration, status=201, also={200: PlanMigrationDryRun})
def create_migration(plan_id: str):
    """Migrate subscriptions to a plan version (201 and a run enqueued), or price it (``dry_run``: 200, nothing written)."""
    request, dry = _request(json_body())  # a bad effective_time is a MigrationError: 400 naming the field
    at = now()
    if dry:
        with session_scope(engine()) as session:
            plan = SqlCatalog(session).get_plan(plan_id)
        lines = plan_migrations.dry_run(engine(), plan_id, request, usage_source(engine()), now=at)
        effective = request.effective_time
        return {
            "dry_run": True, "plan_id": plan_id, "to_version": request.to_version, "currency": plan.currency,
            "effective_time": effective if isinstance(effective, str) else iso(effective),
            "subscriptions": [{"subscription_id": line.subscription_id, "outcome": line.outcome,
                               "effective_time": iso(line.effective_at), "reasons": list(line.reasons),
                               "old_total": format_decimal(line.old_total), "new_total": format_decimal(line.new_total),
                               "difference": format_decimal(line.difference)} for line in lines],
            "totals": {"old_total": _total([line.old_total for line in lines]),
                       "new_total": _total([line.new_total for line in lines]),
                       "difference": _total([line.difference for line in lines])},
        }, 200
    migration = plan_migrations.start(engine(), plan_id, request, now=at, migration_id=new_id("migration"))
    queueing.enqueue_plan_migration(current_app.extensions["marketsync"], migration.id)
    return migration_json(migration), 201


@bp.get("/plans/<plan_id>/migrations")
@documented(query=MigrationQuery, response=Page[PlanMigration])
def list_migrations(plan_id: str):
    """List a plan's migrations, newest first."""
    with session_scope(engine()) as session:
        SqlCatalog(session).get_plan(plan_id)
        migrations, nxt = SqlPlanMigrations(session).list(plan_id=plan_id, limit=page_limit(), cursor=cursor_id())
        return page_json([migration_json(m) for m in migrations], nxt)


@bp.get("/plans/<plan_id>/migrations/<migration_id>")
@documented(response=PlanMigrationDetail)
def fetch_migration(plan_id: str, migration_id: str):
    """Fetch a migration with its counts and every subscription's outcome."""
    with session_scope(engine()) as session:
        repo = SqlPlanMigrations(session)
        migration = repo.get(plan_id, migration_id)
        return migration_json(migration, repo.outcomes(migration_id))


@bp.post("/plans/<plan_id>/migrations/<migration_id>/cancel")
@documented(response=PlanMigration, body_required=False)
def cancel_migration(plan_id: str, migration_id: str):
    """Cancel a migration at once (the subscriptions still pending stop); RQ jobs then revert every edit
    not yet effective at the cancel (``counts.to_revert`` of them still owed)."""
    migration = plan_migrations.cancel(engine(), plan_id, migration_id, now=now())
    if migration.to_revert:
        queueing.enqueue_plan_migration_revert(current_app.extensions["marketsync"], migration.id)
    return migration_json(migration)
