"""Where the node's processes keep their Prometheus samples (prometheus_client's multiprocess mode).

``PROMETHEUS_MULTIPROC_DIR`` must be set before ``prometheus_client`` is imported in any process: ``serve`` calls
:func:`prepare` before it imports the rest of the node, and its children (receivers, worker, HTTP side) inherit the
variable. This module imports nothing from prometheus_client for that reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(node_dir: Path) -> Path:
    """The folder of the samples: ``<node_dir>/metrics`` (``cfg.node_dir``: each node of a cluster its own)."""
    return Path(node_dir) / "metrics"


def prepare(node_dir: Path) -> Path:
    """Empty ``<node_dir>/metrics`` (a new run starts its counters at zero) and point this process at it.

    ``node_dir`` is this node's own folder: on a storage folder shared by several nodes, one node's start must
    not empty another's samples (``NodeConfig.node_dir``)."""
    # The node runs with umask 077 (node/ops/hardening.py); set it now, before any process of the node imports
    # prometheus_client: a label-less counter creates its sample file at import, before a child hardens itself.
    os.umask(0o077)
    folder = metrics_dir(node_dir)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, mode=0o700)
    os.environ[ENV] = str(folder)
    return folder


def enabled() -> bool:
    """True when this process writes its samples to a shared folder (started under ``serve``)."""
    return bool(os.environ.get(ENV))


def mark_dead(pid: int) -> None:
    """Tell prometheus_client a process is gone (its live gauges stop counting; its counters stay summed)."""
    if enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
