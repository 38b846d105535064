"""The billing gateway of the contract use cases, over the embedded billing core."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timezone

from sqlalchemy import Engine
from sqlmodel import Session

from billing_core import subscriptions as subs
from billing_core.customers import create_customer
from billing_core.errors import BillingError, Conflict, NotFound
from billing_core.persistence.catalog import SqlCatalog
from billing_core import SqlCustomerRepository
from billing_core.persistence.subscriptions import SqlSubscriptions
from worker.contracts import BillingUnavailable


def subscription_id_for(idempotency_key: str) -> str:
    """Return the deterministic subscription id of a contract (so a retry finds, not duplicates)."""
    return "sub_" + hashlib.sha256(f"contract:{idempotency_key}".encode()).hexdigest()[:20]


def placeholder_email(external_customer_id: str) -> str:
    """Return an address under the reserved .invalid domain for buyers the marketplace names no email for."""
    slug = re.sub(r"[^a-z0-9]+", "-", external_customer_id.lower()).strip("-")[:60] or "buyer"
    return f"{slug}@marketplace.invalid"


class CoreBillingGateway:
    """Create customers and subscriptions, and edit timelines, in the billing core's database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def ensure_customer(self, *, external_customer_id: str, name: str, email: str, currency: str) -> str:
        """Return the customer with this external id, creating it (once) if needed."""
        with Session(self.engine, expire_on_commit=False) as session:
            repository = SqlCustomerRepository(session)
            try:
                return repository.get_by_external_id(external_customer_id).id
            except NotFound:
                pass
            try:
                customer = create_customer(
                    repository, customer_id="cus_" + secrets.token_hex(10), name=name or external_customer_id,
                    email=email or placeholder_email(external_customer_id), now=datetime.now(timezone.utc),
                    external_customer_id=external_customer_id, currency=currency or None,
                )
                session.commit()
                return customer.id
            except Conflict:
                session.rollback()
            except BillingError as exc:
                session.rollback()
                raise BillingUnavailable(f"could not create billing customer {external_customer_id!r}: {exc}") from None
        # Another process created it in the meantime: read theirs.
        with Session(self.engine) as session:
            try:
                return SqlCustomerRepository(session).get_by_external_id(external_customer_id).id
            except NotFound:
                raise BillingUnavailable(f"could not create billing customer {external_customer_id!r}") from None

    def create_subscription(self, *, idempotency_key: str, customer_id: str, plan_id: str, start: datetime,
                            external_marketplace: str, reporting_id: str) -> str:
        """Create the contract's subscription once; a retry returns the same id."""
        sub_id = subscription_id_for(idempotency_key)
        with Session(self.engine, expire_on_commit=False) as session:
            repository = SqlSubscriptions(session)
            try:
                return repository.get(sub_id).id
            except NotFound:
                pass
            try:
                plan = SqlCatalog(session).get_plan(plan_id)
            except NotFound:
                raise BillingUnavailable(
                    f"the listing's billing plan {plan_id!r} does not exist: create it or fix the listing"
                ) from None
            try:
                sub = subs.create_subscription(
                    id=sub_id, customer_id=customer_id, plan=plan, start=_utc(start),
                    now=datetime.now(timezone.utc), external_marketplace=external_marketplace,
                    external_marketplace_reporting_id=reporting_id,
                )
                repository.add(sub)
                session.commit()
            except (BillingError, ValueError) as exc:
                session.rollback()
                raise BillingUnavailable(f"could not create the subscription: {exc}") from None
        return sub_id

    def subscription_customer(self, subscription_id: str) -> str | None:
        """Return the customer id of a subscription, or None if there is none."""
        with Session(self.engine) as session:
            try:
                return SqlSubscriptions(session).get(subscription_id).customer_id
            except NotFound:
                return None

    def end_subscription(self, subscription_id: str, *, at: datetime, now: datetime) -> None:
        """End the subscription at ``at`` (a no-op if it already ends there or earlier)."""
        with Session(self.engine, expire_on_commit=False) as session:
            repository = SqlSubscriptions(session)
            sub = repository.get(subscription_id)
            at = _utc(at)
            if sub.end is not None and sub.end <= at:
                return
            at = max(at, sub.start)
            try:
                ended = subs.cancel(sub, cancel_option="requested_date", now=_utc(now), cancellation_date=at)
                repository.save(ended, expected_revision=len(sub.edits))
                session.commit()
            except Conflict:
                session.rollback()
                raise  # edited meanwhile: the caller applies the event again
            except (BillingError, ValueError) as exc:
                session.rollback()
                raise BillingUnavailable(f"could not end subscription {subscription_id}: {exc}") from None

    def change_plan(self, subscription_id: str, *, plan_id: str, at: datetime, now: datetime) -> None:
        """Move the subscription to ``plan_id`` from ``at``."""
        with Session(self.engine, expire_on_commit=False) as session:
            repository = SqlSubscriptions(session)
            sub = repository.get(subscription_id)
            try:
                plan = SqlCatalog(session).get_plan(plan_id)
                changed = subs.schedule_plan_change(sub, plan, change_option="requested_date", now=_utc(now),
                                                    change_date=max(_utc(at), sub.start))
                repository.save(changed, expected_revision=len(sub.edits))
                session.commit()
            except Conflict:
                session.rollback()
                raise  # edited meanwhile: the caller applies the event again
            except (BillingError, ValueError) as exc:
                session.rollback()
                raise BillingUnavailable(f"could not change the plan of {subscription_id}: {exc}") from None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
