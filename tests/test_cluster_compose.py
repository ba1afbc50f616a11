"""The docker-compose cluster (docker-compose.yml + deploy/cluster/): its pieces hold together without a Docker engine.

The nodes' configuration passes the node's own validation with a shared PostgreSQL database and Redis queue, each
node gets its own instance_id (its hostname) and so its own folder on the shared volume, HAProxy's configuration
passes ``haproxy -c`` and balances over exactly the node services, and the image is built with the cluster extra.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from node.config import NodeConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_runs_postgres_redis_two_nodes_and_haproxy() -> None:
    services = _compose()["services"]
    nodes = {name: s for name, s in services.items() if s.get("command", [None])[0] == "serve"}
    assert {"postgres", "redis", "haproxy"} <= set(services)
    assert len(nodes) >= 2
    hostnames = [s["hostname"] for s in nodes.values()]
    assert len(set(hostnames)) == len(hostnames), "each node needs its own instance_id (its hostname)"
    for s in nodes.values():
        assert "storage:/data" in s["volumes"], "every node mounts the one shared storage volume"
        assert s["build"]["args"]["EXTRAS"] == "cluster"
    haproxy_cfg = (REPO / "deploy" / "cluster" / "haproxy.cfg").read_text()
    backends = {line.split()[2].split(":")[0] for line in haproxy_cfg.splitlines() if line.strip().startswith("server ")}
    assert backends == set(hostnames)


def test_compose_node_config_is_valid_and_shares_database_queue_storage() -> None:
    cfg = load_config(REPO / "deploy" / "cluster" / "node.yaml")
    assert cfg.database_url.startswith("postgresql+psycopg://") and cfg.queue_url.startswith("redis://")
    assert cfg.storage_dir == Path("/data")
    assert cfg.node.instance_id == socket.gethostname()  # the container's hostname, set per service
    assert cfg.node_dir == Path("/data/nodes") / cfg.node.instance_id
    assert cfg.http.port is not None and cfg.http.host == "0.0.0.0"  # HAProxy's health check reads /readyz


def test_haproxy_accepts_the_compose_balancer_config() -> None:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    proc = subprocess.run([exe, "-c", "-f", str(REPO / "deploy" / "cluster" / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cfg(tmp_path: Path, **sections: dict) -> NodeConfig:
    doc = {"node": {"storage_dir": str(tmp_path / "shared"), "instance_id": "node-7"}, "endpoints": {},
           "destinations": {}, "rules": [], **sections}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def test_each_node_keeps_its_own_files_apart_once_the_database_is_shared(tmp_path: Path) -> None:
    single = _cfg(tmp_path)  # the default SQLite database: one node, its files where they always were
    assert single.node_dir == tmp_path / "shared"
    assert single.audit_path == tmp_path / "shared" / "audit.jsonl"
    shared = _cfg(tmp_path, database={"url": "postgresql+psycopg://u@db/n"})
    assert shared.node_dir == tmp_path / "shared" / "nodes" / "node-7"
    assert shared.audit_path == shared.node_dir / "audit.jsonl"
    assert shared.queue_url == f"sqlite:///{shared.node_dir / 'queue.db'}"
    chosen = _cfg(tmp_path, database={"url": "postgresql+psycopg://u@db/n"},
                  node={"storage_dir": str(tmp_path / "shared"), "instance_id": "node-7", "local_dir": "own"})
    assert chosen.node_dir == tmp_path / "own"  # relative to the configuration file


def test_sweep_runs_at_a_quarter_lease_unless_set(tmp_path: Path) -> None:
    assert _cfg(tmp_path, queue={"lease_seconds": 20}).sweep_seconds == 5.0
    assert _cfg(tmp_path, queue={"lease_seconds": 20, "sweep_seconds": 2}).sweep_seconds == 2.0


def test_instance_id_must_be_usable_as_a_folder_name(tmp_path: Path) -> None:
    from node.config import ConfigError

    for bad in ("../x", "a/b", "", "node a"):
        with pytest.raises(ConfigError):
            _cfg(tmp_path, node={"storage_dir": str(tmp_path), "instance_id": bad})
