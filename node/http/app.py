"""The HTTP side as a Starlette application, built by :func:`build_app`.

Routes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text; every process's samples summed,
plus the state read at scrape time), ``GET /`` (status page), ``GET /studies/{uid}``, ``GET /outbox``,
``GET /previews/{sop_uid}.png``, ``POST /actions/{name}`` (bearer token; see :mod:`node.http.actions`),
``POST /dicomweb/studies[/{study}]`` (STOW-RS in, the same bearer token; :mod:`node.dicomweb.stow_in`),
``GET /monitoring`` and ``POST /fhir/DiagnosticReport`` (radiologists' reports, the same bearer token;
:mod:`node.monitoring.page`).

Adding routes (DICOMweb, say): pass them to ``build_app(cfg, extra_routes=[Mount("/dicomweb", routes=[...])])``,
or append to ``ROUTE_PROVIDERS`` a function ``(ctx) -> list[BaseRoute]`` so that every app ``serve`` builds gets
them; a route reaches the database, spool and configuration as ``request.app.state.ctx`` (:class:`HttpContext`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Metric, generate_latest
from prometheus_client import multiprocess
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from node.config import NodeConfig
from node.http import pages
from node.dicomweb.stow_in import stow_routes
from node.flow.intake import Intake
from node.flow.queue import Queue
from node.http.actions import authorised, run_action
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


def stow_in_routes(ctx: HttpContext) -> list[BaseRoute]:
    """STOW-RS in: the same durable intake as C-STORE (quiet timers armed from this process), behind the token."""
    intake = Intake(ctx.cfg, ctx.store, Queue(ctx.cfg))
    return list(stow_routes(ctx.cfg, ctx.store, ctx.spool, intake,
                            authorize=lambda request: authorised(request, ctx.token),
                            max_request_bytes=int(ctx.cfg.http.stow_max_request_mb * 1024 * 1024)))


def build_app(cfg: NodeConfig, *, ctx: HttpContext | None = None,
              extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The HTTP side's application for ``cfg`` (opens the database and spool unless ``ctx`` is given)."""
    ctx = ctx or HttpContext.open(cfg)
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/actions/{name}", run_action, methods=["POST"]),
        *pages.routes(),
        *stow_in_routes(ctx),
        *monitoring_routes(ctx, lambda request: authorised(request, ctx.token)),  # FHIR reports: the write check
        *extra_routes,
    ]
    for provider in ROUTE_PROVIDERS:
        routes.extend(provider(ctx))
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    app.state.registry = metrics_registry(ctx)
    return app
