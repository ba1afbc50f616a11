"""What the ATNA forwarder last reported (``<node_dir>/atna/status.json``): for metrics and ``dicom-node status``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

STALE_SECONDS = 10.0


def read_status(node_dir: Path) -> dict[str, Any] | None:
    """The forwarder's last report, with ``fresh`` (written within :data:`STALE_SECONDS`); None without one."""
    try:
        status = json.loads((node_dir / "atna" / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    status["fresh"] = time.time() - float(status.get("updated", 0)) <= STALE_SECONDS
    return status


def metric_families(cfg: Any) -> Iterator[Any]:
    """Gauges for the HTTP side's /metrics (nothing when audit.syslog is not set)."""
    if cfg.audit.syslog is None:
        return
    from prometheus_client.core import GaugeMetricFamily

    s = read_status(cfg.node_dir) or {}
    yield GaugeMetricFamily("dicom_node_audit_backlog_messages",
                            "ATNA audit messages waiting in the spool for the audit record repository",
                            value=s.get("pending", 0))
    yield GaugeMetricFamily("dicom_node_audit_backlog_bytes", "Bytes of the ATNA messages waiting",
                            value=s.get("pending_bytes", 0))
    yield GaugeMetricFamily("dicom_node_audit_spool_full",
                            "1 while the ATNA spool is full (new events wait in the audit trail)",
                            value=int(bool(s.get("spool_full"))))
    yield GaugeMetricFamily("dicom_node_audit_repository_connected",
                            "1 while the forwarder holds a connection to the audit record repository",
                            value=int(bool(s.get("connected")) and bool(s.get("fresh"))))
    yield GaugeMetricFamily("dicom_node_audit_forwarder_up", "1 when the ATNA forwarder reported within 10 s",
                            value=int(bool(s.get("fresh"))))


def status_lines(cfg: Any) -> list[str]:
    """``dicom-node status`` lines: the repository, the backlog, and an ALERT past ``alert_backlog``."""
    syslog = cfg.audit.syslog
    if syslog is None:
        return []
    s = read_status(cfg.node_dir)
    where = f"{syslog.host}:{syslog.port} ({syslog.transport})"
    if s is None:
        return [f"audit repository {where}: no report from the ATNA forwarder yet"]
    lines = []
    state = "connected" if s.get("connected") else f"unavailable: {s.get('last_error') or 'not connected yet'}"
    if not s.get("fresh"):
        state = "forwarder not running (last report " + time.strftime("%Y-%m-%d %H:%M:%S",
                                                                       time.localtime(s.get("updated", 0))) + ")"
    if s.get("pending", 0) > syslog.alert_backlog or s.get("spool_full"):
        lines.append(f"ALERT: {s['pending']} ATNA audit message(s) wait for the audit repository {where}"
                     + (" and the spool is full" if s.get("spool_full") else ""))
    lines.append(f"audit repository {where}: {state}; {s.get('pending', 0)} message(s) waiting, "
                 f"{s.get('sent', 0)} sent since the forwarder started")
    return lines
