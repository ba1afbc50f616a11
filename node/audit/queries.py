"""A query the node sent (C-FIND or QIDO-RS), as its audit trail line and back as the ParticipantObjectQuery.

The line keeps the identifier's keys and values except the patient's identifiers: their names are listed
(``patient_keys``), their values are left out. The ATNA message gets the query as it was sent: the identifier
rebuilt with the patient's identifiers of the study the lookup was made for (:mod:`node.audit.patients`), encoded
in Implicit VR Little Endian for a C-FIND (with its TransferSyntax detail), as the request path and query
string for QIDO-RS (:func:`node.dicomweb.qido.qido_request`, the same function that made the request).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pydicom.dataset import Dataset

from node.audit.patients import Patient

#: identifiers never written to the trail (the patient's, and the accession number)
PHI_KEYS = frozenset({"PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "AccessionNumber",
                      "OtherPatientIDs", "OtherPatientIDsSequence"})
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def query_fields(query: Dataset) -> dict[str, Any]:
    """The trail's fields for one query identifier: its keys without the patient's values."""
    keys: dict[str, Any] = {}
    hidden = []
    for elem in query:
        kw = elem.keyword
        if not kw or elem.VR == "SQ":
            continue
        if kw in PHI_KEYS:
            hidden.append(kw)
            continue
        value = elem.value
        multi = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
        keys[kw] = [str(v) for v in value] if multi else ("" if value is None else str(value))
    return {"query": keys, "patient_keys": hidden, "level": keys.get("QueryRetrieveLevel", "")}


def rebuild(ev: dict[str, Any], patient: Patient | None) -> Dataset:
    """The identifier that was sent: the trail's keys and the patient's identifiers put back."""
    ds = Dataset()
    for kw in ev.get("patient_keys") or []:
        if kw == "PatientID":
            ds.PatientID = patient.patient_id if patient else ""
        elif kw == "IssuerOfPatientID":
            ds.IssuerOfPatientID = patient.issuer if patient else ""
        else:
            setattr(ds, kw, "")
    for kw, value in (ev.get("query") or {}).items():
        setattr(ds, kw, value)
    return ds


def query_bytes(ev: dict[str, Any], patient: Patient | None) -> tuple[bytes, list[tuple[str, str | bytes]]]:
    """(ParticipantObjectQuery, ParticipantObjectDetail pairs) of one ``prior-query`` event."""
    ds = rebuild(ev, patient)
    details: list[tuple[str, str | bytes]] = []
    if patient is None and ev.get("patient_keys"):
        details.append(("Note", "the patient's identifiers were not found; left empty here"))
    if ev.get("protocol") == "QIDO-RS":
        from node.dicomweb.qido import qido_request

        path, params = qido_request(ds)
        return f"{path}?{urlencode(params)}".encode("utf-8"), [("QueryEncoding", "UTF-8"), *details]
    from pynetdicom.dsutils import encode

    body = encode(ds, True, True)
    return body or b"", [("TransferSyntax", IMPLICIT_VR_LITTLE_ENDIAN), *details]


def record_query(cfg: Any, name: str, dest: Any, query: Dataset, for_study_uid: str | None, matches: int | None,
                 error: BaseException | None, event: str = "prior-query") -> None:
    """The trail's ``prior-query`` line (or ``event``: ``verify-query``) of one C-FIND or QIDO-RS sent to the
    destination ``name``."""
    from urllib.parse import urlsplit

    from node.ops.audit import audit_log

    web = getattr(dest, "type", None) == "dicomweb"
    why = None
    if error is not None:  # these messages hold no PHI; anything else is named by its type only
        why = str(error) if type(error).__name__ in ("QueryError", "QueryTimeout", "VerifyError") \
            else type(error).__name__
    audit_log(cfg).record(
        event, "success" if error is None else "serious-failure", protocol="QIDO-RS" if web else "C-FIND",
        destination=name, called_ae=None if web else dest.ae_title,
        peer_host=urlsplit(dest.url).hostname if web and dest.url else dest.host, url=dest.url if web else None,
        sop_class_uid=STUDY_ROOT_FIND, for_study_uid=for_study_uid, matches=matches, reason=why or None,
        **query_fields(query))


def record_retrieve(cfg: Any, priors: Any, dest: Any, rows: list[dict[str, Any]]) -> None:
    """The trail's ``prior-retrieved`` line of the instances a lookup retrieved by C-GET or WADO-RS, per study.

    A C-MOVE's instances come in through the Storage SCP, whose association makes their transfer event."""
    from urllib.parse import urlsplit

    from node.ops.audit import audit_log

    web = getattr(dest, "type", None) == "dicomweb"
    if not rows or (priors.method == "c-move" and not web):
        return
    for study in sorted({r["study_uid"] for r in rows}):
        mine = [r for r in rows if r["study_uid"] == study]
        audit_log(cfg).record(
            "prior-retrieved", protocol="WADO-RS" if web else "C-GET", destination=priors.query,
            called_ae=None if web else dest.ae_title, url=dest.url if web else None,
            peer_host=urlsplit(dest.url).hostname if web and dest.url else dest.host, study_uid=study,
            instances=[[r["sop_instance_uid"], r["sop_class_uid"]] for r in mine])
