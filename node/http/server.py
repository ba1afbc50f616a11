"""The HTTP side's process (``dicom-node http``, started and restarted by ``serve``): uvicorn on ``http.host:port``,
over HTTPS when ``http.tls`` is set (the BCP 195 context of :func:`node.dicom.tls.https_server_context`).

A process of its own, not a thread of the SCP: page renders and scrapes never take the SCP's GIL.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

import uvicorn

from node.config import NodeConfig
from node.dicom.tls import https_server_context
from node.http.app import build_app
from node.ops.process import die_with_parent

log = logging.getLogger(__name__)


def run_http(cfg: NodeConfig, parent_pid: int | None = None) -> int:
    """Serve the app until SIGTERM/SIGINT or until ``serve`` (``parent_pid``) is gone."""
    die_with_parent()
    multiprocessing.current_process().name = "http"  # names the process in every log line
    if parent_pid is not None and os.getppid() != parent_pid:
        return 0
    app = build_app(cfg)
    config = uvicorn.Config(app, host=cfg.http.host, port=int(cfg.http.port or 8081), log_config=None,
                            access_log=False, lifespan="off", server_header=False)
    tls = cfg.http.tls
    if tls is not None:
        config.load()
        config.ssl = https_server_context(tls.cert_file, tls.key_file, tls.min_version)  # not uvicorn's own
    server = uvicorn.Server(config)
    if parent_pid is not None:
        def watch() -> None:
            while not server.should_exit:
                if os.getppid() != parent_pid:
                    server.should_exit = True
                time.sleep(1.0)
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    log.info("HTTP side listening on %s://%s:%s", "https" if tls else "http", cfg.http.host, cfg.http.port)
    server.run()
    return 0
