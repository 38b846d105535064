"""GetEntitlements (docs/marketplaces.md §2.6): one purchase's entitled dimensions, and what they say at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from marketplaces.base import PermanentMarketplaceError, whole_units
from marketplaces.aws.wire import RecordLevelError, license_id


@dataclass(frozen=True)
class AwsEntitlement:
    """One row of GetEntitlements: a dimension's entitled value for one customer/license."""

    product_code: str
    dimension: str
    value: int | float | bool | str | None
    customer_identifier: str | None = None
    customer_aws_account_id: str | None = None
    license_arn: str | None = None
    expiration_date: datetime | None = None


class Entitlements:
    """The entitlement part of ``AwsMarketplace``: GetEntitlements through ``self.entitlement_client``."""

    def get_entitlements(
        self,
        product_code: str,
        customer_aws_account_id: str | None = None,
        license_arn: str | None = None,
        customer_identifier: str | None = None,
    ) -> list[AwsEntitlement]:
        """Return every entitlement of ``product_code`` matching the given customer filters."""
        if self.entitlement_client is None:
            raise PermanentMarketplaceError("no marketplace-entitlement client configured")
        filters: dict[str, list[str]] = {}
        if customer_aws_account_id:
            filters["CUSTOMER_AWS_ACCOUNT_ID"] = [customer_aws_account_id]
        if license_arn:
            filters["LICENSE_ARN"] = [license_arn]
        if customer_identifier:
            filters["CUSTOMER_IDENTIFIER"] = [customer_identifier]
        params: dict[str, Any] = {"ProductCode": product_code}
        if filters:
            params["Filter"] = filters
        out: list[AwsEntitlement] = []
        seen_tokens: set[str] = set()
        while True:
            try:
                page = self._call(self.entitlement_client.get_entitlements, **params)
            except RecordLevelError as err:
                raise PermanentMarketplaceError(f"{err.code}: {err.message}") from None
            out.extend(_entitlement(row) for row in page.get("Entitlements") or [])
            token = page.get("NextToken")
            # A page may be empty and still carry a NextToken: keep going until none is left.
            if not token or token in seen_tokens:
                return out
            seen_tokens.add(token)
            params["NextToken"] = token


    def purchase_entitlements(self, ids: Mapping[str, str]) -> list[AwsEntitlement]:
        """Return one purchase's entitlement rows (filters: account id, else customer, else license)."""
        product = ids.get("product_code")
        if not product:
            return []
        # CUSTOMER_AWS_ACCOUNT_ID and CUSTOMER_IDENTIFIER are mutually exclusive filters; the account
        # filter is matched on the license id here, so ARN spellings cannot hide a row.
        if ids.get("customer_aws_account_id"):
            rows = self.get_entitlements(product, customer_aws_account_id=ids["customer_aws_account_id"])
        elif ids.get("customer_identifier"):
            rows = self.get_entitlements(product, customer_identifier=ids["customer_identifier"])
        elif ids.get("license_arn"):
            rows = self.get_entitlements(product, license_arn=ids["license_arn"])
        else:
            return []
        lid = ids.get("license_id")
        return [row for row in rows if not lid or license_id(row.license_arn) == lid]

    def included_quantities(self, identifiers: Mapping[str, str], plan: str | None = None) -> dict[str, int]:
        """Return the purchase's entitled units per dimension (a contract with pay-as-you-go; §2.6)."""
        return included_units(self.purchase_entitlements(identifiers))


def included_units(rows: list[AwsEntitlement]) -> dict[str, int]:
    """Return the dimensions a contract entitles a number of units of (IntegerValue), and how many.

    Boolean and string entitlements (a feature on, a tier name) include no units.
    """
    out: dict[str, int] = {}
    for row in rows:
        units = whole_units(row.value) if isinstance(row.value, int) else None
        if units is not None and row.dimension:
            out[row.dimension] = units
    return out


def _entitlement(row: Mapping[str, Any]) -> AwsEntitlement:
    value_box = row.get("Value") or {}
    value = None
    for name in ("IntegerValue", "DoubleValue", "BooleanValue", "StringValue"):
        if name in value_box:
            value = value_box[name]
            break
    expiration = row.get("ExpirationDate")
    if isinstance(expiration, datetime) and expiration.tzinfo is not None:
        expiration = expiration.astimezone(timezone.utc)
    return AwsEntitlement(
        product_code=row.get("ProductCode", ""),
        dimension=row.get("Dimension", ""),
        value=value,
        customer_identifier=row.get("CustomerIdentifier"),
        customer_aws_account_id=row.get("CustomerAWSAccountId"),
        license_arn=row.get("LicenseArn"),
        expiration_date=expiration,
    )


def entitlement_state(entitlements: list[AwsEntitlement], *, at: datetime) -> dict[str, Any]:
    """Summarize one purchase's entitlement rows as seen at ``at``.

    Returns ``values`` (dimension -> value), ``expires_at`` (the latest expiration, if every row
    has one), ``expired`` (every row expired by ``at``) and ``quantity`` (the integer value of
    a single-dimension entitlement).
    """
    values = {row.dimension: row.value for row in entitlements}
    expirations = [row.expiration_date for row in entitlements]
    expires_at = max(expirations) if expirations and all(expirations) else None  # type: ignore[type-var]
    integers = [v for v in values.values() if isinstance(v, int) and not isinstance(v, bool)]
    return {
        "values": values,
        "expires_at": expires_at,
        "expired": bool(entitlements) and expires_at is not None and expires_at <= at,
        "quantity": integers[0] if len(values) == 1 and len(integers) == 1 else None,
    }
