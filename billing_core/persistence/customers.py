"""Rows and repository for customers (Alembic branch ``billing_events``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.customers import Customer, CustomerNotFound, DuplicateCustomer
from billing_core.persistence.fragments import log_changes
from billing_core.persistence.rows import one_of, page, utc
from billing_core.persistence.writes import begin_write

__all__ = ["CustomerRow", "SqlCustomerRepository", "customers_table", "external_ids"]


class CustomerRow(SQLModel, table=True):
    """A customer row."""

    __tablename__ = "customers"
    __table_args__ = (sa.UniqueConstraint("external_customer_id", name="uq_customers_external_customer_id"),)

    id: str = Field(primary_key=True, max_length=64)
    external_customer_id: str | None = Field(default=None, max_length=255)
    name: str
    email: str
    currency: str | None = Field(default=None, max_length=3)
    timezone: str = Field(default="UTC", max_length=64)
    metadata_json: str = Field(default="{}", sa_column=sa.Column("metadata", sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Customer:
        """Return the domain customer."""
        return Customer(
            id=self.id,
            name=self.name,
            email=self.email,
            created_at=utc(self.created_at),
            external_customer_id=self.external_customer_id,
            currency=self.currency,
            timezone=self.timezone,
            metadata=json.loads(self.metadata_json or "{}"),
        )

    @classmethod
    def from_domain(cls, customer: Customer) -> "CustomerRow":
        """Build a row from a domain customer."""
        return cls(
            id=customer.id,
            external_customer_id=customer.external_customer_id,
            name=customer.name,
            email=customer.email,
            currency=customer.currency,
            timezone=customer.timezone,
            metadata_json=json.dumps(dict(customer.metadata), sort_keys=True),
            created_at=customer.created_at,
        )


customers_table: sa.Table = CustomerRow.__table__  # type: ignore[attr-defined]


class SqlCustomerRepository:
    """Customers in the database, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, customer: Customer) -> Customer:
        """Insert a customer (DuplicateCustomer when the external id is taken)."""
        if customer.external_customer_id is not None:
            taken = self.session.execute(
                sa.select(customers_table.c.id).where(
                    customers_table.c.external_customer_id == customer.external_customer_id
                )
            ).first()
            if taken is not None:
                raise DuplicateCustomer(
                    f"external_customer_id {customer.external_customer_id!r} is already used by customer {taken[0]}",
                    field="external_customer_id",
                )
        self.session.add(CustomerRow.from_domain(customer))
        self.session.flush()
        if customer.external_customer_id is not None:  # events sent before it existed now count
            log_changes(self.session, [(customer.id, None, None, None, None)])
        return customer

    def get(self, customer_id: str, *, for_update: bool = False) -> Customer:
        """Return the customer with this id (``for_update``: locked until commit, see ``writes``)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(CustomerRow, customer_id, with_for_update=for_update, populate_existing=for_update)
        if row is None:
            raise CustomerNotFound(f"no customer with id {customer_id!r}")
        return row.to_domain()

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        """Return {id: customer} for those of ``customer_ids`` that exist (500 per query)."""
        ids = list(dict.fromkeys(customer_ids))
        found: dict[str, Customer] = {}
        for chunk in range(0, len(ids), 500):
            rows = self.session.execute(sa.select(CustomerRow).where(
                one_of(CustomerRow.__table__.c.id, ids[chunk:chunk + 500]))).scalars()  # type: ignore[attr-defined]
            found.update({row.id: row.to_domain() for row in rows})
        return found

    def get_by_external_id(self, external_customer_id: str, *, for_update: bool = False) -> Customer:
        """Return the customer with this external id (``for_update``: locked until commit)."""
        query = sa.select(CustomerRow).where(CustomerRow.external_customer_id == external_customer_id)  # type: ignore[arg-type]
        if for_update:
            begin_write(self.session)
            query = query.with_for_update().execution_options(populate_existing=True)
        row = self.session.execute(query).scalar_one_or_none()
        if row is None:
            raise CustomerNotFound(f"no customer with external_customer_id {external_customer_id!r}")
        return row.to_domain()

    def save(self, customer: Customer) -> Customer:
        """Store changes to an existing customer."""
        row = self.session.get(CustomerRow, customer.id)
        if row is None:
            raise CustomerNotFound(f"no customer with id {customer.id!r}")
        if customer.external_customer_id and customer.external_customer_id != row.external_customer_id:
            other = self.session.execute(
                sa.select(customers_table.c.id).where(
                    customers_table.c.external_customer_id == customer.external_customer_id
                )
            ).first()
            if other is not None:
                raise DuplicateCustomer(
                    f"external_customer_id {customer.external_customer_id!r} is already used by customer {other[0]}",
                    field="external_customer_id",
                )
        if customer.external_customer_id != row.external_customer_id:
            log_changes(self.session, [(customer.id, None, None, None, None)])
        fresh = CustomerRow.from_domain(customer)
        for name in ("external_customer_id", "name", "email", "currency", "metadata_json"):
            setattr(row, name, getattr(fresh, name))
        self.session.flush()
        return customer

    def list(
        self, *, limit: int, cursor: str | None = None, created_at: Mapping[str, datetime] | None = None
    ) -> tuple[list[Customer], str | None]:
        """Return customers newest first, and the cursor of the next page (None at the end)."""
        return page(self.session, CustomerRow, limit, cursor, created_at)


def external_ids(conn: Any, customer_ids: Sequence[str]) -> dict[str, str]:
    """Return {customer id: external id} for those of ``customer_ids`` that have one (500 per query)."""
    c = customers_table
    ids = list(dict.fromkeys(customer_ids))
    found: dict[str, str] = {}
    for chunk in range(0, len(ids), 500):
        found.update({cid: ext for cid, ext in conn.execute(sa.select(c.c.id, c.c.external_customer_id).where(
            one_of(c.c.id, ids[chunk:chunk + 500]), c.c.external_customer_id.is_not(None))).all()})
    return found
