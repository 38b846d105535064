"""AWS Marketplace steps before applying a contract event.

One AWS purchase reaches us through two feeds that name it differently (docs/marketplaces.md §2.7, §2.9):
SNS messages carry the legacy ``customer-identifier`` (and, on newer products, the license),
EventBridge license events carry the license ARN (often printed without ``arn:``), and
``Purchase Agreement Ended`` carries only the agreement id. ``before_apply`` brings every event
to the one contract of its purchase, keyed by the license id ``l-<hex>`` when it is known and
by the customer identifier otherwise:

- an existing contract is found by key, by license id, by customer identifier or by agreement
  id, and its key is used (so a contract never changes key once created);
- a message naming only a customer identifier asks GetEntitlements for the license, so SNS
  and EventBridge deliveries of the same purchase land on the same contract.

``entitlement-updated`` (and an amended agreement) says only "something changed": the current
entitlement is read with GetEntitlements and put on the event (dimension values, expiration,
the quantity of a single-dimension contract, and the units each dimension includes: a contract
with pay-as-you-go reports only usage above them, docs/billing-rules.md §12.6). A ``created``
event reads them too. An entitlement that has expired when the
notification was sent cancels the contract at its expiration date.

Cancellations need nothing here: ``unsubscribe-pending``, ``Purchase Agreement Ended`` and
``License Deprovisioned`` are all ``canceled`` events effective at the notification time; the
first one applied cancels, the later ones (and ``unsubscribe-success``) find the contract
canceled and change nothing. ``subscribe-fail`` is stored as ignored by the receiver.

``TransientMarketplaceError`` from GetEntitlements propagates so the job is retried.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Mapping

import structlog

from marketplaces.aws.entitlements import AwsEntitlement, entitlement_state, included_units
from marketplaces.base import PermanentMarketplaceError
from marketplaces.aws.wire import license_id
from marketplaces.lifecycle import ContractLookup, ContractView, LifecycleContext

log = structlog.get_logger("marketsync.lifecycle.aws")

SOURCE = "aws"
# The identifiers a contract keeps from its notifications (metering needs the first four).
_CARRIED = ("product_code", "customer_aws_account_id", "license_arn", "customer_identifier", "license_id",
            "agreement_id")


def before_apply(context: LifecycleContext, event: Any) -> Any:
    """Return the event keyed to its purchase's contract, with the current entitlement read."""
    ids = _normalized(event.identifiers)
    entitlements: list[AwsEntitlement] | None = None
    row = find_contract(context.contracts, ids, key=event.contract_key)
    if row is None and not ids.get("license_id") and ids.get("customer_identifier") and ids.get("product_code"):
        # Legacy SNS names only the customer: learn the license so EventBridge events (which
        # name only the license) reach the same contract.
        entitlements = _entitlements(context, ids)
        ids.update(_license_of(entitlements, ids))
        if ids.get("license_id"):
            row = find_contract(context.contracts, ids, key="")
    if row is not None:
        key = row.external_id
        known = dict(row.cloud_identifiers or {})
        for name in _CARRIED:
            if known.get(name) and not ids.get(name):
                ids[name] = str(known[name])
    else:
        key = ids.get("license_id") or ids.get("customer_identifier") or event.contract_key
    event = replace(event, contract_key=key, identifiers=ids)
    if event.kind == "modified":
        return _with_entitlement(context, event, entitlements)
    if event.kind == "created":
        return _with_included(context, event, entitlements)
    return event


def find_contract(contracts: ContractLookup, ids: Mapping[str, str], *, key: str) -> ContractView | None:
    """Return the AWS contract of this purchase: by key, license id, customer identifier or agreement."""
    lid = ids.get("license_id")
    for candidate in (key, lid):
        if candidate:
            row = contracts.find(SOURCE, external_id=candidate)
            if row is not None:
                return row
    if lid:
        row = contracts.find(SOURCE, identifier=("license_id", lid))
        if row is not None:
            return row
    if ids.get("customer_identifier"):
        row = contracts.find(SOURCE, customer_identifier=ids["customer_identifier"])
        if row is not None:
            return row
    if ids.get("agreement_id"):
        # Purchase Agreement Ended / Amended name only the agreement.
        return contracts.find(SOURCE, identifier=("agreement_id", ids["agreement_id"]))
    return None


# --- helpers ---------------------------------------------------------------------------------------

def _normalized(identifiers: Mapping[str, str]) -> dict[str, str]:
    ids = {k: str(v) for k, v in identifiers.items() if v not in (None, "")}
    arn = ids.get("license_arn")
    if arn:
        if arn.startswith("aws:"):
            # EventBridge prints license ARNs without "arn:"; BatchMeterUsage needs the real ARN.
            ids["license_arn"] = arn = "arn:" + arn
        lid = license_id(arn)
        if lid:
            ids["license_id"] = lid
    return ids


def _entitlements(context: LifecycleContext, ids: Mapping[str, str]) -> list[AwsEntitlement]:
    """Read the purchase's entitlement rows (filters: account id, else customer, else license)."""
    return context.adapter.purchase_entitlements(ids)


def _license_of(entitlements: list[AwsEntitlement], ids: Mapping[str, str]) -> dict[str, str]:
    """Return the license identifiers of a legacy customer when its entitlements name exactly one."""
    licenses = {license_id(row.license_arn): row for row in entitlements if license_id(row.license_arn)}
    if len(licenses) != 1:
        return {}
    (lid, row), = licenses.items()
    found = {"license_id": lid or "", "license_arn": row.license_arn or ""}
    if row.customer_aws_account_id:
        found["customer_aws_account_id"] = row.customer_aws_account_id
    return _normalized({**found, **{k: v for k, v in ids.items() if k in found and v}})


def _with_entitlement(context: LifecycleContext, event: Any, rows: list[AwsEntitlement] | None) -> Any:
    """Put the current entitlement on a ``modified`` event (or cancel it when it has expired)."""
    if rows is None:
        rows = _entitlements(context, event.identifiers)
    state = entitlement_state(rows, at=event.effective_at)  # as of the notification's own time
    ids = dict(event.identifiers)
    ids["entitlements"] = json.dumps(state["values"], sort_keys=True, default=str)
    if state["expires_at"] is not None:
        ids["entitlement_expires_at"] = state["expires_at"].isoformat()
    log.info("aws_entitlement_read", contract_key=event.contract_key, dimensions=len(rows),
             expired=state["expired"], quantity=state["quantity"])
    if state["expired"]:
        return replace(event, kind="canceled", effective_at=state["expires_at"], identifiers=ids)
    quantity = state["quantity"] if state["quantity"] is not None else event.quantity
    return replace(event, identifiers=ids, quantity=quantity, entitlements=included_units(rows))


def _with_included(context: LifecycleContext, event: Any, rows: list[AwsEntitlement] | None) -> Any:
    """Put what a new contract includes on its ``created`` event (a contract with pay-as-you-go, §2.6).

    A purchase GetEntitlements cannot be asked about (no entitlement client, an unknown product)
    is created pay-as-you-go, with the reason logged: its usage must not wait for a read that will
    not succeed. A transient failure propagates, so the job retries.
    """
    try:
        if rows is None:
            rows = _entitlements(context, event.identifiers)
    except PermanentMarketplaceError as exc:
        log.warning("aws_entitlement_unread", contract_key=event.contract_key, error=str(exc))
        return event
    included = included_units(rows)
    return replace(event, entitlements=included) if included else event
