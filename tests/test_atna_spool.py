"""The ATNA spool and the trail position: a forwarder killed at any point, a torn append, a full spool, a
rotated trail, a receiving process that died mid-association: every message is made once, kept, and taken in
the order of the trail. (No repository here: the spool is read the way the sender reads it.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.audit import transfers
from node.audit.forwarder import Forwarder, atna_dir
from node.config import parse_config
from node.ops.audit import AuditLog

pytestmark = pytest.mark.security

STUDY = "1.2.826.0.1.3680043.8.498.2"


def _cfg(tmp: Path, **syslog):
    return parse_config({"node": {"storage_dir": str(tmp / "var"), "instance_id": "node1"},
                         "audit": {"syslog": {"host": "127.0.0.1", "port": 9, "transport": "tcp", **syslog}}})


def _take(fwd: Forwarder, most: int | None = None) -> list[bytes]:
    """What the sender would send, oldest first; the head moves past what was taken (as after an ack)."""
    out: list[bytes] = []
    while most is None or len(out) < most:
        batch = fwd.spool.peek(max_count=7 if most is None else min(7, most - len(out)))
        if not batch:
            break
        out += [t.message for t in batch]
        fwd.spool.commit(batch)
    return out


def _write(audit: AuditLog, n0: int, n1: int, assoc: int) -> None:
    """Lines n0..n1: logins, and an association whose instances are spread over the lines."""
    for i in range(n0, n1):
        if i % 5 == 0:
            audit.record("association-start", calling_ae="MOD", called_ae="AINODE", peer_host="10.0.0.5",
                         peer_port=assoc)
        audit.record("instance-received", calling_ae="MOD", peer_host="10.0.0.5", peer_port=assoc,
                     study_uid=f"{STUDY}.{assoc}", series_uid=f"{STUDY}.{assoc}.1",
                     sop_instance_uid=f"{STUDY}.{assoc}.1.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1")
        audit.record("user-login", user=f"user{i}", peer_host="10.1.1.1")
        if i % 5 == 4:
            audit.record("association-end", calling_ae="MOD", called_ae="AINODE", peer_host="10.0.0.5",
                         peer_port=assoc, ended="released")
            assoc += 1


def _all_at_once(tmp: Path, trail: Path) -> list[bytes]:
    cfg = _cfg(tmp)
    (tmp / "var").mkdir(parents=True)
    (tmp / "var" / "audit.jsonl").write_bytes(trail.read_bytes())
    fwd = Forwarder(cfg)
    while fwd.step():
        pass
    return _take(fwd)


def test_a_forwarder_killed_anywhere_makes_every_message_once_in_order(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "a")
    audit = AuditLog(cfg.audit_path)
    taken: list[bytes] = []
    fwd = Forwarder(cfg)
    for round_, (n0, n1) in enumerate([(0, 7), (7, 13), (13, 22), (22, 30), (30, 41)]):
        _write(audit, n0, n1, 1000 + n0)
        fwd.step()
        taken += _take(fwd, most=5)  # some sent, the rest waits in the spool
        if round_ % 2 == 0:  # killed: nothing of it survives but its files
            del fwd
        else:  # killed in the middle of an append: a torn record at the end of the spool
            seg = sorted((atna_dir(cfg.node_dir) / "spool").glob("*.seg"))[-1]
            with open(seg, "ab") as f:
                f.write(b"M4000 <85>1 2026-01-01T00:00:00Z torn")
            del fwd
        fwd = Forwarder(cfg)
    while fwd.step():
        pass
    taken += _take(fwd)
    expected = _all_at_once(tmp_path / "b", cfg.audit_path)
    assert len(expected) == 41 + 8  # one per login, one per association (study), as the trail says
    assert taken == expected


def test_a_full_spool_leaves_the_lines_in_the_trail_and_loses_nothing(tmp_path: Path, caplog) -> None:
    cfg = _cfg(tmp_path, spool_max_mb=1, alert_backlog=10)
    audit = AuditLog(cfg.audit_path)
    for i in range(1500):  # ~1 KB each: more than 1 MiB
        audit.record("user-login", user=f"user{i:04d}", peer_host="10.1.1.1", roles=["viewer"])
    fwd = Forwarder(cfg)
    while fwd.step():
        pass
    assert fwd._blocked is not None and 300 < fwd.spool.pending < 1500
    assert fwd.spool.pending_bytes <= 1024 * 1024
    fwd._report()
    assert "ALERT" in caplog.text and "spool is full" in caplog.text
    import json

    status = json.loads((atna_dir(cfg.node_dir) / "status.json").read_text())
    assert status["spool_full"] and status["pending"] == fwd.spool.pending
    taken: list[bytes] = []
    for _ in range(10):
        taken += _take(fwd, most=200)
        while fwd.step():
            pass
    taken += _take(fwd)
    users = [m.split(b'UserID="')[1].split(b'"')[0].decode() for m in taken]
    assert users == [f"user{i:04d}" for i in range(1500)]


def test_a_rotated_trail_is_read_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    audit = AuditLog(cfg.audit_path)
    audit.record("user-login", user="before", peer_host="h")
    fwd = Forwarder(cfg)
    fwd.step()
    audit.record("user-login", user="late-in-old-file", peer_host="h")
    os.rename(cfg.audit_path, cfg.audit_path.with_suffix(".jsonl.1"))  # logrotate's rename, then a new file
    audit.record("user-login", user="in-new-file", peer_host="h")
    for _ in range(3):
        fwd.step()
    users = [m.split(b'UserID="')[1].split(b'"')[0].decode() for m in _take(fwd)]
    assert users == ["before", "late-in-old-file", "in-new-file"]


def test_an_association_whose_receiver_died_is_sent_once_with_what_it_stored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(transfers, "DEAD_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(transfers, "STOW_IDLE_SECONDS", 0.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that is gone (SIGKILLed receivers leave no association-end)
    cfg = _cfg(tmp_path)
    cfg.audit_path.parent.mkdir(parents=True)
    lines = [  # an association still open (this process is alive) makes a restart read all the lines again
        {"event": "association-start", "calling_ae": "OPEN", "peer_host": "10.0.0.6", "peer_port": 8,
         "pid": os.getpid()},
        {"event": "association-start", "calling_ae": "MOD", "peer_host": "10.0.0.5", "peer_port": 7, "pid": pid},
        *[{"event": "instance-received", "calling_ae": "MOD", "peer_host": "10.0.0.5", "peer_port": 7, "pid": pid,
           "study_uid": STUDY, "sop_instance_uid": f"{STUDY}.{i}", "sop_class_uid": "1.2"} for i in range(2)],
        *[{"event": "instance-received", "calling_ae": "STOW-RS", "pid": os.getpid(), "study_uid": STUDY + ".9",
           "sop_instance_uid": f"{STUDY}.9.{i}", "sop_class_uid": "1.2"} for i in range(3)],
    ]
    import json

    with open(cfg.audit_path, "w") as f:
        for line in lines:
            f.write(json.dumps({"time": "2026-01-01T00:00:00.000+00:00", "outcome": 0, **line}) + "\n")
    fwd = Forwarder(cfg)
    fwd.step()
    first = _take(fwd)
    fwd2 = Forwarder(cfg)  # a restart reads those lines again: nothing is made twice
    assert fwd2.trail.offset == 0
    fwd2.step()
    assert _take(fwd2) == []
    assert len(first) == 2
    dead_msg = next(m for m in first if b"MOD" in m)
    assert dead_msg.count(b"<Instance ") == 2 and b"closed without its end" in dead_msg
    stow = next(m for m in first if b"STOW" in m)
    assert stow.count(b"<Instance ") == 3
