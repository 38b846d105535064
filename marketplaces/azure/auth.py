"""Entra identities: client-credentials tokens for the sandbox, and webhook JWT verification."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable
from urllib.parse import quote

import jwt
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from marketplaces.base import UnverifiedNotification

log = logging.getLogger(__name__)

from marketplaces.azure.wire import MARKETPLACE_APP_ID


# Credentials -------------------------------------------------------------------------------


class SandboxCredential:
    """Obtain client-credentials tokens from an Entra-compatible token endpoint over HTTP.

    Same ``get_token(*scopes)`` shape as azure-identity's credentials; used in sandbox mode
    against the emulator's ``/{tenant}/oauth2/v2.0/token`` (azure-identity insists on HTTPS
    authorities, which a loopback emulator does not have).
    """

    def __init__(
        self,
        authority: str,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 10.0,
    ):
        self.token_url = f"{authority.rstrip('/')}/{quote(tenant_id)}/oauth2/v2.0/token"
        self.client_id = client_id
        self._client_secret = client_secret
        self._session = session or requests.Session()
        self._timeout = timeout

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        """Request a token for ``scopes`` with the client-credentials grant."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "scope": " ".join(scopes),
        }
        response = self._session.post(self.token_url, data=form, timeout=self._timeout)
        if response.status_code != 200:
            raise ClientAuthenticationError(
                message=f"token endpoint answered {response.status_code}: {response.text[:200]}"
            )
        body = response.json()
        return AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))


# Webhook verification ----------------------------------------------------------------------


class WebhookVerifier:
    """Verify the Entra JWT on a SaaS fulfillment webhook (RS256 against the tenant's JWKS).

    Checks the signature, ``exp``/``nbf``, ``aud`` (the publisher's app id), ``tid``, the
    issuer (v1 ``sts.windows.net`` or v2 ``login.microsoftonline.com`` form for the tenant)
    and that ``appid`` (v1) or ``azp`` (v2) is the Marketplace API's app id. The JWKS is found
    through the authority's openid-configuration, cached, and refetched on an unknown key id
    at most once per ``refetch_interval`` seconds.
    """

    def __init__(
        self,
        *,
        authority: str,
        tenant_id: str,
        audience: str,
        session: requests.Session | None = None,
        leeway: float = 60.0,
        refetch_interval: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.authority = authority.rstrip("/")
        self.tenant_id = tenant_id
        self.audience = audience
        self.issuers = frozenset(
            {
                f"https://sts.windows.net/{tenant_id}/",
                f"https://login.microsoftonline.com/{tenant_id}/v2.0",
            }
        )
        self._session = session or requests.Session()
        self._leeway = leeway
        self._refetch_interval = refetch_interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None

    @property
    def openid_configuration_url(self) -> str:
        return f"{self.authority}/{quote(self.tenant_id)}/v2.0/.well-known/openid-configuration"

    def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims, or raise ``UnverifiedNotification``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise UnverifiedNotification(f"not a JWT: {exc}") from None
        if header.get("alg") != "RS256":
            raise UnverifiedNotification(f"unexpected JWT algorithm {header.get('alg')!r}")
        key = self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audience,
                leeway=self._leeway,
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise UnverifiedNotification(f"JWT rejected: {exc}") from None
        if claims.get("tid") != self.tenant_id:
            raise UnverifiedNotification("JWT is for another tenant")
        if claims.get("iss") not in self.issuers:
            raise UnverifiedNotification("JWT issuer is not this tenant's Entra issuer")
        if MARKETPLACE_APP_ID not in (claims.get("appid"), claims.get("azp")):
            raise UnverifiedNotification("JWT was not issued to the Marketplace API app")
        return claims

    def _key(self, kid: str | None) -> jwt.PyJWK:
        if not kid:
            raise UnverifiedNotification("JWT header has no kid")
        with self._lock:
            if kid not in self._keys and self._may_refetch():
                self._fetch_keys()
            key = self._keys.get(kid)
        if key is None:
            raise UnverifiedNotification("JWT signed by an unknown key")
        return key

    def _may_refetch(self) -> bool:
        return (
            self._fetched_at is None
            or self._clock() - self._fetched_at >= self._refetch_interval
        )

    def _fetch_keys(self) -> None:
        # Bound the refetch rate even when discovery fails: a flood of forged kids must not
        # turn into a flood of requests to the identity provider.
        self._fetched_at = self._clock()
        try:
            config = self._get_json(self.openid_configuration_url)
            jwks = self._get_json(config["jwks_uri"])
            keys = jwt.PyJWKSet.from_dict(jwks).keys
        except (requests.RequestException, ValueError, KeyError, jwt.PyJWTError) as exc:
            log.warning("azure jwks fetch failed: %s", exc)
            raise UnverifiedNotification("could not fetch the signing keys") from None
        self._keys = {k.key_id: k for k in keys if k.key_id}

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._session.get(url, timeout=self._timeout)
        response.raise_for_status()
        return response.json()
