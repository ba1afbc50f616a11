"""What a failed endpoint call says, and whose fault it is.

Azure ML online endpoints answer a request the model container refused or failed on with **424** and two headers:
``ms-azureml-model-error-statuscode`` (the container's own status) and ``ms-azureml-model-error-reason``. The
container's 4xx means *this input* is the problem (an image it cannot decode, a volume too large for it): retrying
it or counting it against the endpoint is wrong. **408** means the model ran longer than the deployment's
``request_timeout_ms``. :attr:`EndpointError.cause` names the case so the flow can act on the cause, not the status:

==================  ==========================================================  =================================
cause               what happened                                               what the flow does (node/flow)
==================  ==========================================================  =================================
``model-input``     424, inner 4xx: the model refused this input                the job fails at once
``model-error``     424, inner 5xx (or no inner status): the model failed        bounded retry of that job only
``timeout``         408: longer than the deployment's ``request_timeout_ms``     bounded retry of that job + ALERT
``throttled``       429 after the client's retries                              the endpoint's circuit opens
``unavailable``     network errors, read timeouts, 5xx after the retries         the endpoint's circuit opens
``auth``            401/403 (after one credential reload)                        the job fails
``request``         another 4xx (400 from the gateway, 404 no deployment, 413)   the job fails
``reply``           a 2xx whose body is not JSON                                 the job fails
``config``          no credential, a bad URL, the workspace lookup refused       the job fails
==================  ==========================================================  =================================
"""

from __future__ import annotations

__all__ = ["EndpointError", "Transient", "model_error_headers"]

MODEL_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_REASON_HEADER = "ms-azureml-model-error-reason"


def model_error_headers(headers: object) -> tuple[int | None, str | None]:
    """The container's status and reason from a 424's headers (None when absent or not a number)."""
    get = getattr(headers, "get")
    raw = get(MODEL_STATUS_HEADER)
    try:
        status = int(str(raw).strip()) if raw is not None else None
    except ValueError:
        status = None
    reason = get(MODEL_REASON_HEADER)
    reason = " ".join(str(reason).split())[:200] if reason else None
    return status, reason


class EndpointError(Exception):
    """A call that did not produce a reply.

    ``permanent``: retrying the same request will not help (4xx, a model that refused the input, malformed reply,
    configuration); otherwise the job may be tried again later. ``retry_after``: seconds the endpoint asked us to
    wait, when it did. ``model_status`` / ``model_reason``: the container's own status and reason of a 424.
    """

    def __init__(self, message: str, *, status: int | None = None, permanent: bool, request_id: str | None = None,
                 attempts: int = 0, retry_after: float | None = None, endpoint: str | None = None,
                 model_status: int | None = None, model_reason: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.permanent = permanent
        self.request_id = request_id
        self.attempts = attempts
        self.retry_after = retry_after
        self.endpoint = endpoint
        self.model_status = model_status
        self.model_reason = model_reason
        self._kind = kind

    @property
    def cause(self) -> str:
        """Whose fault the failure is (the table of the module docstring)."""
        if self._kind is not None:
            return self._kind
        if self.status == 424:
            return "model-input" if self.model_status is not None and 400 <= self.model_status < 500 \
                else "model-error"
        if self.status == 408:
            return "timeout"
        if self.status == 429:
            return "throttled"
        if self.status in (401, 403):
            return "auth"
        if self.status is not None and 200 <= self.status < 300:
            return "reply"
        if self.status is not None and 300 <= self.status < 500:
            return "request"
        return "config" if self.permanent else "unavailable"

    def __repr__(self) -> str:
        return (f"EndpointError({self.message!r}, status={self.status}, permanent={self.permanent}, "
                f"attempts={self.attempts}, cause={self.cause!r})")


class Transient(Exception):
    """One failed attempt that may succeed when repeated (the HTTP client retries it)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
