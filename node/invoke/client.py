"""HTTP client for Azure ML managed online endpoints (and the local emulator, which speaks the same protocol).

One :class:`EndpointClient` per configured endpoint (or per job: they are cheap, and the pieces that must be
shared are process-wide). ``score(payload)`` POSTs JSON to the scoring URI and returns an :class:`EndpointReply`
or raises :class:`EndpointError`:

* retried (tenacity, jittered exponential backoff from ``backoff_initial_seconds`` capped at
  ``backoff_max_seconds``, at least ``Retry-After`` / ``retry-after-ms`` when the endpoint sends one, at most
  ``max_attempts`` attempts): connection errors, timeouts, a connection closed without an answer, 429 and every
  5xx;
* never retried here, decided by the job (:mod:`node.flow.circuit`) from :attr:`EndpointError.cause`: 424 (the
  model container refused the input, ``permanent=True``, or failed on it, ``permanent=False``: the container's
  status and reason are kept) and 408 (the deployment's ``request_timeout_ms`` ran out: ``permanent=False``);
* 401: the credential is reloaded (a rotated key file, a fresh token) and the call made once more;
* not retried (``permanent=True``): other 4xx, redirects, a 2xx whose body is not JSON, missing credentials;
* retries exhausted: ``permanent=False`` naming the last status, so the job can be tried again later.

At most ``max_concurrency`` calls per endpoint *name* are in flight in the whole process (a shared
``BoundedSemaphore``), held only while the HTTP call runs, never while sleeping between attempts.

Logs carry the endpoint name, request id, attempt, status and elapsed time; never the key, token or payload.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_any

from node.ops import metrics
from node.config import ConfigError, EndpointSection
from node.invoke.auth import AuthError, Authenticator
from node.invoke.errors import EndpointError, Transient as _Transient, model_error_headers

if TYPE_CHECKING:  # pragma: no cover
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

USER_AGENT = "dicom-ai-node/0.1"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# A Retry-After longer than this is not slept through: the call fails (permanent=False, retry_after set) so the
# job can be rescheduled instead of holding a worker thread.
MAX_RETRY_AFTER_SECONDS = 300.0
ERROR_BODY_CHARS = 500
EMULATOR_HEADER = "x-ms-emulator"
MODEL_VERSION_HEADERS = ("x-ms-model-version", "azureml-model-version")


@dataclass(frozen=True)
class EndpointReply:
    body: Any  # parsed JSON
    status: int
    elapsed_seconds: float  # wall time of the successful HTTP call
    request_id: str  # the x-ms-client-request-id we sent
    server_request_id: str | None  # x-request-id from the reply
    emulated: bool  # the reply carried the emulator's marker header (x-ms-emulator)
    model_version: str | None  # from a reply header if any (the emulator sends x-ms-model-version)
    attempts: int
    deployment: str | None = None  # azureml-model-deployment of the reply: the deployment that answered


# --- process-wide concurrency limit ------------------------------------------------------------------

_sem_lock = threading.Lock()
_semaphores: dict[str, tuple[int, threading.BoundedSemaphore]] = {}


def endpoint_semaphore(name: str, limit: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore of endpoint ``name``; a new limit (config reload) starts a new semaphore."""
    with _sem_lock:
        entry = _semaphores.get(name)
        if entry is None or entry[0] != limit:
            entry = (limit, threading.BoundedSemaphore(limit))
            _semaphores[name] = entry
        return entry[1]


# --- helpers -----------------------------------------------------------------------------------------

def new_request_id() -> str:
    """A fresh ``x-ms-client-request-id`` (32 hex characters)."""
    return uuid.uuid4().hex


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` and ``Retry-After`` (seconds or HTTP date); the longer wins."""
    waits: list[float] = []
    ms = headers.get("retry-after-ms") or headers.get("x-ms-retry-after-ms")
    if ms:
        try:
            waits.append(max(0.0, float(ms) / 1000.0))
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        ra = ra.strip()
        try:
            waits.append(max(0.0, float(ra)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                if when.tzinfo is None:  # an HTTP date is GMT
                    import datetime as _dt

                    when = when.replace(tzinfo=_dt.timezone.utc)
                waits.append(max(0.0, when.timestamp() - (time.time() if now is None else now)))
    return max(waits) if waits else None


def _body_text(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable bytes
        text = response.content[:ERROR_BODY_CHARS].decode("latin-1")
    text = " ".join(text.split())
    if len(text) > ERROR_BODY_CHARS:
        text = text[:ERROR_BODY_CHARS] + "..."
    return text or "(empty body)"


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in {"localhost", "::1"} or host.startswith("127.")


class EndpointClient:
    """Calls one configured endpoint. Thread-safe: one instance may serve every worker thread.

    ``credential``: a ``TokenCredential`` for ``auth: entra`` and for workspace lookups (default: the process's
    DefaultAzureCredential). ``transport``: an httpx transport (tests). ``ml_client``: an azure-ai-ml ``MLClient``
    (or a look-alike with ``online_endpoints.get``/``get_keys``) for endpoints named by workspace.
    """

    def __init__(self, name: str, cfg: EndpointSection, *, credential: "TokenCredential | None" = None,
                 transport: httpx.BaseTransport | None = None, ml_client: Any | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self._credential = credential
        self._transport = transport
        self._ml_client = ml_client
        self._lock = threading.Lock()
        self._url: str | None = None
        self._auth: Authenticator | None = None
        self._http: httpx.Client | None = None
        self._closed = False
        self._semaphore = endpoint_semaphore(name, cfg.max_concurrency)

    # --- setup ---------------------------------------------------------------------------------------
    def _resolve(self, request_id: str) -> tuple[str, Authenticator, httpx.Client]:
        if self._http is not None and self._url is not None and self._auth is not None and not self._closed:
            return self._url, self._auth, self._http
        from node.invoke import azureml

        with self._lock:
            if self._closed:
                raise EndpointError(f"endpoint {self.name}: client is closed", permanent=True,
                                    request_id=request_id, endpoint=self.name)
            if self._http is None:
                try:
                    url, auth = azureml.resolve(self.name, self.cfg, credential=self._credential,
                                                ml_client=self._ml_client)
                except ConfigError as exc:
                    raise EndpointError(f"endpoint {self.name}: {exc}", permanent=True, request_id=request_id,
                                        endpoint=self.name) from exc
                except azureml.WorkspaceLookupError as exc:
                    raise EndpointError(f"endpoint {self.name}: {exc.message}", permanent=exc.permanent,
                                        request_id=request_id, endpoint=self.name) from exc
                cfg = self.cfg
                timeout = httpx.Timeout(connect=cfg.connect_timeout_seconds, read=cfg.timeout_seconds,
                                        write=cfg.timeout_seconds, pool=cfg.timeout_seconds)
                self._http = httpx.Client(
                    timeout=timeout,
                    verify=cfg.verify_tls,
                    transport=self._transport,
                    follow_redirects=False,
                    headers={"User-Agent": USER_AGENT},
                    trust_env=not _is_loopback(url),  # never send the local emulator's traffic to a proxy
                )
                self._url, self._auth = url, auth
            return self._url, self._auth, self._http  # type: ignore[return-value]

    @property
    def url(self) -> str | None:
        """The scoring URI (known after the first call for workspace endpoints)."""
        return self._url

    # --- one attempt ---------------------------------------------------------------------------------
    def _attempt(self, url: str, auth: Authenticator, http: httpx.Client, body: bytes, request_id: str,
                 attempt: int) -> EndpointReply:
        try:
            headers = auth.headers()
        except AuthError as exc:
            if exc.permanent:
                raise EndpointError(f"endpoint {self.name}: {exc.message}", permanent=True, request_id=request_id,
                                    attempts=attempt, endpoint=self.name) from exc
            raise _Transient(exc.message) from exc
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json"
        headers["x-ms-client-request-id"] = request_id
        if self.cfg.deployment:
            headers["azureml-model-deployment"] = self.cfg.deployment

        self._semaphore.acquire()
        started = time.perf_counter()
        try:
            response = http.post(url, content=body, headers=headers)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
            raise EndpointError(f"endpoint {self.name}: cannot call {url}: {exc}", permanent=True,
                                request_id=request_id, attempts=attempt, endpoint=self.name) from exc
        except httpx.TimeoutException as exc:
            elapsed = time.perf_counter() - started
            metrics.endpoint_call(self.name, "timeout", elapsed)
            log.warning("endpoint %s request %s attempt %d: %s after %.3f s", self.name, request_id, attempt,
                        type(exc).__name__, elapsed)
            raise _Transient(f"{type(exc).__name__} after {elapsed:.1f} s") from exc
        except httpx.TransportError as exc:
            elapsed = time.perf_counter() - started
            text = str(exc) or type(exc).__name__
            metrics.endpoint_call(self.name, "network-error", elapsed)
            if "CERTIFICATE_VERIFY_FAILED" in text:
                raise EndpointError(f"endpoint {self.name}: TLS certificate verification failed for {url}: {text}",
                                    permanent=True, request_id=request_id, attempts=attempt,
                                    endpoint=self.name) from exc
            log.warning("endpoint %s request %s attempt %d: %s after %.3f s", self.name, request_id, attempt,
                        type(exc).__name__, elapsed)
            raise _Transient(f"{type(exc).__name__}: {text}") from exc
        finally:
            self._semaphore.release()
        elapsed = time.perf_counter() - started
        status = response.status_code
        server_rid = response.headers.get("x-request-id")
        metrics.endpoint_call(self.name, status, elapsed)
        log.info("endpoint %s request %s attempt %d: HTTP %d in %.3f s (server request %s)", self.name, request_id,
                 attempt, status, elapsed, server_rid or "-")

        if 200 <= status < 300:
            try:
                parsed = json.loads(response.content)
            except ValueError as exc:
                raise EndpointError(
                    f"endpoint {self.name}: HTTP {status} but the reply is not valid JSON ({exc}); body starts: "
                    f"{_body_text(response)[:200]}",
                    status=status, permanent=True, request_id=request_id, attempts=attempt, endpoint=self.name,
                ) from exc
            model_version = next((response.headers[h] for h in MODEL_VERSION_HEADERS if h in response.headers), None)
            return EndpointReply(
                body=parsed,
                status=status,
                elapsed_seconds=elapsed,
                request_id=request_id,
                server_request_id=server_rid,
                emulated=EMULATOR_HEADER in response.headers,
                model_version=model_version,
                attempts=attempt,
                deployment=response.headers.get("azureml-model-deployment"),
            )

        detail = _body_text(response)
        if status == 424:  # the model container answered non-200: this input's fault (4xx) or the model's (5xx)
            model_status, model_reason = model_error_headers(response.headers)
            refused = model_status is not None and 400 <= model_status < 500
            what = "the model refused this input" if refused else "the model container failed"
            raise EndpointError(
                f"endpoint {self.name}: HTTP 424: {what} (model status {model_status if model_status else '?'}, "
                f"reason {model_reason or '?'}): {detail}", status=424, permanent=refused, request_id=request_id,
                attempts=attempt, endpoint=self.name, model_status=model_status, model_reason=model_reason)
        if status == 408:  # the deployment's request_timeout_ms ran out: calling again at once costs as much again
            raise EndpointError(
                f"endpoint {self.name}: HTTP 408: the model ran longer than the deployment's request_timeout_ms: "
                f"{detail}", status=408, permanent=False, request_id=request_id, attempts=attempt,
                endpoint=self.name, retry_after=parse_retry_after(response.headers))
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}: {detail}", status=status, retry_after=parse_retry_after(response.headers))
        if status in (401, 403):
            auth.invalidate()  # a regenerated key or revoked token: the next job fetches a fresh one
        raise EndpointError(f"endpoint {self.name}: HTTP {status}: {detail}", status=status, permanent=True,
                            request_id=request_id, attempts=attempt, endpoint=self.name)

    # --- retry policy --------------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        cfg = self.cfg
        base = min(cfg.backoff_max_seconds, cfg.backoff_initial_seconds * (2 ** (state.attempt_number - 1)))
        wait = random.uniform(base / 2, base) if base > 0 else 0.0  # "equal jitter": never much shorter than base
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

    @staticmethod
    def _retry_after_too_long(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        return retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS

    def _before_sleep(self, request_id: str):
        def before_sleep(state: RetryCallState) -> None:
            metrics.endpoint_retry(self.name)
            exc = state.outcome.exception() if state.outcome is not None else None
            sleep = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning("endpoint %s request %s attempt %d failed (%s); retrying in %.2f s", self.name, request_id,
                        state.attempt_number, getattr(exc, "message", exc), sleep)

        return before_sleep

    # --- public API ----------------------------------------------------------------------------------
    def score(self, payload: dict, *, request_id: str | None = None) -> EndpointReply:
        """POST ``payload`` as JSON to the endpoint; retry transient failures; raise :class:`EndpointError`."""
        rid = request_id if request_id is not None else new_request_id()
        if not REQUEST_ID_RE.match(rid):
            raise ValueError("request_id must be 1 to 40 characters of A-Z, a-z, 0-9, '_' and '-'")
        try:
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the payload cannot be sent as JSON: {exc}") from exc
        url, auth, http = self._resolve(rid)

        attempts = 0

        reloaded = False

        def one_attempt() -> EndpointReply:
            nonlocal attempts, reloaded
            attempts += 1
            try:
                return self._attempt(url, auth, http, body, rid, attempts)
            except EndpointError as exc:
                if exc.status != 401 or reloaded:
                    raise
                # a rotated key (new file content) or an expired token: reload the credential once, then a
                # second 401 is permanent
                reloaded = True
                log.warning("endpoint %s request %s: HTTP 401; reloading the credential and trying once more",
                            self.name, rid)
                return self._attempt(url, auth, http, body, rid, attempts)

        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_any(stop_after_attempt(self.cfg.max_attempts), self._retry_after_too_long),
            wait=self._wait,
            before_sleep=self._before_sleep(rid),
            reraise=True,
        )
        try:
            return retrying(one_attempt)
        except _Transient as exc:
            if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER_SECONDS and attempts < self.cfg.max_attempts:
                why = f"the endpoint asked to retry after {exc.retry_after:.0f} s"
            else:
                why = f"retries exhausted after {attempts} attempt{'s' if attempts != 1 else ''}"
            log.warning("endpoint %s request %s: giving up: %s; last: %s", self.name, rid, why, exc.message)
            raise EndpointError(f"endpoint {self.name}: {why}; last: {exc.message}", status=exc.status,
                                permanent=False, request_id=rid, attempts=attempts, retry_after=exc.retry_after,
                                endpoint=self.name) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._http is not None:
                self._http.close()

    def __enter__(self) -> "EndpointClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EndpointClient({self.name!r}, model={self.cfg.model!r}, url={self._url or self.cfg.url!r})"
