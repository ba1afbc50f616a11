"""What the worker's task bodies work with: one configuration, database, queue, spool and set of endpoint clients.

The worker process builds one :class:`Services` and binds each task body to it (:mod:`node.flow.worker`); the
bodies (:mod:`node.flow.decide`, :mod:`node.flow.run`, :mod:`node.flow.deliver`, :mod:`node.flow.sweep`) take
it as their first argument. Nothing is global, so a test builds its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from node.config import NodeConfig
from node.flow.intake import Intake
from node.flow.queue import Queue
from node.invoke.client import EndpointClient
from node.store.spool import Spool
from node.store.state import Store, lease_owner


@dataclass
class Services:
    """The dependencies of the task bodies, for one configuration."""

    cfg: NodeConfig
    store: Store
    queue: Queue
    spool: Spool
    intake: Intake
    owner: str  # the lease owner of this worker (node.instance_id + process)
    _clients: dict[str, EndpointClient] = field(default_factory=dict)
    _clients_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, cfg: NodeConfig, store: Store | None = None, queue: Queue | None = None) -> "Services":
        """Open the database and queue named by ``cfg`` (or use those given)."""
        store = store or Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
        queue = queue or Queue(cfg)
        return cls(cfg=cfg, store=store, queue=queue, spool=Spool(cfg.storage_dir), intake=Intake(cfg, store, queue),
                   owner=lease_owner(cfg.node.instance_id))

    def client(self, endpoint_name: str) -> EndpointClient:
        """The HTTP client of one endpoint, made on first use and shared by the worker's threads."""
        with self._clients_lock:
            if endpoint_name not in self._clients:
                self._clients[endpoint_name] = EndpointClient(endpoint_name, self.cfg.endpoints[endpoint_name])
            return self._clients[endpoint_name]
