"""Plan migrations on one subscription: lineage rules, overrides, adjustments, proration, backdating, revert."""

from datetime import timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.invoices import compute_invoice
from billing_core.periods import Period
from billing_core.plan_migrations import (
    EffectiveTime, MigrationError, Outcome, effective_instant, migrate_subscription, parse_effective_time,
    revert_migration,
)
from billing_core.plans import add_version
from billing_core.subscriptions import (
    AddAdjustment, IntervalEdit, ReplacePrice, create_subscription, edit_price_intervals,
)
from billing_core.usage import InMemoryUsageSource

from .helpers import METRICS, events, fixed, plan_of, t, unit

API = unit("0.10", id="api_v1", key="api")
FEE = fixed("30.00", id="fee_v1", key="fee")
SEATS = unit("5", id="seats_v1", key="seats")
OFF = Adjustment("off_v1", AdjustmentType.AMOUNT_DISCOUNT, D("1"), applies_to_price_ids=("fee",))
V1 = plan_of(API, FEE, SEATS, adjustments=(OFF,))
API2 = unit("0.20", id="api_v2", key="api")
FEE2 = fixed("60.00", id="fee_v2", key="fee")
NEW = unit("1", id="new_v2", key="new")
OFF2 = Adjustment("off_v2", AdjustmentType.AMOUNT_DISCOUNT, D("2"), applies_to_price_ids=("fee",))
PLAN = add_version(V1, prices=[API2, FEE2, NEW], adjustments=[OFF2], replaced_adjustments={"off_v2": "off_v1"},
                   now=t(2025, 1, 10))
NOW = t(2025, 1, 15)


def sub(**kw):
    return create_subscription(id="s1", customer_id="c1", plan=PLAN, version=1, start=t(2025, 1, 1), now=t(2025, 1, 1), **kw)


def migrate(s, when=EffectiveTime.END_OF_INVOICE, overrides="keep", now=NOW):
    return migrate_subscription(s, PLAN, 2, from_versions={1}, effective_time=when, overrides=overrides, now=now,
                                migration_id="mig1")


def spans(s):
    return sorted((i.price.id, i.start, i.end) for i in s.intervals)


def test_edited_added_removed_at_the_next_invoice_boundary():
    """At end_of_invoice an edited price is replaced, an added one starts, a removed one ends, and the phase moves to version 2."""
    result = migrate(sub())
    assert result.outcome is Outcome.MIGRATED and result.effective_at == t(2025, 2, 1)
    assert spans(result.subscription) == [
        ("api_v1", t(2025, 1, 1), t(2025, 2, 1)), ("api_v2", t(2025, 2, 1), None),
        ("fee_v1", t(2025, 1, 1), t(2025, 2, 1)), ("fee_v2", t(2025, 2, 1), None),
        ("new_v2", t(2025, 2, 1), None), ("seats_v1", t(2025, 1, 1), t(2025, 2, 1))]
    assert sorted((a.adjustment.id, a.start, a.end) for a in result.subscription.adjustment_intervals) == [
        ("off_v1", t(2025, 1, 1), t(2025, 2, 1)), ("off_v2", t(2025, 2, 1), None)]
    assert [(p.plan_version, p.start, p.end) for p in result.subscription.phases] == [
        (1, t(2025, 1, 1), t(2025, 2, 1)), (2, t(2025, 2, 1), None)]
    assert result.subscription.edits[-1].kind == "plan_migration"


def test_a_price_removed_ad_hoc_is_not_re_added_by_an_edit():
    """A price the subscription removed (at creation or by an interval edit) is not brought back by its edit."""
    result = migrate(sub(remove_prices=["api"]))
    assert "api_v2" not in {i.price.id for i in result.subscription.intervals}
    # Ended ad hoc later (an interval edit) counts the same from that instant.
    s = sub()
    api = next(i for i in s.intervals if i.price.id == "api_v1")
    s = edit_price_intervals(s, now=NOW, edit=[IntervalEdit(api.id, end=t(2025, 1, 20))])
    assert "api_v2" not in {i.price.id for i in migrate(s).subscription.intervals}


def test_an_override_of_an_edited_price_is_kept_as_a_conflict_unless_replace():
    """A replace_prices override of an edited price is kept and reported unless overrides is replace."""
    custom = unit("0.05", id="api_custom", key="api")
    s = sub(replace_prices=[ReplacePrice("api", custom)])
    kept = migrate(s)
    assert kept.outcome is Outcome.CONFLICT and "price api" in kept.reasons[0]
    assert ("api_custom", t(2025, 1, 1), None) in spans(kept.subscription)
    assert "api_v2" not in {i.price.id for i in kept.subscription.intervals}
    replaced = migrate(s, overrides="replace")
    assert replaced.outcome is Outcome.MIGRATED
    assert {("api_custom", t(2025, 1, 1), t(2025, 2, 1)), ("api_v2", t(2025, 2, 1), None)} <= set(spans(replaced.subscription))


def test_adjustments_follow_the_same_rules():
    """Plan adjustments follow the lineage; a subscription's own adjustment over the same prices is an override."""
    own = Adjustment("mine", AdjustmentType.AMOUNT_DISCOUNT, D("5"), applies_to_price_ids=("fee",))
    s = sub(remove_adjustments=["off_v1"], add_adjustments=[AddAdjustment(own)])
    kept = migrate(s)
    assert kept.outcome is Outcome.CONFLICT and "adjustment off_v1" in kept.reasons[0]
    assert "off_v2" not in {a.adjustment.id for a in kept.subscription.adjustment_intervals}
    replaced = migrate(s, overrides="replace")
    assert {(a.adjustment.id, a.end) for a in replaced.subscription.adjustment_intervals} == {
        ("mine", t(2025, 2, 1)), ("off_v2", None)}
    removed_only = migrate(sub(remove_adjustments=["off_v1"]))
    assert removed_only.outcome is Outcome.MIGRATED
    assert not removed_only.subscription.adjustment_intervals


def test_fixed_fees_are_prorated_across_a_mid_period_instant():
    """A fixed fee edited mid-period bills each version for its share of the days."""
    s = sub(remove_prices=["api", "seats"], remove_adjustments=["off_v1"])
    migrated = migrate(s, t(2025, 1, 16)).subscription
    usage = InMemoryUsageSource(METRICS, [])
    invoice = compute_invoice(migrated, Period(t(2025, 1, 1), t(2025, 2, 1)), usage, now=NOW)
    # 15 days at 30.00 and 16 days at 60.00 of a 31-day month.
    assert invoice.total == (D("30") * 15 / 31).quantize(D("0.01")) + (D("60") * 16 / 31).quantize(D("0.01"))


def test_backdated_migration_reprices_usage_from_its_instant():
    """A backdated migration prices usage after its instant at the new version, before it at the old."""
    s = sub(remove_prices=["fee", "seats"], remove_adjustments=["off_v1"])
    usage = InMemoryUsageSource(METRICS, events("c1", *[(t(2025, 1, d), {}) for d in (3, 5, 12, 14)]))
    migrated = migrate(s, t(2025, 1, 10)).subscription
    invoice = compute_invoice(migrated, Period(t(2025, 1, 1), t(2025, 2, 1)), usage, now=NOW)
    assert invoice.total == D("0.10") * 2 + D("0.20") * 2 + D("1") * 2  # "new" also counts calls


@pytest.mark.parametrize(("when", "reason"), [
    (t(2025, 3, 1), "ends before"),
])
def test_skips(when, reason):
    """A subscription ending before the instant, or already on the target version, is skipped with the reason."""
    s = sub(end=t(2025, 2, 15))
    result = migrate(s, when)
    assert result.outcome is Outcome.SKIPPED and reason in result.reasons[0]
    on_two = create_subscription(id="s2", customer_id="c1", plan=PLAN, version=2, start=t(2025, 1, 1), now=NOW)
    assert migrate(on_two).outcome is Outcome.SKIPPED


def test_effective_times():
    """end_of_invoice and end_of_term resolve per subscription; an instant before the start is the start; bad values name the field."""
    s = sub()
    assert effective_instant(s, EffectiveTime.END_OF_INVOICE, NOW) == t(2025, 2, 1)
    assert effective_instant(s, EffectiveTime.END_OF_TERM, NOW) == t(2025, 2, 1)
    assert effective_instant(s, t(2024, 6, 1), NOW) == t(2025, 1, 1)
    assert parse_effective_time("2025-01-16T00:00:00Z") == t(2025, 1, 16)
    for bad in ("tomorrow", "2025-01-16T00:00:00", 5, None):
        with pytest.raises(MigrationError, match="effective_time"):
            parse_effective_time(bad)


def test_a_migration_at_the_subscription_start_replaces_the_intervals():
    """A migration at the subscription's start leaves no zero-length interval: the new prices take the old ones' place."""
    result = migrate(sub(), t(2025, 1, 1))
    assert spans(result.subscription) == [("api_v2", t(2025, 1, 1), None), ("fee_v2", t(2025, 1, 1), None),
                                          ("new_v2", t(2025, 1, 1), None)]


@settings(max_examples=60, deadline=None)
@given(day=st.integers(min_value=0, max_value=80), hour=st.integers(min_value=0, max_value=23),
       remove=st.sets(st.sampled_from(["api", "fee", "seats"])), override=st.booleans(),
       mode=st.sampled_from(["keep", "replace"]))
def test_prices_before_the_instant_are_untouched_and_revert_restores_the_timeline(day, hour, remove, override, mode):
    """Before the instant every interval is as it was; from it, plan-following keys carry version 2's
    prices; reverting a not-yet-effective migration gives back the timeline it started from."""
    replace_prices = [ReplacePrice("fee", fixed("10", id="fee_custom", key="fee"))] if override and "fee" not in remove else []
    s = sub(remove_prices=sorted(remove), replace_prices=replace_prices)
    at = t(2025, 1, 1) + timedelta(days=day, hours=hour)
    result = migrate(s, at, overrides=mode)
    migrated = result.subscription

    def live(x, instant):
        return sorted(i.price.id for i in x.intervals if i.start <= instant and (i.end is None or instant < i.end))
    before = at - timedelta(minutes=1)
    if before >= s.start:
        assert live(migrated, before) == live(s, before)
    expected = {"new_v2"} | {f"{k}_v2" for k in ("api", "fee") if k not in remove}
    if replace_prices and mode == "keep":
        expected = (expected - {"fee_v2"}) | {"fee_custom"}
    assert set(live(migrated, at)) == expected
    assert result.outcome is (Outcome.CONFLICT if replace_prices and mode == "keep" else Outcome.MIGRATED)
    if at > NOW:
        reverted = revert_migration(migrated, result.undo, now=NOW, migration_id="mig1")
        assert (reverted.intervals, reverted.adjustment_intervals, reverted.phases) == (
            s.intervals, s.adjustment_intervals, s.phases)
    else:
        with pytest.raises(MigrationError, match="already effective"):
            revert_migration(migrated, result.undo, now=NOW, migration_id="mig1")
