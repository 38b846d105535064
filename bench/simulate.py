"""A plan version simulated over 3 past months for every subscription of the plan.

    python -m bench.simulate [--subscriptions 10000] [--events 1000000] [--quick]

Builds a fresh, migrated SQLite file (``bench.costs.build``) with ``--subscriptions`` customers,
all on plan ``a`` (unit with a minimum, tiered, a fixed fee in advance) since January, and that
many events spread from August 1 to now (2026-11-21). Version 2 of the plan raises the call price,
changes the token tiers and adds a support fee. Then times ``service_plans.simulation`` for August,
September and October: cold (no usage fragment stored: the raw batch path), and warm (after the
fragments the cold run asked for are built, as the hourly sync keeps them). Each run computes
every period's invoice twice (as billed, under version 2) through the invoice engine.

Checks that both runs give the same result and that, for a sample of subscriptions, "current" is
the engine's invoices computed one by one. ``--quick``: 500 subscriptions, 20,000 events (seconds).
Target: 10,000 subscriptions × 3 months ≤ 30 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench.common import machine
from bench.costs import NOW, build

EVENTS_FROM = datetime(2026, 8, 1, tzinfo=UTC)
START, END = datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
TARGET_SECONDS = 30.0


def add_version_2(path: Path) -> None:
    """Store version 2 of plan ``a``: calls dearer, new token tiers, a support fee (not timed)."""
    from billing_core.plans import add_version
    from billing_core.persistence.catalog import SqlCatalog
    from billing_core.pricing import ModelType, Price, Tier, TieredConfig, UnitConfig
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with db.session_scope(engine) as session:
        catalog = SqlCatalog(session)
        plan = catalog.get_plan("plan_a")
        v1 = plan.version(1)
        calls, tokens = v1.price_by_key("a_calls"), v1.price_by_key("a_tokens")
        assert calls is not None and tokens is not None
        d = Decimal
        prices = [
            Price(id="a_calls_v2", key="a_calls", name="a_calls", item_id=calls.item_id, model_type=ModelType.UNIT,
                  config=UnitConfig(d("0.00080")), metric_id="calls", minimum_amount=d("5")),
            Price(id="a_tokens_v2", key="a_tokens", name="a_tokens", item_id=tokens.item_id,
                  model_type=ModelType.TIERED, metric_id="tokens",
                  config=TieredConfig((Tier(d(0), d(20000), d("0.0009")), Tier(d(20000), None, d("0.0004"))))),
            *[p for p in v1.prices if p.key == "fee"],
            Price(id="a_support", key="a_support", name="a_support", item_id=calls.item_id, model_type=ModelType.UNIT,
                  config=UnitConfig(d("3.00")), fixed_price_quantity=d(1)),
        ]
        catalog.save_plan(add_version(plan, prices=prices, now=datetime(2026, 6, 1, tzinfo=UTC)))
    engine.dispose()


def run(path: Path) -> tuple[float, object, int]:
    """Time one simulation of plan a v2 over August..October; return (seconds, result, fragments built)."""
    from billing_core import service_plans, usage_source
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    with engine.connect():
        pass  # open the pool outside the timing
    source = usage_source(engine)
    steps: list[tuple[int, int]] = []
    started = time.perf_counter()
    with db.session_scope(engine) as session:
        result = service_plans.simulation(session, source, plan_id="plan_a", version=2, draft=None, customer_ids=None,
                                          start=START, end=END, now=NOW,
                                          progress=lambda done, total: steps.append((done, total)))
    elapsed = time.perf_counter() - started
    built = source.build_pending() if getattr(source, "pending", None) else 0
    engine.dispose()
    assert steps and steps[-1][0] == steps[-1][1], steps
    return elapsed, result, built


def check_sample(path: Path, result, sample: int = 20) -> None:  # type: ignore[no-untyped-def]
    """Check "current" against the engine's invoices computed one by one for a few subscriptions."""
    from billing_core.invoices import compute_invoice
    from billing_core.persistence.subscriptions import SqlSubscriptions
    from billing_core.simulations import periods_within
    from billing_core.sql_usage_batch import BatchSqlUsageSource
    from worker import db

    engine = db.build_engine(f"sqlite:///{path}")
    by_customer = {c.customer_id: c for c in result.customers}
    with db.session_scope(engine) as session:
        subs = SqlSubscriptions(session).get_many([f"sub_{i:05d}" for i in range(sample)])
        source = BatchSqlUsageSource(session)
        for sub in subs.values():
            total = sum((compute_invoice(sub, p, source, now=NOW).total for p in periods_within(sub, START, END)),
                        Decimal(0))
            assert by_customer[sub.customer_id].current == total, (sub.id, by_customer[sub.customer_id].current, total)
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Build the data set, time a cold and a warm simulation, check them, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="500 subscriptions and 20,000 events")
    args = parser.parse_args(argv)
    if args.quick:
        args.subscriptions, args.events = 500, 20_000
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        path = Path(tmp) / "marketsync.db"
        started = time.perf_counter()
        build(path, args.subscriptions, args.events, plans_used=1, events_from=EVENTS_FROM)
        add_version_2(path)
        print(f"{args.subscriptions:,} subscriptions on one plan, {args.events:,} events since "
              f"{EVENTS_FROM:%Y-%m-%d} (setup {time.perf_counter() - started:.1f} s, not timed)")
        cold, result, built = run(path)
        print(f"  cold (no fragment): {cold:.2f} s for {result.periods:,} periods "  # type: ignore[attr-defined]
              f"({len(result.customers):,} customers; {built:,} fragment spans built after the answer)")  # type: ignore[attr-defined]
        warm, again, _ = run(path)
        print(f"  warm (fragments current): {warm:.2f} s")
        assert again == result, "the cold and warm simulations differ"
        check_sample(path, result)
        print(f"  revenue {result.current} -> {result.simulated} USD; "  # type: ignore[attr-defined]
              + ", ".join(f"{b.label}: {b.customers}" for b in result.distribution()))  # type: ignore[attr-defined]
    verdict = "meets" if max(cold, warm) <= TARGET_SECONDS else "MISSES"
    print(f"target: {args.subscriptions:,} subscriptions x 3 months <= {TARGET_SECONDS:.0f} s "
          f"({'quick mode: not the target size; ' if args.quick else ''}{verdict} it: slowest {max(cold, warm):.2f} s)")


if __name__ == "__main__":
    main()
