"""Read-modify-write of a row, atomic on SQLite and PostgreSQL.

A merge of a JSON column (custom properties, metadata) reads the row, changes it in Python and
writes it back; two such requests at once must not lose either change. PostgreSQL locks the row
with ``SELECT ... FOR UPDATE``: the second reader waits for the first commit and reads its
result. SQLite ignores ``FOR UPDATE``, and pysqlite opens its transaction only at the first
write, after the read, so the transaction is opened first with ``BEGIN IMMEDIATE``: it takes
the database's write lock before the row is read, and the next writer waits (busy timeout)
until the commit. Hold the lock briefly: nothing in it may wait on another writer.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

__all__ = ["begin_write", "get_for_update"]

R = TypeVar("R")


def begin_write(session: Session) -> None:
    """Make the session's transaction a writer now (SQLite: ``BEGIN IMMEDIATE``; else nothing).

    Call it before the session reads what it will change. Where the transaction already wrote,
    it holds the lock and nothing is done.
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def get_for_update(session: Session, row_type: type[R], key: Any) -> R | None:
    """Return the row with primary key ``key`` locked until the session commits (None if absent)."""
    begin_write(session)
    return session.get(row_type, key, with_for_update=True, populate_existing=True)
