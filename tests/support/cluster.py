"""A cluster of ``dicom-node serve`` processes for the tests: one PostgreSQL, one Redis, one shared storage folder,
each node with its own ``instance_id``, DICOM port, HTTP port and log folder, behind HAProxy in TCP mode: the
shipped ``deploy/cluster/haproxy.cfg`` (``/readyz`` health checks, leastconn; ``support/haproxy.py``), or with the
HTTP side off (no ``/readyz`` to check) a plain TCP-checked balancer.

Everything listens on 127.0.0.1 free ports and is started and stopped by the test; a node is killed as a power
cut would (SIGKILL of its whole process group, :meth:`NodeProcess.kill`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from .haproxy import HAProxy, ShippedHAProxy
from .nodeproc import NodeProcess, node_config
from .ports import HOST, free_port
from .postgres import PostgresServer
from .redis_server import RedisServer


class Cluster:
    """``size`` nodes sharing PostgreSQL, Redis and ``tmp/shared``; :attr:`balancer` is the one DICOM address.

    ``pacs_options``: more keys of the ``pacs`` destination (e.g. ``storage_commitment``).
    ``start_nodes``: start only the first n nodes (:meth:`start_node` starts the others, e.g. with failpoints).
    """

    def __init__(self, tmp: Path, *, size: int, endpoint_url: str, pacs: tuple[str, int] | None,
                 quiet: float = 2.0, lease_seconds: float = 4.0, http: bool = True, start_nodes: int | None = None,
                 pacs_options: dict[str, Any] | None = None, **extra: Any) -> None:
        self.tmp = Path(tmp)
        self.shared = self.tmp / "shared"
        self.pg = PostgresServer()
        self.redis = RedisServer(self.tmp / "redis")
        self.balancer: HAProxy | None = None
        self.database_url = ""
        self.size = size
        self.start_nodes = start_nodes  # how many nodes ``with`` starts (all by default)
        self.nodes: list[NodeProcess] = []
        self._settings = dict(endpoint_url=endpoint_url, pacs=pacs, quiet=quiet, lease_seconds=lease_seconds,
                              http=http, pacs_options=pacs_options or {}, extra=extra)

    def _node(self, i: int) -> NodeProcess:
        s = self._settings
        folder = self.tmp / f"node{i}"
        folder.mkdir(parents=True, exist_ok=True)
        cfg = node_config(folder, endpoint_url=s["endpoint_url"], pacs=s["pacs"], quiet=s["quiet"], **s["extra"])
        cfg["node"].update(storage_dir=str(self.shared), instance_id=f"node-{i}")
        if s["pacs"] is not None:
            cfg["destinations"]["pacs"].update(s["pacs_options"])
        cfg["database"] = {"url": self.database_url}
        cfg["queue"] = {"url": self.redis.url, "lease_seconds": s["lease_seconds"]}
        if s["http"]:
            cfg["http"] = {"host": HOST, "port": free_port()}
        return NodeProcess(folder, cfg)

    def start(self) -> "Cluster":
        """Start PostgreSQL, Redis, the first ``start_nodes`` nodes (all by default, one after the other: the first
        creates the schema) and HAProxy over every node's port (a node not started yet is simply down); with the
        shipped balancer, return once it has every started node in its rotation."""
        self.pg.start()
        self.database_url = self.pg.create_database()
        self.redis.start()
        self.nodes = [self._node(i) for i in range(self.size)]
        for node in self.nodes[:self.size if self.start_nodes is None else self.start_nodes]:
            node.start()
        if self._settings["http"]:
            started = [i for i, n in enumerate(self.nodes) if n.proc is not None]
            # HAProxy starts a server in the rotation until a check fails; a node's HTTP side comes up after its DICOM
            # port, so wait for /readyz first (else the first check fails and `rise` passes are needed to come back)
            for i in started:
                self.wait_ready(i)
            balancer = ShippedHAProxy(self.tmp / "haproxy", [(HOST, n.port, int(n.config["http"]["port"]))
                                                             for n in self.nodes])
            self.balancer = balancer.start()
            balancer.wait_up(started)
        else:
            self.balancer = HAProxy(self.tmp / "haproxy", [(HOST, n.port) for n in self.nodes], check_ms=300).start()
        return self

    def wait_ready(self, i: int, timeout: float = 60) -> None:
        """Wait until node ``i``'s ``/readyz`` answers 200 (database, queue, spool floor, worker)."""
        url = f"http://{HOST}:{self.nodes[i].config['http']['port']}/readyz"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
            time.sleep(0.2)

    def reconfigure(self, i: int, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to node ``i``'s configuration and rewrite its file (read at its next start)."""
        node = self.nodes[i]
        change(node.config)
        node.config_path.write_text(yaml.safe_dump(node.config, sort_keys=False))

    def start_node(self, i: int, env: dict[str, str] | None = None) -> NodeProcess:
        """(Re)start node ``i``, with ``env`` added to its environment for this run only."""
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            return self.nodes[i].start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        """Stop every node (SIGTERM, drained), HAProxy, Redis and PostgreSQL; logs stay in ``tmp``."""
        for node in self.nodes:
            try:
                node.stop(timeout=30)
            except Exception:  # keep stopping the others
                node.kill()
        if self.balancer is not None:
            self.balancer.stop()
        self.redis.stop()
        self.pg.stop()

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The balancer's DICOM port: the cluster's one address."""
        assert self.balancer is not None
        return self.balancer.port

    def sql(self, query: str) -> list[list[str]]:
        """Rows of ``query`` on the cluster's database (psql, unaligned, '|' separated)."""
        name = self.database_url.rsplit("/", 1)[1]
        out = self.pg.psql(query, database=name)
        return [line.split("|") for line in out.splitlines() if line]

    def status(self, via: int | None = None) -> dict[str, Any]:
        """``dicom-node status --json`` through the configuration of node ``via`` (the first live one by default)."""
        node = self.nodes[via] if via is not None else next(
            (n for n in self.nodes if n.proc is not None and n.proc.poll() is None), self.nodes[0])
        out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--json", "--limit", "500", "--config",
                              str(node.config_path)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(out.stdout + out.stderr)
        return json.loads(out.stdout)

    def logs(self) -> str:
        """Every node's log, each headed by its instance id (for assertion messages)."""
        return "\n".join(f"===== {n.config['node']['instance_id']} =====\n{n.logs()}" for n in self.nodes)
