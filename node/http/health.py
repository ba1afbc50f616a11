"""``GET /healthz`` (the HTTP process answers) and ``GET /readyz`` (the node can take and finish work)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from node.http.context import HttpContext, worker_alive
from node.store.compat import IncompatibleSchema


async def healthz(request: Request) -> JSONResponse:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


def readiness(ctx: HttpContext) -> dict[str, dict[str, Any]]:
    """Each readiness check: database writable, spool above the disk floor, queue reachable, worker alive."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        ctx.store.schema_guard.check()  # a newer node made the schema unusable to this version: not ready
        with ctx.store.engine.begin() as conn:
            # a write statement takes the database's write lock (SQLite: RESERVED) without changing a row
            conn.execute(text("UPDATE outbox SET attempts = attempts WHERE id = -1"))
        checks["database"] = {"ok": True, "detail": "writable"}
    except IncompatibleSchema as exc:  # its message names the revisions (no PHI): what the operator must do
        checks["database"] = {"ok": False, "detail": str(exc)}
    except Exception as exc:  # any driver error means not ready; the type says which
        checks["database"] = {"ok": False, "detail": f"not writable: {type(exc).__name__}"}
    floor_mb = ctx.cfg.http.disk_floor_mb if ctx.cfg.http.disk_floor_mb is not None else ctx.cfg.node.min_free_disk_mb
    try:
        free = ctx.spool.free_bytes()
        ok = free >= floor_mb * 1024 * 1024
        checks["spool"] = {"ok": ok, "detail": f"{free / 2**20:.0f} MiB free, floor {floor_mb} MiB"}
    except OSError as exc:
        checks["spool"] = {"ok": False, "detail": f"cannot stat the spool: {exc.strerror}"}
    try:
        pending = ctx.huey.pending_count()
        checks["queue"] = {"ok": True, "detail": f"{pending} task(s) pending"}
    except Exception as exc:  # Redis down, SQLite file unreadable
        checks["queue"] = {"ok": False, "detail": f"not reachable: {type(exc).__name__}"}
    ok, detail = worker_alive(ctx.cfg.node_dir)
    checks["worker"] = {"ok": ok, "detail": detail}
    return checks


async def readyz(request: Request) -> JSONResponse:
    """200 when every check passes, 503 otherwise; the body names each check and why."""
    ctx: HttpContext = request.app.state.ctx
    checks = await run_in_threadpool(readiness, ctx)
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks, "time": time.time()}, status_code=200 if ready else 503)
