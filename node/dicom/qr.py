"""Query/retrieve as an SCU: C-FIND, C-MOVE and C-GET on one association, under one deadline.

A :class:`QRSession` opens one association with a PACS (study root), answers C-FIND queries and retrieves single
instances by C-MOVE (to an AE title the PACS knows, usually this node's own SCP) or by C-GET (the C-STORE
sub-operations arrive on the same association: :class:`SpoolingStoreHandler` writes them into the spool).

Everything runs against one :class:`Deadline`: every timeout of the association is the time left, and a watchdog
aborts the association when the deadline passes, so a PACS that accepts a connection and never answers costs at
most the deadline. :class:`QueryTimeout` says the deadline passed; :class:`QueryError` that the PACS refused or
failed a request (its message has no PHI).
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Literal, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.dicom.scu import set_nodelay
from node.store.spool import Spool, is_valid_uid, move_durably
from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)

SUCCESS, WARNING = 0x0000, 0xB000
PENDING = (0xFF00, 0xFF01)

#: Projection radiography image classes (C-GET storage contexts for a chest X-ray).
XRAY_IMAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,  # digitised films and exports from other archives are often stored as SC
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
#: Structured report classes that carry a report's text.
SR_CLASSES = (BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage)
#: One presentation context per compressed transfer syntax: the acceptor picks ONE syntax per context, and
#: Orthanc picks an uncompressed one from a mixed list, decompressing the image before it sends it. With a context
#: per syntax the image arrives as stored, pixel for pixel what a C-MOVE brings.
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
COMPRESSED = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
              JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]

RetrieveMethod = Literal["c-move", "c-get"]


class QueryTimeout(Exception):
    """The deadline passed."""


class QueryError(Exception):
    """The PACS refused or failed a request; the message has no PHI."""


@dataclass
class Deadline:
    """A budget of ``seconds`` from ``start`` (monotonic clock)."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left; :class:`QueryTimeout` when none."""
        left = self.start + self.seconds - time.monotonic()
        if left <= 0:
            raise QueryTimeout()
        return left


def text_of(ds: Dataset | None, keyword: str) -> str:
    """The value of ``keyword`` in ``ds`` as stripped text ('' when absent; multiple values joined with '\\')."""
    if ds is None:
        return ""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


@dataclass(frozen=True)
class Peer:
    """The PACS queried: its address, AE title and the name it has in the configuration (for messages)."""

    name: str
    host: str
    port: int
    ae_title: str


def received_file(event: evt.Event) -> Path | None:
    """The file pynetdicom streamed a C-STORE's data set into (``STORE_RECV_CHUNKED_DATASET`` on, as ``serve``
    sets it); None when the data set was received in memory instead (the setting off: pynetdicom's
    ``dataset_path`` is then None, or raises AttributeError in older releases)."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path is not None else None


class SpoolingStoreHandler:
    """EVT_C_STORE of C-GET sub-operations: each instance goes durably into the spool and the database."""

    def __init__(self, spool: Spool, store: Store, calling_ae: str, quiet_seconds: float, is_prior: bool) -> None:
        self.spool = spool
        self.store = store
        self.calling_ae = calling_ae
        self.quiet_seconds = quiet_seconds
        self.is_prior = is_prior
        self._noun = "prior" if is_prior else "instance"

    def __call__(self, event: evt.Event) -> int:
        """Store one received instance; returns the C-STORE status (0xA700 when it cannot be written)."""
        try:
            tmp = self.spool.tmp / f"get-{uuid.uuid4().hex}.dcm"
            src = received_file(event)
            if src is not None:
                shutil.copyfile(src, tmp)  # the receive file may live on another filesystem than the spool
            else:  # chunked receive off (only `serve` turns it on): the bytes as the peer sent them
                tmp.write_bytes(event.encoded_dataset())
            header = pydicom.dcmread(tmp, stop_before_pixels=True)
            study, series, sop = (text_of(header, k) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                "SOPInstanceUID"))
            if not all(is_valid_uid(u) for u in (study, series, sop)):
                tmp.unlink(missing_ok=True)
                return 0xC000
            dst = self.spool.instance_path(study, series, sop)
            move_durably(tmp, dst)
            self.store.record_instances([InstanceRecord(
                sop_instance_uid=sop, study_uid=study, series_uid=series, sop_class_uid=text_of(header, "SOPClassUID"),
                transfer_syntax_uid=str(event.context.transfer_syntax), path=str(dst), size_bytes=dst.stat().st_size,
                calling_ae=self.calling_ae, is_prior=self.is_prior)], self.quiet_seconds)
            return SUCCESS
        except OSError as exc:
            log.error("cannot store a retrieved %s: %s", self._noun, exc)
            return 0xA700
        except Exception as exc:  # noqa: BLE001
            log.error("cannot store a retrieved %s: %s", self._noun, type(exc).__name__)
            return 0xC000


class QRSession:
    """One association with the PACS: C-FIND, then C-MOVE or C-GET, under the deadline (a context manager)."""

    def __init__(self, peer: Peer, deadline: Deadline, *, ae_title: str, method: RetrieveMethod,
                 move_destination: str, on_store: Callable[[evt.Event], int] | None = None,
                 image_classes: Sequence[str] = XRAY_IMAGE_CLASSES, sr_classes: Sequence[str] = SR_CLASSES) -> None:
        self.peer = peer
        self.deadline = deadline
        self.ae_title = ae_title
        self.method = method
        self.move_destination = move_destination
        self.on_store = on_store
        self.image_classes = tuple(image_classes)
        self.sr_classes = tuple(sr_classes)
        self.assoc: Any = None
        self._watchdog: threading.Timer | None = None

    def __enter__(self) -> "QRSession":
        left = self.deadline.left()
        ae = AE(ae_title=self.ae_title)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, timeout, left)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        handlers: list[tuple[Any, Callable[..., Any]]] = []
        roles = []
        if self.method == "c-get":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for uid in self.image_classes:
                ae.add_requested_context(uid, UNCOMPRESSED)
                for syntax in COMPRESSED:
                    ae.add_requested_context(uid, [syntax])
                roles.append(build_role(uid, scp_role=True))
            for uid in self.sr_classes:
                ae.add_requested_context(uid, [*UNCOMPRESSED, DeflatedExplicitVRLittleEndian])
                roles.append(build_role(uid, scp_role=True))
            if self.on_store is not None:
                handlers.append((evt.EVT_C_STORE, self.on_store))
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        started = time.monotonic()
        try:
            assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title, ext_neg=roles or None,
                                 evt_handlers=handlers or None)
        except (OSError, socket.error) as exc:
            raise QueryError(f"cannot connect to the PACS {self.peer.name}: {type(exc).__name__}") from None
        self.assoc = assoc
        self._watchdog = threading.Timer(max(0.0, self.deadline.start + self.deadline.seconds - time.monotonic()),
                                         self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        if not assoc.is_established:
            self.deadline.left()
            if time.monotonic() - started >= 0.9 * left:
                raise QueryTimeout()  # a silent PACS: the ACSE timeout used up the time
            if assoc.is_rejected:
                raise QueryError(f"the PACS {self.peer.name} rejected the association")
            raise QueryError(f"the PACS {self.peer.name} did not accept an association")
        set_nodelay(assoc)
        return self

    def _expire(self) -> None:
        if self.assoc is not None and self.assoc.is_alive():
            self.assoc.abort()

    def __exit__(self, *exc: Any) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()

    def _responses(self, responses: Any, what: str) -> Generator[tuple[int, Dataset | None], None, int]:
        """Yield (status, identifier) of the pending answers; the final status is returned via StopIteration."""
        for status, identifier in responses:
            self.deadline.left()
            if not status or "Status" not in status:
                self.deadline.left()
                raise QueryError(f"the PACS {self.peer.name} stopped answering the {what} "
                                 "(association aborted or DIMSE timeout)")
            code = int(status.Status)
            if code in PENDING:
                yield code, identifier
                continue
            return code
        raise QueryError(f"the PACS {self.peer.name} sent no final {what} status")

    def find(self, query: Dataset) -> list[Dataset]:
        """The matches of one C-FIND (study root); :class:`QueryError` on a failure status."""
        self.deadline.left()
        out: list[Dataset] = []
        gen = self._responses(self.assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind),
                              f"C-FIND ({query.QueryRetrieveLevel})")
        while True:
            try:
                _, identifier = next(gen)
            except StopIteration as stop:
                code = stop.value
                break
            if identifier is not None:
                out.append(identifier)
        if code != SUCCESS:
            raise QueryError(f"the PACS {self.peer.name} failed a {query.QueryRetrieveLevel} C-FIND "
                             f"(0x{code:04X})")
        return out

    def retrieve(self, identifier: Dataset) -> int:
        """One C-MOVE (to ``move_destination``) or C-GET of ``identifier``; returns the final status."""
        self.deadline.left()
        if self.method == "c-get":
            responses = self.assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        else:
            responses = self.assoc.send_c_move(identifier, self.move_destination,
                                               StudyRootQueryRetrieveInformationModelMove)
        gen = self._responses(responses, self.method.upper())
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return int(stop.value)
