"""How ``db_before_alembic.sql`` was made: a database written by the node before it had migrations.

Run with the code of commit 35e38db (the last one before node/store/ and Alembic) on the import path::

    git archive 35e38db | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python3 tests/data/make_db_before_alembic.py tests/data/db_before_alembic.sql

It opens a Store (``metadata.create_all``, no ``alembic_version`` table), records one received instance,
closes the study, runs one job to "done" with one SR result and leaves that result's outbox row PENDING for
destination "pacs". File paths are placeholders that the test substitutes: ``@RESULT_PATH@`` (a DICOM file
the test writes, with SOP Instance UID ``RESULT_UID``) and ``@SPOOL_PATH@``.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

STUDY_UID = "1.2.826.0.1.3680043.10.543.1"
SERIES_UID = "1.2.826.0.1.3680043.10.543.1.1"
INSTANCE_UID = "1.2.826.0.1.3680043.10.543.1.1.1"
RESULT_UID = "1.2.826.0.1.3680043.10.543.1.9.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"


def main(out: Path) -> None:
    from node.state import InstanceRecord, Store  # the pre-restructure layout (node/state.py, node/db.py)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "node.db"
        store = Store.open(f"sqlite:///{db}")
        store.record_instances([InstanceRecord(INSTANCE_UID, STUDY_UID, SERIES_UID, CR_CLASS, "1.2.840.10008.1.2.1",
                                               "@SPOOL_PATH@", 1234, "MODALITY")], quiet_seconds=0)
        verdict, version = store.begin_decision(STUDY_UID, quiet_seconds=0)
        assert verdict == "complete", verdict
        [job_id] = store.create_jobs(STUDY_UID, int(version), [("chest-xray-findings", "cxr", [SERIES_UID])])
        owner = "before-alembic:1:x"
        assert store.claim_job(job_id, owner, 60) is not None
        assert store.finish_job(job_id, owner, state="done", outcome="report written", new_results=[{
            "sop_instance_uid": RESULT_UID, "study_uid": STUDY_UID, "series_uid": STUDY_UID + ".9",
            "sop_class_uid": SR_CLASS, "kind": "sr", "path": "@RESULT_PATH@"}], destinations=["pacs"])
        store.engine.dispose()
        con = sqlite3.connect(db)
        assert not con.execute("SELECT name FROM sqlite_master WHERE name='alembic_version'").fetchall()
        assert con.execute("SELECT state FROM outbox").fetchall() == [("pending",)]
        out.write_text("\n".join(con.iterdump()) + "\n")
        con.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
