"""Metric definitions and the restricted SQL form parsed with sqlglot."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from billing_core.codec import definition_from_dict, definition_to_dict
from billing_core.metric_sql import metric_from_sql, render_sql
from billing_core.metric_definition import (
    AllOf,
    AnyOf,
    Condition,
    InvalidMetric,
    MetricDefinition,
    UnsupportedMetricSql,
)

D = Decimal

ACCEPTED = [
    pytest.param(
        "SELECT SUM(tokens) FROM events WHERE event_name = 'api_call' AND model = 'gpt-4'",
        MetricDefinition("api_call", "sum", "tokens", (Condition("model", "=", "gpt-4"),)),
        id="orb-sum-with-filter",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM events WHERE event_name = 'page_view'",
        MetricDefinition("page_view", "count"),
        id="count-star",
    ),
    pytest.param(
        "select count(1) from EVENTS where event_name = 'page_view'",
        MetricDefinition("page_view", "count"),
        id="count-one-lowercase",
    ),
    pytest.param(
        "SELECT COUNT(DISTINCT user) AS users FROM events WHERE event_name = 'login'",
        MetricDefinition("login", "unique_count", "user"),
        id="count-distinct-with-alias",
    ),
    pytest.param(
        "SELECT MAX(seats) FROM events WHERE event_name = 'seats'",
        MetricDefinition("seats", "max", "seats"),
        id="max",
    ),
    pytest.param(
        "SELECT LATEST(seats) FROM events WHERE event_name = 'seats'",
        MetricDefinition("seats", "latest", "seats"),
        id="latest",
    ),
    pytest.param(
        "SELECT SUM(bytes) FROM events WHERE event_name = 'x' AND region != 'eu' AND size <> 3",
        MetricDefinition(
            "x", "sum", "bytes", (Condition("region", "!=", "eu"), Condition("size", "!=", D(3)))
        ),
        id="not-equal-both-spellings",
    ),
    pytest.param(
        "SELECT SUM(b) FROM events WHERE event_name = 'x' AND r IN ('a', 'b') AND t NOT IN (1, -2.5)",
        MetricDefinition(
            "x",
            "sum",
            "b",
            (Condition("r", "in", ("a", "b")), Condition("t", "not in", (D(1), D("-2.5")))),
        ),
        id="in-and-not-in",
    ),
    pytest.param(
        "SELECT SUM(b) FROM events WHERE event_name = 'x' AND n < 1 AND n <= 2 AND n > 0.5 AND n >= -1",
        MetricDefinition(
            "x",
            "sum",
            "b",
            (
                Condition("n", "<", D(1)),
                Condition("n", "<=", D(2)),
                Condition("n", ">", D("0.5")),
                Condition("n", ">=", D(-1)),
            ),
        ),
        id="range-operators",
    ),
    pytest.param(
        "SELECT SUM(b) FROM events WHERE event_name = 'x' AND 10 > n",
        MetricDefinition("x", "sum", "b", (Condition("n", "<", D(10)),)),
        id="literal-on-the-left-is-mirrored",
    ),
    pytest.param(
        "SELECT SUM(b) FROM events WHERE event_name = 'x' AND (m = 'a' OR m = 'b') AND flag = TRUE",
        MetricDefinition(
            "x",
            "sum",
            "b",
            (AnyOf((Condition("m", "=", "a"), Condition("m", "=", "b"))), Condition("flag", "=", True)),
        ),
        id="or-in-parentheses-and-boolean",
    ),
    pytest.param(
        "SELECT SUM(b) FROM events WHERE event_name = 'x' AND (m = 'a' OR (k = 1 AND j = 2))",
        MetricDefinition(
            "x",
            "sum",
            "b",
            (
                AnyOf(
                    (
                        Condition("m", "=", "a"),
                        AllOf((Condition("k", "=", D(1)), Condition("j", "=", D(2)))),
                    )
                ),
            ),
        ),
        id="nested-and-inside-or",
    ),
    pytest.param(
        "SELECT region, SUM(b) FROM events WHERE event_name = 'x' GROUP BY region",
        MetricDefinition("x", "sum", "b", group_by=("region",)),
        id="group-by-one",
    ),
    pytest.param(
        "SELECT SUM(b) FROM events WHERE event_name = 'x' GROUP BY region, tier",
        MetricDefinition("x", "sum", "b", group_by=("region", "tier")),
        id="group-by-two",
    ),
    pytest.param(
        """SELECT SUM("bytes sent") FROM events WHERE event_name = 'it''s' AND "select" = 'a'""",
        MetricDefinition("it's", "sum", "bytes sent", (Condition("select", "=", "a"),)),
        id="quoted-identifiers-and-escaped-quote",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a'' OR 1=1'",
        MetricDefinition("a' OR 1=1", "sum", "x"),
        id="injection-inside-a-string-stays-a-string",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a';",
        MetricDefinition("a", "sum", "x"),
        id="trailing-semicolon",
    ),
]


@pytest.mark.parametrize("sql, expected", ACCEPTED)
def test_supported_sql_parses_to_the_definition(sql: str, expected: MetricDefinition) -> None:
    """Each supported SQL form parses into the same definition as its structured form."""
    assert metric_from_sql(sql) == expected


@pytest.mark.parametrize("sql, expected", ACCEPTED)
def test_rendered_sql_parses_back_to_the_same_definition(sql: str, expected: MetricDefinition) -> None:
    """render_sql output is itself in the subset and round-trips exactly."""
    assert metric_from_sql(render_sql(expected)) == expected


@pytest.mark.parametrize("sql, expected", ACCEPTED)
def test_dict_form_round_trips(sql: str, expected: MetricDefinition) -> None:
    """The stored dict form of a definition rebuilds the same definition."""
    assert definition_from_dict(definition_to_dict(expected)) == expected


REJECTED = [
    pytest.param("SELECT SUM(x) FROM events; DROP TABLE events", "multiple statements", id="stacked-drop"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND model = '' OR 1=1 --",
        "comments",
        id="or-1-1-with-comment",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND model = '' OR 1=1",
        "event_name inside OR",
        id="or-1-1-escapes-event-name",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND (model = '' OR 1=1)",
        "comparison of two literals",
        id="or-1-1-in-parentheses",
    ),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' /* x */", "comments", id="block-comment"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' UNION SELECT SUM(y) FROM events",
        "UNION",
        id="union",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' INTERSECT SELECT SUM(y) FROM events",
        "INTERSECT",
        id="intersect",
    ),
    pytest.param("SELECT SUM(x) FROM (SELECT * FROM events)", "subquery", id="subquery-in-from"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND y IN (SELECT y FROM users)",
        "subquery",
        id="subquery-in-in",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND EXISTS (SELECT 1 FROM users)",
        "EXISTS subquery",
        id="exists",
    ),
    pytest.param("SELECT SUM(x) FROM users WHERE event_name = 'a'", "table 'users'", id="other-table"),
    pytest.param("SELECT SUM(x) FROM main.events WHERE event_name = 'a'", "table 'main.events'", id="schema-table"),
    pytest.param(
        "SELECT SUM(x) FROM events JOIN users ON events.id = users.id WHERE event_name = 'a'",
        "JOIN",
        id="join",
    ),
    pytest.param("SELECT SUM(x) FROM events, users WHERE event_name = 'a'", "JOIN", id="comma-join"),
    pytest.param("SELECT SUM(ABS(x)) FROM events WHERE event_name = 'a'", "function ABS", id="function-in-sum"),
    pytest.param("SELECT pg_sleep(10) FROM events WHERE event_name = 'a'", "function PG_SLEEP", id="pg-sleep"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND lower(m) = 'x'",
        "function LOWER",
        id="function-in-where",
    ),
    pytest.param("SELECT MIN(x) FROM events WHERE event_name = 'a'", "MIN", id="min"),
    pytest.param("SELECT AVG(x) FROM events WHERE event_name = 'a'", "AVG", id="avg"),
    pytest.param("SELECT COUNT(x) FROM events WHERE event_name = 'a'", "COUNT(property)", id="count-property"),
    pytest.param("SELECT SUM(x + 1) FROM events WHERE event_name = 'a'", "arithmetic (+)", id="arithmetic"),
    pytest.param("SELECT SUM(x), MAX(y) FROM events WHERE event_name = 'a'", "2 aggregates", id="two-aggregates"),
    pytest.param("SELECT x FROM events WHERE event_name = 'a'", "0 aggregates", id="no-aggregate"),
    pytest.param("SELECT * FROM events WHERE event_name = 'a'", "*", id="select-star"),
    pytest.param("DROP TABLE events", "statement DROP", id="drop"),
    pytest.param("DELETE FROM events WHERE 1 = 1", "statement DELETE", id="delete"),
    pytest.param("INSERT INTO events VALUES (1)", "statement INSERT", id="insert"),
    pytest.param("UPDATE events SET x = 1", "statement UPDATE", id="update"),
    pytest.param("CREATE TABLE t (x INT)", "statement CREATE", id="create"),
    pytest.param(
        "WITH t AS (SELECT 1) SELECT SUM(x) FROM events WHERE event_name = 'a'",
        "WITH",
        id="cte",
    ),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' ORDER BY x", "ORDER BY", id="order-by"),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' LIMIT 1", "LIMIT", id="limit"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' GROUP BY r HAVING SUM(x) > 1",
        "HAVING",
        id="having",
    ),
    pytest.param("SELECT DISTINCT SUM(x) FROM events WHERE event_name = 'a'", "SELECT DISTINCT", id="distinct"),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND NOT m = 'b'", "NOT", id="not"),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND m IS NULL", "IS", id="is-null"),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND m LIKE 'a%'", "LIKE", id="like"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND n BETWEEN 1 AND 2", "BETWEEN", id="between"
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND m = CASE WHEN 1 = 1 THEN 'a' END",
        "CASE",
        id="case",
    ),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND m = n", "two properties", id="column-vs-column"),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND m < 'b'", "non-number", id="range-on-string"),
    pytest.param("SELECT SUM(events.x) FROM events WHERE event_name = 'a'", "qualified column", id="qualified"),
    pytest.param("SELECT SUM(x) FROM events", "without event_name", id="no-where"),
    pytest.param("SELECT SUM(x) FROM events WHERE m = 'a'", "without event_name", id="no-event-name"),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' OR event_name = 'b'",
        "event_name inside OR",
        id="two-event-names-or",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND event_name = 'b'",
        "event_name given twice",
        id="two-event-names-and",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name IN ('a', 'b')",
        "event_name condition",
        id="event-name-in",
    ),
    pytest.param(
        "SELECT SUM(x) FROM events WHERE event_name = 'a' AND timestamp > 5",
        "column 'timestamp'",
        id="timestamp-filter",
    ),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' GROUP BY a, b, c", "more than 2", id="group-by-3"),
    pytest.param(
        "SELECT region, SUM(x) FROM events WHERE event_name = 'a'",
        "not in GROUP BY",
        id="selected-column-not-grouped",
    ),
    pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND m = $1", "parameters", id="placeholder"),
]


@pytest.mark.parametrize("sql, construct", REJECTED)
def test_unsupported_sql_is_rejected_naming_the_construct(sql: str, construct: str) -> None:
    """SQL outside the subset raises UnsupportedMetricSql whose message names the construct."""
    with pytest.raises(UnsupportedMetricSql) as info:
        metric_from_sql(sql)
    assert construct in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELEC SUM(x) FROM events", id="typo"),
        pytest.param("SELECT SUM(x FROM events WHERE event_name = 'a'", id="unbalanced-paren"),
        pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a", id="unterminated-string"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
    ],
)
def test_unparseable_sql_is_an_invalid_metric(sql: str) -> None:
    """Text that is not SQL at all raises InvalidMetric, never a parser exception."""
    with pytest.raises(InvalidMetric):
        metric_from_sql(sql)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"event_name": "", "aggregation": "count"}, "event_name", id="empty-event-name"),
        pytest.param({"event_name": "e", "aggregation": "avg"}, "unknown aggregation", id="unknown-aggregation"),
        pytest.param({"event_name": "e", "aggregation": "sum"}, "needs a property", id="sum-without-property"),
        pytest.param({"event_name": "e", "aggregation": "count", "property": "x"}, "no property", id="count-with-property"),
        pytest.param(
            {"event_name": "e", "aggregation": "count", "group_by": ("a", "b", "c")}, "at most 2", id="three-groups"
        ),
        pytest.param(
            {"event_name": "e", "aggregation": "count", "group_by": ("a", "a")}, "repeats", id="repeated-group"
        ),
        pytest.param(
            {"event_name": "e", "aggregation": "sum", "property": "timestamp"}, "not an event property", id="reserved"
        ),
        pytest.param(
            {"event_name": "e", "aggregation": "sum", "property": 'a"b'}, "double quotes", id="quote-in-property"
        ),
    ],
)
def test_invalid_structured_definitions_are_rejected(kwargs: dict, message: str) -> None:
    """A structured definition is validated when built."""
    with pytest.raises(InvalidMetric, match=message):
        MetricDefinition(**kwargs)


@pytest.mark.parametrize(
    "prop, operator, value, message",
    [
        pytest.param("m", "like", "a", "unknown operator", id="unknown-operator"),
        pytest.param("m", "in", (), "non-empty list", id="empty-in"),
        pytest.param("m", "=", ("a",), "single value", id="list-for-equals"),
        pytest.param("m", "<", "a", "needs a number", id="range-on-string"),
        pytest.param("m", ">", True, "needs a number", id="range-on-boolean"),
        pytest.param("m", "=", 1.5, "string, a number or a boolean", id="float-refused"),
        pytest.param("m", "=", Decimal("NaN"), "finite", id="nan"),
    ],
)
def test_invalid_conditions_are_rejected(prop: str, operator: str, value: object, message: str) -> None:
    """A condition is validated when built: operator, value shape and type."""
    with pytest.raises(InvalidMetric, match=message):
        Condition(prop, operator, value)  # type: ignore[arg-type]


_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters='"'), min_size=1, max_size=12
)
_scalars = st.one_of(
    _names,
    st.booleans(),
    st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**6, max_value=10**6),
)


@hsettings(max_examples=60, deadline=None)
@given(
    event_name=_names,
    prop=_names.filter(lambda n: n not in ("event_name", "timestamp", "customer_id", "external_customer_id", "idempotency_key")),
    value=_scalars,
)
def test_any_rendered_definition_parses_back(event_name: str, prop: str, value: object) -> None:
    """Whatever the names and literals, render_sql quotes them so the parse gives the same definition."""
    definition = MetricDefinition(event_name, "sum", prop, (Condition(prop, "=", value),))  # type: ignore[arg-type]
    assert metric_from_sql(render_sql(definition)) == definition
