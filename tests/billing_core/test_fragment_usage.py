"""Fragments are a cache, never the truth: after any interleaving of ingest (in and out of order, late,
duplicated), amendments, deprecations, backfills (add or replace; closed or reverted) and a customer
created after its events, the fragment-backed source answers exactly what the raw source answers, for
every mergeable aggregation, grouped or not, on SQLite and PostgreSQL — and reuses what did not change."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import Engine, text

from billing_core import SqlBackfillStore, SqlCustomerRepository, SqlEventStore, SqlMetricRepository, create_customer
from billing_core.backfills import close_backfill, create_backfill, ingest_into_backfill, revert_backfill
from billing_core.events import amend_event, deprecate_event, ingest_events, to_micros, validate_batch
from billing_core.fragments import DAY
from billing_core.metric_definition import MetricDefinition
from billing_core.metrics import create_metric
from billing_core.sql_fragments import FragmentUsageSource, verify_fragments
from billing_core.sql_usage import SqlUsageSource
from worker.cli import main
from worker.db import session_scope

NOW = datetime(2026, 12, 15, tzinfo=timezone.utc)
DAY0 = datetime(2026, 11, 9, tzinfo=timezone.utc)
SPAN = 20 * 24 * 3600  # seconds of event time: windows reach every level, 8-day blocks included
METRICS = {f"m_{agg}": MetricDefinition("call", agg, None if agg == "count" else "n")  # type: ignore[arg-type]
           for agg in ("count", "sum", "max", "latest")}

seconds = st.integers(0, SPAN - 1)
amounts = st.one_of(st.none(), st.decimals(min_value=-10**5, max_value=10**5, places=2, allow_nan=False,
                                           allow_infinity=False))
event = st.tuples(seconds, st.sampled_from(["acme", "globex"]), amounts, st.sampled_from(["x", "y"]))
operation = st.one_of(
    st.tuples(st.just("ingest"), st.lists(event, min_size=1, max_size=12)),
    st.tuples(st.just("amend"), st.integers(0, 50), event),
    st.tuples(st.just("deprecate"), st.integers(0, 50)),
    st.tuples(st.just("backfill"), st.sampled_from(["c1", None]), st.booleans(), st.booleans(),
              st.tuples(seconds, seconds), st.lists(event, max_size=4)),
    st.tuples(st.just("create_globex")),
    st.tuples(st.just("read"), st.tuples(st.integers(0, SPAN), st.integers(0, SPAN))),
    st.tuples(st.just("read"), st.tuples(st.integers(0, SPAN), st.integers(0, SPAN))),  # reads, twice as often
)


def _at(second: int) -> str:
    return (DAY0 + timedelta(seconds=second)).isoformat().replace("+00:00", "Z")


def _body(key: str, item: tuple[int, str, Decimal | None, str]) -> dict[str, Any]:
    second, customer, value, group = item
    props: dict[str, Any] = {"g": group} if value is None else {"g": group, "n": value}
    return {"idempotency_key": key, "event_name": "call", "external_customer_id": customer,
            "timestamp": _at(second), "properties": props}


def _reset(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in ("usage_fragments", "usage_fragment_coverage", "usage_changes", "backfill_replacements",
                      "backfills", "events", "metrics", "customers"):
            conn.execute(text(f"DELETE FROM {table}"))
    with session_scope(engine) as session:
        create_customer(SqlCustomerRepository(session), customer_id="c1", name="A", email="a@x.test",
                        external_customer_id="acme", now=NOW)


def _compare(engine: Engine, fragments: FragmentUsageSource, window: tuple[int, int],
             groupings: tuple[tuple[str, ...], ...] = ((), ("g",))) -> None:
    lo, hi = sorted(window)
    start, end = DAY0 + timedelta(seconds=lo), DAY0 + timedelta(seconds=hi)
    raw = SqlUsageSource(engine, METRICS)
    for metric_id, definition in METRICS.items():
        for group_by in groupings:
            ids = ["c1", "c2"]
            want = raw.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
            got = fragments.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
            assert got == want, (metric_id, group_by, start, end)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=2, max_size=12), data=st.data())
def test_fragments_answer_exactly_what_raw_events_answer(any_engine: Engine, operations: list,
                                                         data: st.DataObject) -> None:
    _reset(any_engine)
    # Reads of a few customers keep spans per customer; reads of many keep one span for everyone
    # (every_above=0 makes every read one of those): both, interleaved, on the same tables.
    few = FragmentUsageSource(any_engine, METRICS)
    many = FragmentUsageSource(any_engine, METRICS, every_above=0, build_cold=True)
    fragments = few
    keys: list[str] = []
    sent: dict[str, dict[str, Any]] = {}
    counter = 0
    for op in operations:
        kind = op[0]
        if kind == "ingest":
            batch = []
            for item in op[1]:
                counter += 1
                if keys and counter % 5 == 0:  # a duplicate delivery: the same event again
                    batch.append(sent[keys[counter % len(keys)]])
                else:
                    batch.append(_body(f"k{counter}", item))
            with session_scope(any_engine) as session:
                ingest_events(SqlEventStore(session), batch, now=NOW)
            for body in batch:
                if body["idempotency_key"] not in sent:
                    keys.append(body["idempotency_key"])
                    sent[body["idempotency_key"]] = body
        elif kind == "amend" and keys:
            key = keys[op[1] % len(keys)]
            with session_scope(any_engine) as session:
                try:
                    body = _body(key, op[2])
                    amend_event(SqlEventStore(session), key, {k: v for k, v in body.items() if k != "idempotency_key"},
                                now=NOW)
                except Exception:  # deprecated, or in a backfill: refused, nothing changes
                    session.rollback()
        elif kind == "deprecate" and keys:
            with session_scope(any_engine) as session:
                deprecate_event(SqlEventStore(session), keys[op[1] % len(keys)])
        elif kind == "backfill":
            _, customer, replace, close, window, items = op
            lo, hi = sorted(window)
            if lo == hi:
                continue
            counter += 1
            backfill_id = f"bf{counter}"
            with session_scope(any_engine) as session:
                create_backfill(SqlBackfillStore(session), backfill_id=backfill_id,
                                timeframe_start=DAY0 + timedelta(seconds=lo), timeframe_end=DAY0 + timedelta(seconds=hi),
                                now=NOW, customer_id=customer, replace_existing_events=replace)
            bodies = []
            for item in items:
                counter += 1
                second = lo + item[0] % (hi - lo)
                bodies.append(_body(f"b{counter}", (second, "acme" if customer else item[1], item[2], item[3])))
            if bodies:
                with session_scope(any_engine) as session:
                    ingest_into_backfill(SqlEventStore(session), SqlBackfillStore(session), backfill_id,
                                         validate_batch(bodies, now=NOW), sent=len(bodies))
            with session_scope(any_engine) as session:
                close_backfill(SqlBackfillStore(session), backfill_id, now=NOW)
            if not close:
                with session_scope(any_engine) as session:
                    revert_backfill(SqlBackfillStore(session), backfill_id, now=NOW)
        elif kind == "create_globex":
            with session_scope(any_engine) as session:
                try:
                    create_customer(SqlCustomerRepository(session), customer_id="c2", name="G", email="g@x.test",
                                    external_customer_id="globex", now=NOW)
                except Exception:  # already created
                    session.rollback()
        elif kind == "read":
            _compare(any_engine, data.draw(st.sampled_from([few, many])), op[1])
        # A read after every step, over a window whose edges fall on hours, days, 5 minutes or anywhere.
        edge = st.one_of(st.integers(0, SPAN), st.integers(0, SPAN // 3600).map(lambda h: h * 3600),
                         st.integers(0, SPAN // 300).map(lambda m: m * 300))
        grouping = data.draw(st.sampled_from([(), ("g",)]))
        fragments = data.draw(st.sampled_from([few, many]))
        _compare(any_engine, fragments, (data.draw(edge), data.draw(edge)), (grouping,))
    _compare(any_engine, few, (0, SPAN))
    _compare(any_engine, many, (0, SPAN))
    for source in (few, many):
        before = source.stats.recomputed
        _compare(any_engine, source, (0, SPAN))
        assert source.stats.recomputed == before  # nothing changed: every bucket is reused


def test_hours_stored_by_one_read_are_not_counted_again_inside_the_days_of_another(engine: Engine) -> None:
    """A window's days are read from day fragments even where hour fragments of the same hours exist."""
    _reset(engine)
    with session_scope(engine) as session:
        ingest_events(SqlEventStore(session), [_body(f"k{h}", (h * 3600 + 60, "acme", Decimal(h), "x"))
                                               for h in range(96)], now=NOW)
    fragments = FragmentUsageSource(engine, METRICS)
    _compare(engine, fragments, (24 * 3600 + 10 * 3600 + 17 * 60, 2 * 24 * 3600 + 5 * 3600 + 30 * 60))
    _compare(engine, fragments, (9 * 3600, 3 * 24 * 3600 + 12 * 3600))


@pytest.mark.parametrize("aggregation", ["unique_count"])
def test_unique_count_reads_raw(engine: Engine, aggregation: str) -> None:
    _reset(engine)
    definition = MetricDefinition("call", aggregation, "n")  # type: ignore[arg-type]
    source = FragmentUsageSource(engine, {"m": definition})
    source.evaluate(definition, ["c1"], DAY0, DAY0 + timedelta(days=2), metric_id="m")
    assert source.stats.recomputed == 0 and source.stats.fragments == 0


def test_verify_finds_no_difference_then_the_one_made_by_hand(engine: Engine, tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`marketsync verify` recomputes current fragments from events; a changed row is named, exit 1."""
    _reset(engine)
    with session_scope(engine) as session:
        create_metric(SqlMetricRepository(session), metric_id="m_calls", name="calls", now=NOW,
                      definition=MetricDefinition("call", "sum", "n"))
        ingest_events(SqlEventStore(session), [_body(f"k{h}", (h * 3600 + 60, "acme", Decimal(h), "x"))
                                               for h in range(60)], now=NOW)
    source = FragmentUsageSource(engine)
    source.usage("m_calls", "c1", DAY0, DAY0 + timedelta(days=3))
    with session_scope(engine) as session:  # a late event: its day is stale, not a difference
        ingest_events(SqlEventStore(session), [_body("late", (3600 + 5, "acme", Decimal(7), "x"))], now=NOW)
    checked, stale, differences = verify_fragments(engine)
    # The three days are one 2-day bucket (Nov 9-10, now stale) and one day (Nov 11, current).
    assert (checked, stale, differences) == (1, 1, [])

    monkeypatch.setenv("DATABASE_URL", str(engine.url.render_as_string(hide_password=False)))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    clean = CliRunner().invoke(main, ["verify", "--customer", "c1"])
    assert clean.exit_code == 0 and "0 difference(s)" in clean.output, clean.output
    with engine.begin() as conn:
        conn.execute(text("UPDATE usage_fragments SET total_units = 1 WHERE size = :day AND bucket = :b"),
                     {"day": DAY, "b": to_micros(DAY0 + timedelta(days=2))})
    broken = CliRunner().invoke(main, ["verify"])
    assert broken.exit_code == 1 and "customer c1, 1d 2026-11-11" in broken.output, broken.output
    bad = CliRunner().invoke(main, ["verify", "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.output


def test_usage_says_what_answered_it_and_compact_drops_only_a_cache(engine: Engine, tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A read reports the fragments and raw events behind it; `marketsync compact` drops fragments, not answers."""
    _reset(engine)
    with session_scope(engine) as session:
        ingest_events(SqlEventStore(session), [_body(f"k{h}", (h * 3600 + 60, "acme", Decimal(h), "x"))
                                               for h in range(60)], now=NOW)
    window = (DAY0 + timedelta(minutes=30), DAY0 + timedelta(days=2, hours=5, minutes=10))
    first = FragmentUsageSource(engine, METRICS).usage("m_sum", "c1", *window)
    assert first.fragments and first.raw_events is not None and first.raw_events < first.event_count
    again = FragmentUsageSource(engine, METRICS).usage("m_sum", "c1", *window)
    assert again == first and again.fragments == first.fragments  # reused, not recomputed
    monkeypatch.setenv("DATABASE_URL", str(engine.url.render_as_string(hide_password=False)))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    fine = CliRunner().invoke(main, ["compact", "--before", "2026-11-10T09:00:00Z"])  # hours and quarters only
    assert fine.exit_code == 0 and "dropped" in fine.output, fine.output
    with engine.connect() as conn:
        sizes = {int(s) for s in conn.execute(text("SELECT DISTINCT size FROM usage_fragments")).scalars()}
        assert not conn.execute(text("SELECT COUNT(*) FROM usage_fragments WHERE size < :day AND bucket < :cut"),
                                {"day": 24 * 3600 * 10**6, "cut": to_micros(DAY0) + 24 * 3600 * 10**6}).scalar()
    assert 24 * 3600 * 10**6 in sizes  # days stay
    assert FragmentUsageSource(engine, METRICS).usage("m_sum", "c1", *window) == first
    dropped = CliRunner().invoke(main, ["compact", "--before", "2026-11-12T00:00:00Z", "--all"])
    assert dropped.exit_code == 0 and "dropped" in dropped.output, dropped.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM usage_fragments")).scalar() == 0
    assert FragmentUsageSource(engine, METRICS).usage("m_sum", "c1", *window) == first
    refused = CliRunner().invoke(main, ["compact", "--before", "soon"])
    assert refused.exit_code == 2 and "--before" in refused.output


# --- costs and invoices across timeline edits ------------------------------------------------------

from billing_core.costs import costs  # noqa: E402
from billing_core.invoices import compute_invoice  # noqa: E402
from billing_core.subscriptions import (  # noqa: E402
    AddPrice, IntervalEdit, SubscriptionError, billing_period, cancel, create_subscription, edit_price_intervals,
    schedule_plan_change,
)

from .helpers import matrix, plan_of, unit  # noqa: E402

PLAN_A = plan_of(unit("0.10", id="a_count", key="count", metric="m_count"),
                 unit("0.003", id="a_sum", key="sum", metric="m_sum"),
                 unit("1.5", id="a_max", key="max", metric="m_max"),
                 unit("0.7", id="a_latest", key="latest", metric="m_latest"),
                 matrix(["g"], "0.01", [(("x",), "0.02")], id="a_grid", key="grid", metric="m_sum"), id="plan_a")
PLAN_B = plan_of(unit("0.25", id="b_count", key="count", metric="m_count"),
                 unit("0.004", id="b_sum", key="sum", metric="m_sum"), id="plan_b")

timeline_step = st.one_of(
    st.tuples(st.just("ingest"), st.lists(event, min_size=1, max_size=5)),
    st.tuples(st.just("deprecate"), st.integers(0, 50)),
    st.tuples(st.just("rate"), st.integers(0, SPAN), st.sampled_from(["0.002", "0.005", "0.0031"])),
    st.tuples(st.just("plan"), st.integers(0, SPAN)),
    st.tuples(st.just("cancel"), st.integers(3600, SPAN)),
)


def _same_money(engine: Engine, source: FragmentUsageSource, sub: Any, window: tuple[int, int]) -> None:
    """Costs over a window, and the period's invoice, equal those read from raw events, digit for digit."""
    lo, hi = sorted(window)
    start, end = DAY0 + timedelta(seconds=lo), DAY0 + timedelta(seconds=max(hi, lo + 1))
    raw = SqlUsageSource(engine, METRICS)
    want, got = costs(sub, start, end, raw), costs(sub, start, end, source)
    assert [p.to_dict() for p in got.per_price_costs] == [p.to_dict() for p in want.per_price_costs]
    period = billing_period(sub, DAY0 + timedelta(seconds=lo))

    def lines(invoice: Any) -> list[tuple[str, ...]]:
        return [(l.id, l.kind, str(l.quantity), str(l.subtotal_unrounded), str(l.amount_unrounded), str(l.amount))
                for l in invoice.line_items] + [("total", str(invoice.total))]

    assert lines(compute_invoice(sub, period, source, now=NOW)) == lines(compute_invoice(sub, period, raw, now=NOW))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(timeline_step, min_size=2, max_size=10), data=st.data())
def test_costs_and_invoices_through_fragments_equal_raw_across_timeline_edits(any_engine: Engine, steps: list,
                                                                              data: st.DataObject) -> None:
    """Backdated price intervals, plan changes and cancellations change no fragment: money stays identical."""
    _reset(any_engine)
    sources = [FragmentUsageSource(any_engine, METRICS),
               FragmentUsageSource(any_engine, METRICS, every_above=0, build_cold=True)]
    sub = create_subscription(id="s1", customer_id="c1", plan=PLAN_A, start=DAY0, now=DAY0)
    keys: list[str] = []
    for n, step in enumerate(steps):
        kind = step[0]
        try:
            if kind == "ingest":
                batch = [_body(f"t{n}-{i}", item) for i, item in enumerate(step[1])]
                with session_scope(any_engine) as session:
                    ingest_events(SqlEventStore(session), batch, now=NOW)
                keys += [body["idempotency_key"] for body in batch]
            elif kind == "deprecate" and keys:
                with session_scope(any_engine) as session:
                    deprecate_event(SqlEventStore(session), keys[step[1] % len(keys)])
            elif kind == "rate":  # a negotiated rate from an instant in the past
                at = DAY0 + timedelta(seconds=step[1])
                current = [i for i in sub.intervals if i.price.key == "sum" and i.start <= at
                           and (i.end is None or at < i.end)]
                if current:
                    sub = edit_price_intervals(
                        sub, now=NOW, edit=[IntervalEdit(current[0].id, end=at)],
                        add=[AddPrice(unit(step[2], id=f"deal{n}", key="sum", metric="m_sum"), start=at)])
            elif kind == "plan":
                sub = schedule_plan_change(sub, PLAN_B if n % 2 else PLAN_A, change_option="requested_date",
                                           change_date=DAY0 + timedelta(seconds=step[1]), now=NOW)
            elif kind == "cancel":
                sub = cancel(sub, cancel_option="requested_date", cancellation_date=DAY0 + timedelta(seconds=step[1]),
                             now=NOW)
        except SubscriptionError:  # an edit the timeline refuses (after the end, say): nothing changes
            pass
        edge = st.one_of(st.integers(0, SPAN), st.integers(0, SPAN // 3600).map(lambda h: h * 3600))
        _same_money(any_engine, data.draw(st.sampled_from(sources)), sub, (data.draw(edge), data.draw(edge)))
    _same_money(any_engine, sources[0], sub, (0, SPAN))
