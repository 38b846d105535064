"""``/v1/metrics``: Orb's billable metrics (create from SQL, fetch, list, update metadata).

A metric is created from Orb's ``sql`` field, or — an extension of this service — from a
structured ``definition`` object (``billing_core.codec.definition_from_dict``). The SQL is
parsed, never executed; a construct outside the supported subset is a 400 naming it.
"""

from __future__ import annotations

from typing import Any, Optional

from flask import request
from flask.typing import ResponseReturnValue
from pydantic import Field
from sqlalchemy.orm import Session

from billing_core import (
    InvalidInput, Metric, SqlCatalog, SqlMetricRepository, create_metric, definition_from_dict, update_metric,
)
from billing_core.orb_json import metric_json
from webhooks.api.common import (
    Body, api_blueprint, bad, engine, json_body, list_filters, new_id, now, page_limit, paginated,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import Metric as MetricShape, MetricQuery, Page
from worker.db import session_scope

bp = api_blueprint("metrics", __name__)


class MetricCreate(Body):
    name: str = Field(min_length=1, max_length=500)
    description: Optional[str] = Field(default=None, max_length=5000)
    item_id: str = Field(min_length=1, max_length=64)
    sql: Optional[str] = Field(default=None, max_length=10_000)
    definition: Optional[dict[str, Any]] = None
    metadata: Optional[dict[str, Optional[str]]] = None


class MetricUpdate(Body):
    name: Optional[str] = Field(default=None, min_length=1, max_length=500)
    description: Optional[str] = Field(default=None, max_length=5000)
    metadata: Optional[dict[str, Optional[str]]] = None


def _json(session: Session, metric: Metric) -> dict[str, Any]:
    """Render ``metric`` with its item (NotFound, a 404, when the item does not exist)."""
    return metric_json(metric, SqlCatalog(session).get_item(metric.item_id) if metric.item_id else None)


def _payload() -> dict[str, Any]:
    payload = json_body()
    if not isinstance(payload, dict):
        raise bad("body", "must be a JSON object")
    return payload


@bp.post("/metrics")
@documented(body=MetricCreate, response=MetricShape, links={
    endpoint: {"metric_id": "$response.body#/id"}
    for endpoint in ("metrics.fetch", "metrics.update", "metrics.archive", "metrics.unarchive")})
def create() -> ResponseReturnValue:
    """Create a metric from Orb's SQL (or a structured definition)."""
    body = MetricCreate.model_validate(_payload())
    if (body.sql is None) == (body.definition is None):
        raise bad("sql", "give exactly one of sql or definition")
    definition = None
    if body.definition is not None:
        try:
            definition = definition_from_dict(body.definition)
        except InvalidInput as exc:
            raise bad("definition", str(exc)) from None
    with session_scope(engine()) as session:
        SqlCatalog(session).get_item(body.item_id)  # the item must exist
        metric = create_metric(
            SqlMetricRepository(session),
            metric_id=new_id(),
            name=body.name,
            now=now(),
            sql=body.sql,
            definition=definition,
            item_id=body.item_id,
            description=body.description,
            metadata={k: v for k, v in (body.metadata or {}).items() if v is not None},
        )
        return _json(session, metric)


@bp.get("/metrics/<metric_id>")
@documented(response=MetricShape)
def fetch(metric_id: str) -> ResponseReturnValue:
    """Fetch a metric."""
    with session_scope(engine()) as session:
        return _json(session, SqlMetricRepository(session).get(metric_id))


@bp.put("/metrics/<metric_id>")
@documented(body=MetricUpdate, response=MetricShape)
def update(metric_id: str) -> ResponseReturnValue:
    """Update a metric's name, description or metadata (never its definition)."""
    payload = _payload()
    body = MetricUpdate.model_validate(payload)
    with session_scope(engine()) as session:
        repository = SqlMetricRepository(session)
        # Read under the write lock: concurrent metadata merges must not lose each other's keys.
        metric = update_metric(repository, repository.get(metric_id, for_update=True),
                               body.model_dump(include=set(payload)))
        return _json(session, metric)


def _set_status(metric_id: str, status: str) -> ResponseReturnValue:
    from dataclasses import replace

    with session_scope(engine()) as session:
        repository = SqlMetricRepository(session)
        metric = repository.get(metric_id, for_update=True)
        if metric.status != status:
            metric = repository.save(replace(metric, status=status))  # type: ignore[arg-type]
        return _json(session, metric)


@bp.post("/metrics/<metric_id>/archive")
@documented(response=MetricShape)
def archive(metric_id: str) -> ResponseReturnValue:
    """Archive a metric (it keeps computing for prices that use it; it is hidden from new plans)."""
    return _set_status(metric_id, "archived")


@bp.post("/metrics/<metric_id>/unarchive")
@documented(response=MetricShape)
def unarchive(metric_id: str) -> ResponseReturnValue:
    """Make an archived metric active again."""
    return _set_status(metric_id, "active")


@bp.get("/metrics")
@documented(query=MetricQuery, response=Page[MetricShape])
def index() -> ResponseReturnValue:
    """List metrics, newest first, with Orb's cursor pagination (``status`` filter)."""
    created = list_filters(("status",))
    status = request.args.get("status") or None
    if status not in (None, "active", "draft", "archived"):
        raise bad("status", "use active, draft or archived")
    limit = page_limit()
    with session_scope(engine()) as session:
        page, cursor = SqlMetricRepository(session).list(
            limit=limit, cursor=request.args.get("cursor") or None, created_at=created, status=status
        )
        data = [_json(session, m) for m in page]
    return paginated(data, has_more=cursor is not None, next_cursor=cursor)
