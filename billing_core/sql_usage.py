"""The SQL-backed ``UsageSource``: metrics evaluated as aggregations inside the database.

A metric definition compiles to one SQLAlchemy Core ``SELECT ... GROUP BY`` over ``events``
(bound parameters only; no text from a metric ever becomes SQL). Property access is dialect
specific and typed, so both databases give the same answers:

=============  ========================================  ========================================
               SQLite (``json_extract`` / ``json_type``)  PostgreSQL (``jsonb`` ``->`` / ``->>``)
=============  ========================================  ========================================
equality, IN   typed: ``'4'`` never equals ``4``          ``jsonb`` equality (typed)
<, <=, >, >=   numbers only (``json_type`` guard)         numbers only (``jsonb_typeof`` guard)
sum            exact (integer partial sums, see below)    exact ``numeric``
max, latest    exact (a double holds every accepted       exact ``numeric``
               value: 15 significant digits)
unique_count   distinct JSON values                       distinct ``jsonb`` values
=============  ========================================  ========================================

**Exactness.** Ingest accepts numbers with ``|v| < 10^15``, at most 9 digits after the point
and 15 significant digits (``billing_core.usage``); for those, both databases give the exact
``Decimal`` answer, and a total beyond ``10^18`` (a max or latest beyond ``10^15``) becomes
``UsageOutOfRange`` for that customer only — never a clamped or float value.

SQLite has no decimal type, so a sum is folded from integers: an integer property as it is, a
real one split into its integer part (``CAST(x AS INTEGER)``, exact below 10^15) and its
fraction in units of 10⁻⁹, rounded at the value's last possible decimal place (9 below 10^6,
one fewer per further integer digit: a double's error stays below half of that place for 15
significant digits). Python adds the partial sums exactly. A real beyond 10^15 (stored before
the range was enforced) is added to the integer sum as the real it is, so that sum comes back
as a float: the customer's total is then out of range, not wrong. Should a 64-bit partial sum
overflow (thousands of values near 10^15), the query runs again with each integer part split
at 10^9, which no realistic number of events overflows.

Grouped usage (``group_by``, for matrix prices) keys each group by the properties' text values;
an event without one of the properties falls in the group whose value is ``""``.

An event names its customer by ``customer_id`` (filled at ingest when the alias was known) or
only by ``external_customer_id`` (sent before the customer existed); both are matched here, so
events sent early are attached as soon as the customer appears.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from billing_core.codec import definition_from_dict
from billing_core.errors import UsageOutOfRange
from billing_core.events import to_micros
from billing_core.fragments import HOUR, MERGEABLE, Partial
from billing_core.metric_definition import AllOf, AnyOf, Condition, Filter, MetricDefinition
from billing_core.metrics import MetricNotFound
from billing_core.persistence.customers import customers_table, external_ids
from billing_core.persistence.events import STATE_LIVE, events_table
from billing_core.persistence.metrics import MetricRow
from billing_core.persistence.rows import one_of
from billing_core.usage import (
    VALUE_DIGITS, VALUE_LIMIT, MetricsByDefinition, MetricUsage, UsageResult, checked_total, checked_value,
)

__all__ = ["SqlUsageSource"]

_SCALE = 9
_SCALE_FACTOR = 10**_SCALE
_SPLIT = 10**9  # the wide query's split of integer parts (hi * 10^9 + lo)
_BULK_FILTER_LIMIT = 1000  # above this many customers, scan the event name and keep the asked ones

Bind = Any  # an Engine, a Connection or a Session


class _Json:
    """Typed property access for one dialect."""

    def __init__(self, dialect: str):
        self.pg = dialect == "postgresql"
        self.props = events_table.c.properties

    # Access ------------------------------------------------------------------------------------

    def _path(self, name: str) -> Any:
        return sa.literal('$."' + name + '"', sa.Text)

    def value(self, name: str) -> Any:
        """The property as the database's typed JSON value."""
        if self.pg:
            return self.props.op("->", return_type=JSONB)(sa.literal(name, sa.Text))
        return sa.func.json_extract(self.props, self._path(name))

    def kind(self, name: str) -> Any:
        if self.pg:
            return sa.func.jsonb_typeof(self.value(name))
        return sa.func.json_type(self.props, self._path(name))

    def is_number(self, name: str) -> Any:
        if self.pg:
            return self.kind(name) == "number"
        return self.kind(name).in_(["integer", "real"])

    def number(self, name: str) -> Any:
        """The property when it is a number, else NULL."""
        if self.pg:
            text = self.props.op("->>", return_type=sa.Text)(sa.literal(name, sa.Text))
            return sa.case((self.is_number(name), sa.cast(text, sa.Numeric)), else_=None)
        return sa.case((self.is_number(name), self.value(name)), else_=None)

    def present(self, name: str) -> Any:
        return self.kind(name)

    def distinct_value(self, name: str) -> Any:
        if self.pg:
            return self.value(name)
        if sqlite3.sqlite_version_info >= (3, 38):
            # The value's JSON text: typed, so "1", 1 and true stay three distinct values.
            return self.props.op("->", return_type=sa.Text)(self._path(name))
        return sa.func.json_type(self.props, self._path(name)).concat(":").concat(
            sa.cast(self.value(name), sa.Text)
        )

    def group_key(self, name: str) -> Any:
        if self.pg:
            text = self.props.op("->>", return_type=sa.Text)(sa.literal(name, sa.Text))
            return sa.func.coalesce(text, "")
        kind = self.kind(name)
        return sa.func.coalesce(
            sa.case(
                (kind == "true", "true"),
                (kind == "false", "false"),
                else_=sa.cast(self.value(name), sa.Text),
            ),
            "",
        )

    # Comparisons -------------------------------------------------------------------------------

    def _number_bind(self, value: Decimal) -> Any:
        if self.pg:
            return sa.literal(value, sa.Numeric)
        if value == value.to_integral_value() and abs(value) < 2**63:
            return sa.literal(int(value), sa.BigInteger)
        return sa.literal(float(value), sa.Float)

    def equals(self, name: str, value: Any) -> Any:
        if self.pg:
            if isinstance(value, Decimal):
                text = str(value)
            else:
                text = json.dumps(value)
            return self.value(name) == sa.cast(sa.literal(text, sa.Text), JSONB)
        if isinstance(value, bool):
            return self.kind(name) == ("true" if value else "false")
        if isinstance(value, Decimal):
            return sa.and_(self.is_number(name), self.value(name) == self._number_bind(value))
        return sa.and_(self.kind(name) == "text", self.value(name) == sa.literal(value, sa.Text))

    def compare(self, name: str, operator: str, value: Decimal) -> Any:
        number = self.number(name)
        bound = self._number_bind(value)
        return {"<": number < bound, "<=": number <= bound, ">": number > bound, ">=": number >= bound}[operator]

    # Aggregates --------------------------------------------------------------------------------

    def sum_columns(self, name: str, wide: bool = False) -> list[Any]:
        """Columns whose values ``sum_of`` adds up: ``s`` (and on SQLite ``s_scaled``, ``s_hi``)."""
        if self.pg:
            return [sa.func.sum(self.number(name)).label("s")]
        return sum_parts(self.kind(name), self.value(name), "s", "s_scaled", "s_hi", wide)


def integer_part(kind: Any, value: Any) -> Any:
    """SQLite: the integer part of a JSON number; a real beyond 10^15 stays a real (see the module doc)."""
    return sa.case(
        (kind == "integer", value),
        (kind == "real", sa.case((sa.func.abs(value) < VALUE_LIMIT, sa.cast(value, sa.Integer)), else_=value)),
        else_=None,
    )


def scaled_fraction(kind: Any, value: Any) -> Any:
    """SQLite: the fraction of a real below 10^15, as an integer of 10^-9 (exact for accepted values)."""
    fraction = value - sa.cast(value, sa.Integer)
    magnitude = sa.func.abs(value)
    # A value with d integer digits has at most min(9, 15 - d) decimals: round there.
    steps = [(magnitude < 10 ** (VALUE_DIGITS - _SCALE + j), sa.func.round(fraction * 10 ** (_SCALE - j)) * 10**j)
             for j in range(_SCALE)]
    rounded = sa.case(*steps, else_=sa.func.round(fraction) * _SCALE_FACTOR)
    return sa.case((sa.and_(kind == "real", magnitude < VALUE_LIMIT), sa.cast(rounded, sa.Integer)), else_=None)


def sum_parts(kind: Any, value: Any, total: str, scaled: str, high: str, wide: bool) -> list[Any]:
    """SQLite sum columns of one property: integer parts (split at 10^9 when ``wide``), fractions."""
    whole = integer_part(kind, value)
    fraction = sa.func.sum(scaled_fraction(kind, value)).label(scaled)
    if not wide:
        return [sa.func.sum(whole).label(total), fraction]
    # SQLite's own "/": integer division (toward zero, as "%" is) for integers, and a real stays
    # a real (SQLAlchemy's "/" would make every quotient a real).
    high_part = whole.op("/", return_type=sa.Integer)(sa.literal(_SPLIT, sa.Integer))
    return [sa.func.sum(whole % _SPLIT).label(total), fraction, sa.func.sum(high_part).label(high)]


def is_overflow(exc: BaseException) -> bool:
    """Tell whether a database error is SQLite's 64-bit integer overflow (not an outage)."""
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.OperationalError) and "integer overflow" in str(orig)


def sum_of(total: Any, scaled: Any = None, high: Any = None) -> Decimal | None:
    """Return the exact sum of partial sums, or None when one is a float (a value out of range)."""
    if type(total) is float or type(high) is float:
        return None
    if isinstance(total, Decimal):  # PostgreSQL's numeric
        return _plain(total)
    whole = (total or 0) + (high or 0) * _SPLIT
    if not scaled:
        return Decimal(whole)
    return _plain(Decimal(whole * _SCALE_FACTOR + scaled).scaleb(-_SCALE, context=_WIDE))


def number_of(value: Any) -> Decimal | None:
    """Return a max or latest value exactly, or None when SQLite's double cannot be it."""
    if value is None:
        return Decimal(0)
    if type(value) is float:
        if not -VALUE_LIMIT < value < VALUE_LIMIT:
            return None
        number = Decimal(repr(value))
        # More than 15 significant digits: a value stored before the range was enforced,
        # which the double does not hold.
        return _plain(number) if len(number.as_tuple().digits) <= VALUE_DIGITS else None
    return _decimal(value)


def _decimal(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, float):
        return _plain(Decimal(repr(value)))
    return Decimal(value)


_WIDE = Context(prec=80, traps=[InvalidOperation, Inexact])  # far more digits than any partial sum has


def _plain(value: Decimal) -> Decimal:
    """Drop trailing fractional zeros without switching to exponent notation."""
    if value.adjusted() > 40:
        return value  # far beyond any range (a legacy PostgreSQL value): the range check refuses it
    if value == value.to_integral_value():
        return value.quantize(Decimal(1), context=_WIDE)
    return value.normalize(context=_WIDE)


def _checked(aggregation: str, quantity: Decimal | None, metric_id: str, customer_id: str,
             group: tuple[str, ...] | None = None) -> Decimal:
    """Return a quantity within the supported range, else raise ``UsageOutOfRange`` naming the customer.

    ``None`` stands for a partial sum (or max) that SQLite could only give as a float: an event
    holds a value beyond the range.
    """
    if quantity is None:
        where = f" (group {', '.join(group)})" if group else ""
        raise UsageOutOfRange(f"metric {metric_id!r}, customer {customer_id!r}{where}: an event's value is beyond "
                              "the supported range", metric_id=metric_id, customer_id=customer_id)
    if aggregation in ("max", "latest"):
        return checked_value(quantity, metric_id, customer_id, group)
    if aggregation == "sum":
        return checked_total(quantity, metric_id, customer_id, group)
    return quantity


class SqlUsageSource(MetricsByDefinition):
    """``UsageSource`` over the events table of the database behind ``bind``.

    ``bind`` is an Engine (a connection per call), a Connection or a Session (the caller's
    transaction). ``definitions`` optionally maps metric ids to definitions; otherwise they are
    read from the ``metrics`` table (and cached: metrics are immutable).
    """

    def __init__(self, bind: Bind, definitions: Mapping[str, MetricDefinition] | None = None):
        self.bind = bind
        self._definitions: dict[str, MetricDefinition] = dict(definitions or {})
        self._external_of: dict[str, str | None] | None = None  # inside ``one_read``: customer -> external id

    # Plumbing ----------------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if isinstance(self.bind, sa.Engine):
            with self.bind.connect() as conn:
                yield conn
        else:
            yield self.bind

    def _dialect(self, conn: Any) -> str:
        bind = conn.get_bind() if isinstance(conn, Session) else conn
        return bind.dialect.name

    def definition(self, metric_id: str) -> MetricDefinition:
        """Return the definition of a metric (MetricNotFound when there is none)."""
        found = self._definitions.get(metric_id)
        if found is None:
            with self._connection() as conn:
                row = conn.execute(
                    sa.select(MetricRow.__table__.c.definition).where(MetricRow.__table__.c.id == metric_id)  # type: ignore[attr-defined]
                ).first()
            if row is None:
                raise MetricNotFound(f"no metric with id {metric_id!r}")
            found = definition_from_dict(json.loads(row[0]))
            self._definitions[metric_id] = found
        return found

    # UsageSource (usage, usage_bulk: MetricsByDefinition) -------------------------------------

    def evaluate(self, definition: MetricDefinition, customer_ids: Sequence[str], start: datetime,
                 end: datetime, group_by: tuple[str, ...] = (), *, metric_id: str | None = None
                 ) -> dict[str, UsageResult]:
        """Aggregate a definition for each customer; every asked id gets an entry.

        A customer whose total (or a group's) is beyond the supported range gets its
        ``UsageOutOfRange`` instead (naming ``metric_id``, else the event name); the others their usage.
        """
        groups = tuple(group_by) or definition.group_by
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return {}
        with self._connection() as conn:
            json_ = _Json(self._dialect(conn))
            aliases = self._aliases(conn, ids)
            base = self._where(json_, definition, ids, aliases, to_micros(start), to_micros(end))
            key, joined = self._customer_key(aliases)
            totals = self._run(conn, json_, definition, base, key, joined, ())
            per_group = self._run(conn, json_, definition, base, key, joined, groups) if groups else {}
        # Group rows by customer once (sorted, so each customer's groups come out in order).
        by_customer: dict[str, dict[tuple[str, ...], Decimal | None]] = {}
        for k, v in sorted(per_group.items()):
            by_customer.setdefault(k[0], {})[k[1:]] = v[0]
        result: dict[str, UsageResult] = {}
        metric = metric_id or definition.event_name
        for cid in ids:
            quantity, count, skipped = totals.get((cid,), (Decimal(0), 0, 0))
            grouped = by_customer.get(cid, {}) if groups else None
            try:
                checked = _checked(definition.aggregation, quantity, metric, cid)
                if grouped is not None:
                    grouped = {g: _checked(definition.aggregation, q, metric, cid, g) for g, q in grouped.items()}
            except UsageOutOfRange as exc:
                result[cid] = exc
                continue
            result[cid] = MetricUsage(quantity=checked, event_count=count, skipped=skipped, groups=grouped)
        return result

    def partials(self, definition: MetricDefinition, customer_ids: Sequence[str], start: datetime, end: datetime,
                 *, bucket: int = HOUR, group_by: tuple[str, ...] = (), every_customer: bool = False
                 ) -> dict[tuple[str, ...], dict[int, Partial]]:
        """Return, per (customer id, *group values), the ``Partial`` of each aligned bucket of ``[start, end)``.

        What a usage fragment holds (``billing_core.fragments``): buckets of ``bucket`` microseconds
        (an hour by default) that hold matching events, each clipped to the window, so merging them
        gives ``evaluate`` over the window. ``count``, ``sum``, ``max`` and ``latest`` only; a sum the
        database can give only as a float raises ``UsageOutOfRange``.
        """
        if definition.aggregation not in MERGEABLE:
            raise ValueError(f"{definition.aggregation!r} does not merge from fragments (read it raw)")
        ids = list(dict.fromkeys(customer_ids))
        if not ids and not every_customer:
            return {}
        groups = tuple(group_by)
        e = events_table
        with self._connection() as conn:
            json_ = _Json(self._dialect(conn))
            if every_customer:  # no customer filter; events sent by external id are matched by a join
                aliases, where = {"": ""}, self._where(json_, definition, [], {}, to_micros(start), to_micros(end),
                                                       every_customer=True)
            else:
                aliases = self._aliases(conn, ids)
                where = self._where(json_, definition, ids, aliases, to_micros(start), to_micros(end))
            key, source = self._customer_key(aliases)
            keys = ([key.label("cust")] + [json_.group_key(g).label(f"g{i}") for i, g in enumerate(groups)]
                    + [(e.c.ts - e.c.ts % bucket).label("b")])
            prop = definition.property
            value = json_.number(prop) if prop else sa.null()
            columns: list[Any] = [sa.func.count().label("n"), sa.func.count(value).label("n_value")]
            if definition.aggregation == "sum":
                columns += json_.sum_columns(prop or "", wide=True)
            elif definition.aggregation == "max":
                columns.append(sa.func.max(value).label("m"))
            rows = conn.execute(sa.select(*keys, *columns).select_from(source).where(*where).group_by(*keys)).mappings()
            out: dict[tuple[str, ...], dict[int, Partial]] = {}
            found: dict[tuple[Any, ...], dict[str, Any]] = {}
            for row in rows:
                if row["cust"] is not None:
                    found[tuple(row[k.name] for k in keys)] = dict(row)
            latest: dict[tuple[Any, ...], tuple[int, int, Decimal]] = {}
            if definition.aggregation == "latest" and found:
                partition = [k.element for k in keys]
                inner = sa.select(
                    *keys, e.c.ts.label("ts"), e.c.seq.label("seq"), value.label("v"),
                    sa.func.row_number().over(partition_by=partition, order_by=[e.c.ts.desc(), e.c.seq.desc()])
                    .label("rn"),
                ).select_from(source).where(*where, value.is_not(None)).subquery()
                for row in conn.execute(sa.select(inner).where(inner.c.rn == 1)).mappings():
                    if row["cust"] is not None:
                        latest[tuple(row[k.name] for k in keys)] = (int(row["ts"]), int(row["seq"]), number_of(row["v"]))
        metric = definition.event_name
        for full_key, row in found.items():
            count, with_value = int(row["n"]), int(row["n_value"])
            total, maximum = Decimal(0), None
            if definition.aggregation == "sum":
                summed = sum_of(row["s"], row.get("s_scaled"), row.get("s_hi"))
                total = _checked("sum", summed, metric, str(full_key[0]), tuple(full_key[1:-1]) or None)
            elif definition.aggregation == "max" and with_value:
                maximum = _checked("max", number_of(row["m"]), metric, str(full_key[0]), tuple(full_key[1:-1]) or None)
            if definition.aggregation == "count":
                with_value = count
            partial = Partial(count, with_value, total, maximum, latest.get(full_key))
            out.setdefault(tuple(full_key[:-1]), {})[int(full_key[-1])] = partial
        return out

    # Query building ----------------------------------------------------------------------------

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Within this block, look each customer's external id up once (the block is one read:
        a customer created or renamed meanwhile is seen by the next read, not this one)."""
        if self._external_of is not None:
            yield
            return
        self._external_of = {}
        try:
            yield
        finally:
            self._external_of = None

    def _aliases(self, conn: Any, ids: list[str]) -> dict[str, str]:
        """Map external ids to customer ids for the asked customers that have one (see ``one_read``)."""
        known = self._external_of if self._external_of is not None else {}
        unknown = [cid for cid in dict.fromkeys(ids) if cid not in known]
        known.update(dict.fromkeys(unknown))
        known.update(external_ids(conn, unknown))
        return {ext: cid for cid in ids if (ext := known.get(cid)) is not None}

    def _where(self, json_: _Json, definition: MetricDefinition, ids: list[str], aliases: dict[str, str],
               start_us: int, end_us: int, every_customer: bool = False) -> list[Any]:
        e = events_table
        where = [
            e.c.event_name == sa.literal(definition.event_name, sa.Text),
            e.c.ts >= start_us,
            e.c.ts < end_us,
            e.c.state == STATE_LIVE,
        ]
        if len(ids) <= _BULK_FILTER_LIMIT and not every_customer:
            by_id = one_of(e.c.customer_id, ids) if len(ids) > 1 else e.c.customer_id == ids[0]
            if aliases:
                exts = sorted(aliases)
                by_alias = sa.and_(
                    e.c.customer_id.is_(None),
                    one_of(e.c.external_customer_id, exts) if len(exts) > 1 else e.c.external_customer_id == exts[0],
                )
                where.append(sa.or_(by_id, by_alias))
            else:
                where.append(by_id)
        where.extend(self._filter(json_, item) for item in definition.filters)
        return where

    def _filter(self, json_: _Json, item: Filter) -> Any:
        if isinstance(item, AllOf):
            return sa.and_(*(self._filter(json_, part) for part in item.parts))
        if isinstance(item, AnyOf):
            return sa.or_(*(self._filter(json_, part) for part in item.parts))
        assert isinstance(item, Condition)
        name, op, value = item.property, item.operator, item.value
        if op in ("=", "!="):
            test = json_.equals(name, value)
            return test if op == "=" else sa.not_(test)
        if op in ("in", "not in"):
            assert isinstance(value, tuple)
            test = sa.or_(*(json_.equals(name, v) for v in value))
            return test if op == "in" else sa.not_(test)
        assert isinstance(value, Decimal)
        return json_.compare(name, op, value)

    def _customer_key(self, aliases: dict[str, str]) -> tuple[Any, Any]:
        e = events_table
        if not aliases:
            return e.c.customer_id, e
        c = customers_table.alias("alias_owner")
        joined = e.outerjoin(
            c, sa.and_(e.c.customer_id.is_(None), c.c.external_customer_id == e.c.external_customer_id)
        )
        return sa.func.coalesce(e.c.customer_id, c.c.id), joined

    def _run(self, conn: Any, json_: _Json, definition: MetricDefinition, where: list[Any], key: Any,
             source: Any, groups: tuple[str, ...]) -> dict[tuple[str, ...], tuple[Decimal | None, int, int]]:
        """Return {(customer_id, *group values): (quantity, event_count, skipped)}.

        The quantity is None when the database could give it only as a float (see ``_checked``).
        """
        try:
            return self._run_once(conn, json_, definition, where, key, source, groups, wide=False)
        except sa.exc.OperationalError as exc:
            if not is_overflow(exc):
                raise
        try:
            return self._run_once(conn, json_, definition, where, key, source, groups, wide=True)
        except sa.exc.OperationalError as exc:
            if not is_overflow(exc):
                raise
            raise UsageOutOfRange(f"metric over {definition.event_name!r}: a sum overflows even split at 10^9 "
                                  "(billions of events in one window)") from None

    def _run_once(self, conn: Any, json_: _Json, definition: MetricDefinition, where: list[Any], key: Any,
                  source: Any, groups: tuple[str, ...], wide: bool
                  ) -> dict[tuple[str, ...], tuple[Decimal | None, int, int]]:
        keys = [key.label("cust")] + [json_.group_key(g).label(f"g{i}") for i, g in enumerate(groups)]
        if definition.aggregation == "latest":
            return self._run_latest(conn, json_, definition, where, keys, source)
        prop = definition.property
        columns: list[Any] = [sa.func.count().label("n")]
        if definition.aggregation == "sum":
            assert prop
            columns += json_.sum_columns(prop, wide) + [sa.func.count(json_.number(prop)).label("n_value")]
        elif definition.aggregation == "max":
            assert prop
            columns += [sa.func.max(json_.number(prop)).label("m"), sa.func.count(json_.number(prop)).label("n_value")]
        elif definition.aggregation == "unique_count":
            assert prop
            columns += [
                sa.func.count(sa.distinct(json_.distinct_value(prop))).label("u"),
                sa.func.count(json_.present(prop)).label("n_value"),
            ]
        query = sa.select(*keys, *columns).select_from(source).where(*where).group_by(*keys)
        out: dict[tuple[str, ...], tuple[Decimal | None, int, int]] = {}
        for row in conn.execute(query).mappings():
            if row["cust"] is None:
                continue
            count = int(row["n"])
            quantity: Decimal | None
            if definition.aggregation == "count":
                quantity, skipped = Decimal(count), 0
            else:
                skipped = count - int(row["n_value"])
                if definition.aggregation == "sum":
                    quantity = sum_of(row["s"], row.get("s_scaled"), row.get("s_hi"))
                elif definition.aggregation == "max":
                    quantity = number_of(row["m"])
                else:
                    quantity = Decimal(int(row["u"]))
            out[tuple(row[k.name] for k in keys)] = (quantity, count, skipped)
        return out

    def _run_latest(self, conn: Any, json_: _Json, definition: MetricDefinition, where: list[Any],
                    keys: list[Any], source: Any) -> dict[tuple[str, ...], tuple[Decimal | None, int, int]]:
        assert definition.property
        e = events_table
        value = json_.number(definition.property)
        partition = [k.element for k in keys]
        inner = (
            sa.select(
                *keys,
                value.label("v"),
                sa.func.row_number()
                .over(
                    partition_by=partition,
                    order_by=[sa.case((value.is_(None), 1), else_=0), e.c.ts.desc(), e.c.seq.desc()],
                )
                .label("rn"),
                sa.func.count().over(partition_by=partition).label("n"),
                sa.func.count(value).over(partition_by=partition).label("n_value"),
            )
            .select_from(source)
            .where(*where)
            .subquery()
        )
        query = sa.select(inner).where(inner.c.rn == 1)
        out: dict[tuple[str, ...], tuple[Decimal | None, int, int]] = {}
        for row in conn.execute(query).mappings():
            if row["cust"] is None:
                continue
            count = int(row["n"])
            out[tuple(row[k.name] for k in keys)] = (number_of(row["v"]), count, count - int(row["n_value"]))
        return out

