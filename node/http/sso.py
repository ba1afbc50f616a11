"""Single sign-on for people (``http.oidc``): OpenID Connect Authorization Code flow with PKCE (S256), by Authlib.

- ``GET /auth/login?next=/path``: to the provider's sign-in page (state, nonce and the PKCE verifier are kept in the
  session cookie until the provider sends the browser back);
- ``GET /auth/callback``: Authlib exchanges the code (with the client secret when ``client_secret_env`` is set, and
  the PKCE verifier) and checks the ID token (signature against the provider's JWKS, issuer, audience, expiry,
  nonce). The person's node roles come from ``roles_claim`` through ``role_map``; with none of them nobody is
  signed in (403). The session then holds the name, the roles, a fresh session id and CSRF token, and when it ends;
- ``POST /auth/logout`` (CSRF-protected form): the session ends here and its id is refused from then on; the
  browser goes on to the provider's ``end_session_endpoint`` when it has one (RP-Initiated Logout), then to
  ``GET /auth/signed-out``.

Every sign-in, refused sign-in and sign-out is in the audit trail (``user-login``, ``user-login-failed``,
``user-logout``). The session cookie (:func:`session_middleware`) is signed, HttpOnly, Secure, SameSite=Lax (the
provider's redirect back is a cross-site navigation) and ``__Host-`` prefixed (no Domain, Path=/).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError
from joserfc.errors import JoseError
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from node.http.auth import Auth, new_secret, peer_host, safe_next
from node.http.auth_settings import OidcSection
from node.http.render import render
from node.http.tokens import discovery_url, person_name, provider_tls, roles_from_claims

log = logging.getLogger(__name__)

SESSION_COOKIE = "__Host-dicom-node-session"


class SsoSetupError(RuntimeError):
    """``http.oidc`` names an environment variable that is not set."""


def _env(name: str | None, key: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise SsoSetupError(f"http.oidc.{key} names the environment variable {name}, which is not set")
    return value


def session_middleware(oidc: OidcSection) -> Middleware:
    """The signed session cookie of people who signed in."""
    secret = _env(oidc.session_secret_env, "session_secret_env") or new_secret()
    return Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                      max_age=int(oidc.session_minutes * 60), same_site="lax", https_only=True)


class SignIn:
    """The provider as an Authlib client, and the routes of sign-in and sign-out."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self.oidc: OidcSection = auth.oidc
        oauth = OAuth()
        oauth.register("idp", client_id=self.oidc.client_id,
                       client_secret=_env(self.oidc.client_secret_env, "client_secret_env"),
                       server_metadata_url=discovery_url(self.oidc.issuer),
                       client_kwargs={"scope": " ".join(self.oidc.scopes), "code_challenge_method": "S256",
                                      "verify": provider_tls(self.oidc), "timeout": 15.0})
        self.client = oauth.create_client("idp")

    def _url(self, request: Request, path: str) -> str:
        if self.oidc.public_url:
            return self.oidc.public_url.rstrip("/") + path
        return str(request.base_url).rstrip("/") + path

    def _failed(self, request: Request, outcome: str, reason: str, user: str | None = None,
                status: int = 401) -> Response:
        fields = {"user": user} if user else {}
        self.auth.audit.record("user-login-failed", outcome, peer_host=peer_host(request), reason=reason, **fields)
        log.warning("sign-in refused from %s: %s", peer_host(request), reason)
        request.session.clear()
        return render("error.html", status, title="Sign-in failed", message=reason, retry=True, me=None)

    async def login(self, request: Request) -> Response:
        """To the provider's sign-in page; back to ``next`` afterwards."""
        await self.auth.revoke(request.session)  # signing in again ends the session before
        request.session.clear()
        request.session["next"] = safe_next(request.query_params.get("next"))
        try:
            return await self.client.authorize_redirect(request, self._url(request, "/auth/callback"))
        except (httpx.HTTPError, ValueError, RuntimeError) as exc:
            log.error("the identity provider is out of reach: %s", exc)
            return render("error.html", 503, title="Sign-in unavailable", me=None, retry=True,
                          message="The identity provider cannot be reached; try again in a moment.")

    async def callback(self, request: Request) -> Response:
        """The provider sends the browser back here with a code (or an error)."""
        try:
            token = await self.client.authorize_access_token(
                request, claims_options={"iss": {"essential": True, "value": self.oidc.issuer}},
                leeway=int(self.oidc.clock_skew_seconds))
        except OAuthError as exc:
            cancelled = exc.error in ("access_denied", "consent_required", "login_required")
            return self._failed(request, "minor-failure" if cancelled else "serious-failure",
                                f"{exc.error}: {exc.description or ''}".strip(": "))
        except (JoseError, httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            return self._failed(request, "serious-failure", f"the provider's answer failed a check ({exc})")
        claims: dict[str, Any] = dict(token.get("userinfo") or {})
        if not claims:
            return self._failed(request, "serious-failure", "the provider sent no ID token")
        user = person_name(claims, self.oidc)
        roles = sorted(roles_from_claims(claims, self.oidc))
        if not roles:
            return self._failed(request, "minor-failure", f"{user} has no role on this node", user=user, status=403)
        target = safe_next(request.session.get("next"))
        request.session.clear()  # nothing from before the sign-in survives it
        display = claims.get("name") if isinstance(claims.get("name"), str) else None
        request.session.update(user=user, user_name=display, roles=roles, sid=new_secret(), csrf=new_secret(),
                               exp=time.time() + self.oidc.session_minutes * 60)
        self.auth.audit.record("user-login", peer_host=peer_host(request), user=user, user_name=display, roles=roles)
        log.info("%s signed in from %s (roles %s)", user, peer_host(request), ", ".join(roles))
        return RedirectResponse(target, status_code=303)

    async def logout(self, request: Request) -> Response:
        """End the session here, then at the provider when it offers RP-Initiated Logout."""
        me = await self.auth.session_principal(request)
        if me is None:
            return RedirectResponse("/auth/signed-out", status_code=303)
        if not await self.auth.csrf_ok(request, me):  # a page of another site posted here
            return self.auth.forbidden(request, me, "the form's CSRF token is missing or wrong")
        self.auth.audit.record("user-logout", peer_host=peer_host(request), user=me.name)
        await self.auth.revoke(request.session)
        request.session.clear()
        done = self._url(request, "/auth/signed-out")
        try:
            end = (await self.client.load_server_metadata()).get("end_session_endpoint")
        except (httpx.HTTPError, ValueError):
            end = None
        if not end:
            return RedirectResponse(done, status_code=303)
        query = urlencode({"client_id": self.oidc.client_id, "post_logout_redirect_uri": done})
        return RedirectResponse(f"{end}?{query}", status_code=303)

    async def signed_out(self, request: Request) -> Response:
        return render("error.html", 200, title="Signed out", message="You are signed out of this node.", retry=True,
                      me=None)

    def routes(self) -> list[BaseRoute]:
        return [Route("/auth/login", self.login), Route("/auth/callback", self.callback, name="auth_callback"),
                Route("/auth/logout", self.logout, methods=["POST"]), Route("/auth/signed-out", self.signed_out)]
