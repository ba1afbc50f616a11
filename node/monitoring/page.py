"""The monitoring side of the HTTP app: the Monitoring page, its static files, the FHIR report door.

:func:`routes` is what the app mounts (``node.http.app.build_app``, one line): ``GET /monitoring`` (the page:
tables rendered here, charts drawn in the browser by the vendored Chart.js), ``GET /monitoring/data.json`` (the same
data), ``GET /monitoring/static/{name}`` (chart.umd.min.js, its licence, monitoring.js) and the FHIR door
(:mod:`node.monitoring.fhir_door`) behind the write check the app passes in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from node.http.auth import guarded
from node.monitoring.fhir_door import Authorize, report_routes
from node.monitoring.summary import overview

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"chart.umd.min.js": "text/javascript", "monitoring.js": "text/javascript",
                "chart.js.LICENSE.md": "text/plain"}
BREAKDOWNS = ("all", "site", "modality", "manufacturer")

TEMPLATES = Environment(loader=ChoiceLoader([PackageLoader("node.monitoring", "templates"),
                                             PackageLoader("node.http", "templates")]),
                       autoescape=select_autoescape(["html"]))
TEMPLATES.filters["clock"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def chart_data(data: dict[str, Any], floor: float, alpha: float) -> dict[str, Any]:
    """The JSON the page's charts read (no patient data)."""
    return {"trend": data["trend"], "floor": floor, "alpha": alpha, "volumes": data["volumes"]["observations"],
            "drift_history": [{"when": time.strftime("%Y-%m-%d %H:%M", time.localtime(d["evaluated_at"])),
                               **{k: d[k] for k in ("model", "model_version", "test", "p_adjusted", "effect",
                                                    "significant")}} for d in data["drift_history"]]}


def trend_keys(data: dict[str, Any]) -> list[str]:
    """The items worth a chart: some study in the trend was positive for the AI or the radiologist."""
    return sorted(k for k, pts in data["trend"].items() if any(p["a"] + p["b"] + p["c"] for p in pts))


def _recent(ctx: Any) -> list[dict[str, Any]]:
    """The newest reports with the study's identifiers (only with ``http.show_phi``)."""
    from sqlalchemy import select

    from node.http.queries import identity
    from node.store.schema import monitoring

    with ctx.store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(monitoring.reports).order_by(
            monitoring.reports.c.received_at.desc()).limit(50)).mappings()]
    for r in rows:
        r["findings"] = json.loads(r["findings"])
        r["identity"] = identity(ctx.store, r["study_uid"], True) if r["study_uid"] else {}
    return rows


async def page(request: Request) -> HTMLResponse:
    """``GET /monitoring``: agreement, drift, volumes, alerts (study identifiers only for a principal with PHI)."""
    ctx = request.app.state.ctx
    me = request.state.principal
    show_phi = me.may("phi")
    cfg = ctx.cfg.monitoring
    by = request.query_params.get("by", "all")
    if by not in BREAKDOWNS:
        raise HTTPException(400, f"by must be one of {', '.join(BREAKDOWNS)}")

    def gather() -> dict[str, Any]:
        data = overview(ctx.store, cfg, by=by)
        return {"data": data, "recent": _recent(ctx) if show_phi else [],
                "trend_keys": trend_keys(data),
                "chart_json": json.dumps(chart_data(data, cfg.min_agreement, cfg.drift_alpha)).replace("</", "<\\/")}

    values = await run_in_threadpool(gather)
    html = TEMPLATES.get_template("monitoring.html").render(node=ctx.cfg.node, show_phi=show_phi, me=me, cfg=cfg,
                                                             alerts=values["data"]["alerts"], **values)
    response = HTMLResponse(html)
    if me.via == "session":
        response.headers["Cache-Control"] = "no-store"  # a signed-in page may hold patient identifiers
    return response


async def data_json(request: Request) -> JSONResponse:
    """``GET /monitoring/data.json``: what the page shows, as JSON."""
    ctx = request.app.state.ctx
    by = request.query_params.get("by", "all")
    if by not in BREAKDOWNS:
        raise HTTPException(400, f"by must be one of {', '.join(BREAKDOWNS)}")
    data = await run_in_threadpool(overview, ctx.store, ctx.cfg.monitoring, by=by)
    data["baselines"] = [{k: v for k, v in b.items()} for b in data["baselines"]]
    return JSONResponse(data)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_FILES:
        raise HTTPException(404, "no such file")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=86400"})


def open_alerts(ctx: Any) -> list[dict[str, Any]]:
    """The open monitoring alerts (for the status page's banner); [] when monitoring is off."""
    return ctx.store.open_alerts() if ctx.cfg.monitoring.enabled else []


def routes(ctx: Any, authorize: Authorize) -> list[BaseRoute]:
    """Every route of the monitoring side (the FHIR door behind ``authorize``, the HTTP side's write check)."""
    return [Route("/monitoring", guarded("pages", page)), Route("/monitoring/data.json", guarded("pages", data_json)),
            Route("/monitoring/static/{name}", static), *report_routes(ctx, authorize)]
