"""Bearer JWTs from the identity provider (``http.oidc``): machines (client credentials) send them to the write actions
and STOW-RS in; each one is checked against the provider's published keys (JWKS) with joserfc, Authlib's JOSE library.

A token passes when its signature verifies with a key of the provider's JWKS under an asymmetric algorithm
(:data:`ALGORITHMS`: never ``none``, never a shared secret), ``iss`` is the configured issuer exactly, ``aud`` holds
the configured audience, ``exp`` is in the future (``nbf``/``iat`` not ahead), all within ``clock_skew_seconds``,
and it is not an ID token (an ID token carries a ``nonce``: it proves a sign-in to this node, it is not a grant).
Its roles are :func:`roles_from_claims`. The provider's discovery document and JWKS are fetched on first use, again
when a token names a key the cached set lacks (key rotation; at most once a minute, so forged key IDs cannot make
the node hammer the provider) and once a day.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from node.http.auth_settings import OidcSection

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
REFRESH_MIN_SECONDS = 60.0
REFRESH_MAX_SECONDS = 86400.0


class TokenRefused(Exception):
    """The token is not accepted; the message says why (no token content)."""


class ProviderUnreachable(Exception):
    """The provider's discovery document or keys could not be fetched: nothing can be checked right now."""


def provider_tls(oidc: OidcSection) -> ssl.SSLContext:
    """How the node checks the provider's HTTPS certificate: ``ca_file``, or the system's CAs."""
    return ssl.create_default_context(cafile=str(oidc.ca_file) if oidc.ca_file else None)


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class ProviderKeys:
    """The provider's discovery document and key set, cached; see the module docstring for when they are fetched."""

    def __init__(self, oidc: OidcSection) -> None:
        self.oidc = oidc
        self._verify = provider_tls(oidc)
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(verify=self._verify, timeout=10.0) as client:
                reply = await client.get(url)
                reply.raise_for_status()
                return reply.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnreachable(f"{url}: {type(exc).__name__}: {exc}") from None

    async def key_set(self, *, refresh: bool = False) -> KeySet:
        """The cached keys; ``refresh``: fetch again unless fetched less than a minute ago."""
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if self._keys is None or age > REFRESH_MAX_SECONDS or (refresh and age > REFRESH_MIN_SECONDS):
                if self._metadata is None:
                    metadata = await self._get(discovery_url(self.oidc.issuer))
                    if metadata.get("issuer") != self.oidc.issuer:  # OpenID Connect Discovery 1.0, section 4.3
                        raise ProviderUnreachable(f"the discovery document names issuer {metadata.get('issuer')!r}, "
                                                  f"not http.oidc.issuer {self.oidc.issuer!r}")
                    self._metadata = metadata
                try:
                    self._keys = KeySet.import_key_set(await self._get(self._metadata["jwks_uri"]))
                except (KeyError, JoseError, ValueError, TypeError) as exc:
                    raise ProviderUnreachable(f"the provider's key set cannot be read: {exc}") from None
                self._fetched_at = time.monotonic()
            return self._keys


class TokenVerifier:
    """Checks bearer JWTs of ``http.oidc``'s provider; :meth:`verify` returns the claims or raises TokenRefused."""

    def __init__(self, oidc: OidcSection, keys: ProviderKeys | None = None) -> None:
        self.oidc = oidc
        self.keys = keys or ProviderKeys(oidc)
        self._registry = JWSRegistry(algorithms=ALGORITHMS, strict_check_header=False)

    def _decode(self, token: str, keys: KeySet) -> jwt.Token:
        return jwt.decode(token, keys, algorithms=ALGORITHMS, registry=self._registry)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token (see the module docstring); TokenRefused naming the failed check otherwise."""
        try:
            try:
                decoded = self._decode(token, await self.keys.key_set())
            except InvalidKeyIdError:  # a key the cached set lacks: the provider may have rotated its keys
                decoded = self._decode(token, await self.keys.key_set(refresh=True))
        except InvalidKeyIdError:
            raise TokenRefused("signed with a key the provider does not publish") from None
        except JoseError as exc:
            raise TokenRefused(f"not a valid signed JWT of the provider ({exc.error})") from None
        except (ValueError, TypeError):
            raise TokenRefused("not a JWT") from None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=int(self.oidc.clock_skew_seconds),
            iss={"essential": True, "value": self.oidc.issuer},
            aud={"essential": True, "value": self.oidc.token_audience},
            exp={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("expired") from None
        except JoseError as exc:
            raise TokenRefused(f"claim check failed: {exc.description or exc.error}") from None
        if "nonce" in claims:
            raise TokenRefused("an ID token is not an access token")
        return claims


def roles_from_claims(claims: dict[str, Any], oidc: OidcSection) -> frozenset[str]:
    """The node roles that ``roles_claim`` (a dotted path) gives through ``role_map``; values it does not map give none."""
    value: Any = claims
    for part in oidc.roles_claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        value = value.split()  # some providers send one space-separated string
    if not isinstance(value, list):
        return frozenset()
    return frozenset(role for v in value if isinstance(v, str) for role in oidc.role_map.get(v, ()))


def person_name(claims: dict[str, Any], oidc: OidcSection) -> str:
    """Who signed in, as the audit trail names them: ``username_claim``, else email, else sub."""
    for key in (oidc.username_claim, "email", "sub"):
        if isinstance(claims.get(key), str) and claims[key]:
            return str(claims[key])
    return "(unnamed)"


def machine_name(claims: dict[str, Any]) -> str:
    """Which client holds a machine token: Entra's azp/appid, RFC 9068's client_id, else sub."""
    for key in ("azp", "appid", "client_id", "sub"):
        if isinstance(claims.get(key), str) and claims[key]:
            return str(claims[key])
    return "(unnamed client)"
