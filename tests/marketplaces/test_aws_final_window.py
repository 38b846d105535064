"""The AWS final-usage rule (docs/marketplaces.md §2.10): the hour runs from the deprovisioning instant,
and the flushes are planned so the final report lands inside it (``MarketplaceRules.flush_plan``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from marketplaces import rules

T = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
GRACE = timedelta(minutes=10)


def _at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def test_the_hour_runs_from_the_deprovisioning_instant() -> None:
    """A delivery 25 minutes late leaves 35 minutes, not an hour; a future effective time does not lengthen it."""
    aws = rules("aws")
    assert aws.final_usage_deadline(received_at=_at(30), effective_at=_at(5)) == _at(65)
    assert aws.final_usage_deadline(received_at=_at(30), effective_at=_at(90)) == _at(90)
    assert aws.final_usage_deadline(received_at=_at(30), effective_at=None) == _at(90)


def test_other_marketplaces_keep_their_window_from_receipt() -> None:
    """Azure and Google count their 24 hours from when the cancellation was applied."""
    for name in ("azure", "gcp"):
        assert rules(name).final_usage_deadline(received_at=_at(30), effective_at=_at(5)) == _at(30) + timedelta(hours=24)


@pytest.mark.parametrize(("deprovisioned", "received", "flush_now", "final_at"), [
    pytest.param(5, 5, False, 15, id="early-in-the-hour:-final-alone-after-the-grace"),
    pytest.param(19, 19.5, False, 29.5, id="before-minute-20:-final-alone"),
    pytest.param(25, 25, True, 35, id="the-next-boundary-is-in-time:-both"),
    pytest.param(55, 55, True, 65, id="the-grace-crosses-the-boundary:-both"),
    pytest.param(55, 62, False, 72, id="late-delivery-across-the-boundary:-final-alone"),
    pytest.param(5, 50, False, 50, id="too-late-for-the-grace:-final-at-once"),
    pytest.param(5, 40, False, 45, id="grace-cut-to-the-lead"),
    pytest.param(-120, 10, False, 10, id="hour-already-over:-final-at-once"),
])
def test_flush_plan(deprovisioned: float, received: float, flush_now: bool, final_at: float) -> None:
    """The final flush runs after the grace but 20 minutes before the deadline at the latest; a flush now
    runs only when the final one keeps an hour stamp of its own inside the window."""
    plan = rules("aws").flush_plan(_at(received), _at(deprovisioned), _at(received), GRACE)
    assert (plan.now is not None, plan.final_at, plan.deadline) == (flush_now, _at(final_at), _at(deprovisioned + 60))
    if plan.now is not None and plan.final_at.hour == plan.now.hour:
        # The final flush waits for the next boundary: still 20 minutes before the deadline.
        assert plan.now.replace(minute=0, second=0) + timedelta(hours=1) <= plan.deadline - timedelta(minutes=20)


@pytest.mark.parametrize("minute", range(0, 60, 3))
def test_the_final_report_always_has_an_hour_inside_the_window(minute: int) -> None:
    """Whatever the minute of the deprovisioning, every planned flush has its own hour stamp and the last
    one can run before the deadline's last 20 minutes (the watchdog's margin is 15)."""
    aws = rules("aws")
    instant = _at(minute)
    plan = aws.flush_plan(instant, instant, instant, GRACE)
    stamps = [plan.final_at.replace(minute=0, second=0, microsecond=0)]
    lands = plan.final_at
    if plan.now is not None:
        now_stamp = plan.now.replace(minute=0, second=0, microsecond=0)
        if now_stamp == stamps[0]:  # the final flush then waits for the next boundary
            lands = now_stamp + timedelta(hours=1)
    assert lands <= plan.deadline - aws.final_flush_lead
