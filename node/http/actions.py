"""Write actions (``POST /actions/<name>``): each one a plain function, for the operator role (:mod:`node.http.auth`).

Who may run them: the static bearer token of ``http.token_env``; with ``http.oidc``, a machine's JWT holding the
operator role, or a signed-in operator through the forms of the study and outbox pages (CSRF token checked). With
neither a token nor ``http.oidc`` every action answers 403: the HTTP side is read-only. Each run, and each refusal
of a person, is in the audit trail (event ``action``, with the user, the peer and the outcome).
Adding an action is one function ``(ctx, params) -> dict`` and one line in :data:`ACTIONS`. The actions:

- ``retry`` ``{"destination": name?}``: parked results back in the outbox (``dicom-node retry``);
- ``retract`` ``{"study": uid, "reason": quality|safety|incorrect-worklist, "rule": name?}``: an IOCM rejection
  note to every destination that got the node's results of the study (``dicom-node retract``);
- ``rerun`` ``{"study": uid, "rule": name?}``: the study's jobs again, new results naming the ones they replace
  (``dicom-node rerun``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from node.http.auth import CSRF_FIELD, Auth, Principal, peer_host, safe_next
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
    return {**report.as_dict(), "summary": report.summary()}


def rerun_action(ctx: HttpContext, params: dict[str, Any]) -> dict[str, Any]:
    """Run the jobs of ``params["study"]`` again; their new results name the ones they replace."""
    from node.flow.queue import Queue
    from node.flow.retract import RetractError, rerun

    try:
        report = rerun(ctx.cfg, ctx.store, Queue(ctx.cfg), str(params["study"]), rule=params.get("rule"))
    except RetractError as exc:
        raise ValueError(str(exc)) from None
    return {**report.as_dict(), "summary": report.summary()}


ACTIONS: dict[str, Action] = {"retry": retry, "retract": retract_action, "rerun": rerun_action}


def _params(form: dict[str, Any]) -> dict[str, Any]:
    """A write form's fields as an action's parameters (empty selections left out; csrf and next are the form's)."""
    return {k: v for k, v in form.items() if k not in (CSRF_FIELD, "next") and isinstance(v, str) and v.strip()}


def _audit(request: Request, name: str, principal: Principal | None, params: dict[str, Any], outcome: str,
           error: str = "") -> None:
    """One ``action`` event (the fields of ``dicom-node retract|rerun|retry``'s, ``via`` http); ``error``: why it
    was refused or failed."""
    fields: dict[str, Any] = {"action": name, "user": principal.name if principal else None,
                              "peer_host": peer_host(request), "via": "http"}
    if principal is not None and principal.display:
        fields["user_name"] = principal.display
    for key, field in (("study", "study_uid"), ("destination", "destination"), ("rule", "rule"),
                       ("reason", "reason")):
        if params.get(key):
            fields[field] = str(params[key])
    if error:
        fields["error"] = error
    request.app.state.auth.audit.record("action", outcome, **fields)


async def run_action(request: Request) -> Response:
    """``POST /actions/{name}``: a JSON object of parameters with a bearer token (static or a JWT with the operator
    role), or a form of the study and outbox pages from a signed-in operator (CSRF token checked). A form's answer
    is the page it came from (its ``next``), with the outcome shown at the top."""
    auth: Auth = request.app.state.auth
    name = request.path_params["name"]
    if not auth.writes_possible:
        return JSONResponse({"error": "write actions are off (no http.token_env configured or its variable is unset, "
                                      "no http.oidc)"}, status_code=403)
    is_form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    form = dict(await request.form()) if is_form else {}
    decision = await auth.authorise(request, "actions")
    if decision.response is not None:
        if decision.principal is not None:  # a person without the operator role, or a form without its CSRF token
            _audit(request, name, decision.principal, _params(form), "serious-failure", decision.reason)
        return decision.response
    me = decision.principal
    action = ACTIONS.get(name)
    if action is None:
        return JSONResponse({"error": f"unknown action {name!r}; allowed: {sorted(ACTIONS)}"}, status_code=404)
    if is_form:
        params: Any = _params(form)
    else:
        try:
            params = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        if not isinstance(params, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    ctx: HttpContext = request.app.state.ctx
    browser = is_form and me is not None and me.via == "session"
    try:
        result = await run_in_threadpool(action, ctx, params)
    except (ValueError, KeyError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else f"missing parameter {exc}"
        _audit(request, name, me, params, "minor-failure", message)
        if browser:
            return _back(request, form, f"{name} failed: {message}", ok=False)
        return JSONResponse({"error": message}, status_code=400)
    _audit(request, name, me, params, "success")
    log.info("action %s by %s from %s: %s", name, me.name if me else "?", peer_host(request), result)
    if browser:
        text = result.get("summary") or ", ".join(f"{k} {v}" for k, v in result.items())
        return _back(request, form, f"{name} done: {text}", ok=True)
    return JSONResponse({"action": name, **result})


def _back(request: Request, form: dict[str, Any], message: str, *, ok: bool) -> Response:
    request.session["flash"] = {"message": message, "ok": ok}
    return RedirectResponse(safe_next(form.get("next")), status_code=303)
