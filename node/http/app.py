"""The HTTP side as a Starlette application, built by :func:`build_app`.

Routes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text; every process's samples summed,
plus the state read at scrape time), ``GET /`` (status page), ``GET /studies/{uid}``, ``GET /outbox``,
``GET /previews/{sop_uid}.png``, ``POST /actions/{name}`` (bearer token; see :mod:`node.http.actions`).

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
from node.http.actions import run_action
from node.http.collector import StateCollector
from node.http.context import HttpContext
from node.http.health import healthz, readyz
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
        *extra_routes,
    ]
    for provider in ROUTE_PROVIDERS:
        routes.extend(provider(ctx))
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    app.state.registry = metrics_registry(ctx)
    return app
