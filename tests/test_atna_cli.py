"""The audit events the node lacked, where they happen: the command line's write actions with the OS user who ran
them, configuration changes (at start and while running), and check-config for the audit repository's files."""

from __future__ import annotations

import getpass
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.audit.confwatch import ConfigWatch
from node.config import load_config
from node.ops.audit import read_events

pytestmark = pytest.mark.security


def _config(tmp: Path, **extra) -> Path:
    data = {"node": {"storage_dir": str(tmp / "var")},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}}, **extra}
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=120)


def test_command_line_write_actions_are_audited_with_the_os_user(tmp_path: Path) -> None:
    path = _config(tmp_path)
    assert _cli("retry", "--config", str(path)).returncode == 0
    assert _cli("retry", "--config", str(path), "--jobs").returncode == 0  # nothing to retry: no study, no event
    assert _cli("rerun", "--config", str(path), "--study", "1.2.3.4").returncode == 1  # unknown study: refused
    assert _cli("retract", "--config", str(path), "--study", "1.2.3.4", "--reason", "quality").returncode == 1
    actions = [e for e in read_events(load_config(path).audit_path) if e["event"] == "action"]
    assert [(e["action"], e["outcome"], e.get("study_uid")) for e in actions] == [
        ("retry", 0, None), ("rerun", 4, "1.2.3.4"), ("retract", 4, "1.2.3.4")]
    assert {e["user"] for e in actions} == {getpass.getuser()}
    assert {e["peer_host"] for e in actions} == {socket.gethostname()} and {e["via"] for e in actions} == {"cli"}
    assert actions[0]["destination"] == "all" and actions[2]["reason"] == "quality" and actions[1]["error"]


def test_a_configuration_change_is_recorded_once_with_the_sections_it_touched(tmp_path: Path) -> None:
    path = _config(tmp_path)
    cfg = load_config(path)
    cfg.node_dir.mkdir(parents=True)
    watch = ConfigWatch(cfg)
    assert watch.check(at_start=True) is False  # the first start only remembers the file
    assert watch.check(at_start=False) is False  # unchanged
    data = yaml.safe_load(path.read_text())
    data["node"]["allowed_calling_ae_titles"] = ["MODALITY"]
    data["retention"] = {"keep_failed_hours": 1}
    path.write_text(yaml.safe_dump(data))
    assert watch.check(at_start=False) is True
    assert watch.check(at_start=False) is False  # recorded once
    data["log_level"] = "DEBUG"
    path.write_text(yaml.safe_dump(data))
    assert ConfigWatch(cfg).check(at_start=True) is True  # changed while the node was stopped
    changes = [e for e in read_events(cfg.audit_path) if e["event"] == "config-changed"]
    assert [(e["sections"], e["security"], e["detected"].split()[0]) for e in changes] == [
        (["node", "node.allowed_calling_ae_titles", "retention"], True, "while"), (["log_level"], False, "at")]
    assert changes[0]["path"] == str(path) and changes[0]["user"] == getpass.getuser()
    assert "MODALITY" not in str(changes)  # what changed is named, never the values


def test_check_config_loads_the_audit_repository_files_and_names_the_key(tmp_path: Path) -> None:
    from support.tlscerts import make_ca

    ca = make_ca(tmp_path / "pki", "audit-ca")
    good = _config(tmp_path, audit={"syslog": {"host": "audit.example", "ca_file": str(ca.cert)}})
    out = _cli("check-config", str(good))
    assert out.returncode == 0 and "audit repository audit.example:6514: RFC 5425 syslog over TLS" in out.stdout
    (tmp_path / "broken.pem").write_text("not a certificate")
    bad = _config(tmp_path, audit={"syslog": {"host": "audit.example", "ca_file": str(tmp_path / "broken.pem")}})
    out = _cli("check-config", str(bad))
    assert out.returncode == 2 and "audit.syslog" in out.stderr and "ca_file" in out.stderr
    missing = _config(tmp_path, audit={"syslog": {"host": "audit.example"}})
    out = _cli("check-config", str(missing))
    assert out.returncode == 2 and "audit.syslog: transport tls needs ca_file" in out.stderr
