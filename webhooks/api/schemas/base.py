"""The bases of the API's models (response shapes, query strings), the shared field types, errors,
envelopes, health answers and the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

from webhooks.api.common import MAX_LIMIT
from webhooks.api.paging import MAX_PAGE_SIZE

T = TypeVar("T")
Money = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="A decimal string")]
Quantity = Annotated[float, Field(description="A JSON number (quantities are not money)")]
DecimalInput = Union[Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$")], int]
Metadata = dict[str, str]
MetadataInput = Optional[dict[str, Optional[str]]]


class Shape(BaseModel):
    """Base of response models: every field the code answers, and no other."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Base of query-string models (each field is one parameter)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- errors and envelopes -------------------------------------------------------------------------

class FieldError(Shape):
    field: str
    message: str


class EventFailure(Shape):
    idempotency_key: Optional[str]
    validation_errors: list[str]


class Error(Shape):
    """Every error: Orb's ``{type, status, title, detail}``; 400s name the offending fields."""

    type: str
    status: int = Field(ge=400, le=599)
    title: str
    detail: str
    validation_errors: Optional[list[FieldError]] = None
    validation_failed: Optional[list[EventFailure]] = None


class PaginationMetadata(Shape):
    has_more: bool
    next_cursor: Optional[str]


class Page(Shape, Generic[T]):
    """Orb's cursor-paginated list."""

    data: list[T]
    pagination_metadata: PaginationMetadata


class NumberedPage(Shape, Generic[T]):
    """The mapping API's page-number list."""

    count: int = Field(ge=0)
    total_count: int = Field(ge=0)
    page_count: int = Field(ge=0)
    next: Optional[str]
    previous: Optional[str]
    results: list[T]


class CursorQuery(Query):
    cursor: Optional[str] = Field(default=None, description="The next_cursor of the previous page")
    limit: Optional[int] = Field(default=None, ge=1, le=MAX_LIMIT)


class CreatedAtQuery(CursorQuery):
    created_at_gt: Optional[datetime] = Field(default=None, alias="created_at[gt]")
    created_at_gte: Optional[datetime] = Field(default=None, alias="created_at[gte]")
    created_at_lt: Optional[datetime] = Field(default=None, alias="created_at[lt]")
    created_at_lte: Optional[datetime] = Field(default=None, alias="created_at[lte]")


class NumberedQuery(Query):
    page: Optional[int] = Field(default=None, ge=1, le=10**9)
    page_size: Optional[int] = Field(default=None, ge=1, le=MAX_PAGE_SIZE)


# --- health and the document ----------------------------------------------------------------------

class Liveness(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    """Readiness: every dependency answers (200), or which does not (503)."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    type: Optional[str] = None
    title: Optional[str] = None
    detail: Optional[str] = None


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
