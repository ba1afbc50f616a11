"""The configuration of the HTTP side's security: ``http.tls`` (HTTPS) and ``http.oidc`` (single sign-on for people,
bearer JWTs for machines), hooked into ``HttpSection`` (node/config_sections.py) by one field line each.

The node's roles, and what each one may do, are :data:`ROLES` (the README's role table says the same, by test).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["viewer", "phi-viewer", "operator", "uploader"]

#: Each role of the node and what it may do (the README's role table is checked against it).
ROLES: dict[str, str] = {
    "viewer": "the status pages (studies, a study's timeline and previews, the outbox) without patient identifiers",
    "phi-viewer": "the same pages with patient name, ID and accession number",
    "operator": "the pages without patient identifiers, and the write actions retry, retract and rerun",
    "uploader": "STOW-RS in (POST /dicomweb/studies), with a bearer token only",
}


class _Strict(BaseModel):
    # the same settings as node.config_sections._Strict (not imported from there: that module imports this one)
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpTlsSection(_Strict):
    """HTTPS on the HTTP side, with the node's DICOM TLS settings (BCP 195: TLS 1.2+, AEAD cipher suites)."""

    cert_file: Path = Field(description="PEM certificate (chain) the HTTP side presents")
    key_file: Path = Field(description="PEM private key of cert_file")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


def _loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class OidcSection(_Strict):
    """OpenID Connect: people sign in through the hospital's identity provider (Authorization Code + PKCE); machines
    send bearer JWTs from the same provider (client credentials), checked against its published keys (JWKS)."""

    issuer: str = Field(description="The provider's issuer URL, exactly as its tokens name it "
                                    "(Entra ID: https://login.microsoftonline.com/<tenant-id>/v2.0)")
    client_id: str = Field(min_length=1, description="This node's application (client) ID at the provider")
    client_secret_env: str | None = Field(
        None, description="Environment variable holding the client secret; null: a public client (PKCE only)")
    roles_claim: str = Field("roles", min_length=1, description="Claim holding the provider's roles or groups "
                                                               "(a dotted path for nested ones: realm_access.roles)")
    role_map: dict[str, list[Role]] = Field(
        default_factory=lambda: {r: [r] for r in ROLES},  # type: ignore[misc]
        description="A value of roles_claim -> the node roles it gives; default: the node's role names themselves")
    username_claim: str = Field("preferred_username", description="Claim naming the person in the audit trail "
                                                                  "(falls back to email, then sub)")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"],
                              description="Scopes asked for at sign-in (openid is required)")
    audience: str | None = Field(None, description="The aud machine tokens must carry; default client_id")
    public_url: str | None = Field(
        None, description="The node's address as browsers reach it (https://...); default: the request's own address")
    ca_file: Path | None = Field(None, description="PEM CA bundle the provider's certificate must chain to; "
                                                   "default: the system's CAs")
    session_minutes: float = Field(480, gt=0, description="A sign-in lasts this long, then the person signs in again")
    session_secret_env: str | None = Field(
        None, description="Environment variable holding the key that signs session cookies; null: a random key "
                          "per start of the HTTP side (a restart signs everyone out)")
    clock_skew_seconds: float = Field(60, ge=0, description="Tolerance on the exp/nbf/iat of tokens")

    @field_validator("issuer", "public_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme != "https" and not (url.scheme == "http" and _loopback(url.hostname)):
            raise ValueError("must be an https:// URL (http:// only for a loopback address)")
        return value  # kept as given: an issuer is compared with the tokens' iss exactly, trailing slash included

    @field_validator("role_map", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, dict):  # `Group-X: operator` as well as `Group-X: [operator, phi-viewer]`
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include openid")
        return value

    @property
    def token_audience(self) -> str:
        return self.audience or self.client_id


def check_http_auth(section: Any) -> Any:
    """``HttpSection``'s cross-key rules: sign-in needs HTTPS (the session cookie is Secure), and who sees patient
    identifiers is the phi-viewer role's business once people sign in."""
    oidc: OidcSection | None = section.oidc
    if oidc is None:
        return section
    if section.tls is None and not (oidc.public_url or "").startswith("https://"):
        raise ValueError("http.oidc needs HTTPS: set http.tls, or http.oidc.public_url: https://... when a reverse "
                         "proxy terminates TLS (the session cookie is Secure: browsers keep it over HTTPS only)")
    if section.show_phi:
        raise ValueError("http.show_phi applies to the open status page; with http.oidc the phi-viewer role decides "
                         "who sees patient identifiers: remove show_phi")
    return section
