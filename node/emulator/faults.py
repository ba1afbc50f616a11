"""The emulator's scriptable faults: what a fault script may hold, its checks, and what an error fault answers.

Each ``/score`` request that passes authentication consumes the next fault, if any (a dict; keys combine):

* ``{"stall_seconds": 5}``: sleep first, then go on (with the other keys, or answer normally);
* ``{"close": true}``: close the connection without answering;
* ``{"status": 429, "retry_after": 1}``: answer that status with ``{"message": ...}``; ``retry_after`` (seconds, or
  an HTTP date string) -> ``Retry-After``, ``retry_after_ms`` -> ``retry-after-ms``; ``message`` overrides the
  text; a 424 carries ``ms-azureml-model-error-statuscode``/``-reason`` (``model_status``, ``model_reason``);
* ``{"malformed": true}``: 200 whose body is not JSON;
* ``{"body": <any JSON>}``: 200 with exactly this body (``status`` may change the code);
* ``{"shape": "object"|"rows"}``: the reply shape of this one answer;
* ``{"headers": {...}}``: extra reply headers; ``{"repeat": n}``: the fault n times in a row.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MESSAGES", "FAULT_KEYS", "RESPONSE_SHAPES", "status_fault", "validate_faults"]

#: The reply shapes of CXRReportGen (server setting ``response_shape``, fault key ``shape``).
RESPONSE_SHAPES = ("rows", "object")
FAULT_KEYS = {"status", "retry_after", "retry_after_ms", "stall_seconds", "close", "malformed", "body", "shape",
              "message", "headers", "model_status", "model_reason", "repeat"}
DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "No deployment with traffic",
    408: "Request timed out",
    413: "Request entity too large",
    424: "The model container failed",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def validate_faults(faults: Any) -> list[dict]:
    """Check a fault script; return it with ``repeat`` expanded. ``ValueError`` names the bad entry."""
    if not isinstance(faults, list):
        raise ValueError("faults must be a list of objects")
    out: list[dict] = []
    for i, fault in enumerate(faults):
        if not isinstance(fault, dict):
            raise ValueError(f"fault {i}: must be an object")
        unknown = set(fault) - FAULT_KEYS
        if unknown:
            raise ValueError(f"fault {i}: unknown key(s) {sorted(unknown)}; allowed: {sorted(FAULT_KEYS)}")
        status = fault.get("status")
        if status is not None and (not isinstance(status, int) or not 200 <= status <= 599):
            raise ValueError(f"fault {i}: status must be an HTTP status code 200..599")
        stall = fault.get("stall_seconds", 0)
        if not isinstance(stall, (int, float)) or stall < 0:
            raise ValueError(f"fault {i}: stall_seconds must be a number >= 0")
        if fault.get("shape") not in (None, *RESPONSE_SHAPES):
            raise ValueError(f"fault {i}: shape must be one of {RESPONSE_SHAPES}")
        if "headers" in fault and not isinstance(fault["headers"], dict):
            raise ValueError(f"fault {i}: headers must be an object")
        repeat = fault.get("repeat", 1)
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"fault {i}: repeat must be an integer >= 1")
        single = {k: v for k, v in fault.items() if k != "repeat"}
        out.extend(dict(single) for _ in range(repeat))
    return out


def status_fault(fault: dict[str, Any], extra: dict[str, str]) -> tuple[int, str]:
    """The status and message text of an error fault (``status`` >= 300), adding its reply headers to ``extra``:
    ``Retry-After`` / ``retry-after-ms`` when scripted, and for a 424 the model error status and reason."""
    status = int(fault["status"])
    if "retry_after" in fault:
        extra["Retry-After"] = str(fault["retry_after"])
    if "retry_after_ms" in fault:
        extra["retry-after-ms"] = str(fault["retry_after_ms"])
    if status == 424:
        extra.setdefault("ms-azureml-model-error-statuscode", str(fault.get("model_status", 500)))
        extra.setdefault("ms-azureml-model-error-reason", str(fault.get("model_reason", "model_error")))
    message = str(fault.get("message") or DEFAULT_MESSAGES.get(status, f"HTTP {status}"))
    return status, message
