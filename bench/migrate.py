"""Plan migrations at scale: 10,000 subscriptions moved to version 2, then costs for all of them.

    python -m bench.migrate [--subscriptions 2500 10000] [--events-per-subscription 100] [--quick]

Builds the data set of ``bench.costs`` (three plans mixing every price model, ``--subscriptions``
customers each on one of them, ``--events-per-subscription`` events each in the current billing
period) in a SQLite file, adds version 2 to each plan (one usage price edited, one fixed fee edited, one price added)
and copies the file. Then:

1. **end_of_invoice**: a migration of every subscription, effective at each one's next
   billing-period boundary, run in chunks as the worker runs it (``worker.plan_migrations.run``);
2. **backdated**: on the copy, a migration effective at the start of the current period;
3. **costs** to date of every subscription on the backdated copy, through the usage fragments,
   cold then warm (the warm read is the one timed against the target), compared with the same
   costs read from the raw events;
4. **verify**: ``marketsync verify``'s fragment check (every current bucket recomputed from the
   events), and every migrated timeline compared with a from-scratch edit of its original.

Runs it all at each size (by default 2,500 then 10,000 subscriptions, 100 events each: 1 M events at
the larger), printing subscriptions/s for each migration, then each figure's ratio between the
smallest and the largest size. Targets, at 10,000: each migration <= 30 s, warm costs <= 1 s.
``--quick`` runs a small data set (300 subscriptions, about 20,000 events) to check it all works.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from bench.common import machine
from bench.costs import NOW, PERIOD_START, all_costs, build

EDITS = {"plan_a": ("a_calls", "0.00080"), "plan_b": ("b_tokens", None), "plan_c": ("c_calls", "0.0012")}


def add_versions(path: Path) -> None:
    """Give each plan a version 2: a usage price edited (same key, new id), a fee edited, a price added."""
    from dataclasses import replace

    from billing_core import SqlCatalog
    from billing_core.plans import add_version
    from billing_core.pricing import ModelType, UnitConfig
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with db.session_scope(engine) as session:
        catalog = SqlCatalog(session)
        for plan_id in ("plan_a", "plan_b", "plan_c"):
            plan = catalog.get_plan(plan_id, for_update=True)
            prices = []
            for price in plan.version(1).prices:
                if price.key in ("fee", "support"):
                    price = replace(price, id=f"{price.id}_{plan_id}_v2", config=UnitConfig(
                        price.config.unit_amount * Decimal("1.1")))  # type: ignore[union-attr]
                elif price.key == EDITS[plan_id][0] and EDITS[plan_id][1] is not None:
                    price = replace(price, id=f"{price.id}_v2", config=UnitConfig(Decimal(EDITS[plan_id][1])))
                prices.append(price)
            if plan_id == "plan_b":  # b_tokens removed, a unit token price added
                prices = [p for p in prices if p.key != "b_tokens"]
                prices.append(replace(plan.version(1).prices[0], id="b_tokens_unit", key="b_tokens_unit",
                                      model_type=ModelType.UNIT, config=UnitConfig(Decimal("0.0015"))))
            catalog.save_plan(add_version(plan, prices=prices, now=NOW))
    engine.dispose()


def snapshot(path: Path) -> dict:
    """Every subscription's timeline, by id."""
    from billing_core.persistence.subscriptions import SqlSubscriptions
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with db.session_scope(engine) as session:
        subs = {s.id: s for s in SqlSubscriptions(session).all_active(NOW)}
    engine.dispose()
    return subs


def migrate(path: Path, effective: datetime | str, label: str) -> float:
    """Start and run one migration of every subscription to version 2; return the seconds it took."""
    from billing_core import MigrationRequest, parse_effective_time
    from worker import db, plan_migrations

    engine = db.build_engine(f"sqlite:///{path}")
    total = 0
    started = time.perf_counter()
    for plan_id in ("plan_a", "plan_b", "plan_c"):
        migration = plan_migrations.start(engine, plan_id, MigrationRequest(
            to_version=2, effective_time=parse_effective_time(effective)), now=NOW, migration_id=f"mig_{label}_{plan_id}")
        done = plan_migrations.run(engine, migration.id, now_fn=lambda: NOW, budget=None)
        assert done.status == "completed", (done.status, done.counts)
        total += done.counts.get("migrated", 0)
    elapsed = time.perf_counter() - started
    engine.dispose()
    print(f"  {label}: {total:,} subscriptions migrated in {elapsed:.2f} s ({total / elapsed:,.0f} subscriptions/s)")
    return elapsed


def check_timelines(path: Path, before: dict, effective: datetime | str) -> int:
    """Compare every stored timeline with a from-scratch migration of its original; return the differences."""
    from billing_core import SqlCatalog, parse_effective_time
    from billing_core.plan_migrations import migrate_subscription
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with db.session_scope(engine) as session:
        plans = {p: SqlCatalog(session).get_plan(p) for p in ("plan_a", "plan_b", "plan_c")}
    engine.dispose()
    after = snapshot(path)
    wrong = 0
    for sub_id, sub in before.items():
        expected = migrate_subscription(sub, plans[sub.phases[-1].plan_id], 2, from_versions={1},
                                        effective_time=parse_effective_time(effective), overrides="keep", now=NOW,
                                        migration_id="").subscription
        if expected is None or after[sub_id].intervals != expected.intervals or after[sub_id].phases != expected.phases:
            wrong += 1
    return wrong


def verify(path: Path) -> int:
    """``marketsync verify``'s fragment check; return the differences (printed)."""
    from billing_core.sql_fragments import verify_fragments
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    checked, stale, differences = verify_fragments(engine)
    engine.dispose()
    for line in differences:
        print(f"    {line}")
    print(f"  verify: {checked:,} fragment bucket(s) recomputed from events, {stale} stale, "
          f"{len(differences)} difference(s)")
    return len(differences)


def one_size(subscriptions: int, events: int) -> dict[str, float]:
    """Run every step at one size; return its figures (SystemExit 1 on any difference)."""
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        first, second = Path(tmp) / "a.db", Path(tmp) / "b.db"
        started = time.perf_counter()
        build(first, subscriptions, events)
        add_versions(first)
        shutil.copy(first, second)
        before = snapshot(first)
        print(f"{subscriptions:,} subscriptions, {events:,} events in the current period "
              f"(setup {time.perf_counter() - started:.1f} s, not timed)")
        eoi = migrate(first, "end_of_invoice", "end_of_invoice")
        back = migrate(second, PERIOD_START, "backdated to the period start")
        wrong = check_timelines(first, before, "end_of_invoice") + check_timelines(second, before, PERIOD_START)
        print(f"  timelines equal to a from-scratch edit: {len(before) * 2 - wrong:,} of {len(before) * 2:,}")
        raw_s, count, raw_total, _ = all_costs(second, "raw")
        cold_s, _, cold_total, _ = all_costs(second, "fragments")
        warm_s, _, warm_total, phases = all_costs(second, "fragments")
        print(f"  costs of {count:,} subscriptions after the backdated migration: raw {raw_s:.2f} s, "
              f"cold {cold_s:.2f} s, warm {warm_s:.2f} s; totals {raw_total} / {cold_total} / {warm_total} USD")
        print("  warm, by phase: " + ", ".join(f"{name} {value:.2f} s" for name, value in phases.items()))
        differences = verify(second)
        ok = wrong == 0 and differences == 0 and raw_total == cold_total == warm_total
        print(f"  {'no difference' if ok else 'DIFFERENCES FOUND'}")
        if not ok:
            raise SystemExit(1)
    return {"end_of_invoice": eoi, "backdated": back, "warm costs": warm_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, nargs="+", default=[2_500, 10_000],
                        help="the sizes, each in one run (events scale with them)")
    parser.add_argument("--events-per-subscription", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a small data set: check it works, time nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.subscriptions, args.events_per_subscription = [300], 66
    print(f"machine: {machine()}")
    figures = [(n, one_size(n, n * args.events_per_subscription)) for n in args.subscriptions]
    if len(figures) > 1:
        (small, a), (large, b) = figures[0], figures[-1]
        print(f"\n{large / small:g}x the subscriptions and events ({small:,} -> {large:,}):")
        for name in a:
            print(f"  {name}: {a[name]:.2f} s -> {b[name]:.2f} s ({b[name] / a[name]:.2f} x)")
    n, last = figures[-1]
    print(f"targets at {n:,} subscriptions: each migration <= 30 s ({last['end_of_invoice']:.1f} s, "
          f"{last['backdated']:.1f} s), warm costs <= 1 s ({last['warm costs']:.2f} s)")


if __name__ == "__main__":
    main()
