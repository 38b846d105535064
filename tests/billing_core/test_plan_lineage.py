"""Plan version lineage: every price and adjustment of version n+1 is added, edited, removed or kept."""

from decimal import Decimal as D

import pytest

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.codec import version_from_dict, version_to_dict
from billing_core.plans import ChangeKind, PlanError, add_version, fill_lineage

from .helpers import fixed, plan_of, t, unit

API = unit("0.10", id="api_v1", key="api")
FEE = fixed("50.00", id="fee_v1", key="fee")
SEATS = unit("5", id="seats_v1", key="seats")
OFF = Adjustment("off_v1", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.1"))
MIN = Adjustment("min_v1", AdjustmentType.MINIMUM, D("20"))


def _lineage(version):
    return sorted((e.kind, e.key, e.change.value, e.id, e.previous_id) for e in version.lineage)


def test_version_one_adds_everything():
    """Version 1 lists every price and adjustment as added, keyed by price key and adjustment id."""
    plan = plan_of(API, FEE, adjustments=(OFF,))
    assert _lineage(plan.version(1)) == [
        ("adjustment", "off_v1", "added", "off_v1", None),
        ("price", "api", "added", "api_v1", None), ("price", "fee", "added", "fee_v1", None)]


def test_added_edited_removed_kept_prices_and_adjustments():
    """Version 2's lineage names each price and adjustment added, edited, removed or kept; an adjustment keeps its key through edits."""
    plan = plan_of(API, FEE, SEATS, adjustments=(OFF, MIN))
    off2 = Adjustment("off_v2", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.2"))
    v2 = add_version(plan, prices=[unit("0.12", id="api_v2", key="api"), FEE, unit("1", id="new", key="new")],
                     adjustments=[off2], replaced_adjustments={"off_v2": "off_v1"}, now=t(2025, 2, 1))
    assert _lineage(v2.version(2)) == [
        ("adjustment", "min_v1", "removed", None, "min_v1"),
        ("adjustment", "off_v1", "edited", "off_v2", "off_v1"),
        ("price", "api", "edited", "api_v2", "api_v1"),
        ("price", "fee", "kept", "fee_v1", "fee_v1"),
        ("price", "new", "added", "new", None),
        ("price", "seats", "removed", None, "seats_v1")]
    # The adjustment keeps its key through a second edit.
    off3 = Adjustment("off_v3", AdjustmentType.PERCENTAGE_DISCOUNT, D("0.3"))
    v3 = add_version(v2, prices=v2.version(2).prices, adjustments=[off3], replaced_adjustments={"off_v3": "off_v2"},
                     now=t(2025, 3, 1))
    assert ("adjustment", "off_v1", "edited", "off_v3", "off_v2") in _lineage(v3.version(3))
    assert v3.version(3).adjustment_key("off_v3") == "off_v1"


def test_replacing_an_unknown_adjustment_is_refused():
    """replace_adjustments naming no adjustment of the latest version is refused naming the field."""
    plan = plan_of(API, adjustments=(OFF,))
    with pytest.raises(PlanError, match="replace_adjustments"):
        add_version(plan, prices=[API], adjustments=[MIN], replaced_adjustments={"min_v1": "nope"}, now=t(2025, 2, 1))


def test_lineage_round_trips_and_is_derived_for_versions_stored_without_one():
    """Lineage survives the storage encoding, and versions stored before it existed get the derived one."""
    plan = add_version(plan_of(API, FEE), prices=[unit("0.2", id="api_v2", key="api")], now=t(2025, 2, 1))
    stored = [version_to_dict(v) for v in plan.versions]
    assert tuple(version_from_dict(d) for d in stored) == plan.versions
    legacy = [{k: v for k, v in d.items() if k != "lineage"} for d in stored]
    assert fill_lineage(version_from_dict(d) for d in legacy) == plan.versions
    assert {e.key: e.change for e in plan.version(2).lineage} == {"api": ChangeKind.EDITED, "fee": ChangeKind.REMOVED}
