"""The read-only status page: studies, one study's timeline and result previews, the outbox, endpoint health."""

from __future__ import annotations

from pathlib import Path

import pydicom
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from node.http import preview, queries
from node.http.context import HttpContext
from node.monitoring.page import open_alerts

TEMPLATES = Environment(loader=PackageLoader("node.http", "templates"), autoescape=select_autoescape(["html"]))
TEMPLATES.filters["clock"] = queries.clock


def _render(name: str, **values) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**values))


def _ctx(request: Request) -> HttpContext:
    return request.app.state.ctx


async def index(request: Request) -> HTMLResponse:
    """Studies, endpoint health and the outbox summary."""
    ctx = _ctx(request)

    def gather() -> dict:
        rows = queries.study_rows(ctx.store)
        for r in rows:
            r["identity"] = queries.identity(ctx.store, r["study_uid"], ctx.cfg.http.show_phi)
        box = queries.outbox_rows(ctx.store, limit=20)
        return {"studies": rows, "endpoints": queries.endpoint_health(ctx.store, list(ctx.cfg.endpoints)),
                "outbox": box, "alerts": open_alerts(ctx)}  # the monitoring banner (node/monitoring)

    data = await run_in_threadpool(gather)
    return _render("index.html", node=ctx.cfg.node, show_phi=ctx.cfg.http.show_phi, **data)


async def study(request: Request) -> HTMLResponse:
    """One study: identity, series, timeline, results with previews."""
    ctx = _ctx(request)
    uid = request.path_params["uid"]

    def gather() -> dict | None:
        detail = queries.study_detail(ctx.store, uid)
        if detail is None:
            return None
        detail["identity"] = queries.identity(ctx.store, uid, ctx.cfg.http.show_phi)
        for r in detail["results"]:
            r["findings"] = _findings(r) if r["kind"] == "sr" else (_report(r) if r["kind"] == "report" else [])
        return detail

    data = await run_in_threadpool(gather)
    if data is None:
        raise HTTPException(404, "no such study")
    return _render("study.html", node=ctx.cfg.node, show_phi=ctx.cfg.http.show_phi, **data)


def _findings(row: dict) -> list[str]:
    try:
        return preview.sr_findings(pydicom.dcmread(row["path"]))
    except (OSError, ValueError):
        return ["(the SR file is no longer in the spool)"]


def _report(row: dict) -> list[str]:
    """A RIS/EHR report (node/reports): its status and version, then what it says."""
    from node.reports.job import load

    report = load(row["path"])
    if report is None:
        return ["(the report file is no longer in the spool)"]
    head = f"{report.status} report to the RIS/EHR, study version {report.study_version}"
    return [head + (f" ({report.reason})" if report.reason else ""), *report.content.sentences]


async def outbox_page(request: Request) -> HTMLResponse:
    """Every pending and parked send, failed jobs and quarantined instances."""
    ctx = _ctx(request)
    data = await run_in_threadpool(queries.outbox_rows, ctx.store)
    return _render("outbox.html", node=ctx.cfg.node, actions=ctx.token is not None, **data)


async def result_preview(request: Request) -> Response:
    """``/previews/{sop_uid}.png``: the GSPS boxes or SEG overlays of one result."""
    ctx = _ctx(request)
    uid = request.path_params["uid"]

    def render() -> bytes | None:
        row = queries.result_row(ctx.store, uid)
        if row is None or not Path(row["path"]).is_file():
            return None
        ds = pydicom.dcmread(row["path"])
        find = lambda sop: queries.instance_path(ctx.store, sop)  # noqa: E731
        if row["kind"] == "gsps":
            return preview.gsps_png(ds, find)
        if row["kind"] == "seg":
            return preview.seg_png(ds, find)
        return None

    png = await run_in_threadpool(render)
    if png is None:
        raise HTTPException(404, "no preview for this result")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def routes() -> list[BaseRoute]:
    """The page's routes."""
    return [Route("/", index), Route("/studies/{uid}", study), Route("/outbox", outbox_page),
            Route("/previews/{uid}.png", result_preview)]
