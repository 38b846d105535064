"""How the billing core writes: SQLite's write lock, group commit, and locked read-modify-writes.

SQLite lets one writer in at a time. ``write_lock`` queues this database's writers on a file
lock so the next one starts the moment the previous one commits; ``GroupCommit`` lets the request
threads of one process share one transaction; ``begin_write`` / ``get_for_update`` make a
read-modify-write of one row atomic on both databases: PostgreSQL locks the row with
``SELECT ... FOR UPDATE`` (the second reader waits for the first commit and reads its result);
SQLite ignores ``FOR UPDATE``, and pysqlite opens its transaction only at the first write, after
the read, so the transaction is opened first with ``BEGIN IMMEDIATE``: it takes the database's
write lock before the row is read, and the next writer waits (busy timeout) until the commit.
Hold these locks briefly: nothing inside may wait on another writer.
"""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Generic, Iterator, TypeVar

try:  # POSIX only; elsewhere SQLite's own busy handler serializes writers.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

import sqlalchemy as sa
from sqlalchemy.orm import Session

__all__ = ["GroupCommit", "begin_write", "get_for_update", "process_local", "write_lock"]

R = TypeVar("R")
_S = TypeVar("_S")


@contextmanager
def write_lock(engine: sa.Engine) -> Iterator[None]:
    """Serialize SQLite writers of this database across processes (a no-op elsewhere).

    SQLite lets one writer in at a time and makes the others poll with sleeps of 1 to 100 ms;
    an exclusive ``flock`` on a file next to the database wakes the next writer the moment the
    previous one commits instead. Hold it around the transaction only, never around validation.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or fcntl is None:
        yield
        return
    with _guard:
        # Keyed by pid: a forked child must open its own file, or parent and child share the lock.
        fd = _lock_fds.get((os.getpid(), database))
        if fd is None:
            fd = os.open(database + ".write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            _lock_fds[(os.getpid(), database)] = fd
        thread_lock = _thread_locks.setdefault(database, threading.Lock())
    with thread_lock:  # flock is per open file: threads of one process queue here first
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


_guard = threading.Lock()
_lock_fds: dict[tuple[int, str], int] = {}
_thread_locks: dict[str, threading.Lock] = {}

_T = TypeVar("_T")
_locals: "weakref.WeakKeyDictionary[Any, dict[str, tuple[int, Any]]]" = weakref.WeakKeyDictionary()
_locals_guard = threading.Lock()


def process_local(owner: Any, name: str, build: Callable[[], _T]) -> _T:
    """Return this process's ``name`` object for ``owner`` (an engine, a runtime), built once.

    The one per-process registry (group-commit writers, drain signals): an entry lives as long as
    its owner, and a forked child builds its own instead of sharing its parent's threads.
    """
    with _locals_guard:
        slots = _locals.setdefault(owner, {})
        pid, value = slots.get(name, (None, None))
        if pid != os.getpid():
            value = build()
            slots[name] = (os.getpid(), value)
        return value  # type: ignore[no-any-return]


class GroupCommit(Generic[_S]):
    """Leader/follower group commit for the request threads of one process.

    ``submit`` queues a slot (anything with a ``done`` flag). One caller at a time, the leader,
    takes every slot queued so far and hands them to ``write``, which must set ``done`` on each;
    the others find their slot done when the leader lets them in. Under load one transaction
    carries many slots; alone, a caller writes its own.
    """

    def __init__(self, write: Callable[[list[_S]], None]):
        self._write = write
        self._mutex = threading.Lock()
        self._leader = threading.Lock()
        self._pending: list[_S] = []

    def submit(self, slot: _S) -> None:
        with self._mutex:
            self._pending.append(slot)
        with self._leader:
            if not slot.done:  # type: ignore[attr-defined]
                with self._mutex:
                    group, self._pending = self._pending, []
                self._write(group)


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
