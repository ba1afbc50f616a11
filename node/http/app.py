"""The HTTP side as a Starlette application, built by :func:`build_app`.

Routes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text; every process's samples summed,
plus the state read at scrape time), ``GET /`` (status page), ``GET /studies/{uid}``, ``GET /outbox``,
``GET /previews/{sop_uid}.png``, ``POST /actions/{name}`` (operator; see :mod:`node.http.actions`),
``POST /dicomweb/studies[/{study}]`` (STOW-RS in, uploader, by bearer token; :mod:`node.dicomweb.stow_in`), and with
``http.oidc`` ``/auth/login``, ``/auth/callback``, ``POST /auth/logout``, ``/auth/signed-out`` (:mod:`node.http.sso`).
Who may use which route: :mod:`node.http.auth`. ``/healthz``, ``/readyz`` and ``/metrics`` stay open (no patient
data: counts, AE titles, rule and destination names), for probes and scrapers.
``GET /monitoring`` (pages) and ``POST /fhir/DiagnosticReport`` (radiologists' reports, uploader, by bearer
token; :mod:`node.monitoring.page`).

Adding routes (DICOMweb, say): pass them to ``build_app(cfg, extra_routes=[Mount("/dicomweb", routes=[...])])``,
or append to ``ROUTE_PROVIDERS`` a function ``(ctx) -> list[BaseRoute]`` so that every app ``serve`` builds gets
them; a route reaches the database, spool and configuration as ``request.app.state.ctx`` (:class:`HttpContext`).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Metric, generate_latest
from prometheus_client import multiprocess
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from node.config import NodeConfig
from node.http import pages
from node.dicomweb.stow_in import stow_routes
from node.flow.intake import Intake
from node.flow.queue import Queue
from node.http.actions import run_action
from node.http.auth import Auth
from node.http.collector import StateCollector
from node.http.context import HttpContext
from node.http.health import healthz, readyz
from node.monitoring.gauges import MonitoringCollector
from node.monitoring.page import routes as monitoring_routes
from node.ops import metricsdir

#: Functions adding routes to every app built here (the DICOMweb side registers itself this way).
ROUTE_PROVIDERS: list[Callable[[HttpContext], list[BaseRoute]]] = []


def metrics_registry(ctx: HttpContext) -> CollectorRegistry:
    """The samples of every process of the node (multiprocess mode) and the state collector."""
    registry = CollectorRegistry()
    if metricsdir.enabled():
        multiprocess.MultiProcessCollector(registry)
    else:  # not under serve (a test app): this process's own metrics
        registry.register(_ThisProcess())
    registry.register(StateCollector(ctx))
    registry.register(MonitoringCollector(ctx))  # agreement and drift (node/monitoring)
    return registry


class _ThisProcess(Collector):
    """prometheus_client's default registry (this process's samples) as one collector of another registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition."""
    registry = request.app.state.registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def stow_in_routes(ctx: HttpContext, auth: Auth) -> list[BaseRoute]:
    """STOW-RS in: the same durable intake as C-STORE (quiet timers armed from this process), for the uploader role
    by bearer token (the static token, or a JWT)."""
    intake = Intake(ctx.cfg, ctx.store, Queue(ctx.cfg))

    async def authorize(request: Request) -> bool | Response:
        decision = await auth.authorise(request, "stow", bearer_only=True)
        return True if decision.response is None else decision.response

    return list(stow_routes(ctx.cfg, ctx.store, ctx.spool, intake, authorize=authorize,
                            max_request_bytes=int(ctx.cfg.http.stow_max_request_mb * 1024 * 1024)))


def bearer_check(auth: Auth, capability: str) -> Callable[[Request], Awaitable[bool | Response]]:
    """The write check of a machine's route: a bearer token (the static one, or a JWT) whose roles give
    ``capability``; the refusal (401/403) is the answer to send."""
    async def authorize(request: Request) -> bool | Response:
        decision = await auth.authorise(request, capability, bearer_only=True)
        return True if decision.response is None else decision.response

    return authorize


def build_app(cfg: NodeConfig, *, ctx: HttpContext | None = None,
              extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The HTTP side's application for ``cfg`` (opens the database and spool unless ``ctx`` is given)."""
    ctx = ctx or HttpContext.open(cfg)
    auth = Auth(cfg, lambda: ctx.token, ctx.store.engine)
    middleware = [Middleware(SecurityHeaders, hsts=cfg.http.tls is not None)]
    sign_in: list[BaseRoute] = []
    if cfg.http.oidc is not None:
        from node.http.sso import SignIn, session_middleware

        middleware.append(session_middleware(cfg.http.oidc))
        sign_in = SignIn(auth).routes()
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/actions/{name}", run_action, methods=["POST"]),
        *pages.routes(),
        *stow_in_routes(ctx, auth),
        *monitoring_routes(ctx, bearer_check(auth, "stow")),  # FHIR reports: uploader, by bearer token
        *sign_in,
        *extra_routes,
    ]
    for provider in ROUTE_PROVIDERS:
        routes.extend(provider(ctx))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.ctx = ctx
    app.state.auth = auth
    app.state.registry = metrics_registry(ctx)
    return app


class SecurityHeaders:
    """Headers on every answer: no framing (clickjacking), no MIME sniffing, no Referer with UIDs to other sites;
    with ``http.tls`` also HSTS, so a browser that came once over HTTPS never falls back to HTTP (BCP 195)."""

    def __init__(self, app: Any, hsts: bool) -> None:
        self.app = app
        self.headers = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"same-origin"),
                        (b"content-security-policy", b"frame-ancestors 'none'")]
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)
