"""Which model version produced a result: the Algorithm Version of every SR, SEG and SC, and the key of the
embedding caches (similar-case index, MedImageInsight's label texts).

No Microsoft source shows a model-version header on a scoring reply, so the version comes from, first found:

1. the reply's ``x-ms-model-version`` / ``azureml-model-version`` header (the emulator sends one; a future
   service might);
2. the workspace (endpoints named by ``subscription_id`` ... ``endpoint_name``): the model asset of the deployment
   that answered (its ``azureml-model-deployment`` reply header), else of the pinned ``deployment``, else of the
   only deployment with traffic, read once with azure-ai-ml (:mod:`node.invoke.deployments`), e.g.
   ``MedImageInsight:6``;
3. ``endpoints.<name>.model_version``, the operator's string;
4. the ``deployment`` name, else ``unspecified`` (a WARNING, once per endpoint: an in-place model update would then
   share caches and Algorithm Version with the model before it).

A version change therefore starts new caches (they are keyed by this string) and never mixes two models.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from node.config import EndpointSection, NodeConfig
from node.invoke import deployments

log = logging.getLogger(__name__)

__all__ = ["prefetch", "resolve"]

UNSPECIFIED = "unspecified"
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(endpoint: str, what: str, message: str, *args: Any) -> None:
    with _warned_lock:
        if (endpoint, what) in _warned:
            return
        _warned.add((endpoint, what))
    log.warning(message, *args)


def resolve(name: str, cfg: EndpointSection, reply_version: str | None = None,
            answered_by: str | None = None) -> tuple[str, str]:
    """(version, where it came from) for a reply of endpoint ``name`` (see the module docstring)."""
    if reply_version:
        return reply_version[:64], "reply header"
    found = deployments.lookup(cfg)
    if found is not None and found.error is None:
        dep = found.serving(cfg.deployment, answered_by)
        if dep is not None and dep.model_version:
            if cfg.model_version and cfg.model_version != dep.model_version:
                _warn_once(name, "differs", "endpoint %s: the workspace says deployment %s runs %s, "
                           "endpoints.%s.model_version says %s: using the workspace's", name, dep.name,
                           dep.model_version, name, cfg.model_version)
            return dep.model_version[:64], f"workspace: deployment {dep.name} model {dep.model}"
    if cfg.model_version:
        return cfg.model_version, f"endpoints.{name}.model_version"
    _warn_once(name, "none", "endpoint %s reports no model version and endpoints.%s.model_version is not set: "
               "results and embedding caches are labelled %r; a model updated in place would share them",
               name, name, cfg.deployment or UNSPECIFIED)
    if cfg.deployment:
        return cfg.deployment, f"endpoints.{name}.deployment (no version reported or configured)"
    return UNSPECIFIED, f"none reported or configured: set endpoints.{name}.model_version"


def prefetch(cfg: NodeConfig) -> threading.Thread | None:
    """Read the deployments of every workspace endpoint on a background thread (the worker's start), so the first
    job finds the version known; a job that comes first waits for the same lookup."""
    names = [n for n, e in cfg.endpoints.items() if e.endpoint_name and e.workspace]
    if not names:
        return None

    def run() -> None:
        for n in names:
            deployments.lookup(cfg.endpoints[n])

    thread = threading.Thread(target=run, name="deployments-lookup", daemon=True)
    thread.start()
    return thread
