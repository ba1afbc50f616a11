"""The status pages: studies, one study's timeline and result previews, the outbox, endpoint health.

Each page is for the roles of capability ``pages`` (:mod:`node.http.auth`); patient identifiers only for ``phi``
(phi-viewer; without ``http.oidc``: ``http.show_phi``); the write forms (retract and rerun on a study's page, retry
on the outbox page) only for ``actions`` (operator), each with the session's CSRF token.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from node.cli_rules import REASON_CHOICES  # dicom_out.kos.REJECTION_TITLES' keys, without importing highdicom
from node.http import preview, queries
from node.http.auth import Principal, guarded
from node.http.context import HttpContext
from node.http.render import render
from node.monitoring.page import open_alerts


def _render(request: Request, name: str, **values) -> HTMLResponse:
    """A page for the request's principal: who they are, their forms' CSRF token, a message from their last form."""
    me: Principal = request.state.principal
    flash = request.session.pop("flash", None) if me.via == "session" else None
    response = render(name, me=me, flash=flash, can_act=me.may("actions") and me.via == "session",
                      reasons=REASON_CHOICES, **values)
    if me.via == "session":
        response.headers["Cache-Control"] = "no-store"  # a signed-in page may hold patient identifiers
    return response


def _show_phi(request: Request) -> bool:
    return request.state.principal.may("phi")


def _ctx(request: Request) -> HttpContext:
    return request.app.state.ctx


async def index(request: Request) -> HTMLResponse:
    """Studies, endpoint health and the outbox summary."""
    ctx = _ctx(request)
    show_phi = _show_phi(request)

    def gather() -> dict:
        rows = queries.study_rows(ctx.store)
        for r in rows:
            r["identity"] = queries.identity(ctx.store, r["study_uid"], show_phi)
        box = queries.outbox_rows(ctx.store, limit=20)
        return {"studies": rows, "endpoints": queries.endpoint_health(ctx.store, list(ctx.cfg.endpoints)),
                "outbox": box, "alerts": open_alerts(ctx)}  # the monitoring banner (node/monitoring)

    data = await run_in_threadpool(gather)
    return _render(request, "index.html", node=ctx.cfg.node, show_phi=show_phi, **data)


async def study(request: Request) -> HTMLResponse:
    """One study: identity, series, timeline, results with previews."""
    ctx = _ctx(request)
    uid = request.path_params["uid"]
    show_phi = _show_phi(request)

    def gather() -> dict | None:
        detail = queries.study_detail(ctx.store, uid)
        if detail is None:
            return None
        detail["identity"] = queries.identity(ctx.store, uid, show_phi)
        detail["completion"] = {"decisions": ctx.store.decisions_of(uid), "notices": ctx.store.notices_of(uid),
                                "workitems": ctx.store.workitems_of_study(uid)}
        for r in detail["results"]:
            r["findings"] = _findings(r) if r["kind"] == "sr" else (_report(r) if r["kind"] == "report" else [])
        return detail

    data = await run_in_threadpool(gather)
    if data is None:
        raise HTTPException(404, "no such study")
    return _render(request, "study.html", node=ctx.cfg.node, show_phi=show_phi,
                   rules=sorted({j["rule_name"] for j in data["jobs"]}), **data)


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
    return _render(request, "outbox.html", node=ctx.cfg.node, show_phi=_show_phi(request),
                   actions=request.app.state.auth.writes_possible, destinations=sorted(ctx.cfg.destinations), **data)


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
    return [Route("/", guarded("pages", index)), Route("/studies/{uid}", guarded("pages", study)),
            Route("/outbox", guarded("pages", outbox_page)),
            Route("/previews/{uid}.png", guarded("pages", result_preview))]
