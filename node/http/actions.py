"""Write actions (``POST /actions/<name>``): each one a plain function, behind the bearer token.

Without ``http.token_env`` (or with its variable unset) every action answers 403: the HTTP side is read-only.
Adding an action is one function ``(ctx, params) -> dict`` and one line in :data:`ACTIONS`. The actions:

- ``retry`` ``{"destination": name?}``: parked results back in the outbox (``dicom-node retry``);
- ``retract`` ``{"study": uid, "reason": quality|safety|incorrect-worklist, "rule": name?}``: an IOCM rejection
  note to every destination that got the node's results of the study (``dicom-node retract``);
- ``rerun`` ``{"study": uid, "rule": name?}``: the study's jobs again, new results naming the ones they replace
  (``dicom-node rerun``).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from node.http.context import HttpContext

log = logging.getLogger(__name__)

Action = Callable[[HttpContext, dict[str, Any]], dict[str, Any]]


def retry(ctx: HttpContext, params: dict[str, Any]) -> dict[str, Any]:
    """Put parked results back in the outbox (all, or one ``destination``) and wake their deliveries."""
    from node.flow.queue import Queue

    destination = params.get("destination")
    if destination is not None and destination not in ctx.cfg.destinations:
        raise ValueError(f"unknown destination {destination!r}; allowed: {sorted(ctx.cfg.destinations)}")
    n = ctx.store.retry_parked(destination)
    queue = Queue(ctx.cfg)
    for dest in {d for d, _ in ctx.store.due_destinations()}:
        queue.enqueue_delivery(dest)
    return {"requeued": n}


def retract_action(ctx: HttpContext, params: dict[str, Any]) -> dict[str, Any]:
    """Reject the node's results of ``params["study"]`` at every destination that got them (IOCM KOS)."""
    from node.flow.queue import Queue
    from node.flow.retract import RetractError, retract

    try:
        report = retract(ctx.cfg, ctx.store, Queue(ctx.cfg), str(params["study"]), rule=params.get("rule"),
                         reason=str(params["reason"]))
    except RetractError as exc:
        raise ValueError(str(exc)) from None
    return report.as_dict()


def rerun_action(ctx: HttpContext, params: dict[str, Any]) -> dict[str, Any]:
    """Run the jobs of ``params["study"]`` again; their new results name the ones they replace."""
    from node.flow.queue import Queue
    from node.flow.retract import RetractError, rerun

    try:
        report = rerun(ctx.cfg, ctx.store, Queue(ctx.cfg), str(params["study"]), rule=params.get("rule"))
    except RetractError as exc:
        raise ValueError(str(exc)) from None
    return report.as_dict()


ACTIONS: dict[str, Action] = {"retry": retry, "retract": retract_action, "rerun": rerun_action}


def authorised(request: Request, token: str | None) -> bool:
    """Does ``request`` carry ``Authorization: Bearer <token>`` (constant-time compare; never without a token)?"""
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return token is not None and scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


async def run_action(request: Request) -> JSONResponse:
    """``POST /actions/{name}`` with ``Authorization: Bearer <token>`` and an optional JSON object of parameters."""
    ctx: HttpContext = request.app.state.ctx
    name = request.path_params["name"]
    token = ctx.token
    if token is None:
        return JSONResponse({"error": "write actions are off (no http.token_env configured or its variable is unset)"},
                            status_code=403)
    if not authorised(request, token):
        return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    action = ACTIONS.get(name)
    if action is None:
        return JSONResponse({"error": f"unknown action {name!r}; allowed: {sorted(ACTIONS)}"}, status_code=404)
    try:
        params = await request.json() if await request.body() else {}
    except ValueError:
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    if not isinstance(params, dict):
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    try:
        result = await run_in_threadpool(action, ctx, params)
    except (ValueError, KeyError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    log.info("action %s by %s: %s", name, request.client.host if request.client else "?", result)
    return JSONResponse({"action": name, **result})
