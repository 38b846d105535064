"""Orb's metric SQL: parse a restricted SQL text into a ``MetricDefinition``, render one back.

``metric_from_sql(text)`` parses with sqlglot; ``render_sql(definition)`` writes text that parses
back to the same definition. The supported subset, and nothing else::

    SELECT <aggregate> [, <group property> ...] FROM events
    [WHERE event_name = '<name>' [AND <condition>] ...]
    [GROUP BY <property> [, <property>]]

    <aggregate>  COUNT(*) | COUNT(1) | SUM(p) | MAX(p) | COUNT(DISTINCT p) | LATEST(p)
                 (optionally ``AS alias``)
    <condition>  p = lit | p != lit | p <> lit | p IN (lit, ...) | p NOT IN (lit, ...)
                 | p < num | p <= num | p > num | p >= num
                 | <condition> AND <condition> | <condition> OR <condition> | ( <condition> )
    lit          'string' | number | TRUE | FALSE

``event_name = '...'`` is required exactly once, at the top level of the WHERE clause (ANDed
with the rest). Everything else — several statements, comments, joins, subqueries, CTEs,
UNION / INTERSECT / EXCEPT, other tables, other functions, arithmetic, ``NOT`` (other than
``NOT IN``), ``IS``, ``LIKE``, ``BETWEEN``, ``CASE``, ``HAVING``, ``ORDER BY``, ``LIMIT``,
``DISTINCT`` selects, qualified columns, DDL and DML — raises ``UnsupportedMetricSql`` naming
the construct. The parsed definition is data; no user text ever reaches the database as SQL
(``billing_core.sql_usage`` compiles definitions to SQLAlchemy expressions with bound
parameters).
"""

from __future__ import annotations

import re
from decimal import Decimal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Tokenizer

from billing_core.metric_definition import (
    MAX_GROUP_BY,
    RANGE_OPERATORS,
    RESERVED_PROPERTIES,
    Aggregation,
    AllOf,
    AnyOf,
    Condition,
    Filter,
    InvalidMetric,
    MetricDefinition,
    Operator,
    Scalar,
    UnsupportedMetricSql,
    to_decimal,
)

__all__ = ["MAX_SQL_NESTING", "filter_from_sql", "metric_from_sql", "render_sql"]

_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = frozenset(k.upper() for k in Tokenizer.KEYWORDS)


# Rendering -----------------------------------------------------------------------------------


def _is_bare_identifier(name: str) -> bool:
    """Tell whether ``name`` reads back as the same column without quotes."""
    if not _SIMPLE_NAME.match(name) or name.lower() in ("events", "event_name"):
        return False
    if name.upper() in _KEYWORDS:
        return False
    probe = f"SELECT SUM({name}) FROM t WHERE {name} = 1 AND {name} IN (1) GROUP BY {name}"
    try:
        node = sqlglot.parse_one(probe, read="postgres")
    except SqlglotError:
        return False
    columns = list(node.find_all(exp.Column))
    return len(columns) == 4 and all(c.name == name and not c.table for c in columns)


def _quote_identifier(name: str) -> str:
    if _is_bare_identifier(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, Decimal):
        return format(value, "f")
    return "'" + value.replace("'", "''") + "'"


def _render_filter(item: Filter, nested: bool) -> str:
    if isinstance(item, Condition):
        prop = _quote_identifier(item.property)
        if isinstance(item.value, tuple):
            values = ", ".join(_quote_literal(v) for v in item.value)
            return f"{prop} {item.operator.upper()} ({values})"
        return f"{prop} {item.operator} {_quote_literal(item.value)}"
    joiner = " AND " if isinstance(item, AllOf) else " OR "
    text = joiner.join(_render_filter(part, True) for part in item.parts)
    return f"({text})" if nested else text


def render_sql(definition: MetricDefinition) -> str:
    """Render a definition as SQL text in the supported subset (parses back to the same)."""
    prop = _quote_identifier(definition.property) if definition.property else ""
    aggregate = {
        "count": "COUNT(*)",
        "sum": f"SUM({prop})",
        "max": f"MAX({prop})",
        "unique_count": f"COUNT(DISTINCT {prop})",
        "latest": f"LATEST({prop})",
    }[definition.aggregation]
    where = [f"event_name = {_quote_literal(definition.event_name)}"]
    where += [_render_filter(item, True) for item in definition.filters]
    text = f"SELECT {aggregate} FROM events WHERE {' AND '.join(where)}"
    if definition.group_by:
        text += " GROUP BY " + ", ".join(_quote_identifier(g) for g in definition.group_by)
    return text


# Parsing -------------------------------------------------------------------------------------

_SELECT_ARGS_ALLOWED = {"expressions", "from", "from_", "where", "group"}
_SELECT_ARG_NAMES = {
    "joins": "JOIN",
    "laterals": "LATERAL",
    "having": "HAVING",
    "order": "ORDER BY",
    "limit": "LIMIT",
    "offset": "OFFSET",
    "distinct": "SELECT DISTINCT",
    "with": "WITH (common table expressions)",
    "with_": "WITH (common table expressions)",
    "windows": "WINDOW",
    "qualify": "QUALIFY",
    "into": "SELECT INTO",
    "locks": "FOR UPDATE",
    "sample": "TABLESAMPLE",
    "kind": "SELECT modifiers",
    "hint": "optimizer hints",
    "settings": "SETTINGS",
    "format": "FORMAT",
    "cluster": "CLUSTER BY",
    "distribute": "DISTRIBUTE BY",
    "sort": "SORT BY",
    "connect": "CONNECT BY",
    "prewhere": "PREWHERE",
    "match": "MATCH_RECOGNIZE",
    "pivots": "PIVOT",
    "exclude": "EXCLUDE",
    "operation_modifiers": "SELECT modifiers",
}
_NODE_NAMES: dict[type, str] = {
    exp.Subquery: "subquery",
    exp.Exists: "EXISTS subquery",
    exp.Union: "UNION",
    exp.Intersect: "INTERSECT",
    exp.Except: "EXCEPT",
    exp.Join: "JOIN",
    exp.Not: "NOT",
    exp.Is: "IS",
    exp.Like: "LIKE",
    exp.ILike: "ILIKE",
    exp.Between: "BETWEEN",
    exp.Case: "CASE",
    exp.If: "IF",
    exp.Cast: "CAST",
    exp.Add: "arithmetic (+)",
    exp.Sub: "arithmetic (-)",
    exp.Mul: "arithmetic (*)",
    exp.Div: "arithmetic (/)",
    exp.Mod: "arithmetic (%)",
    exp.Paren: "parentheses",
    exp.Null: "NULL",
    exp.Star: "*",
    exp.Placeholder: "placeholders",
    exp.Parameter: "parameters",
    exp.Window: "window functions",
    exp.Min: "MIN",
    exp.Avg: "AVG",
}


def _describe(node: exp.Expression) -> str:
    for kind, name in _NODE_NAMES.items():
        if isinstance(node, kind):
            return name
    if isinstance(node, exp.Anonymous):
        return f"function {str(node.this).upper()}"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}"
    if isinstance(node, (exp.Drop, exp.Create, exp.Insert, exp.Update, exp.Delete, exp.Alter)):
        return f"statement {node.key.upper()}"
    if isinstance(node, exp.Command):
        return f"statement {str(node.this).upper()}"
    return node.key.upper()


def _reject_comments(tree: exp.Expression) -> None:
    for node in tree.walk():
        if node.comments:
            raise UnsupportedMetricSql("comments", "remove -- and /* */ comments")


# Parentheses deeper than this are no metric (sqlglot parses recursively: ~50 levels exhaust the stack).
MAX_SQL_NESTING = 16
_NESTED = f"sql is nested too deeply (at most {MAX_SQL_NESTING} levels of parentheses or NOT)"


def _check_nesting(text: str) -> None:
    """Refuse SQL nested deeper than ``MAX_SQL_NESTING`` before the recursive parser sees it."""
    try:
        tokens = sqlglot.tokenize(text, read="postgres")
    except SqlglotError:
        return  # the parser reports the syntax error
    depth = deepest = nots = 0
    for token in tokens:
        kind = token.token_type.name
        if kind == "L_PAREN":
            depth += 1
            deepest = max(deepest, depth)
        elif kind == "R_PAREN":
            depth -= 1
        nots = nots + 1 if kind == "NOT" else 0
        if deepest > MAX_SQL_NESTING or nots > MAX_SQL_NESTING:
            raise InvalidMetric(_NESTED)


def metric_from_sql(text: str) -> MetricDefinition:
    """Parse Orb-style metric SQL into a definition, or raise naming the unsupported construct."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidMetric("sql must be a non-empty string")
    if len(text) > 10_000:
        raise InvalidMetric("sql is longer than 10,000 characters")
    _check_nesting(text)
    try:
        return _metric_from_sql(text)
    except RecursionError:  # nesting the count above does not see (e.g. long operator chains)
        raise InvalidMetric(_NESTED) from None


_FILTER_PROBE = "__filter__"


def filter_from_sql(text: str) -> tuple[Filter, ...]:
    """Parse a boolean filter (the conditions of a WHERE clause, as in Orb's price ``filter``).

    The same subset as a metric's WHERE conditions; ``event_name`` cannot be filtered on.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidMetric("filter must be a non-empty string", field="filter")
    # Parsed as the conditions of a metric, so the one parser decides what is accepted; the text
    # stays data (an attempt to close the parenthesis and name another event fails the check below).
    definition = metric_from_sql(f"SELECT COUNT(*) FROM events WHERE event_name = '{_FILTER_PROBE}' AND ({text})")
    if definition.event_name != _FILTER_PROBE or definition.group_by:
        raise InvalidMetric("filter must be a boolean condition on event properties", field="filter")
    return definition.filters


def _metric_from_sql(text: str) -> MetricDefinition:
    try:
        statements = [s for s in sqlglot.parse(text, read="postgres") if s is not None]
    except SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise InvalidMetric(f"could not parse sql: {first}") from exc
    if len(statements) != 1:
        raise UnsupportedMetricSql("multiple statements", "send exactly one SELECT")
    tree = statements[0]
    _reject_comments(tree)
    if not isinstance(tree, exp.Select):
        raise UnsupportedMetricSql(_describe(tree), "only SELECT ... FROM events is supported")
    for key, value in tree.args.items():
        if key in _SELECT_ARGS_ALLOWED or value in (None, [], False):
            continue
        raise UnsupportedMetricSql(_SELECT_ARG_NAMES.get(key, key.upper()))
    _check_from(tree.args.get("from_") or tree.args.get("from"))

    group_by = tuple(_column_name(node, "GROUP BY") for node in _group_items(tree))
    aggregation, prop, group_in_select = _parse_select_list(tree.expressions)
    for name in group_in_select:
        if name not in group_by:
            raise UnsupportedMetricSql(
                f"selected column {name!r} not in GROUP BY", "select only the aggregate and grouped properties"
            )

    where = tree.args.get("where")
    event_name, filters = _parse_where(where.this if where is not None else None)
    return MetricDefinition(
        event_name=event_name,
        aggregation=aggregation,
        property=prop,
        filters=filters,
        group_by=group_by,
    )


def _check_from(node: exp.Expression | None) -> None:
    if node is None:
        raise UnsupportedMetricSql("SELECT without FROM", "select FROM events")
    source = node.this
    if not isinstance(source, exp.Table):
        raise UnsupportedMetricSql(_describe(source), "select FROM events")
    extra = {k for k, v in source.args.items() if k != "this" and v not in (None, [], False)}
    if extra or not isinstance(source.this, exp.Identifier):
        raise UnsupportedMetricSql(f"table {source.sql()!r}", "only FROM events is supported")
    if source.name.lower() != "events":
        raise UnsupportedMetricSql(f"table {source.name!r}", "only FROM events is supported")


def _group_items(tree: exp.Select) -> list[exp.Expression]:
    group = tree.args.get("group")
    if group is None:
        return []
    extra = {k for k, v in group.args.items() if k != "expressions" and v not in (None, [], False)}
    if extra:
        raise UnsupportedMetricSql(f"GROUP BY {sorted(extra)[0].upper()}")
    if len(group.expressions) > MAX_GROUP_BY:
        raise UnsupportedMetricSql(f"GROUP BY more than {MAX_GROUP_BY} properties")
    return list(group.expressions)


def _column_name(node: exp.Expression, where: str) -> str:
    if not isinstance(node, exp.Column):
        raise UnsupportedMetricSql(_describe(node), f"{where} takes property names")
    if node.args.get("table") is not None or not isinstance(node.this, exp.Identifier):
        raise UnsupportedMetricSql(f"qualified column {node.sql()!r}", "use the bare property name")
    name = node.this.this
    if name.lower() in RESERVED_PROPERTIES:
        raise UnsupportedMetricSql(f"column {name!r}", "only event properties and event_name can be used")
    return name


def _parse_select_list(items: list[exp.Expression]) -> tuple[Aggregation, str | None, list[str]]:
    aggregates: list[tuple[Aggregation, str | None]] = []
    columns: list[str] = []
    for item in items:
        if isinstance(item, exp.Alias):
            item = item.this
        if isinstance(item, exp.Column):
            columns.append(_column_name(item, "SELECT"))
            continue
        aggregates.append(_parse_aggregate(item))
    if len(aggregates) != 1:
        raise UnsupportedMetricSql(
            f"{len(aggregates)} aggregates", "select exactly one of COUNT(*), SUM, MAX, COUNT(DISTINCT), LATEST"
        )
    aggregation, prop = aggregates[0]
    return aggregation, prop, columns


def _single_argument(node: exp.Expression, name: str) -> exp.Expression:
    args = [v for k, v in node.args.items() if v not in (None, [], False) and k not in ("big_int",)]
    if isinstance(node, exp.Anonymous):
        args = list(node.expressions)
    elif len(args) == 1 and isinstance(args[0], exp.Expression):
        args = [args[0]]
    if len(args) != 1 or not isinstance(args[0], exp.Expression):
        raise UnsupportedMetricSql(f"{name} with {len(args)} arguments", f"{name} takes one property")
    return args[0]


def _parse_aggregate(node: exp.Expression) -> tuple[Aggregation, str | None]:
    if isinstance(node, exp.Count):
        arg = _single_argument(node, "COUNT")
        if isinstance(arg, exp.Star) or (
            isinstance(arg, exp.Literal) and not arg.is_string and arg.this == "1"
        ):
            return "count", None
        if isinstance(arg, exp.Distinct):
            if len(arg.expressions) != 1:
                raise UnsupportedMetricSql("COUNT(DISTINCT) of several columns")
            return "unique_count", _column_name(arg.expressions[0], "COUNT(DISTINCT)")
        if isinstance(arg, exp.Column):
            raise UnsupportedMetricSql("COUNT(property)", "use COUNT(*) or COUNT(DISTINCT property)")
        raise UnsupportedMetricSql(_describe(arg), "inside COUNT")
    if isinstance(node, exp.Sum):
        return "sum", _column_name(_single_argument(node, "SUM"), "SUM")
    if isinstance(node, exp.Max):
        arg = node.this
        if node.expressions:
            raise UnsupportedMetricSql("MAX with several arguments")
        return "max", _column_name(arg, "MAX")
    if isinstance(node, exp.Anonymous) and str(node.this).lower() == "latest":
        return "latest", _column_name(_single_argument(node, "LATEST"), "LATEST")
    raise UnsupportedMetricSql(_describe(node), "select COUNT(*), SUM, MAX, COUNT(DISTINCT) or LATEST")


def _flatten_and(node: exp.Expression) -> list[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _flatten_and(node.this) + _flatten_and(node.expression)
    return [node]


def _is_event_name(node: exp.Expression) -> bool:
    target = node.this if isinstance(node, (exp.EQ, exp.NEQ, exp.In, exp.Not)) else None
    if isinstance(node, exp.Not):
        target = node.this.this if isinstance(node.this, exp.In) else None
    return (
        isinstance(target, exp.Column)
        and target.args.get("table") is None
        and str(target.name).lower() == "event_name"
    ) or (
        isinstance(node, (exp.EQ, exp.NEQ))
        and isinstance(node.expression, exp.Column)
        and str(node.expression.name).lower() == "event_name"
    )


def _parse_where(node: exp.Expression | None) -> tuple[str, tuple[Filter, ...]]:
    if node is None:
        raise UnsupportedMetricSql("metric without event_name", "add WHERE event_name = '...'")
    event_names: list[str] = []
    filters: list[Filter] = []
    for part in _flatten_and(node):
        if _is_event_name(part):
            if not (
                isinstance(part, exp.EQ)
                and isinstance(part.this, exp.Column)
                and isinstance(part.expression, exp.Literal)
                and part.expression.is_string
            ):
                raise UnsupportedMetricSql(
                    "event_name condition other than event_name = '<name>'", "a metric reads one event name"
                )
            event_names.append(part.expression.this)
            continue
        filters.append(_parse_condition(part))
    if len(event_names) != 1:
        raise UnsupportedMetricSql(
            "metric without event_name" if not event_names else "event_name given twice",
            "use WHERE event_name = '<name>' exactly once",
        )
    return event_names[0], tuple(filters)


_COMPARISONS: dict[type, Operator] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_MIRRORED: dict[str, Operator] = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _parse_condition(node: exp.Expression) -> Filter:
    if isinstance(node, exp.Paren):
        return _parse_condition(node.this)
    if _is_event_name(node):
        raise UnsupportedMetricSql(
            "event_name inside OR", "event_name = '<name>' must be ANDed at the top level"
        )
    if isinstance(node, exp.And):
        return AllOf(tuple(_parse_condition(part) for part in _flatten_and(node)))
    if isinstance(node, exp.Or):
        return AnyOf((_parse_condition(node.this), _parse_condition(node.expression)))
    if isinstance(node, exp.In):
        return _parse_in(node, negated=False)
    if isinstance(node, exp.Not) and isinstance(node.this, exp.In):
        return _parse_in(node.this, negated=True)
    operator = _COMPARISONS.get(type(node))
    if operator is None:
        raise UnsupportedMetricSql(_describe(node), "conditions compare a property with a literal")
    left, right = node.this, node.expression
    if isinstance(left, exp.Column):
        prop, literal = _column_name(left, "WHERE"), _literal(right)
    elif isinstance(right, exp.Column):
        prop, literal = _column_name(right, "WHERE"), _literal(left)
        operator = _MIRRORED[operator]
    elif isinstance(left, (exp.Literal, exp.Boolean, exp.Neg)) and isinstance(
        right, (exp.Literal, exp.Boolean, exp.Neg)
    ):
        raise UnsupportedMetricSql("comparison of two literals", "conditions compare a property with a literal")
    else:
        raise UnsupportedMetricSql(
            _describe(left if not isinstance(left, (exp.Literal, exp.Boolean)) else right),
            "conditions compare a property with a literal",
        )
    if operator in RANGE_OPERATORS and not isinstance(literal, Decimal):
        raise UnsupportedMetricSql(f"{operator} with a non-number", "range comparisons take numbers")
    return Condition(property=prop, operator=operator, value=literal)


def _parse_in(node: exp.In, negated: bool) -> Condition:
    extra = {k for k, v in node.args.items() if k not in ("this", "expressions") and v not in (None, [], False)}
    if extra:
        kind = "subquery" if "query" in extra else sorted(extra)[0].upper()
        raise UnsupportedMetricSql(kind, "IN takes a list of literals")
    prop = _column_name(node.this, "IN")
    values = tuple(_literal(item) for item in node.expressions)
    if not values:
        raise UnsupportedMetricSql("empty IN list")
    return Condition(property=prop, operator="not in" if negated else "in", value=values)


def _literal(node: exp.Expression) -> Scalar:
    if isinstance(node, exp.Column):
        raise UnsupportedMetricSql("comparison of two properties", "compare a property with a literal")
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return -to_decimal(node.this.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return str(node.this)
        return to_decimal(node.this)
    raise UnsupportedMetricSql(_describe(node), "compare with a string, number or boolean literal")
