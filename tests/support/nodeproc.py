"""Run ``dicom-node serve`` as a real process for end-to-end tests (its own process group, stopped by the test)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .ports import free_port
from .testdb import database_section


#: endpoints.cxr.model_version of the nodes the tests start (the Algorithm Version of their CXRReportGen results).
EMULATED_CXR_VERSION = "CXRReportGen:emulator-1"


def node_config(tmp: Path, *, endpoint_url: str, pacs: tuple[str, int] | None, quiet: float = 1.0,
                **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node": {"ae_title": "AINODE", "host": "127.0.0.1", "port": free_port(), "storage_dir": str(tmp / "var"),
                 "study_complete_after_seconds": quiet, "min_free_disk_mb": 0},
        # model_version: the emulator, like the real service, reports none (the results' Algorithm Version)
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": endpoint_url, "auth": "none", "timeout_seconds": 30,
                              "max_attempts": 4, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 2,
                              "model_version": EMULATED_CXR_VERSION}},
        "destinations": {},
        "rules": [{"name": "chest-xray-findings", "match": {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST*"},
                   "endpoint": "cxr", "send_to": []}],
        "log_level": "INFO",
    }
    if pacs is not None:
        cfg["destinations"]["pacs"] = {"ae_title": pacs[0], "host": "127.0.0.1", "port": pacs[1],
                                       "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2}
        cfg["rules"][0]["send_to"] = ["pacs"]
    if database_section(tmp / "var"):  # DICOM_NODE_TEST_DATABASE: a fresh PostgreSQL database (support/testdb.py)
        cfg["database"] = database_section(tmp / "var")
    for key, value in extra.items():
        cfg[key] = value
    return cfg


class NodeProcess:
    """``dicom-node serve --config F``; logs go to ``tmp/node-N.log``."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.config = config
        self.config_path = tmp / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        # Another version of the code (a copied tree holding node/, converters/, dicom_out/): the process runs in
        # that folder with it first on PYTHONPATH (tests/test_rolling_upgrade.py). None: this checkout's code.
        self.code_root: Path | None = None

    @property
    def port(self) -> int:
        return int(self.config["node"]["port"])

    @property
    def log_path(self) -> Path:
        return self.tmp / f"node-{self.runs}.log"

    def start(self, timeout: float = 60) -> "NodeProcess":
        self.runs += 1
        log = open(self.log_path, "wb")
        env, cwd = None, None
        if self.code_root is not None:
            cwd = str(self.code_root)  # `python -m` puts the working folder first on sys.path
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [cwd, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited early:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("node did not start listening")

    def wait_worker_started(self, timeout: float = 60) -> None:
        """Wait until this run's worker process logged that it started (its imports are done)."""
        deadline = time.monotonic() + timeout
        while "worker started" not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"the worker did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group: the SCP and its worker die at once, as in a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def logs(self) -> str:
        return "\n".join((self.tmp / f"node-{i}.log").read_text(errors="replace")
                         for i in range(1, self.runs + 1) if (self.tmp / f"node-{i}.log").exists())

    def status(self) -> str:
        out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(self.config_path)],
                             capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr
