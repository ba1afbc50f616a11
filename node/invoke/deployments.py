"""What is deployed behind a workspace endpoint: each deployment's model asset and version, request timeout,
concurrency and instances, and the endpoint's traffic split and auth mode (azure-ai-ml, control plane).

Scoring replies carry no model version (no Microsoft source shows one), so for endpoints named by workspace
(``subscription_id``, ``resource_group``, ``workspace``, ``endpoint_name``) the node asks the workspace once::

    MLClient(...).online_endpoints.get(endpoint_name)             # traffic {deployment: percent}, auth_mode
    MLClient(...).online_deployments.list(endpoint_name)          # model, request_settings, instance_count

A deployment's ``model`` is an asset id: ``azureml://registries/azureml/models/MedImageInsight/versions/6``,
``azureml:MedImageInsight:6`` or ``/subscriptions/.../models/<name>/versions/<v>``; :func:`model_asset` reads the
name and version from any of them. :func:`lookup` never raises: a failed lookup is an :class:`EndpointDeployments`
with ``error`` set, tried again after :data:`RETRY_LOOKUP_SECONDS`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from node.config import EndpointSection

log = logging.getLogger(__name__)

__all__ = ["DeploymentInfo", "EndpointDeployments", "RETRY_LOOKUP_SECONDS", "clear", "lookup", "model_asset"]

RETRY_LOOKUP_SECONDS = 300.0
_ASSET_RES = (re.compile(r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/?$"),
              re.compile(r"^azureml:(?P<name>[^:/]+):(?P<version>[^:/]+)$"))


def model_asset(model: Any) -> tuple[str, str] | None:
    """(name, version) of a deployment's model asset id (or of an azure-ai-ml Model entity), or None."""
    if model is None:
        return None
    name, version = getattr(model, "name", None), getattr(model, "version", None)
    if isinstance(name, str) and name and version is not None:
        return name, str(version)
    text = str(getattr(model, "id", None) or model).strip()
    for pattern in _ASSET_RES:
        m = pattern.search(text)
        if m:
            return m.group("name"), m.group("version")
    return None


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployment of a workspace endpoint."""

    name: str
    model: str | None  # the asset id as the deployment gives it
    model_name: str | None
    model_version: str | None  # "<asset name>:<version>", e.g. "MedImageInsight:6"
    request_timeout_ms: int | None
    max_concurrent_requests_per_instance: int | None
    instance_count: int | None
    traffic: int = 0  # percent of the endpoint's traffic

    @property
    def max_pending(self) -> int | None:
        """Requests Azure ML takes at once before answering 429: 2 x max_concurrent x instances."""
        per = self.max_concurrent_requests_per_instance or 1  # Azure ML's default is 1
        return 2 * per * self.instance_count if self.instance_count else None


@dataclass(frozen=True)
class EndpointDeployments:
    """The deployments of one workspace endpoint, or why they could not be read (``error``)."""

    endpoint_name: str
    auth_mode: str | None = None
    deployments: dict[str, DeploymentInfo] = field(default_factory=dict)
    error: str | None = None
    looked_up_at: float = 0.0

    def serving(self, pinned: str | None, answered_by: str | None = None) -> DeploymentInfo | None:
        """The deployment that answered (its reply header), else the pinned one, else the one with the most
        traffic (None when the traffic is split and nothing says which one answered)."""
        for name in (answered_by, pinned):
            if name and name in self.deployments:
                return self.deployments[name]
        live = [d for d in self.deployments.values() if d.traffic > 0]
        if len(live) == 1:
            return live[0]
        if not live and len(self.deployments) == 1:
            return next(iter(self.deployments.values()))
        return None


def _info(dep: Any, traffic: dict[str, int]) -> DeploymentInfo:
    settings = getattr(dep, "request_settings", None)
    asset = model_asset(getattr(dep, "model", None))
    count = getattr(dep, "instance_count", None)
    if count is None:  # kubernetes / autoscale: the scale settings may say more
        count = getattr(getattr(dep, "scale_settings", None), "min_instances", None)
    return DeploymentInfo(
        name=str(dep.name), model=None if getattr(dep, "model", None) is None else str(getattr(dep, "model")),
        model_name=asset[0] if asset else None, model_version=f"{asset[0]}:{asset[1]}" if asset else None,
        request_timeout_ms=getattr(settings, "request_timeout_ms", None),
        max_concurrent_requests_per_instance=getattr(settings, "max_concurrent_requests_per_instance", None),
        instance_count=count, traffic=int(traffic.get(str(dep.name), 0) or 0))


def read(ml_client: Any, endpoint_name: str) -> EndpointDeployments:
    """Ask the workspace (raises what azure-ai-ml raises)."""
    endpoint = ml_client.online_endpoints.get(endpoint_name)
    traffic = {str(k): int(v) for k, v in (getattr(endpoint, "traffic", None) or {}).items()}
    deps = {str(d.name): _info(d, traffic) for d in ml_client.online_deployments.list(endpoint_name)}
    return EndpointDeployments(endpoint_name=endpoint_name, auth_mode=getattr(endpoint, "auth_mode", None),
                               deployments=deps, looked_up_at=time.time())


_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str], EndpointDeployments] = {}


def lookup(cfg: EndpointSection, *, credential: Any | None = None, ml_client: Any | None = None,
           refresh: bool = False) -> EndpointDeployments | None:
    """The deployments of a workspace endpoint, looked up once per process (None: the endpoint names no workspace).

    A failed lookup is logged (WARNING) and returned with ``error``; it is tried again after
    :data:`RETRY_LOOKUP_SECONDS`.
    """
    if not (cfg.subscription_id and cfg.resource_group and cfg.workspace and cfg.endpoint_name):
        return None
    key = (cfg.subscription_id, cfg.resource_group, cfg.workspace, cfg.endpoint_name)
    with _lock:
        have = _cache.get(key)
        if have is not None and not refresh and (have.error is None
                                                 or time.time() - have.looked_up_at < RETRY_LOOKUP_SECONDS):
            return have
        try:
            if ml_client is None:
                from node.invoke.azureml import workspace_endpoint

                ml_client = workspace_endpoint(cfg, credential=credential).ml_client
            found = read(ml_client, cfg.endpoint_name)
            log.info("endpoint %s: deployments %s", cfg.endpoint_name,
                     ", ".join(f"{d.name} ({d.model_version or 'model ?'}, {d.traffic}%)"
                               for d in found.deployments.values()) or "none")
        except Exception as exc:  # noqa: BLE001 - azure-ai-ml and azure-core raise many types
            text = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("endpoint %s: cannot read its deployments from the workspace (%s); the model version "
                        "comes from endpoints.<name>.model_version until a later lookup works", cfg.endpoint_name,
                        text)
            found = EndpointDeployments(endpoint_name=cfg.endpoint_name, error=text, looked_up_at=time.time())
        _cache[key] = found
        return found


def clear() -> None:
    """Forget every lookup (tests)."""
    with _lock:
        _cache.clear()
