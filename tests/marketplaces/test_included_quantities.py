"""What each marketplace says a contract includes, read into whole units per dimension (docs/marketplaces.md §1.13)."""

from __future__ import annotations

from typing import Any

import pytest

from marketplaces.aws.entitlements import AwsEntitlement, included_units
from marketplaces.azure.fulfillment import included_of
from marketplaces.base import whole_units
from marketplaces.gcp.procurement import commitments_of


@pytest.mark.parametrize(("value", "units"), [
    (1000, 1000), ("1000", 1000), (" 25 ", 25), (1000.0, 1000), ("1e3", 1000), (0, 0),
    (True, None), (None, None), ("gold", None), (1.5, None), ("-1", None), ("NaN", None), ("Infinity", None),
], ids=["int", "text", "spaces", "whole-float", "exponent", "zero", "bool", "none", "word", "fraction",
        "negative", "nan", "infinity"])
def test_whole_units(value: Any, units: int | None) -> None:
    """Only a whole, finite, non-negative count is an included quantity."""
    assert whole_units(value) == units


def test_aws_integer_entitlements_are_included_units() -> None:
    """GetEntitlements' IntegerValue rows include units; boolean, string and double rows do not."""
    rows = [AwsEntitlement("p", "api_calls", 1000), AwsEntitlement("p", "sso", True),
            AwsEntitlement("p", "tier", "gold"), AwsEntitlement("p", "storage", 2.5), AwsEntitlement("p", "", 3)]
    assert included_units(rows) == {"api_calls": 1000}


def test_azure_plan_included_base_quantities() -> None:
    """listAvailablePlans: the plan's monthly term's meteredQuantityIncluded (units as text), else its first term's."""
    plan = {"planId": "pro", "planComponents": {"recurrentBillingTerms": [{
        "termUnit": "P1M", "meteredQuantityIncluded": [{"dimensionId": "api_calls", "units": "1000"},
                                                       {"dimensionId": "gb", "units": "0.5"},
                                                       {"dimensionId": "", "units": "3"}]}]}}
    assert included_of(plan) == {"api_calls": 1000}
    assert included_of({"planId": "payg"}) == {} and included_of({"planComponents": {"recurrentBillingTerms": []}}) == {}
    yearly_first = {"planComponents": {"recurrentBillingTerms": [
        {"termUnit": "P1Y", "meteredQuantityIncluded": [{"dimensionId": "api_calls", "units": "12000"}]},
        {"termUnit": "P1M", "meteredQuantityIncluded": [{"dimensionId": "api_calls", "units": "1000"}]}]}}
    assert included_of(yearly_first) == {"api_calls": 1000}  # the monthly term: usage is counted per month


def test_google_commitments_by_metric_short_name() -> None:
    """The modeled commitments: the metric's short name (a full metric name is cut at its last '/')."""
    entitlement = {"commitments": [{"metric": "svc.example.com/api_calls", "quantity": "1000"},
                                   {"metric": "usage_fee", "quantity": 20}, {"metric": "x", "quantity": "lots"}, "bad"]}
    assert commitments_of(entitlement) == {"api_calls": 1000, "usage_fee": 20}
    assert commitments_of({}) == {}
