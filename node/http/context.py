"""What the HTTP side's routes share: the configuration, the database, the spool and the queue."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from node.config import NodeConfig
from node.store.spool import Spool
from node.store.state import Store

WORKER_PIDFILE = "worker.pid"


@dataclass
class HttpContext:
    """Built once per HTTP process; routes reach it as ``request.app.state.ctx``."""

    cfg: NodeConfig
    store: Store
    spool: Spool

    @classmethod
    def open(cls, cfg: NodeConfig) -> "HttpContext":
        """Open the node's database and spool read-mostly, as the HTTP process does."""
        store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
        spool = Spool(cfg.storage_dir, min_free_bytes=cfg.node.min_free_disk_mb * 1024 * 1024)
        return cls(cfg=cfg, store=store, spool=spool)

    @cached_property
    def huey(self) -> Any:
        """The node's Huey queue (for its pending count), opened on first use."""
        from node.flow.queue import make_huey

        return make_huey(self.cfg)

    @property
    def token(self) -> str | None:
        """The bearer token of write actions, or None when actions are off."""
        env = self.cfg.http.token_env
        value = os.environ.get(env) if env else None
        return value or None


def worker_pidfile(node_dir: Path) -> Path:
    """Where ``serve`` writes the pid of its current worker process (in the node's own folder, ``cfg.node_dir``)."""
    return Path(node_dir) / WORKER_PIDFILE


def worker_alive(node_dir: Path) -> tuple[bool, str]:
    """Is the worker process named in the pid file of ``node_dir`` running (and not a zombie)?"""
    try:
        pid = int(worker_pidfile(node_dir).read_text().strip())
    except (OSError, ValueError):
        return False, "no worker pid file (is serve running?)"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False, f"worker process {pid} is not running"
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        return False, f"worker process {pid} has exited"
    return True, f"worker process {pid}"
