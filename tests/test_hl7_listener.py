"""The MLLP listener (node/hl7/listener.py): orders and reports in, kept before the ACK, AE/AR with the reason.

Messages are sent with python-hl7's own MLLP client (code the listener does not use for sending) and read from
tests/data/hl7/ (hand-written: the expected order fields are the values written there). What is kept is read
from the node's database.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import hl7
import pytest
from sqlalchemy import func, select

from node.config import parse_config
from node.hl7 import handlers
from node.hl7.handlers import Refusal
from node.hl7.listener import MllpListener
from node.models.cxrreportgen.indication import choose_indication
from node.store.schema import hl7_messages, hl7_orders
from node.store.state import Store
from support.mllp_client import send_mllp as send

pytestmark = pytest.mark.engine
DATA = Path(__file__).parent / "data" / "hl7"


def message(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.fixture
def node(tmp_path: Path):
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "mllp": {"host": "127.0.0.1", "port": 0, "max_message_bytes": 20000,
                                 "receiving_facility": "AI"}})
    store = Store.open(cfg.database_url)
    listener = MllpListener(cfg, store).start()
    yield listener, store
    listener.stop()
    store.engine.dispose()


def msa(ack: hl7.Message) -> tuple[str, str, str]:
    seg = ack.segment("MSA")
    return str(seg[1]), str(seg[2]), ack.unescape(str(seg[3])) if len(seg) > 3 else ""


def count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_orders_are_kept_before_the_ack(node) -> None:
    listener, store = node
    orm, omi = send(listener.port, message("orm_o01.hl7"), message("omi_o23.hl7"))  # one connection, two messages
    assert msa(orm)[:2] == ("AA", "ORM-0001") and msa(omi)[:2] == ("AA", "OMI-0001")
    assert str(orm.segment("MSH")[4]) == "AI" and str(orm.segment("MSH")[5]) == "RIS"
    first = store.order_for_accession("ACC-ORM-1")
    assert {k: first[k] for k in ("patient_id", "patient_issuer", "placer_number", "filler_number", "order_control",
                                  "reason", "clinical_info", "study_uid")} == {
        "patient_id": "PAT-0042", "patient_issuer": "HOSP", "placer_number": "PLC-1001", "filler_number": "FIL-2002",
        "order_control": "NW", "reason": "Persistent cough and fever for three weeks",
        "clinical_info": "Smoker, 40 pack-years", "study_uid": "1.2.826.0.1.3680043.8.498.1234"}
    second = store.order_for_accession("ACC-OMI-1")
    assert (second["patient_id"], second["reason"], second["study_uid"]) == (
        "PAT-0043", "Shortness of breath, rule out effusion", "1.2.826.0.1.3680043.8.498.5678")
    kept = store.hl7_messages_of()
    assert [(m["message_type"], m["control_id"]) for m in kept] == [("OMI^O23", "OMI-0001"), ("ORM^O01", "ORM-0001")]
    assert "MÜLLER" in kept[0]["text"]  # decoded by its MSH-18 (UNICODE UTF-8)
    again = send(listener.port, message("orm_o01.hl7"))[0]  # the sender's resend: AA, not kept twice
    assert msa(again)[:2] == ("AA", "ORM-0001") and count(store, hl7_messages) == 2


def test_what_cannot_be_taken_is_refused_with_the_reason(node) -> None:
    listener, store = node
    orm = message("orm_o01.hl7").decode()
    no_accession = orm.replace("ACC-ORM-1", "").replace("ORM-0001", "ORM-0002").encode()
    no_patient = orm.replace("PAT-0042^^^HOSP^MR", "").replace("ORM-0001", "ORM-0003").encode()
    adt = orm.replace("ORM^O01", "ADT^A01").replace("ORM-0001", "ADT-0001").encode()
    v3 = orm.replace("|P|2.3", "|P|3.0").replace("ORM-0001", "V3-0001").encode()
    acks = send(listener.port, no_accession, no_patient, adt, v3)
    assert [msa(a)[:2] for a in acks] == [("AE", "ORM-0002"), ("AE", "ORM-0003"), ("AR", "ADT-0001"),
                                          ("AR", "V3-0001")]
    assert "accession" in msa(acks[0])[2] and "PID-3" in msa(acks[1])[2]
    assert "ADT^A01" in msa(acks[2])[2] and "3.0" in msa(acks[3])[2]
    assert count(store, hl7_messages) == 0 and count(store, hl7_orders) == 0  # nothing half kept


def test_garbage_and_oversized_frames(node) -> None:
    listener, store = node
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"\x0bhello, not hl7\x1c\x0d")
        ack = sock.recv(4096)
    assert b"MSA|AR" in ack
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"\x0b" + b"MSH|^~\\&|X" + b"A" * 30000 + b"\x1c\x0d")
        ack = sock.recv(4096)
        assert b"MSA|AR" in ack and b"larger than 20000" in ack
        assert sock.recv(4096) == b""  # and the connection is closed
    assert count(store, hl7_messages) == 0


def test_radiologist_reports_are_kept_and_handed_to_registered_handlers(node) -> None:
    listener, store = node
    seen = []

    @handlers.handles("ORU^R01")
    def record(msg, conn) -> None:
        seen.append((msg.id, msg.message_type, msg.accession, str(msg.parsed.segment("OBX")[5])))
        if "REFUSE" in msg.text:
            raise Refusal("AE", "this report names no known order")

    try:
        oru = message("oru_r01_radiologist.hl7")
        ok = send(listener.port, oru)[0]
        bad = send(listener.port, oru.replace(b"RPT-0001", b"RPT-0002").replace(b"Small right effusion.", b"REFUSE"))[0]
    finally:
        handlers._HANDLERS["ORU^R01"].remove(record)
    assert msa(ok)[:2] == ("AA", "RPT-0001")
    assert msa(bad) == ("AE", "RPT-0002", "this report names no known order")
    kept = store.hl7_messages_of("ORU^R01")
    assert [(m["control_id"], m["accession"]) for m in kept] == [("RPT-0001", "ACC-ORM-1")]
    assert seen[0][0] == kept[0]["id"] and seen[0][1:] == ("ORU^R01", "ACC-ORM-1",
                                                           "Small right pleural effusion. No pneumothorax.")


def test_a_handler_type_is_taken_once_registered(node) -> None:
    listener, store = node
    adt = message("orm_o01.hl7").replace(b"ORM^O01", b"ADT^A08").replace(b"ORM-0001", b"ADT-0008")
    assert msa(send(listener.port, adt)[0])[0] == "AR"
    handlers.register("ADT^A08", lambda msg, conn: None)
    try:
        assert msa(send(listener.port, adt)[0])[0] == "AA"
    finally:
        del handlers._HANDLERS["ADT^A08"]


def test_indication_source(node) -> None:
    import pydicom

    listener, store = node
    send(listener.port, message("orm_o01.hl7"))
    header = pydicom.Dataset()
    header.AccessionNumber, header.PatientID = "ACC-ORM-1", "PAT-0042"
    chosen = choose_indication("Header reason.", header, store.order_for_accession)
    assert (chosen.source, chosen.text) == ("order", "Persistent cough and fever for three weeks. Smoker, 40 pack-years.")
    header.PatientID = "SOMEONE-ELSE"
    other = choose_indication("Header reason.", header, store.order_for_accession)
    assert (other.source, other.text) == ("dicom header", "Header reason.") and "another patient" in other.note
    header.PatientID, header.AccessionNumber = "PAT-0042", "NO-SUCH"
    assert choose_indication(None, header, store.order_for_accession).source == "none"
    cancel = message("orm_o01.hl7").replace(b"ORC|NW", b"ORC|CA").replace(b"ORM-0001", b"ORM-0009")
    send(listener.port, cancel)
    header.AccessionNumber = "ACC-ORM-1"
    assert choose_indication("Header reason.", header, store.order_for_accession).source == "dicom header"


def test_retention_purges_orders_with_their_study(node) -> None:
    listener, store = node
    send(listener.port, message("orm_o01.hl7"), message("omi_o23.hl7"))
    from node.store.hl7 import order_matched

    with store.engine.begin() as conn:  # ACC-ORM-1 was used by a study the node no longer holds
        order_matched("ACC-ORM-1", "1.2.3.4.5.6")(conn)
    assert store.purge_hl7(3600, 3600) == (0, 1)
    assert store.order_for_accession("ACC-ORM-1") is None and store.order_for_accession("ACC-OMI-1") is not None
    time.sleep(0.05)
    assert store.purge_hl7(0.01, 0.01) == (2, 1)  # unmatched and old; messages past their time
    assert count(store, hl7_orders) == 0


def test_mllp_over_tls_both_ways(tmp_path: Path, data: Path) -> None:
    """The listener with TLS and client certificates; the hl7v2 sender with TLS sends it an ORU (AA, kept); a
    client whose certificate another CA signed gets no ACK and nothing is kept."""
    import ssl

    from node.dicom.scu import OutgoingFile
    from node.hl7.sender import send_hl7
    from node.reports.job import build_report
    from node.reports.read import read_results
    from support import reports
    from support.tlscerts import make_pki

    pki = make_pki(tmp_path / "pki")
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "mllp": {"host": "127.0.0.1", "port": 0,
                                 "tls": {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                                         "ca_file": str(pki.ca.cert)}}})
    store = Store.open(cfg.database_url)
    listener = MllpListener(cfg, store).start()
    try:
        dest = parse_config({"destinations": {"ris": {
            "type": "hl7v2", "host": "127.0.0.1", "port": listener.port, "timeout_seconds": 10,
            "tls": {"ca_file": str(pki.ca.cert), "cert_file": str(pki.client.cert), "key_file": str(pki.client.key),
                    "server_name": "localhost"}}}}).destinations["ris"]
        made = reports.cxr_report(data)
        report = build_report(job={"id": 1, "job_uid": "f" * 32, "study_uid": "1.2", "rule_name": "r",
                                   "study_version": 1}, content=read_results(made.results, made.source), previous=None)
        path = tmp_path / "report.json"
        path.write_bytes(report.to_json())
        out = send_hl7(dest, "AINODE", [OutgoingFile(key=1, path=path, sop_class_uid="")])
        assert out[1].verdict == "delivered", out[1]
        assert [m["message_type"] for m in store.hl7_messages_of()] == ["ORU^R01"]
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.rogue_client.cert), str(pki.rogue_client.key))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"\x0b" + message("orm_o01.hl7") + b"\x1c\x0d")
                    if not tls.recv(4096):
                        raise ConnectionError("closed without an ACK")
        assert store.order_for_accession("ACC-ORM-1") is None
    finally:
        listener.stop()
        store.engine.dispose()
