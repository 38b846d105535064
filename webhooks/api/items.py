"""``/v1/items``: create, fetch, list, rename (Orb's items)."""

from __future__ import annotations

from billing_core import SqlCatalog, service_plans
from billing_core.orb_json import item_json
from webhooks.api.bodies import check_fields, require_object
from webhooks.api.common import (
    api_blueprint, bad, cursor_id, engine as _engine, json_body, new_id, now, page_json, page_limit,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import CursorQuery, Item, ItemCreate, ItemUpdate, Page
from worker.db import session_scope

bp = api_blueprint("billing_items", __name__)


@bp.post("/items")
@documented(body=ItemCreate, response=Item, status=201, links={
    endpoint: {"item_id": "$response.body#/id"} for endpoint in ("billing_items.fetch_item", "billing_items.update_item")})
def create_item():
    """Create an item."""
    body = require_object(json_body(), "body")
    check_fields(body, {"name", "metadata"}, "")
    if not isinstance(body.get("name"), str):
        raise bad("name", "is required")
    with session_scope(_engine()) as session:
        item = service_plans.create_item(session, name=body["name"], now=now(), new_id=new_id)
    return item_json(item), 201


@bp.get("/items/<item_id>")
@documented(response=Item)
def fetch_item(item_id: str):
    """Fetch an item."""
    with session_scope(_engine()) as session:
        return item_json(SqlCatalog(session).get_item(item_id))


@bp.put("/items/<item_id>")
@documented(body=ItemUpdate, response=Item)
def update_item(item_id: str):
    """Rename an item."""
    body = require_object(json_body(), "body")
    check_fields(body, {"name", "metadata"}, "")
    with session_scope(_engine()) as session:
        catalog = SqlCatalog(session)
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise bad("name", "must be a non-empty string")
        item = catalog.rename_item(item_id, name.strip()) if name else catalog.get_item(item_id)
        return item_json(item)


@bp.get("/items")
@documented(query=CursorQuery, response=Page[Item])
def list_items():
    """List items, newest first, with Orb's cursor pagination."""
    limit = page_limit()
    with session_scope(_engine()) as session:
        items, nxt = SqlCatalog(session).list_items(limit=limit, cursor=cursor_id())
    return page_json([item_json(i) for i in items], nxt)
