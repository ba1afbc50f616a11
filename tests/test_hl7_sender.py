"""The hl7v2 Sender against a RIS it does not share code with (hl7apy's MLLPServer, tests/support/ris.py).

Each answer of docs/hospital-it.md's ACK table, counted and parsed at the receiver: AA delivered, AE retried, AR
parked with the receiver's text, a wrong MSA-2 / a garbled frame / no answer / a late answer "unseen" (resent with
the same MSH-10), a peer that closes after each message, a message over 64 KiB, an unreachable RIS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_out.sr import GroundedFinding
from node.config import parse_config
from node.dicom.scu import OutgoingFile
from node.hl7.oru import control_id
from node.hl7.sender import send_hl7
from node.reports.job import build_report
from node.reports.read import read_results
from support import reports
from support.ports import free_port
from support.ris import Ris

pytestmark = pytest.mark.nodb


def dest(port: int, timeout: float = 5.0):
    return parse_config({"destinations": {"ris": {"type": "hl7v2", "host": "127.0.0.1", "port": port,
                                                  "timeout_seconds": timeout}}}).destinations["ris"]


def stored(tmp: Path, data: Path, n: int, findings=reports.FINDINGS) -> list[OutgoingFile]:
    made = reports.cxr_report(data, findings=findings)
    content = read_results(made.results, made.source)
    out = []
    for i in range(n):
        job = {"id": i, "job_uid": f"{i:032x}", "study_uid": "1.2.3", "rule_name": f"r{i}", "study_version": 1}
        report = build_report(job=job, content=content, previous=None)
        path = tmp / f"{report.uid}.json"
        path.write_bytes(report.to_json())
        out.append(OutgoingFile(key=i, path=path, sop_class_uid=""))
    return out


def cid(f: OutgoingFile) -> str:
    from node.hl7.sender import load_report

    return control_id(load_report(f.path).uid)


def test_each_answer_variant(tmp_path: Path, data: Path) -> None:
    files = stored(tmp_path, data, 6)
    with Ris() as ris:
        ris.script("AA", "AE", "AR", "wrong-id", "garbled", "silent")
        out = send_hl7(dest(ris.port), "AINODE", files)
        got = ris.wait_for(6)
    assert [(out[f.key].verdict, out[f.key].unseen) for f in files] == [
        ("delivered", False), ("retry", False), ("park", False), ("retry", True), ("retry", True), ("retry", True)]
    assert out[2].status == "AR" and "scripted refusal" in out[2].reason
    assert out[1].status == "AE"
    assert [r.control_id for r in got] == [cid(f) for f in files]  # one message each, in order, each its own MSH-10
    for rec in got:
        assert rec.strict_error is None and rec.python_hl7_error is None, rec.strict_error


def test_close_after_each_message_and_resend_keeps_msh10(tmp_path: Path, data: Path) -> None:
    files = stored(tmp_path, data, 3)
    with Ris() as ris:
        ris.script("silent")
        first = send_hl7(dest(ris.port), "AINODE", files)
        assert first[0].unseen and [first[f.key].verdict for f in files[1:]] == ["delivered", "delivered"]
        again = send_hl7(dest(ris.port), "AINODE", files[:1])  # the outbox resends the unseen one
        got = ris.wait_for(4)
    assert again[0].verdict == "delivered"
    assert [r.control_id for r in got] == [cid(files[0]), cid(files[1]), cid(files[2]), cid(files[0])]
    assert got[0].raw == got[3].raw  # at-least-once: the very same message again


def test_a_late_answer_is_unseen(tmp_path: Path, data: Path) -> None:
    files = stored(tmp_path, data, 1)
    with Ris() as ris:
        ris.script("slow:3")
        out = send_hl7(dest(ris.port, timeout=1.0), "AINODE", files)
        ris.wait_for(1)
    assert out[0].verdict == "retry" and out[0].unseen and out[0].status == "timeout"


def test_message_over_64_kib(tmp_path: Path, data: Path) -> None:
    words = "a nodule in the right lower lobe, unchanged in size and density since the prior study, no new opacity"
    many = [GroundedFinding(f"Finding {i}: {words}; {words}.", ()) for i in range(240)]
    files = stored(tmp_path, data, 1, findings=many)
    with Ris() as ris:  # the RIS validates (hl7apy STRICT) before it answers: seconds for 900 rows
        out = send_hl7(dest(ris.port, timeout=120), "AINODE", files)
        got = ris.wait_for(1)
    assert len(got[0].raw) > 64 * 1024
    assert out[0].verdict == "delivered" and got[0].strict_error is None, out[0]
    assert len(got[0].parsed.segments("OBX")) == 2 * 240 + 4


def test_unreachable_ris_is_retried_without_unseen(tmp_path: Path, data: Path) -> None:
    files = stored(tmp_path, data, 2)
    out = send_hl7(dest(free_port(), timeout=1.0), "AINODE", files)
    assert {(o.verdict, o.status, o.unseen) for o in out.values()} == {("retry", "connect", False)}


def test_a_missing_report_is_parked(tmp_path: Path, data: Path) -> None:
    out = send_hl7(dest(free_port()), "AINODE", [OutgoingFile(key=7, path=tmp_path / "gone.json", sop_class_uid="")])
    assert out[7].verdict == "park" and "cannot be read" in out[7].reason
