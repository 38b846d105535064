"""The OpenAPI 3.1 document, built from the routes themselves: ``GET /v1/openapi.json``.

Each view carries a declarative annotation, ``@documented(body=..., query=..., response=...)``,
naming the pydantic models it validates with and answers in. ``build_document(app)`` walks
``app.url_map``, so every registered ``/v1``, ``/webhooks``, ``/healthz`` and ``/readyz`` rule is
in the document; a view without an annotation is still listed (with only the error responses)
and flagged ``x-undocumented`` so a test can refuse it. Request and response schemas come from
``pydantic.json_schema.models_json_schema`` over the same model classes, collected into
``components.schemas``. Every error answer shares one ``Error`` schema.

The document itself needs the API key like every other ``/v1`` route: it describes the API
to its clients, who hold a key anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Callable, Mapping, TypeVar

from flask import Flask, current_app
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from webhooks.api.common import api_blueprint
from webhooks.api.schemas import Error, OpenApiDocument

bp = api_blueprint("openapi", __name__)

F = TypeVar("F", bound=Callable[..., Any])
DOCUMENTED_PREFIXES = ("/v1/", "/webhooks/", "/healthz", "/readyz")
REF = "#/components/schemas/{model}"
_RULE_ARG = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_JSON = "application/json"

# Security schemes: /v1 uses the API key, EventBridge its own shared secret; each marketplace
# receiver verifies its own signature (the receivers' docstrings say how), named for clients to read.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKey": {"type": "http", "scheme": "bearer",
               "description": "An API key from the API_KEYS setting: `Authorization: Bearer <key>`."},
    "AwsEventBridgeSecret": {"type": "http", "scheme": "bearer",
                             "description": "A shared secret from AWS_EVENTBRIDGE_SECRETS (any of API_KEYS when "
                                            "that is unset), added by the EventBridge API destination's "
                                            "connection: `Authorization: Bearer <secret>`."},
    "StandardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                         "description": "Standard Webhooks HMAC signature over webhook-id, webhook-timestamp "
                                        "and the body, with a secret from WEBHOOK_SECRETS."},
    "AwsSnsSignature": {"type": "apiKey", "in": "header", "name": "x-amz-sns-message-type",
                        "description": "An SNS delivery; its body carries the signature, verified against "
                                       "the signing certificate."},
    "AzureJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                 "description": "The Azure AD token of the SaaS fulfillment webhook."},
    "GoogleOidc": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "The Google-signed OIDC token of the Pub/Sub push subscription."},
}


@dataclass(frozen=True)
class Doc:
    """What one view accepts and answers (see ``documented``)."""

    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    also: Mapping[int, type[BaseModel]] = field(default_factory=dict)
    media_types: tuple[str, ...] = (_JSON,)
    security: str | None = "ApiKey"
    body_required: bool = True
    links: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def documented(*, body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
               response: type[BaseModel] | None = None, status: int = 200,
               also: Mapping[int, type[BaseModel]] | None = None, media_types: tuple[str, ...] = (_JSON,),
               security: str | None = "ApiKey", body_required: bool = True,
               links: Mapping[str, Mapping[str, str]] | None = None) -> Callable[[F], F]:
    """Annotate a view with its body, query and response models (the view itself is unchanged).

    ``also`` names other success answers (e.g. ``{503: Readiness}``); ``security=None`` marks a
    public route; ``links`` maps an endpoint the answer leads to onto its path parameters, e.g.
    ``{"customers.fetch": {"customer_id": "$response.body#/id"}}`` (OpenAPI links, used by
    stateful tests). Apply it below the route decorator so Flask registers the annotated function.
    """
    doc = Doc(body=body, query=query, response=response, status=status, also=dict(also or {}),
              media_types=media_types, security=security, body_required=body_required,
              links=dict(links or {}))

    def mark(view: F) -> F:
        view.__openapi__ = doc  # type: ignore[attr-defined]
        return view

    return mark


def doc_of(view: Callable[..., Any]) -> Doc | None:
    """Return a view's annotation, or None."""
    return getattr(view, "__openapi__", None)


def _documented_rule(path: str) -> bool:
    return path.startswith(DOCUMENTED_PREFIXES)


def _path_and_parameters(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """Turn Flask's ``/plans/<plan_id>/versions/<int:version>`` into OpenAPI's path and parameters."""
    parameters = []
    for match in _RULE_ARG.finditer(rule):
        converter = match.group("converter") or "default"
        if converter == "int":
            schema: dict[str, Any] = {"type": "integer", "minimum": 0}
        elif converter == "path":
            schema = {"type": "string", "minLength": 1}
        else:
            schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
        parameters.append({"name": match.group("name"), "in": "path", "required": True, "schema": schema})
    return _RULE_ARG.sub(lambda m: "{" + m.group("name") + "}", rule), parameters


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Expand a query model's fields into OpenAPI query parameters."""
    schema = model.model_json_schema(ref_template=REF)
    if "$defs" in schema:
        raise TypeError(f"query model {model.__name__} must have flat fields")
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out


def _json_response(description: str, ref: dict[str, Any] | None, media_types: tuple[str, ...]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for media in media_types:
        content[media] = {"schema": ref} if media == _JSON and ref is not None else {}
    return {"description": description, "content": content}


def _link_name(endpoint: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[._]", endpoint))


def _summary(view: Callable[..., Any]) -> str:
    text = (view.__doc__ or "").strip()
    return text.splitlines()[0] if text else view.__name__.replace("_", " ")


def build_document(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every documented rule of ``app``."""
    rules = sorted((r for r in app.url_map.iter_rules() if _documented_rule(r.rule)),
                   key=lambda r: (r.rule, r.endpoint))
    models: dict[type[BaseModel], None] = {Error: None}
    for rule in rules:
        doc = doc_of(app.view_functions[rule.endpoint])
        if doc is not None:
            for model in (doc.body, doc.response, *doc.also.values()):
                if model is not None:
                    models[model] = None
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = top.get("$defs", {})

    def ref(model: type[BaseModel] | None) -> dict[str, Any] | None:
        return None if model is None else refs[(model, "validation")]

    error = {"description": "An error (JSON `{type, status, title, detail}`; 400s name the fields)",
             "content": {_JSON: {"schema": ref(Error)}}}
    paths: dict[str, dict[str, Any]] = {}
    for rule in rules:
        view = app.view_functions[rule.endpoint]
        doc = doc_of(view)
        path, parameters = _path_and_parameters(rule.rule)
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        for method in methods:
            operation: dict[str, Any] = {
                "operationId": rule.endpoint if len(methods) == 1 else f"{rule.endpoint}.{method.lower()}",
                "summary": _summary(view),
                "tags": [rule.endpoint.split(".", 1)[0]],
            }
            params = list(parameters)
            if doc is None:
                operation["x-undocumented"] = True
                operation["responses"] = {"4XX": error, "503": error}
                paths.setdefault(path, {})[method.lower()] = {**operation, "parameters": params}
                continue
            if doc.query is not None:
                params += _query_parameters(doc.query)
            if params:
                operation["parameters"] = params
            if doc.body is not None:
                operation["requestBody"] = {"required": doc.body_required,
                                            "content": {_JSON: {"schema": ref(doc.body)}}}
            success = _json_response(_summary(view), ref(doc.response), doc.media_types)
            if doc.links:
                success["links"] = {_link_name(target): {"operationId": target, "parameters": dict(params_)}
                                    for target, params_ in doc.links.items()}
            responses: dict[str, Any] = {str(doc.status): success}
            for status, model in doc.also.items():
                responses[str(status)] = _json_response(model.__doc__ or "", ref(model), (_JSON,))
            responses.setdefault("4XX", error)
            responses.setdefault("503", {**error, "description": "The database is unavailable; retry "
                                                                  "after the Retry-After seconds"})
            operation["responses"] = responses
            operation["security"] = [{doc.security: []}] if doc.security else []
            paths.setdefault(path, {})[method.lower()] = operation
    operation_ids = {op["operationId"] for ops in paths.values() for op in ops.values()}
    for ops in paths.values():
        for op in ops.values():
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    if link["operationId"] not in operation_ids:
                        raise LookupError(f"{op['operationId']} links to unknown {link['operationId']}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "marketsync",
            "version": _version(),
            "description": "Cloud-marketplace contracts mapped to an Orb-style billing API. Generated from "
                           "the routes' own request and response models.",
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


@lru_cache(maxsize=1)
def _version() -> str:
    try:
        return metadata.version("marketsync")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@bp.get("/openapi.json")
@documented(response=OpenApiDocument)
def openapi_document() -> ResponseReturnValue:
    """Return this service's OpenAPI 3.1 document."""
    document = current_app.extensions.get("openapi_document")
    if document is None:
        # Built once per app: the routes do not change after the factory has run.
        document = current_app.extensions["openapi_document"] = build_document(current_app)
    return document
