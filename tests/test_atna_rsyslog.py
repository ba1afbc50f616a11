"""The ATNA forwarder against a real audit record repository (Debian's rsyslogd + gnutls, tests/support/rsyslog.py):
RFC 5425 with mutual TLS, the repository stopped and restarted, certificates it must refuse, TCP and UDP. What
rsyslog wrote (its own RFC 5424 parse) is checked, never what the forwarder meant to send."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from node.audit import schema
from node.audit.forwarder import Forwarder, atna_dir
from node.audit.status import metric_families, status_lines
from node.config import parse_config
from node.ops.audit import AuditLog
from support import rsyslog

pytestmark = [pytest.mark.security, pytest.mark.slow]


class Running:
    """A forwarder in a thread of this process (serve runs it as `dicom-node audit-forward`)."""

    def __init__(self, tmp: Path, syslog: dict) -> None:
        self.cfg = parse_config({"node": {"storage_dir": str(tmp / "var"), "instance_id": "node1"},
                                 "audit": {"syslog": syslog}})
        self.audit = AuditLog(self.cfg.audit_path)
        self.fwd = Forwarder(self.cfg)
        self.thread = threading.Thread(target=self.fwd.run, daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.fwd.request_stop()
        self.thread.join(30)

    def status(self) -> dict:
        try:
            return json.loads((atna_dir(self.cfg.node_dir) / "status.json").read_text())
        except (OSError, ValueError):  # not written yet
            return {"pending": None, "connected": False, "last_error": None}


def _user(m: rsyslog.Received) -> str:
    return m.msg.split('UserID="')[1].split('"')[0]


def _login(audit: AuditLog, i: int) -> None:
    audit.record("user-login", user=f"user{i:03d}", peer_host="10.1.1.1", roles=["viewer"])


def _wait(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_repository_down_for_a_while_loses_nothing_and_keeps_the_order(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    repo = rsyslog.start(tmp_path / "rsyslog", tls=True, mutual=True)
    try:
        with Running(tmp_path, repo.syslog_config(alert_backlog=20)) as node:
            for i in range(30):
                _login(node.audit, i)
            assert len(repo.wait_for(30)) == 30
            repo.stop()  # the repository goes away; the node goes on recording
            for i in range(30, 100):
                _login(node.audit, i)
                time.sleep(0.01)
            assert _wait(lambda: node.status()["pending"] == 70), node.status()
            down = node.status()
            assert not down["connected"] and down["last_error"]
            assert _wait(lambda: "ATNA audit message(s) wait for the audit repository" in caplog.text)
            assert "ERROR" in caplog.text and "ALERT" in caplog.text
            assert any("ALERT" in line for line in status_lines(node.cfg))
            gauges = {m.name: m.samples[0].value for m in metric_families(node.cfg)}
            assert gauges["dicom_node_audit_backlog_messages"] == 70
            assert gauges["dicom_node_audit_repository_connected"] == 0
            time.sleep(1.5)  # several reconnection attempts fail meanwhile
            repo.start()  # same port, same file
            for i in range(100, 110):
                _login(node.audit, i)
            got = repo.wait_for(110)
            assert _wait(lambda: node.status()["pending"] == 0 and node.status()["connected"])
    finally:
        repo.stop()
    users = [_user(m) for m in got]
    assert users == [f"user{i:03d}" for i in range(110)], "every message once, in the order of the trail"
    for m in got:
        assert (m.facility, m.severity, m.version, m.msgid) == (10, 5, "1", "IHE+RFC-3881")
        assert m.app_name == "dicom-node" and m.structured_data == "-"
        assert schema.errors(m.xml) == []
    assert "reachable again" in caplog.text


def test_the_node_refuses_a_repository_whose_certificate_it_cannot_trust(tmp_path: Path) -> None:
    repo = rsyslog.start(tmp_path / "rsyslog", tls=True, mutual=True)
    try:
        wrong = repo.syslog_config(ca_file=str(repo.rogue_ca.cert))  # not the CA that signed the repository
        with Running(tmp_path, wrong) as node:
            for i in range(5):
                _login(node.audit, i)
            assert _wait(lambda: node.status()["pending"] == 5 and node.status()["last_error"])
            assert "certificate verify failed" in node.status()["last_error"]
        no_client_cert = repo.syslog_config()
        del no_client_cert["cert_file"], no_client_cert["key_file"]
        with Running(tmp_path, no_client_cert) as node:  # the repository requires one (mutual TLS)
            time.sleep(3)
            assert node.status()["pending"] == 5
        assert repo.messages() == []
        with Running(tmp_path, repo.syslog_config()) as node:  # the same spool, now with the right files
            got = repo.wait_for(5)
    finally:
        repo.stop()
    assert [_user(m) for m in got] == [f"user{i:03d}" for i in range(5)]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_plain_tcp_and_udp_carry_the_same_messages(tmp_path: Path, transport: str) -> None:
    repo = rsyslog.start(tmp_path / "rsyslog", tls=False, udp=transport == "udp")
    try:
        with Running(tmp_path, repo.syslog_config()) as node:
            for i in range(3):
                _login(node.audit, i)
            node.audit.record("association-rejected", "serious-failure", calling_ae="X", peer_host="10.9.9.9",
                              peer_port=1, reason="calling AE title not in allowed_calling_ae_titles")
            got = repo.wait_for(4, timeout=30)
    finally:
        repo.stop()
    assert [m.severity for m in got] == [5, 5, 5, 4]
    assert all(m.msgid == "IHE+RFC-3881" and m.facility == 10 and schema.errors(m.xml) == [] for m in got)
