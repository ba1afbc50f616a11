"""STOW-RS in: ``POST /dicomweb/studies[/{study}]`` on the node's HTTP side, as durable as a C-STORE.

:func:`stow_routes` returns Starlette routes to mount on the node's app. For each instance of the multipart
request, in order, the same path as :meth:`node.dicom.scp.StorageSCP.handle_store`: the spool's free-space floor,
the header parsed (a part that is not DICOM, or lacks valid study/series/SOP UIDs, is quarantined with its reason),
the part fsynced and renamed into the spool, its directory fsynced, its row committed (group commit, shared by
concurrent requests), its study's quiet timer armed (the same rules decide). Only then does the answer list it in
ReferencedSOPSequence; a refused instance is in FailedSOPSequence with its FailureReason (PS3.18 10.5.3):

======================================  ==========  ==================================================
not DICOM / invalid UIDs (quarantined)  0xC000      cannot understand
study UID differs from the URL's        0xA900      data set does not match (not quarantined, not kept)
spool full, write or commit failed      0xA700      out of resources (nothing of it kept)
======================================  ==========  ==================================================

HTTP status: 200 all stored, 202 some stored, 409 none stored, 400 not a multipart body, 401 no or a wrong token,
413 over ``max_request_bytes``, 415 not ``multipart/related; type="application/dicom"``. The body is streamed to
a temporary file in the spool (never held in memory) and split there.
"""

from __future__ import annotations

import logging
import mmap
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import pydicom
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node.dicomweb import multipart
from node.ops.audit import audit_log
from node.store.commit import GroupCommitter
from node.store.spool import Spool, SpoolFullError, is_valid_uid, move_durably
from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900
OUT_OF_RESOURCES = 0xA700
SOURCE_NAME = "STOW-RS"  # recorded as the instances' calling AE (16 characters at most)


@dataclass
class StowAnswer:
    """What one request did: (SOP class, SOP instance) stored, and (class, instance, FailureReason) refused."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": [c]},
                                                       "00081155": {"vr": "UI", "Value": [s]}}
                                                      for c, s in self.stored]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {**({"00081150": {"vr": "UI", "Value": [c]}} if c else {}),
                 **({"00081155": {"vr": "UI", "Value": [s]}} if s else {}),
                 "00081197": {"vr": "US", "Value": [r]}} for c, s, r in self.failed]}
        status = 200 if not self.failed else 202 if self.stored else 409
        return JSONResponse(body, status_code=status, media_type="application/dicom+json")


class StowReceiver:
    """The durable receive path of STOW-RS (synchronous; the route runs it in a worker thread)."""

    def __init__(self, cfg: Any, store: Store, spool: Spool, intake: Any) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.intake = intake
        self._committer = GroupCommitter(self._commit_batch)
        self.received = 0

    def _commit_batch(self, records: Sequence[InstanceRecord]) -> list[list[tuple[str, float]]]:
        due = dict(self.intake.record(records))
        return [[(rec.study_uid, due.pop(rec.study_uid))] if rec.study_uid in due else [] for rec in records]

    def store_body(self, body_path: Path, content_type: str, study_in_url: str | None) -> StowAnswer:
        """Store every DICOM part of the multipart body in ``body_path``; the per-instance answer."""
        answer = StowAnswer()
        with open(body_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
            for part in _parts(body, content_type):
                answer_one = self.store_part(part, study_in_url)
                (answer.failed if len(answer_one) == 3 else answer.stored).append(answer_one)  # type: ignore[arg-type]
        return answer

    def store_part(self, data: bytes, study_in_url: str | None) -> tuple:
        """One instance: (class, instance) when stored durably, (class, instance, FailureReason) when not."""
        tmp = self.spool.tmp / f"stow-{uuid.uuid4().hex}.dcm"
        try:
            self.spool.check_space(len(data))
            with open(tmp, "wb") as out:
                out.write(data)
        except (SpoolFullError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            log.error("STOW-RS: cannot take an instance (0xA700): %s", type(exc).__name__)
            return ("", "", OUT_OF_RESOURCES)
        try:
            header = pydicom.dcmread(tmp, stop_before_pixels=True)
            study, series, sop, sop_class = (str(header.get(k, "")) for k in (
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"))
            syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds; messages may quote PHI
            return self._quarantine(tmp, f"cannot parse the data set: {type(exc).__name__}: {exc}", "", "",
                                    f"cannot parse the data set ({type(exc).__name__})")
        for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
            if not is_valid_uid(uid):
                return self._quarantine(tmp, f"{name} is missing or not a valid UID", sop_class,
                                        sop if is_valid_uid(sop) else "")
        if study_in_url and study != study_in_url:
            tmp.unlink(missing_ok=True)
            log.warning("STOW-RS: instance %s is not of the study named in the URL; refused (0xA900)", sop)
            return (sop_class, sop, MISMATCH)
        dst = self.spool.instance_path(study, series, sop)
        replaces = dst.exists()
        try:
            move_durably(tmp, dst)
            due = self._committer.submit(InstanceRecord(
                sop_instance_uid=sop, study_uid=study, series_uid=series, sop_class_uid=sop_class,
                transfer_syntax_uid=syntax, path=str(dst), size_bytes=dst.stat().st_size, calling_ae=SOURCE_NAME))
        except (OSError, SQLAlchemyError) as exc:
            log.error("STOW-RS: cannot store instance %s durably (0xA700): %s", sop, type(exc).__name__)
            tmp.unlink(missing_ok=True)
            if not replaces:
                dst.unlink(missing_ok=True)
            return (sop_class, sop, OUT_OF_RESOURCES)
        for study_uid, due_at in due:
            self.intake.arm(study_uid, due_at)
        self.received += 1
        audit_log(self.cfg).record("instance-received", calling_ae=SOURCE_NAME, study_uid=study, series_uid=series,
                                   sop_instance_uid=sop, sop_class_uid=sop_class)
        return (sop_class, sop)

    def _quarantine(self, tmp: Path, reason: str, sop_class: str, sop: str, log_reason: str | None = None) -> tuple:
        try:
            kept = self.spool.quarantine(tmp, reason)
            self.store.record_quarantine(str(kept), reason, sop or None, SOURCE_NAME)
        except OSError as exc:
            log.error("STOW-RS: cannot quarantine a refused instance: %s", exc)
            tmp.unlink(missing_ok=True)
            return (sop_class, sop, OUT_OF_RESOURCES)
        log.warning("STOW-RS: quarantined instance %s: %s", sop or "(no UID)", log_reason or reason)
        audit_log(self.cfg).record("instance-quarantined", "minor-failure", calling_ae=SOURCE_NAME,
                                   sop_instance_uid=sop or None, status=f"0x{CANNOT_UNDERSTAND:04X}")
        return (sop_class, sop, CANNOT_UNDERSTAND)


def _parts(body: mmap.mmap, content_type: str):
    """The content of each part of a multipart body held in ``body``, one part in memory at a time."""
    _, params = multipart.content_type_params(content_type)
    delimiter = b"--" + params["boundary"].encode()
    pos = body.find(delimiter)
    while pos >= 0:
        start = pos + len(delimiter)
        if body[start:start + 2] == b"--":
            return
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            return
        nxt = body.find(b"\r\n" + delimiter, head_end + 4)
        end = nxt if nxt >= 0 else len(body)
        head = bytes(body[start:head_end]).decode("latin-1").lower()
        if "content-type" not in head or multipart.DICOM_MEDIA in head:
            yield body[head_end + 4:end]
        pos = nxt + 2 if nxt >= 0 else -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def stow_routes(cfg: Any, store: Store, spool: Spool, intake: Any, *,
                authorize: Callable[[Request], bool | Response | Awaitable[bool | Response]],
                max_request_bytes: int = 1 << 30, prefix: str = "/dicomweb") -> list[Route]:
    """The STOW-RS routes (``POST {prefix}/studies`` and ``POST {prefix}/studies/{study}``).

    ``authorize(request)``: whether the request carries a valid token (the HTTP side's check), or the refusal to
    send; required, so the routes are never mounted open. ``intake``: :class:`node.flow.intake.Intake` (record + arm).
    """
    receiver = StowReceiver(cfg, store, spool, intake)

    async def post(request: Request) -> Response:
        allowed = authorize(request)
        if not isinstance(allowed, (bool, Response)):
            allowed = await allowed
        if isinstance(allowed, Response):  # the HTTP side's own refusal (401, 403, 503)
            return allowed
        if not allowed:
            return JSONResponse({"error": "a valid token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        content_type = request.headers.get("content-type", "")
        media, params = multipart.content_type_params(content_type)
        if media != "multipart/related" or params.get("type", multipart.DICOM_MEDIA).lower() != multipart.DICOM_MEDIA:
            return JSONResponse({"error": 'expected multipart/related; type="application/dicom"'}, status_code=415)
        if not params.get("boundary"):
            return JSONResponse({"error": "the multipart body has no boundary"}, status_code=400)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_request_bytes:
            return JSONResponse({"error": f"request larger than {max_request_bytes} bytes"}, status_code=413)
        body_path = spool.tmp / f"stow-body-{uuid.uuid4().hex}"
        try:
            size = 0
            fd = os.open(body_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_request_bytes:
                        return JSONResponse({"error": f"request larger than {max_request_bytes} bytes"},
                                            status_code=413)
                    await run_in_threadpool(_write_all, fd, chunk)
            finally:
                os.close(fd)
            if size == 0:
                return JSONResponse({"error": "empty body"}, status_code=400)
            answer = await run_in_threadpool(receiver.store_body, body_path, content_type,
                                             request.path_params.get("study"))
        finally:
            body_path.unlink(missing_ok=True)
        if not answer.stored and not answer.failed:
            return JSONResponse({"error": "no application/dicom part in the body"}, status_code=400)
        return answer.response()

    return [Route(f"{prefix}/studies", post, methods=["POST"]),
            Route(f"{prefix}/studies/{{study}}", post, methods=["POST"])]
