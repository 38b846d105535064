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

from billing_core.errors import InvalidInput
from billing_core import Metric, create_metric, definition_from_dict, update_metric
from billing_core import SqlMetricRepository
from webhooks.api.common import ApiError, Body, api_blueprint, json_body, page_limit, paginated
from webhooks.api.customers import engine, iso, list_filters, new_id, utcnow
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


def _item(session: Session, item_id: str | None) -> dict[str, Any]:
    """Return Orb's item object for ``item_id`` (400 when the item does not exist)."""
    from billing_core.persistence.catalog import SqlCatalog

    if item_id is None:
        return {"id": None, "name": None, "created_at": None, "external_connections": [], "metadata": {},
                "archived_at": None}
    item = SqlCatalog(session).get_item(item_id)
    return {"id": item.id, "name": item.name, "created_at": iso(item.created_at), "external_connections": [],
            "metadata": {}, "archived_at": None}


def metric_json(session: Session, metric: Metric) -> dict[str, Any]:
    """Return Orb's billable metric resource."""
    return {
        "id": metric.id,
        "name": metric.name,
        "description": metric.description,
        "item": _item(session, metric.item_id),
        "metadata": dict(metric.metadata),
        "status": metric.status,
        "sql": metric.sql,
        "parameter_definitions": None,
        "created_at": iso(metric.created_at),
    }


def _payload() -> dict[str, Any]:
    payload = json_body()
    if not isinstance(payload, dict):
        raise ApiError(400, "Request validation error", "body must be a JSON object", field="body")
    return payload


@bp.post("/metrics")
@documented(body=MetricCreate, response=MetricShape, links={
    endpoint: {"metric_id": "$response.body#/id"}
    for endpoint in ("metrics.fetch", "metrics.update", "metrics.archive", "metrics.unarchive")})
def create() -> ResponseReturnValue:
    """Create a metric from Orb's SQL (or a structured definition)."""
    body = MetricCreate.model_validate(_payload())
    if (body.sql is None) == (body.definition is None):
        raise ApiError(400, "Request validation error", "sql: give exactly one of sql or definition", field="sql")
    definition = None
    if body.definition is not None:
        try:
            definition = definition_from_dict(body.definition)
        except InvalidInput as exc:
            raise ApiError(400, "Request validation error", f"definition: {exc}", field="definition") from None
    with session_scope(engine()) as session:
        _item(session, body.item_id)
        metric = create_metric(
            SqlMetricRepository(session),
            metric_id=new_id(),
            name=body.name,
            now=utcnow(),
            sql=body.sql,
            definition=definition,
            item_id=body.item_id,
            description=body.description,
            metadata={k: v for k, v in (body.metadata or {}).items() if v is not None},
        )
        return metric_json(session, metric)


@bp.get("/metrics/<metric_id>")
@documented(response=MetricShape)
def fetch(metric_id: str) -> ResponseReturnValue:
    """Fetch a metric."""
    with session_scope(engine()) as session:
        return metric_json(session, SqlMetricRepository(session).get(metric_id))


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
        return metric_json(session, metric)


def _set_status(metric_id: str, status: str) -> ResponseReturnValue:
    from dataclasses import replace

    with session_scope(engine()) as session:
        repository = SqlMetricRepository(session)
        metric = repository.get(metric_id, for_update=True)
        if metric.status != status:
            metric = repository.save(replace(metric, status=status))  # type: ignore[arg-type]
        return metric_json(session, metric)


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
        raise ApiError(400, "Request validation error", "status: use active, draft or archived", field="status")
    limit = page_limit()
    with session_scope(engine()) as session:
        page, cursor = SqlMetricRepository(session).list(
            limit=limit, cursor=request.args.get("cursor") or None, created_at=created, status=status
        )
        data = [metric_json(session, m) for m in page]
    return paginated(data, has_more=cursor is not None, next_cursor=cursor)
