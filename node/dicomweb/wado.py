"""WADO-RS: one instance from a DICOMweb service into the spool, durably, recorded like a C-GET sub-operation."""

from __future__ import annotations

import logging
import uuid
from typing import Callable, TypeVar

import httpx
import pydicom

from node.dicom.qr import Deadline, QueryError, QueryTimeout, text_of
from node.dicomweb import multipart
from node.store.spool import Spool, is_valid_uid, move_durably
from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)

R = TypeVar("R")
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored, not transcoded


def wado_instance(http: httpx.Client, base: str, study: str, series: str, sop: str, timeout: float) -> bytes:
    """The Part 10 bytes of one instance (``GET {base}/studies/{study}/series/{series}/instances/{sop}``).

    Raises :class:`httpx.HTTPError` on transport errors, :class:`QueryError` on an HTTP or multipart failure.
    """
    rsp = http.get(f"{base}/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": ACCEPT_DICOM},
                   timeout=timeout)
    if rsp.status_code != 200:
        raise QueryError(f"WADO-RS answered HTTP {rsp.status_code}")
    try:
        parts = multipart.decode(rsp.content, rsp.headers.get("Content-Type", ""))
    except multipart.MultipartError as exc:
        raise QueryError(f"WADO-RS sent an unreadable body: {exc}") from None
    dicom = [data for kind, data in parts if kind == multipart.DICOM_MEDIA]
    if len(dicom) != 1:
        raise QueryError(f"WADO-RS of one instance sent {len(dicom)} DICOM parts")
    return dicom[0]


def spool_bytes(data: bytes, spool: Spool, record: Callable[[list[InstanceRecord]], R], source: str,
                *, is_prior: bool) -> tuple[InstanceRecord, R]:
    """Write one instance into the spool (fsync, rename, directory fsync), then ``record`` it; (record, result).

    :class:`ValueError` when it is not DICOM or lacks valid study/series/SOP UIDs (nothing is kept then).
    """
    tmp = spool.tmp / f"web-{uuid.uuid4().hex}.dcm"
    tmp.write_bytes(data)
    try:
        header = pydicom.dcmread(tmp, stop_before_pixels=True)
        study, series, sop = (text_of(header, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        if not all(is_valid_uid(u) for u in (study, series, sop)):
            raise ValueError("the instance lacks a valid study, series or SOP instance UID")
        syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    dst = spool.instance_path(study, series, sop)
    move_durably(tmp, dst)
    rec = InstanceRecord(sop_instance_uid=sop, study_uid=study, series_uid=series,
                         sop_class_uid=text_of(header, "SOPClassUID"), transfer_syntax_uid=syntax, path=str(dst),
                         size_bytes=dst.stat().st_size, calling_ae=source[:16], is_prior=is_prior)
    return rec, record([rec])


def retrieve_prior(http: httpx.Client, base: str, ident: pydicom.Dataset, deadline: Deadline, peer: str,
                   spool: Spool, store: Store) -> int:
    """WADO-RS of one prior instance into the spool; 0x0000 when stored, a C-GET-like failure status otherwise."""
    study, series, sop = (text_of(ident, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    try:
        data = wado_instance(http, base, study, series, sop, deadline.left())
    except httpx.TimeoutException:
        raise QueryTimeout() from None
    except httpx.HTTPError as exc:
        deadline.left()
        raise QueryError(f"cannot reach the DICOMweb service {peer}: {type(exc).__name__}") from None
    except QueryError as exc:
        log.warning("WADO-RS of a prior instance from %s failed: %s", peer, exc)
        return 0xA701
    try:
        spool_bytes(data, spool, lambda recs: store.record_instances(recs, 0.0), peer, is_prior=True)
    except OSError as exc:
        log.error("cannot store a retrieved prior: %s", exc)
        return 0xA700
    except Exception as exc:  # noqa: BLE001 - messages may quote element values (PHI): the type only
        log.error("cannot store a retrieved prior: %s", type(exc).__name__)
        return 0xC000
    return 0x0000


def series_metadata(http: httpx.Client, base: str, study: str, series: str, deadline: Deadline,
                    peer: str) -> list[pydicom.Dataset]:
    """WADO-RS metadata of a series (``.../series/{uid}/metadata``): full headers without bulk data."""
    try:
        rsp = http.get(f"{base}/studies/{study}/series/{series}/metadata",
                       headers={"Accept": "application/dicom+json"}, timeout=deadline.left())
    except httpx.TimeoutException:
        raise QueryTimeout() from None
    except httpx.HTTPError as exc:
        deadline.left()
        raise QueryError(f"cannot reach the DICOMweb service {peer}: {type(exc).__name__}") from None
    if rsp.status_code != 200:
        raise QueryError(f"the DICOMweb service {peer} answered a series metadata request with HTTP "
                         f"{rsp.status_code}")
    try:
        return [pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"") for item in rsp.json()]
    except (ValueError, TypeError, KeyError) as exc:
        raise QueryError(f"the DICOMweb service {peer} sent unreadable metadata: {type(exc).__name__}") from None
