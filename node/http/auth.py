"""Who is asking, and may they: the HTTP side's access control (roles in :mod:`node.http.auth_settings`).

A request is made by one :class:`Principal`:

- ``Authorization: Bearer <value>``: the static token of ``http.token_env`` (roles operator and uploader), or, with
  ``http.oidc``, a JWT of the identity provider (:mod:`node.http.tokens`; its roles from ``roles_claim``); any
  other bearer value is refused (401) and recorded (``token-refused``);
- with ``http.oidc``, the signed session cookie of a person who signed in (:mod:`node.http.sso`): refused once it
  is older than ``session_minutes`` or its sign-out was recorded; a POST it makes must carry the session's CSRF
  token (form field ``csrf`` or header ``X-CSRF-Token``); sign-outs are kept in the node's database;
- without ``http.oidc``, nobody signed in: the pages are open (patient identifiers per ``http.show_phi``), writes
  need the static token.

What each capability needs is :data:`NEEDS`; :meth:`Auth.authorise` answers with a :class:`Decision`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from node.http.render import render
from node.http.tokens import ProviderUnreachable, TokenRefused, TokenVerifier, machine_name, roles_from_claims
from node.ops.audit import audit_log
from node.store.sessions import end_session, session_ended

#: capability -> the roles that give it (any one of them)
NEEDS: dict[str, frozenset[str]] = {
    "pages": frozenset({"viewer", "phi-viewer", "operator"}),
    "phi": frozenset({"phi-viewer"}),
    "actions": frozenset({"operator"}),
    "stow": frozenset({"uploader"}),
}
STATIC_TOKEN_ROLES = frozenset({"operator", "uploader"})
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Principal:
    """Who makes a request: ``via`` is session (a person), jwt or token (a machine), or open (no sign-in configured)."""

    name: str
    roles: frozenset[str]
    via: str
    csrf: str | None = None
    display: str | None = None  # a person's full name, when the provider gave one

    def may(self, capability: str) -> bool:
        return bool(self.roles & NEEDS[capability])


@dataclass(frozen=True)
class Decision:
    """``response`` is None when the request may go on; otherwise it is the refusal to send, for ``reason``."""

    principal: Principal | None
    response: Response | None = None
    reason: str = ""


def peer_host(request: Request) -> str:
    return request.client.host if request.client else "?"


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def safe_next(value: str | None) -> str:
    """A local path to go back to after sign-in or a form (never another site: no scheme, no //host, no backslash)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or "\n" in value:
        return "/"
    return value


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class Auth:
    """The access control of one app (``request.app.state.auth``)."""

    def __init__(self, cfg: Any, static_token: Callable[[], str | None], engine: Any = None) -> None:
        self.cfg = cfg
        self.oidc = cfg.http.oidc
        self.static_token = static_token
        self.engine = engine  # the node's database: sign-outs are kept there (node/store/sessions.py)
        self.verifier = TokenVerifier(self.oidc) if self.oidc is not None else None
        self.audit = audit_log(cfg)

    @property
    def writes_possible(self) -> bool:
        """Can anybody run a write action: a static token is set, or people and machines sign in through OIDC."""
        return self.oidc is not None or self.static_token() is not None

    async def revoke(self, session: dict[str, Any]) -> None:
        """Refuse this session's cookie from now on (sign-out), even if a copy of it is presented again: recorded in
        the node's database, so every HTTP side on it refuses it, across restarts, until it would have expired."""
        if session.get("sid"):
            await run_in_threadpool(end_session, self.engine, str(session["sid"]), float(session.get("exp", 0)))

    async def _bearer(self, request: Request, value: str) -> Principal | Decision:
        static = self.static_token()
        if static and hmac.compare_digest(value.encode(), static.encode()):
            return Principal("static-token", STATIC_TOKEN_ROLES, "token")
        if self.verifier is None:
            return self._refused(request, "not the configured bearer token")
        try:
            claims = await self.verifier.verify(value)
        except TokenRefused as exc:
            return self._refused(request, str(exc))
        except ProviderUnreachable as exc:
            return Decision(None, JSONResponse({"error": "cannot check the token now: the identity provider's keys "
                                                         f"are out of reach ({exc})"}, status_code=503),
                            "identity provider unreachable")
        person = claims.get(self.oidc.username_claim)  # a person's delegated token names them; a machine's does not
        name = person if isinstance(person, str) and person else machine_name(claims)
        return Principal(name, roles_from_claims(claims, self.oidc), "jwt")

    def _refused(self, request: Request, reason: str, user: str | None = None) -> Decision:
        fields = {"user": user} if user else {}
        self.audit.record("token-refused", "serious-failure", peer_host=peer_host(request), reason=reason,
                          path=request.url.path, **fields)
        status = 403 if user else 401
        error = "insufficient_scope" if user else "invalid_token"
        return Decision(None, JSONResponse({"error": f"token refused: {reason}"}, status_code=status,
                                           headers={"WWW-Authenticate": f'Bearer error="{error}"'}), reason)

    async def session_principal(self, request: Request) -> Principal | None:
        """The person of the session cookie; None when there is none, or it ended (expired or signed out)."""
        session = request.session
        if not session.get("user"):
            return None
        if float(session.get("exp", 0)) < time.time() or await run_in_threadpool(
                session_ended, self.engine, str(session.get("sid"))):
            session.clear()
            return None
        return Principal(str(session["user"]), frozenset(session.get("roles", ())), "session", session.get("csrf"),
                         session.get("user_name"))

    async def principal(self, request: Request) -> Principal | Decision | None:
        """The request's principal; a Decision when a bearer value was refused; None when nobody signed in."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return self._refused(request, "not a bearer token")
            return await self._bearer(request, value.strip())
        if self.oidc is not None:
            return await self.session_principal(request)
        roles = {"viewer"} | ({"phi-viewer"} if self.cfg.http.show_phi else set())
        return Principal("anonymous", frozenset(roles), "open")

    def _sign_in_first(self, request: Request) -> Response:
        if self.oidc is not None and request.method == "GET" and wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/auth/login?next={quote(target, safe='')}", status_code=302)
        detail = "sign in, or send a bearer token" if self.oidc is not None else "a valid bearer token is required"
        return JSONResponse({"error": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def csrf_ok(self, request: Request, principal: Principal) -> bool:
        given = request.headers.get("x-csrf-token")
        if given is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            given = (await request.form()).get(CSRF_FIELD)
        return bool(principal.csrf) and isinstance(given, str) and hmac.compare_digest(
            given.encode(), principal.csrf.encode())

    def forbidden(self, request: Request, principal: Principal, reason: str) -> Response:
        if principal.via == "session" and wants_html(request):
            return render("error.html", 403, title="Not allowed", message=reason, me=principal)
        return JSONResponse({"error": reason}, status_code=403)

    async def authorise(self, request: Request, capability: str, *, bearer_only: bool = False) -> Decision:
        """May this request use ``capability`` (a key of :data:`NEEDS`)? ``bearer_only``: machines only."""
        if bearer_only and "authorization" not in request.headers:
            return Decision(None, self._sign_in_first(request), "no bearer token")
        found = await self.principal(request)
        if isinstance(found, Decision):
            return found
        if found is None or (found.via == "open" and not found.may(capability)):
            return Decision(None, self._sign_in_first(request), "not signed in")
        if not found.may(capability):
            reason = f"{found.name} lacks the role {' or '.join(sorted(NEEDS[capability]))}"
            if found.via in ("jwt", "token"):
                return self._refused(request, reason, user=found.name)
            return Decision(found, self.forbidden(request, found, reason), reason)
        if request.method == "POST" and found.via == "session" and not await self.csrf_ok(request, found):
            reason = "the form's CSRF token is missing or wrong (reload the page and try again)"
            return Decision(found, self.forbidden(request, found, reason), reason)
        return Decision(found)


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(capability: str, endpoint: Endpoint) -> Endpoint:
    """``endpoint`` behind :meth:`Auth.authorise`; the principal is ``request.state.principal``."""

    async def guard(request: Request) -> Response:
        decision = await request.app.state.auth.authorise(request, capability)
        if decision.response is not None:
            return decision.response
        request.state.principal = decision.principal
        return await endpoint(request)

    guard.__name__ = getattr(endpoint, "__name__", "guarded")
    guard.__doc__ = endpoint.__doc__
    return guard
