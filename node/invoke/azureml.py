"""Endpoints named by workspace instead of URL: look up the scoring URI (and key) once with azure-ai-ml.

For a config that gives ``subscription_id``, ``resource_group``, ``workspace`` and ``endpoint_name``::

    MLClient(credential, subscription_id, resource_group, workspace)
        .online_endpoints.get(endpoint_name).scoring_uri   # looked up once, cached for the process
        .online_endpoints.get_keys(endpoint_name)          # auth: key without key_env

``get_keys`` answers with the endpoint's own auth mode: ``EndpointAuthKeys`` (``primary_key``) for key endpoints,
``EndpointAuthToken`` / ``EndpointAadToken`` (``access_token``, ``expiry_time_utc``) for aml_token / aad_token
endpoints; tokens are refreshed before they expire, keys are kept until the endpoint answers 401.

``online_endpoints.invoke`` is never used for scoring: it makes control-plane calls per request, reads the
payload from a file and shares a class-level header dict between threads. Calls go to the scoring URI directly.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from node.config import ConfigError, EndpointSection
from node.invoke.auth import AuthError, Authenticator, KeyAuth, KeyFile, NoAuth, TokenCache, endpoint_key, entra_auth

log = logging.getLogger(__name__)


class WorkspaceLookupError(Exception):
    """The workspace lookup failed. ``permanent``: retrying will not help (not found, forbidden)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent



@dataclass(frozen=True)
class WorkspaceKey:
    subscription_id: str
    resource_group: str
    workspace: str
    endpoint_name: str


def workspace_key(cfg: EndpointSection) -> WorkspaceKey:
    if not (cfg.subscription_id and cfg.resource_group and cfg.workspace and cfg.endpoint_name):
        raise ValueError("the endpoint names no workspace (subscription_id, resource_group, workspace, endpoint_name)")
    return WorkspaceKey(cfg.subscription_id, cfg.resource_group, cfg.workspace, cfg.endpoint_name)


def make_ml_client(credential: Any, key: WorkspaceKey) -> Any:
    """azure-ai-ml's MLClient for the workspace (imported lazily: azure-ai-ml is slow to import)."""
    from azure.ai.ml import MLClient

    return MLClient(credential, key.subscription_id, key.resource_group, key.workspace)


def _classify(exc: Exception, what: str) -> WorkspaceLookupError:
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    transient = name in {"ServiceRequestError", "ServiceResponseError", "ServiceRequestTimeoutError",
                         "ServiceResponseTimeoutError", "ConnectionError", "TimeoutError"}
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        transient = True
    suffix = f" (HTTP {status})" if status else ""
    return WorkspaceLookupError(f"{what}: {name}{suffix}: {str(exc)[:300]}", permanent=not transient)


class WorkspaceEndpoint:
    """The scoring URI and endpoint credentials of one workspace endpoint, looked up once. Thread-safe."""

    def __init__(self, key: WorkspaceKey, ml_client: Any) -> None:
        self.key = key
        self._ml_client = ml_client
        self._lock = threading.Lock()
        self._scoring_uri: str | None = None
        self._keys_cache: TokenCache | None = None
        self._static_key: str | None = None
        self.lookups = 0  # control-plane calls made (for tests and diagnostics)

    @property
    def ml_client(self) -> Any:
        """The azure-ai-ml MLClient of the workspace (also used to read the endpoint's deployments)."""
        return self._ml_client

    @property
    def scoring_uri(self) -> str:
        if self._scoring_uri is not None:
            return self._scoring_uri
        with self._lock:
            if self._scoring_uri is None:
                name = self.key.endpoint_name
                try:
                    endpoint = self._ml_client.online_endpoints.get(name)
                except Exception as exc:
                    raise _classify(exc, f"looking up online endpoint {name!r}") from exc
                finally:
                    self.lookups += 1
                uri = getattr(endpoint, "scoring_uri", None)
                if not uri:
                    raise WorkspaceLookupError(f"online endpoint {name!r} has no scoring URI (still being created?)",
                                       permanent=False)
                self._scoring_uri = str(uri)
                log.info("endpoint %s: scoring URI %s", name, self._scoring_uri)
            return self._scoring_uri

    def _get_keys(self) -> Any:
        name = self.key.endpoint_name
        try:
            return self._ml_client.online_endpoints.get_keys(name)
        except Exception as exc:
            raise _classify(exc, f"getting the keys of online endpoint {name!r}") from exc
        finally:
            self.lookups += 1

    def secret(self) -> str:
        """The endpoint's primary key, or its current access token (aml_token / aad_token endpoints)."""
        with self._lock:
            if self._static_key is not None:
                return self._static_key
            if self._keys_cache is None:
                first = self._get_keys()
                primary = getattr(first, "primary_key", None)
                if primary:
                    self._static_key = str(primary)
                    return self._static_key
                if not getattr(first, "access_token", None):
                    raise WorkspaceLookupError(f"online endpoint {self.key.endpoint_name!r} returned neither a primary key "
                                       f"nor an access token", permanent=True)
                served = [first]

                def fetch() -> Any:
                    return served.pop() if served else self._get_keys()

                self._keys_cache = TokenCache(fetch, what="endpoint access token")
            cache = self._keys_cache
        return cache.get()

    def invalidate(self) -> None:
        """Forget the key or token (the endpoint answered 401: regenerated key, expired token)."""
        with self._lock:
            self._static_key = None
            if self._keys_cache is not None:
                self._keys_cache.invalidate()


class _WorkspaceKeyAuth:
    def __init__(self, endpoint: WorkspaceEndpoint) -> None:
        self._endpoint = endpoint

    def headers(self) -> dict[str, str]:
        try:
            secret = self._endpoint.secret()
        except WorkspaceLookupError as exc:
            raise AuthError(exc.message, permanent=exc.permanent) from exc
        return {"Authorization": f"Bearer {secret}"}

    def invalidate(self) -> None:
        self._endpoint.invalidate()

    def __repr__(self) -> str:
        return "WorkspaceKeyAuth(<redacted>)"


_registry_lock = threading.Lock()
_registry: dict[WorkspaceKey, WorkspaceEndpoint] = {}


def workspace_endpoint(cfg: EndpointSection, *, credential: Any | None = None,
                       ml_client: Any | None = None) -> WorkspaceEndpoint:
    """The process-wide :class:`WorkspaceEndpoint` of ``cfg`` (an MLClient is made on first use only)."""
    key = workspace_key(cfg)
    with _registry_lock:
        entry = _registry.get(key)
        if entry is None:
            if ml_client is None:
                from node.invoke.auth import default_credential

                try:
                    ml_client = make_ml_client(credential if credential is not None else default_credential(), key)
                except Exception as exc:
                    raise _classify(exc, "creating the azure-ai-ml MLClient") from exc
            entry = WorkspaceEndpoint(key, ml_client)
            _registry[key] = entry
        return entry


def clear_cache() -> None:
    """Forget every looked-up endpoint (tests; or after an endpoint was re-created)."""
    with _registry_lock:
        _registry.clear()


def resolve(name: str, cfg: EndpointSection, *, credential: Any | None = None,
            ml_client: Any | None = None) -> tuple[str, Authenticator]:
    """The scoring URL and the authenticator of endpoint ``name``.

    * ``url`` given: that URL; ``auth: key`` reads the env var ``key_env`` at every call, ``auth: entra`` uses an
      Entra token (``credential`` or DefaultAzureCredential), ``auth: none`` sends nothing.
    * workspace given: the scoring URI from MLClient; ``auth: key`` uses ``key_env`` when set, else the key (or
      token) from ``get_keys``; ``auth: entra`` an Entra token. The URI lookup happens here (once per process).

    Raises :class:`WorkspaceLookupError` (workspace lookups) or :class:`node.config.ConfigError` (key env var missing).
    """
    if cfg.url is not None:
        url = cfg.url
        ws = None
    else:
        ws = workspace_endpoint(cfg, credential=credential, ml_client=ml_client)
        url = ws.scoring_uri
    if cfg.auth == "none":
        return url, NoAuth()
    if cfg.auth == "entra":
        return url, entra_auth(credential)
    # auth: key
    if cfg.key_file:
        key_file = KeyFile(cfg.key_file)
        return url, KeyAuth(key_file.read, reload=key_file.invalidate)
    if cfg.key_env:
        endpoint_key(cfg)  # fail now, with the config's message, when the variable is missing

        def read_key() -> str:  # read at every call: a rotated key is picked up without a restart
            try:
                return endpoint_key(cfg) or ""
            except ConfigError as exc:
                raise AuthError(str(exc), permanent=True) from exc

        return url, KeyAuth(read_key)
    assert ws is not None  # the config model requires key_env with url
    return url, _WorkspaceKeyAuth(ws)


__all__ = ["WorkspaceEndpoint", "WorkspaceLookupError", "clear_cache", "make_ml_client", "resolve",
           "workspace_endpoint"]
