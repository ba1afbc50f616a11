"""No PHI and no secrets in logs: pynetdicom's query identifiers, pydicom's value warnings, the secret mask,
and owner-only files (spool, database, audit trail)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from support.ports import free_port
from node.ops.hardening import quiet_pynetdicom_identifiers
from node.ops.logsafety import MASK, RedactSecrets

pytestmark = pytest.mark.security

PHI_NAME, PHI_ID = "WOLFRAMINA^ZOTT", "QRY-ID-60613"


def _find_round_trip() -> None:
    """A C-FIND with a patient name and ID, answered with the same, between two pynetdicom AEs."""
    def on_find(event):
        ident = Dataset()
        ident.PatientName, ident.PatientID, ident.QueryRetrieveLevel = PHI_NAME, PHI_ID, "PATIENT"
        yield 0xFF00, ident

    scp = AE(ae_title="QRSCP")
    scp.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        scu = AE(ae_title="AINODE")
        scu.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = scu.associate("127.0.0.1", port, ae_title="QRSCP")
        assert assoc.is_established
        query = Dataset()
        query.PatientName, query.PatientID, query.QueryRetrieveLevel = PHI_NAME, PHI_ID, "PATIENT"
        answers = [ident for status, ident in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)
                   if status and status.Status == 0xFF00]
        assoc.release()
        assert answers and answers[0].PatientID == PHI_ID
    finally:
        server.shutdown()


def test_c_find_identifiers_are_not_logged(caplog) -> None:
    saved = (_config.LOG_REQUEST_IDENTIFIERS, _config.LOG_RESPONSE_IDENTIFIERS)
    try:
        with caplog.at_level(logging.INFO, logger="pynetdicom"):
            _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = True  # pynetdicom's defaults
            _find_round_trip()
            assert PHI_ID in caplog.text, "the check must be able to see identifiers when they are logged"
            caplog.clear()
            quiet_pynetdicom_identifiers()
            _find_round_trip()
            assert PHI_ID not in caplog.text and "ZOTT" not in caplog.text.upper()
    finally:
        _config.LOG_REQUEST_IDENTIFIERS, _config.LOG_RESPONSE_IDENTIFIERS = saved


def test_secrets_are_masked_in_messages_arguments_and_tracebacks() -> None:
    flt = RedactSecrets(["sk-live-0123456789abcdef"])
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "calling with key %s and %s",
                               ("sk-live-0123456789abcdef", "Authorization: Bearer eyJhbGciOi.abc.def"), None)
    try:
        raise RuntimeError("401 for token sk-live-0123456789abcdef")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert flt.filter(record)
    assert "sk-live" not in record.getMessage() and "eyJhbGciOi" not in record.getMessage()
    assert MASK in record.getMessage() and "sk-live" not in (record.exc_text or "")
    assert "RuntimeError" in record.exc_text


def test_serve_logging_masks_the_endpoint_key_from_the_environment(tmp_path: Path) -> None:
    """In a node process (setup_logging), a key that reaches any logger is masked."""
    code = textwrap.dedent("""
        import logging
        from node.ops.process import setup_logging
        setup_logging("INFO")
        logging.getLogger("httpx").warning("request failed: headers=%s", {"Authorization": "Bearer " + __import__("os").environ["CXR_ENDPOINT_KEY"]})
        logging.getLogger("node.invoke").error("key was %s", __import__("os").environ["CXR_ENDPOINT_KEY"])
    """)
    env = {**os.environ, "CXR_ENDPOINT_KEY": "k3y-that-must-not-leak-42"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "request failed" in out.stderr and "key was" in out.stderr
    assert "k3y-that-must-not-leak-42" not in out.stderr + out.stdout


def test_pydicom_value_warnings_do_not_quote_values_in_a_node_process(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import logging, pydicom
        from node.ops.hardening import quiet_pydicom_values
        from node.ops.process import setup_logging
        setup_logging("INFO")
        quiet_pydicom_values()
        ds = pydicom.Dataset()
        ds.PatientBirthDate = "1937-04-12"  # not a DA value: pydicom would warn, quoting it
        ds.StudyInstanceUID = "1.2.QRY-ID-60613"
        print(ds.PatientBirthDate, ds.StudyInstanceUID)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1937-04-12" in out.stdout and "1937-04-12" not in out.stderr and "QRY-ID" not in out.stderr


def test_storage_database_and_audit_files_are_owner_only(tmp_path: Path) -> None:
    """What the node creates under a lax umask (022) is still owner-only after harden_process."""
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        os.umask(0o022)
        root = Path({str(tmp_path / 'var')!r})
        root.mkdir(mode=0o755)
        (root / "node.db").write_bytes(b"")
        os.chmod(root / "node.db", 0o644)  # left by an earlier, laxer run
        from node.ops.hardening import harden_process
        harden_process(root)
        from node.config import parse_config
        from node.store.spool import Spool, write_durably
        from node.store.state import Store
        from node.ops.audit import audit_log
        from node.flow.queue import make_huey
        cfg = parse_config({{"node": {{"storage_dir": str(root)}}}})
        Spool(root).create()
        store = Store.open(cfg.database_url)
        make_huey(cfg)
        spool = Spool(root)
        write_durably(spool.result_path("1.2.3", "1.2.3.4"), b"x")
        spool.quarantine(root / "tmp" / "missing.dcm", "reason")
        audit_log(cfg).record("instance-received", sop_instance_uid="1.2.3.4")
        store.engine.dispose()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "var"
    made = [root, *root.rglob("*")]
    assert {p.name for p in made} >= {"node.db", "queue.db", "audit.jsonl", "spool", "results", "quarantine", "tmp"}
    loose = [f"{p}: {stat.filemode(p.stat().st_mode)}" for p in made if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, loose
