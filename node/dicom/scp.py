"""Receive: the Storage SCP that takes studies from modalities and PACS routing rules.

Each C-STORE is streamed to a file by pynetdicom (``STORE_RECV_CHUNKED_DATASET``), never decoded in memory.
Before the node answers 0x0000 the file is fsynced, renamed atomically into the spool, the directory is
fsynced and the database row is committed: a success the node sends is a promise it can keep after a crash.
"""

from __future__ import annotations

import logging
import tempfile
from io import BytesIO
import threading
import time
from pathlib import Path
from typing import Protocol, Sequence

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError

from node.ops import metrics
from node.ops.audit import audit_log
from node.dicom.commitment import CommitmentReport, add_report_context, report_handler
from node.dicom.notices import NoticeHandlers, add_contexts
from node.store.commit import GroupCommitter
from node.config import NodeConfig
from node.dicom.pynetdicom_patches import (NodeAssociationServer, SharedPortAssociationServer, configure_pynetdicom,
                                           received_file, track_server)
from node.dicom.receive_guard import GuardedTempFile, write_failed
from node.dicom.spare_files import SpareFiles
from node.dicom.access import ScpSecurity
from node.store.spool import DirSyncer, Spool, SpoolFullError, is_valid_uid, move_durably
from node.store.state import InstanceRecord, Store
from node.dicom.tls import start_tls_listener

log = logging.getLogger(__name__)

# C-STORE status codes (PS3.4 Annex B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_MISMATCH = 0xA900



def read_header(path: Path, received: GuardedTempFile | None = None) -> pydicom.Dataset:
    """The received file's header (up to the pixel data), parsed from the bytes in memory when they hold it all.

    The file is read again only when the kept head ends before the pixel data does begin (a header longer than
    :data:`node.dicom.receive_guard.HEAD_BYTES`) or cannot be parsed; then the file's own parse (and its error,
    if any) decides, exactly as before.
    """
    if received is not None and not received.failed and received.head:
        head = received.head
        fp = BytesIO(head)
        try:
            header = pydicom.dcmread(fp, stop_before_pixels=True)
            # stopped before the pixel data inside the head, or the head is the whole file
            if received.complete_head or fp.tell() < len(head):
                return header
        except Exception:  # noqa: BLE001 - the file's parse below decides
            pass
    return pydicom.dcmread(path, stop_before_pixels=True)


class StudyIntake(Protocol):
    """Where received instances go after the spool: :class:`node.flow.intake.Intake` (the quiet timers)."""

    def record(self, records: Sequence[InstanceRecord]) -> list[tuple[str, float]]:
        """Record the instances in one transaction; (study, due time) of the checks to arm."""

    def arm(self, study_uid: str, due_at: float) -> None:
        """Check the study at ``due_at``."""


class StorageSCP:
    """The node's Storage SCP: C-ECHO and C-STORE of every storage SOP class into the durable spool."""

    def __init__(self, cfg: NodeConfig, store: Store, spool: Spool, intake: StudyIntake) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.intake = intake
        self.ae = self._make_ae()
        self._server: NodeAssociationServer | None = None
        self.security = ScpSecurity(cfg, audit_log(cfg))
        node = cfg.node  # MPPS / IAN SCPs (node/dicom/notices.py): bound only when asked for
        self.notices = (NoticeHandlers(store, intake, audit_log(cfg), mpps=node.accept_mpps, ian=node.accept_ian)
                        if node.accept_mpps or node.accept_ian else None)
        self._tls_server: NodeAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.received = 0
        self._committer = GroupCommitter(self._commit_batch)
        self._dir_syncer = DirSyncer()  # concurrent renames into one series folder share its fsync
        self._spares: SpareFiles | None = None  # receive files made ahead (node.dicom.spare_files)
        self.serve_tls = True  # receiver processes other than the main one leave the TLS port to it

    def _commit_batch(self, records: Sequence[InstanceRecord]) -> list[list[tuple[str, float]]]:
        """One transaction for a batch of received instances; per record, the checks it must schedule."""
        due = dict(self.intake.record(records))
        return [[(rec.study_uid, due.pop(rec.study_uid))] if rec.study_uid in due else [] for rec in records]

    def _make_ae(self) -> AE:
        node = self.cfg.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu_size
        ae.network_timeout = node.network_timeout_seconds
        ae.dimse_timeout = node.network_timeout_seconds
        ae.acse_timeout = 30
        if node.allowed_calling_ae_titles:
            ae.require_calling_aet = list(node.allowed_calling_ae_titles)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        add_report_context(ae)  # Storage Commitment reports of destinations come back here
        add_contexts(ae, node.accept_mpps, node.accept_ian)
        return ae

    def _commitment_report(self, report: CommitmentReport) -> None:
        done, again = self.store.record_commitment(report.transaction_uid, report.committed, report.failed)
        log.info("storage commitment %s: %d result(s) committed, %d to send again", report.transaction_uid,
                 done, again)

    # Handlers ------------------------------------------------------------------------------------------
    def handle_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: make the received file durable, then acknowledge it."""
        status = self._store(event)
        metrics.cstore_status(status)
        return status

    def _store(self, event: evt.Event) -> int:
        tmp = Path(event.dataset_path)
        received = received_file(event)  # the open file pynetdicom streamed the data set to (None: not ours)
        calling_ae = event.assoc.requestor.ae_title.strip()
        if write_failed(tmp):
            tmp.unlink(missing_ok=True)
            return STATUS_OUT_OF_RESOURCES
        try:
            if received is None:
                tmp.stat()
            # the received file is already on this file system (and counted): only the floor matters now
            self.spool.check_space(0)
        except (SpoolFullError, OSError) as exc:
            log.error("spool full: refusing instance (0xA700): %s", exc)
            return STATUS_OUT_OF_RESOURCES
        try:
            header = read_header(tmp, received)
            study_uid = str(header.get("StudyInstanceUID", ""))
            series_uid = str(header.get("SeriesInstanceUID", ""))
            sop_uid = str(header.get("SOPInstanceUID", ""))
            sop_class = str(header.get("SOPClassUID", ""))
        except Exception as exc:  # pydicom raises many kinds on broken data; none of them may stop the SCP
            # pydicom's messages may quote element values (a birth date, a name): they go to the quarantine
            # record on disk only; the log gets the exception type.
            return self._quarantine(tmp, f"cannot parse the data set: {type(exc).__name__}: {exc}", None, calling_ae,
                                    log_reason=f"cannot parse the data set ({type(exc).__name__})", code="unparseable")
        command_uid = str(event.request.AffectedSOPInstanceUID)
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                          ("SOPInstanceUID", sop_uid)):
            if not is_valid_uid(uid):
                return self._quarantine(tmp, f"{name} is missing or not a valid UID", command_uid, calling_ae, code="invalid-uid")
        if sop_uid != command_uid:
            return self._quarantine(
                tmp, "SOPInstanceUID in the data set differs from the C-STORE request's AffectedSOPInstanceUID",
                command_uid, calling_ae, status=STATUS_MISMATCH, code="uid-mismatch")
        dst = self.spool.instance_path(study_uid, series_uid, sop_uid)
        replaces = dst.exists()  # a resend of an instance already acknowledged
        try:
            if received is not None:
                received.sync()  # the descriptor pynetdicom wrote through; fsync releases the GIL
            move_durably(tmp, dst, src_synced=received is not None, sync_dir=self._dir_syncer.sync)
            size = received.size if received is not None else dst.stat().st_size
            # Concurrent handlers (several associations) share one transaction: see node.commit.
            due = self._committer.submit(InstanceRecord(
                sop_instance_uid=sop_uid, study_uid=study_uid, series_uid=series_uid, sop_class_uid=sop_class,
                transfer_syntax_uid=str(event.context.transfer_syntax), path=str(dst), size_bytes=size,
                calling_ae=calling_ae))
        except (OSError, SQLAlchemyError) as exc:
            # ENOSPC on the rename, or SQLite's "database or disk is full" on the commit: nothing was
            # recorded, so a new file must not stay in the spool unknown to the database.
            log.error("cannot store instance %s durably (0xA700): %s", sop_uid, type(exc).__name__)
            if not replaces:
                dst.unlink(missing_ok=True)
            return STATUS_OUT_OF_RESOURCES
        for study, due_at in due:
            self.intake.arm(study, due_at)
        self.received += 1
        metrics.instance_stored(calling_ae, sop_class, size)
        self.security.instance_received(event, study_uid, series_uid, sop_uid, sop_class)
        log.debug("stored %s (study %s) from %s", sop_uid, study_uid, calling_ae)
        return STATUS_SUCCESS

    def _quarantine(self, tmp: Path, reason: str, sop_uid: str | None, calling_ae: str,
                    status: int = STATUS_CANNOT_UNDERSTAND, log_reason: str | None = None,
                    code: str = "unparseable") -> int:
        try:
            kept = self.spool.quarantine(tmp, reason)
            self.store.record_quarantine(str(kept), reason, sop_uid, calling_ae)
        except OSError as exc:
            log.error("cannot quarantine a rejected instance: %s", exc)
            return STATUS_OUT_OF_RESOURCES
        log.warning("quarantined instance %s from %s: %s", sop_uid or "(no UID)", calling_ae, log_reason or reason)
        self.security.instance_quarantined(calling_ae, sop_uid, status)
        metrics.quarantined(code)
        return status

    def handle_association(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        log.info("association from %s (%s:%s)", req.ae_title.strip(), req.address, req.port)

    # Lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen on the configured address in a background thread."""
        configure_pynetdicom()
        tempfile.tempdir = str(self.spool.tmp)  # chunked receive files on the spool's filesystem
        self._spares = SpareFiles(self.spool.tmp, self.cfg.node.instance_id).start()
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_ACCEPTED, self.handle_association),
                    (evt.EVT_N_EVENT_REPORT, report_handler(self._commitment_report)),
                    *self.security.handlers(), *(self.notices.handlers() if self.notices else [])]
        node = self.cfg.node
        server_class = SharedPortAssociationServer if node.receivers > 1 else NodeAssociationServer
        server = self.ae.make_server((node.host, node.port), evt_handlers=handlers, server_class=server_class)
        self._server = server  # type: ignore[assignment]
        track_server(self.ae, server)  # so AE.shutdown() finds it
        self._thread = threading.Thread(target=server.serve_forever, name="storage-scp", daemon=True)
        self._thread.start()
        log.info("Storage SCP %s listening on %s:%s", node.ae_title, node.host, server.server_address[1])
        if node.tls is not None and self.serve_tls:
            self._tls_server = start_tls_listener(self.ae, node.host, node.tls, handlers, NodeAssociationServer,
                                                  self.security.tls_failure)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        return None if self._tls_server is None else int(self._tls_server.server_address[1])

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting associations, let those in progress finish (up to ``drain_seconds``), then abort."""
        if self._server is None:
            return
        server = self._server
        server.shutdown()
        if self._tls_server is not None:
            self._tls_server.shutdown()
        deadline = time.monotonic() + drain_seconds
        servers = [s for s in (server, self._tls_server) if s is not None]
        # Only established associations are drained: a TCP connection that never asked for one (a health
        # check, a port scan) would otherwise hold the shutdown for the whole ACSE timeout (the acceptor
        # thread waits in a queue that abort() does not wake); its daemon thread ends with the process.
        while (any(a.is_established for s in servers for a in s.active_associations)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        for assoc in [a for s in servers for a in s.active_associations]:
            assoc.abort()
        self._tls_server = None
        self._server = None
        if self._spares is not None:
            self._spares.stop()
            self._spares = None
