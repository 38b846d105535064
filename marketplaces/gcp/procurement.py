"""Partner Procurement (docs/marketplaces.md §4.6, §4.7): entitlements and accounts, read and approved."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from marketplaces.base import PermanentMarketplaceError, TransientMarketplaceError, whole_units


class Procurement:
    """The Partner Procurement part of ``GcpMarketplace`` (needs ``procurement``, ``provider_id``)."""

    def get_entitlement(self, entitlement_id: str) -> dict[str, Any] | None:
        """Return the entitlement, or None when it does not exist (deleted)."""
        return self._procure(
            lambda p: p.entitlements().get(name=self._name("entitlements", entitlement_id)),
            none_on_404=True,
        )

    def included_quantities(self, identifiers: Mapping[str, str], plan: str | None = None) -> dict[str, int]:
        """Return the units of each metric the entitlement's commitment includes (§4.11)."""
        entitlement_id = identifiers.get("gcp_entitlement_id") or identifiers.get("entitlement_id") or ""
        entitlement = self.get_entitlement(entitlement_id) if entitlement_id else None
        return commitments_of(entitlement or {})

    def list_entitlements(self, filter: str | None = None, page_size: int | None = None) -> list[dict[str, Any]]:
        """Return every entitlement matching ``filter`` (e.g. ``state=ENTITLEMENT_ACTIVE``)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"parent": f"providers/{self._provider()}"}
            if filter:
                params["filter"] = filter
            if page_size:
                params["pageSize"] = page_size
            if token:
                params["pageToken"] = token
            page = self._procure(lambda p: p.entitlements().list(**params))
            items.extend(page.get("entitlements", []))
            token = page.get("nextPageToken")
            if not token:
                return items

    def approve_entitlement(self, entitlement_id: str, properties: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Approve a requested entitlement (billing starts once it is active)."""
        body: dict[str, Any] = {"properties": dict(properties)} if properties else {}
        return self._procure(
            lambda p: p.entitlements().approve(name=self._name("entitlements", entitlement_id), body=body)
        )

    def reject_entitlement(self, entitlement_id: str, reason: str) -> dict[str, Any]:
        """Reject a requested entitlement with a reason shown to the customer."""
        return self._procure(
            lambda p: p.entitlements().reject(
                name=self._name("entitlements", entitlement_id), body={"reason": reason}
            )
        )

    def approve_plan_change(self, entitlement_id: str, pending_plan_name: str) -> dict[str, Any]:
        """Approve the pending plan change to ``pending_plan_name``."""
        return self._procure(
            lambda p: p.entitlements().approvePlanChange(
                name=self._name("entitlements", entitlement_id),
                body={"pendingPlanName": pending_plan_name},
            )
        )

    def reject_plan_change(self, entitlement_id: str, pending_plan_name: str, reason: str) -> dict[str, Any]:
        """Reject the pending plan change to ``pending_plan_name``."""
        return self._procure(
            lambda p: p.entitlements().rejectPlanChange(
                name=self._name("entitlements", entitlement_id),
                body={"pendingPlanName": pending_plan_name, "reason": reason},
            )
        )

    def get_account(self, account_id: str) -> dict[str, Any] | None:
        """Return the procurement account, or None when it does not exist."""
        return self._procure(
            lambda p: p.accounts().get(name=self._name("accounts", account_id)), none_on_404=True
        )

    def approve_account(self, account_id: str, approval_name: str = "signup", reason: str = "") -> dict[str, Any]:
        """Approve the account's ``approval_name`` approval (the customer signed up)."""
        body: dict[str, Any] = {"approvalName": approval_name}
        if reason:
            body["reason"] = reason
        return self._procure(
            lambda p: p.accounts().approve(name=self._name("accounts", account_id), body=body)
        )

    def _provider(self) -> str:
        if not self.provider_id:
            raise PermanentMarketplaceError("GCP provider id is not configured (GCP_PROVIDER_ID)")
        return self.provider_id

    def _name(self, collection: str, resource_id: str) -> str:
        return f"providers/{self._provider()}/{collection}/{resource_id}"

    def _procure(self, make_request: Callable[[Any], Any], none_on_404: bool = False) -> Any:
        if self.procurement is None:
            raise PermanentMarketplaceError("no Partner Procurement client is configured")
        from googleapiclient.errors import HttpError

        try:
            return make_request(self.procurement.providers()).execute()
        except HttpError as exc:
            status = int(getattr(exc.resp, "status", 0) or 0)
            if none_on_404 and status == 404:
                return None
            message = f"procurement call failed with HTTP {status}: {exc._get_reason()}"  # noqa: SLF001
            if status in (408, 429) or status >= 500:
                raise TransientMarketplaceError(message) from exc
            raise PermanentMarketplaceError(message) from exc
        except (OSError, TimeoutError) as exc:
            raise TransientMarketplaceError(f"procurement call failed: {exc}") from exc
        except Exception as exc:
            import httplib2

            if isinstance(exc, httplib2.HttpLib2Error):
                raise TransientMarketplaceError(f"procurement call failed: {exc}") from exc
            raise


def commitments_of(entitlement: Mapping[str, Any]) -> dict[str, int]:
    """Return the entitlement's commitments as whole units per metric (docs/marketplaces.md §4.11:
    modeled by the emulator as ``commitments: [{"metric", "quantity"}]``; the metric's short name,
    as the listing's dimensions name it)."""
    out: dict[str, int] = {}
    for item in entitlement.get("commitments") or []:
        units = whole_units(item.get("quantity")) if isinstance(item, Mapping) else None
        if units is not None and item.get("metric"):
            out[str(item["metric"]).rsplit("/", 1)[-1]] = units
    return out
