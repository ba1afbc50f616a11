"""The patient of a study, for the audit messages that must name it (Patient participant object, PS3.15 A.5.3).

The JSON-lines trail never holds patient identifiers, so the forwarder finds them where the node keeps the
study: the header of one of its instance files (or of a result made from it), found through the database. What
it found is kept in a small SQLite file in the ATNA spool folder (owner-only, as the spool's messages carry the
same identifiers), so a study purged by retention is still named in its DICOM Study Deleted message; the entry
goes once that message is made, and the file holds at most :data:`MAX_ENTRIES` studies.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Patient:
    patient_id: str
    issuer: str = ""
    name: str = ""


class PatientDirectory:
    """``of_study(uid)``: the cached patient, else the one named by the study's files; None when neither."""

    def __init__(self, cache_path: Path, engine: Any | None) -> None:
        self.engine = engine  # the node's database (SQLAlchemy engine); None: the cache only
        self._db = sqlite3.connect(str(cache_path), isolation_level=None, check_same_thread=False)
        cache_path.chmod(0o600)
        self._db.execute("CREATE TABLE IF NOT EXISTS patients (study_uid TEXT PRIMARY KEY, patient_id TEXT, "
                         "issuer TEXT, name TEXT, seen REAL)")

    def of_study(self, study_uid: str | None) -> Patient | None:
        if not study_uid:
            return None
        row = self._db.execute("SELECT patient_id, issuer, name FROM patients WHERE study_uid = ?",
                               (study_uid,)).fetchone()
        if row is not None:
            return Patient(*row)
        found = self._from_files(study_uid)
        if found is not None:
            self._db.execute("INSERT OR REPLACE INTO patients VALUES (?, ?, ?, ?, ?)",
                             (study_uid, found.patient_id, found.issuer, found.name, time.time()))
            self._bound()
        return found

    def of_hl7_message(self, sending_application: str | None, control_id: str | None) -> Patient | None:
        """The patient (PID-3 first identifier, its authority, PID-5) of the HL7 message the MLLP listener kept
        with this MSH-3 and MSH-10 (the newest such); None when there is none or it names none."""
        if self.engine is None or not control_id:
            return None
        from sqlalchemy import select

        from node.store.schema import hl7_messages

        try:
            with self.engine.connect() as conn:
                text = conn.execute(select(hl7_messages.c.text).where(
                    hl7_messages.c.sending_application == (sending_application or ""),
                    hl7_messages.c.control_id == control_id).order_by(hl7_messages.c.id.desc()).limit(1)).scalar()
        except Exception as exc:  # noqa: BLE001 - the message goes without its patient, never not at all
            log.warning("audit: cannot look up HL7 message %s: %s", control_id, type(exc).__name__)
            return None
        return _hl7_patient(text) if text else None

    def forget(self, study_uid: str) -> None:
        self._db.execute("DELETE FROM patients WHERE study_uid = ?", (study_uid,))

    def close(self) -> None:
        self._db.close()

    def _bound(self) -> None:
        (n,) = self._db.execute("SELECT count(*) FROM patients").fetchone()
        if n > MAX_ENTRIES:
            self._db.execute("DELETE FROM patients WHERE study_uid IN (SELECT study_uid FROM patients "
                             "ORDER BY seen LIMIT ?)", (n - MAX_ENTRIES,))

    def _from_files(self, study_uid: str) -> Patient | None:
        if self.engine is None:
            return None
        from sqlalchemy import select

        from node.store.schema import instances, results

        try:
            with self.engine.connect() as conn:
                paths = [r[0] for r in conn.execute(
                    select(instances.c.path).where(instances.c.study_uid == study_uid).limit(3))]
                paths += [r[0] for r in conn.execute(
                    select(results.c.path).where(results.c.study_uid == study_uid).limit(2))]
        except Exception as exc:  # noqa: BLE001 - the message goes without its patient, never not at all
            log.warning("audit: cannot look up the files of study %s: %s", study_uid, type(exc).__name__)
            return None
        for path in paths:
            patient = read_patient(Path(path))
            if patient is not None:
                return patient
        return None


def read_patient(path: Path) -> Patient | None:
    """Patient ID, its issuer and the name from one DICOM file's header; None when unreadable or without an ID."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["PatientID", "IssuerOfPatientID", "PatientName"])
    except Exception:  # noqa: BLE001 - a missing or broken file names no patient
        return None
    pid = str(ds.get("PatientID", "") or "").strip()
    if not pid:
        return None
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    return Patient(pid, issuer, str(ds.get("PatientName", "") or "").strip())


def _hl7_patient(text: str) -> Patient | None:
    """PID-3 (first identifier and its assigning authority) and PID-5 of an HL7 v2 message, read by python-hl7."""
    import hl7

    from node.hl7.orders import patient_of

    try:
        msg = hl7.parse(text.replace("\n", "\r"))
        pid, issuer = patient_of(msg)
        name = str(msg.segment("PID")[5]) if pid else ""
    except Exception:  # noqa: BLE001 - an unreadable message names no patient
        return None
    return Patient(pid, issuer, name) if pid else None
