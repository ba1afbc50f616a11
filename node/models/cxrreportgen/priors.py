"""Priors: the patient's previous chest X-ray and its report, fetched from a PACS for CXRReportGen.

One lookup (:meth:`PriorFetcher.fetch`) for the frontal image of a complete chest X-ray study:

1. C-FIND, study level (study root): same PatientID and IssuerOfPatientID, StudyDate in
   ``[current date - lookback_days, current date]``, ModalitiesInStudy among ``priors.modalities``. The most recent
   study strictly before the current one (StudyDate + StudyTime; never the current study) that holds a frontal
   image is the prior (at most :data:`MAX_STUDIES` are tried, most recent first).
2. Its UID is committed to the ``priors`` table before anything is retrieved: from then on, instances of that
   study arriving through the node's SCP (C-MOVE) or on the lookup's association (C-GET) are recorded as priors
   (:meth:`node.state.Store.record_instances`): their study is 'done' at once, triggers no rule, is never sent
   anywhere, and retention purges it like any finished study.
3. C-FIND series and instance level: the image series of those modalities and the SR series. The frontal image
   is chosen from the instance-level answers with the same rules as the current study
   (:func:`converters.cxr_select.select_views`); when the answers do not say, up to :data:`MAX_UNKNOWN_IMAGES` images
   are retrieved and chosen from their full headers.
4. C-MOVE to the node's own AE title, or C-GET, at IMAGE level: the frontal and the SRs of the prior study
   (at most :data:`MAX_REPORTS`). An instance the node still holds is not retrieved again.
5. The report: the text content (:func:`converters.sr_text.report_text`) of the best SR: a radiologist's
   (any SR not written by this node) final one (VERIFIED and COMPLETE) first, then a radiologist's other SR,
   then this node's own earlier SR; newest first within each. Without an SR: ``report_text_dir/<study UID>.txt``,
   then the first non-empty ``report_text_attributes`` of the prior image.

The whole lookup runs against one deadline (``priors.timeout_seconds``): every association's ACSE/DIMSE/network
timeouts are the time left, and a watchdog aborts the association when the deadline passes, so a PACS that
accepts a connection and never answers costs at most the timeout. No prior, a timeout or an error gives a
:class:`PriorResult` saying so (recorded in the ``priors`` table, shown by ``dicom-node status``); the study goes
on without a prior. Nothing identifying (patient ID, name, dates) is logged at INFO or above.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

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
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    BasicTextSRStorage,
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

from converters.sr_text import is_text_sr, report_text
from dicom_out.algorithm import NODE_MANUFACTURER, NODE_MODEL_NAME

from node.config import DestinationSection, NodeConfig, PriorsSection
from node.dicom.scp import configure_pynetdicom
from node.dicom.scu import set_nodelay
from node.store.spool import Spool, is_valid_uid, move_durably
from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)

MAX_STUDIES = 3  # prior studies tried, most recent first, until one holds a frontal image
MAX_REPORTS = 4  # SR instances of the prior study retrieved at most
MAX_UNKNOWN_IMAGES = 4  # images retrieved to choose the frontal when the C-FIND answers do not tell
_SUCCESS, _WARNING = 0x0000, 0xB000
_PENDING = (0xFF00, 0xFF01)

#: Storage classes accepted on a C-GET association (a prior chest X-ray and its reports).
GET_IMAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,  # digitised films and exports from other archives are often stored as SC
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
GET_SR_CLASSES = (BasicTextSRStorage, EnhancedSRStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage)
#: One presentation context per compressed transfer syntax: the acceptor picks ONE syntax per context, and
#: Orthanc picks an uncompressed one from a mixed list, decompressing the image before it sends it. With a context
#: per syntax the image arrives as stored, pixel for pixel what a C-MOVE brings.
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_COMPRESSED = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
               JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]

#: Instance-level keys asked for, so that the frontal can be chosen without retrieving every image.
_IMAGE_KEYS = ("SOPClassUID", "InstanceNumber", "ViewPosition", "ImageType", "Rows", "Columns",
               "PhotometricInterpretation", "PatientOrientation", "ImageComments", "AcquisitionDate",
               "AcquisitionTime", "ContentDate", "ContentTime")

PriorState = Literal["found", "none", "timeout", "error"]


class PriorTimeout(Exception):
    """The lookup's deadline passed."""


class PriorError(Exception):
    """The PACS refused or failed a request; the message has no PHI."""


@dataclass(frozen=True)
class PriorResult:
    """What one lookup found; ``outcome`` is a short sentence without PHI (for status and the job's outcome)."""

    state: PriorState
    outcome: str
    seconds: float
    study_uid: str | None = None
    study_date: str | None = None  # YYYYMMDD of the prior study
    image_path: Path | None = None
    report: str | None = None
    report_source: str | None = None

    @property
    def comparison(self) -> str | None:
        """The comparison text for the model: which prior the report is compared with."""
        if self.state != "found":
            return None
        try:
            day = dt.datetime.strptime(self.study_date or "", "%Y%m%d").date().isoformat()
        except ValueError:
            return "Prior chest radiograph."
        return f"Chest radiograph of {day}."


@dataclass
class _Deadline:
    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left; :class:`PriorTimeout` when none."""
        left = self.start + self.seconds - time.monotonic()
        if left <= 0:
            raise PriorTimeout()
        return left


@dataclass
class _Candidate:
    study_uid: str
    date: str
    time: str


def _text(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _study_date(ds: Dataset) -> dt.date:
    try:
        return dt.datetime.strptime(_text(ds, "StudyDate")[:8], "%Y%m%d").date()
    except ValueError:
        return dt.date.today()


class PriorFetcher:
    """Finds and retrieves priors for one node configuration (see the module docstring)."""

    def __init__(self, cfg: NodeConfig, store: Store, spool: Spool) -> None:
        if cfg.priors is None:
            raise ValueError("the configuration has no priors block")
        self.cfg = cfg
        self.priors: PriorsSection = cfg.priors
        self.dest: DestinationSection = cfg.destinations[cfg.priors.query]
        self.store = store
        self.spool = spool
        configure_pynetdicom()  # identifiers carry PHI: pynetdicom must not log them

    # --- the lookup -------------------------------------------------------------------------------------
    def fetch(self, current: Dataset) -> PriorResult:
        """The prior of the study ``current`` (a header of its frontal image) belongs to; never raises."""
        study_uid = _text(current, "StudyInstanceUID")
        lookup_id = self.store.start_prior_lookup(study_uid)
        deadline = _Deadline(self.priors.timeout_seconds)
        try:
            result = self._fetch(current, lookup_id, deadline)
        except PriorTimeout:
            result = PriorResult("timeout", f"no prior: the PACS {self.priors.query} did not answer within "
                                            f"{self.priors.timeout_seconds:g} s", 0.0)
        except PriorError as exc:
            result = PriorResult("error", f"no prior: {exc}", 0.0)
        except Exception as exc:  # a prior is optional: nothing here may fail the study
            # pydicom's messages may quote element values (PHI): the type at ERROR, the traceback at DEBUG only
            log.error("study %s: prior lookup failed: %s", study_uid, type(exc).__name__)
            log.debug("prior lookup traceback", exc_info=True)
            result = PriorResult("error", f"no prior: {type(exc).__name__} during the lookup", 0.0)
        seconds = time.monotonic() - deadline.start
        result = dataclasses.replace(result, seconds=seconds)
        self.store.finish_prior_lookup(lookup_id, result.state, result.outcome, seconds)
        log.info("study %s: prior lookup %s in %.2f s: %s", study_uid, result.state, seconds, result.outcome)
        return result

    def _fetch(self, current: Dataset, lookup_id: int, deadline: _Deadline) -> PriorResult:
        if not _text(current, "PatientID"):
            return PriorResult("none", "no prior: the study has no PatientID", 0.0)
        with _Session(self, deadline) as session:
            candidates = self._find_prior_studies(session, current)
            if not candidates:
                return PriorResult("none", f"no prior {'/'.join(self.priors.modalities)} study in the "
                                           f"{self.priors.lookback_days} days before this one", 0.0)
            skipped = []
            for prior in candidates[:MAX_STUDIES]:  # the most recent study that holds a frontal image
                self.store.expect_prior(lookup_id, prior.study_uid)
                images, reports = self._find_instances(session, prior.study_uid)
                frontal = self._frontal(session, images) if images else None
                if frontal is not None:
                    break
                skipped.append(prior.study_uid)
            else:
                return PriorResult("none", f"no prior: no frontal {'/'.join(self.priors.modalities)} image in "
                                           f"the latest {len(skipped)} prior studies ({', '.join(skipped)})", 0.0)
            sr_paths = [p for p in (self._retrieve(session, ds, required=False) for ds in reports) if p]
        report, source = self._report(prior.study_uid, frontal, sr_paths)
        sent = f"report from {source}" if report else "no report"
        return PriorResult("found", f"prior study {prior.study_uid} ({sent})", 0.0, study_uid=prior.study_uid,
                           study_date=prior.date, image_path=frontal, report=report, report_source=source)

    # --- queries ----------------------------------------------------------------------------------------
    def _find_prior_studies(self, session: "_Session", current: Dataset) -> list[_Candidate]:
        """This patient's earlier studies of the wanted modalities in the look-back window, most recent first."""
        day = _study_date(current)
        start = day - dt.timedelta(days=self.priors.lookback_days)
        issuer = _text(current, "IssuerOfPatientID")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = _text(current, "PatientID")
        query.IssuerOfPatientID = issuer
        query.StudyDate = f"{start:%Y%m%d}-{day:%Y%m%d}"
        query.StudyTime = ""
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = list(self.priors.modalities)
        current_uid = _text(current, "StudyInstanceUID")
        current_key = (f"{day:%Y%m%d}", _text(current, "StudyTime") or "999999")
        wanted = {m.upper() for m in self.priors.modalities}
        found: list[_Candidate] = []
        for ds in session.find(query):
            uid = _text(ds, "StudyInstanceUID")
            date, tm = _text(ds, "StudyDate")[:8], _text(ds, "StudyTime")
            modalities = {m.upper() for m in _text(ds, "ModalitiesInStudy").split("\\") if m}
            if (not is_valid_uid(uid) or uid == current_uid or _text(ds, "PatientID") != query.PatientID
                    or _text(ds, "IssuerOfPatientID") != issuer or not date
                    or (modalities and not modalities & wanted) or (date, tm) >= current_key
                    or date < f"{start:%Y%m%d}"):
                continue  # a PACS that ignores a matching key must not hand us another patient's study
            found.append(_Candidate(uid, date, tm))
        return sorted(found, key=lambda c: (c.date, c.time), reverse=True)

    def _find_instances(self, session: "_Session", study_uid: str) -> tuple[list[Dataset], list[Dataset]]:
        """(image headers of the wanted modalities, SR headers) of the prior study, from C-FIND answers."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        for kw in ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "ProtocolName",
                   "BodyPartExamined"):
            setattr(query, kw, None)
        wanted = {m.upper() for m in self.priors.modalities}
        images: list[Dataset] = []
        reports: list[Dataset] = []
        for series in session.find(query):
            modality = _text(series, "Modality").upper()
            if modality not in wanted and modality != "SR":
                continue
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = study_uid
            q.SeriesInstanceUID = _text(series, "SeriesInstanceUID")
            q.SOPInstanceUID = ""
            for kw in (_IMAGE_KEYS if modality != "SR" else ("SOPClassUID", "InstanceNumber", "ContentDate",
                                                                "ContentTime")):
                setattr(q, kw, None)
            for inst in session.find(q):
                if not is_valid_uid(_text(inst, "SOPInstanceUID")):
                    continue
                for kw in ("SeriesDescription", "ProtocolName", "BodyPartExamined"):  # for the view rules
                    if not _text(inst, kw) and _text(series, kw):
                        setattr(inst, kw, series[kw].value)
                inst.StudyInstanceUID = study_uid
                inst.SeriesInstanceUID = q.SeriesInstanceUID
                inst.Modality = modality
                (reports if modality == "SR" else images).append(inst)
        reports.sort(key=lambda d: (_text(d, "ContentDate"), _text(d, "ContentTime")), reverse=True)
        return images, reports[:MAX_REPORTS]

    def _frontal(self, session: "_Session", images: list[Dataset]) -> Path | None:
        """Choose the frontal from the C-FIND answers, retrieve it; else retrieve a few and choose from files."""
        from converters.cxr_select import read_header, select_views

        chosen = select_views([(Path(_text(ds, "SOPInstanceUID")), ds) for ds in images])
        if chosen.frontal is not None:
            uid = str(chosen.frontal)
            ds = next(d for d in images if _text(d, "SOPInstanceUID") == uid)
            return self._retrieve(session, ds, required=True)
        paths = [p for p in (self._retrieve(session, ds, required=False) for ds in images[:MAX_UNKNOWN_IMAGES]) if p]
        headers = []
        for p in paths:
            try:
                headers.append((p, read_header(p)[0]))
            except Exception:  # noqa: BLE001 - an unreadable prior is just not a candidate
                continue
        return select_views(headers).frontal

    # --- retrieve ---------------------------------------------------------------------------------------
    def _retrieve(self, session: "_Session", ds: Dataset, *, required: bool) -> Path | None:
        """The local file of one instance: already held, or retrieved now. ``required``: failure raises."""
        uid = _text(ds, "SOPInstanceUID")
        held = self.store.instance(uid)
        if held is not None and Path(held["path"]).exists():
            return Path(held["path"])
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = _text(ds, "StudyInstanceUID")
        ident.SeriesInstanceUID = _text(ds, "SeriesInstanceUID")
        ident.SOPInstanceUID = uid
        status = session.retrieve(ident)
        held = self.store.instance(uid)
        if held is not None and Path(held["path"]).exists():
            return Path(held["path"])
        if required:
            raise PriorError(f"the PACS {self.priors.query} answered the {self.priors.method.upper()} of the "
                             f"prior image with 0x{status:04X} and it did not arrive")
        return None

    # --- report -----------------------------------------------------------------------------------------
    def _report(self, study_uid: str, frontal: Path, sr_paths: list[Path]) -> tuple[str | None, str | None]:
        ranked = []
        for path in sr_paths:
            try:
                ds = pydicom.dcmread(path)
            except Exception:  # noqa: BLE001
                continue
            if not is_text_sr(ds):
                continue
            text = report_text(ds)
            if not text:
                continue
            own = _text(ds, "Manufacturer") == NODE_MANUFACTURER and _text(ds, "ManufacturerModelName") == NODE_MODEL_NAME
            final = _text(ds, "VerificationFlag") == "VERIFIED" and _text(ds, "CompletionFlag") == "COMPLETE"
            when = _text(ds, "ContentDate") + _text(ds, "ContentTime")
            source = ("this node's earlier SR" if own else
                      "a radiologist's final SR" if final else "a radiologist's SR (not final)")
            ranked.append(((not own, final, when), text, source))
        if ranked:
            _, text, source = max(ranked, key=lambda r: r[0])
            return text, source
        if self.priors.report_text_dir is not None:
            path = self.priors.report_text_dir / f"{study_uid}.txt"
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            if text:
                return text, "report_text_dir"
        if self.priors.report_text_attributes:
            header = pydicom.dcmread(frontal, stop_before_pixels=True)
            for kw in self.priors.report_text_attributes:
                text = _text(header, kw)
                if text:
                    return text, f"the prior image's {kw}"
        return None, None

    # --- C-GET sub-operations -----------------------------------------------------------------------------
    def store_retrieved(self, event: evt.Event) -> int:
        """EVT_C_STORE on a C-GET association: the instance goes into the spool as a prior."""
        try:
            try:
                src = Path(event.dataset_path)
                tmp = self.spool.tmp / f"get-{uuid.uuid4().hex}.dcm"
                shutil.copyfile(src, tmp)  # the receive file may live on another filesystem than the spool
            except AttributeError:  # chunked receive off: encode the dataset pynetdicom decoded
                tmp = self.spool.tmp / f"get-{uuid.uuid4().hex}.dcm"
                tmp.write_bytes(event.encoded_dataset())
            header = pydicom.dcmread(tmp, stop_before_pixels=True)
            study, series, sop = (_text(header, k) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                              "SOPInstanceUID"))
            if not all(is_valid_uid(u) for u in (study, series, sop)):
                tmp.unlink(missing_ok=True)
                return 0xC000
            dst = self.spool.instance_path(study, series, sop)
            move_durably(tmp, dst)
            self.store.record_instances([InstanceRecord(
                sop_instance_uid=sop, study_uid=study, series_uid=series, sop_class_uid=_text(header, "SOPClassUID"),
                transfer_syntax_uid=str(event.context.transfer_syntax), path=str(dst), size_bytes=dst.stat().st_size,
                calling_ae=self.dest.ae_title, is_prior=True)],
                quiet_seconds=0.0)  # a retrieved prior never waits for a quiet time: its study is 'done' at once
            return _SUCCESS
        except OSError as exc:
            log.error("cannot store a retrieved prior: %s", exc)
            return 0xA700
        except Exception as exc:  # noqa: BLE001
            log.error("cannot store a retrieved prior: %s", type(exc).__name__)
            return 0xC000


class _Session:
    """One association with the PACS for a lookup: C-FIND, then C-MOVE or C-GET, under the deadline."""

    def __init__(self, fetcher: PriorFetcher, deadline: _Deadline) -> None:
        self.fetcher = fetcher
        self.deadline = deadline
        self.method = fetcher.priors.method
        self.assoc: Any = None
        self._watchdog: threading.Timer | None = None

    def __enter__(self) -> "_Session":
        dest = self.fetcher.dest
        left = self.deadline.left()
        ae = AE(ae_title=self.fetcher.cfg.node.ae_title)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, timeout, left)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        handlers: list[tuple[Any, Callable[..., Any]]] = []
        roles = []
        if self.method == "c-get":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for uid in GET_IMAGE_CLASSES:
                ae.add_requested_context(uid, _UNCOMPRESSED)
                for syntax in _COMPRESSED:
                    ae.add_requested_context(uid, [syntax])
                roles.append(build_role(uid, scp_role=True))
            for uid in GET_SR_CLASSES:
                ae.add_requested_context(uid, [*_UNCOMPRESSED, DeflatedExplicitVRLittleEndian])
                roles.append(build_role(uid, scp_role=True))
            handlers.append((evt.EVT_C_STORE, self.fetcher.store_retrieved))
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        started = time.monotonic()
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, ext_neg=roles or None,
                                 evt_handlers=handlers or None)
        except (OSError, socket.error) as exc:
            raise PriorError(f"cannot connect to the PACS {self.fetcher.priors.query}: {type(exc).__name__}") from None
        self.assoc = assoc
        self._watchdog = threading.Timer(max(0.0, self.deadline.start + self.deadline.seconds - time.monotonic()),
                                         self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        if not assoc.is_established:
            self.deadline.left()
            if time.monotonic() - started >= 0.9 * left:
                raise PriorTimeout()  # a silent PACS: the ACSE timeout used up the time
            if assoc.is_rejected:
                raise PriorError(f"the PACS {self.fetcher.priors.query} rejected the association")
            raise PriorError(f"the PACS {self.fetcher.priors.query} did not accept an association")
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

    def _responses(self, responses, what: str):
        """Yield (status, identifier) of the pending answers; the final status is returned via StopIteration."""
        for status, identifier in responses:
            self.deadline.left()
            if not status or "Status" not in status:
                self.deadline.left()
                raise PriorError(f"the PACS {self.fetcher.priors.query} stopped answering the {what} "
                                 "(association aborted or DIMSE timeout)")
            code = int(status.Status)
            if code in _PENDING:
                yield code, identifier
                continue
            return code
        raise PriorError(f"the PACS {self.fetcher.priors.query} sent no final {what} status")

    def find(self, query: Dataset) -> list[Dataset]:
        """The matches of one C-FIND (study root); :class:`PriorError` on a failure status."""
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
        if code != _SUCCESS:
            raise PriorError(f"the PACS {self.fetcher.priors.query} failed a {query.QueryRetrieveLevel} C-FIND "
                             f"(0x{code:04X})")
        return out

    def retrieve(self, identifier: Dataset) -> int:
        """One C-MOVE (to this node's AE title) or C-GET at IMAGE level; returns the final status."""
        self.deadline.left()
        if self.method == "c-get":
            responses = self.assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        else:
            responses = self.assoc.send_c_move(identifier, self.fetcher.cfg.node.ae_title,
                                               StudyRootQueryRetrieveInformationModelMove)
        gen = self._responses(responses, self.method.upper())
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return int(stop.value)


# --- the pipeline's side ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PriorInputs:
    """What the CXRReportGen pipeline sends and writes for the prior (all empty when there is none)."""

    png: bytes | None = None
    report: str | None = None
    comparison: str | None = None
    evidence: tuple[Dataset, ...] = ()
    note: str = ""  # appended to the job's outcome


def prior_inputs(lookup: Callable[[Dataset], PriorResult] | None, frontal_path: Path,
                 max_side: int | None = None) -> PriorInputs:
    """Look up the prior of the study of ``frontal_path`` and convert it for the model; never raises."""
    if lookup is None:
        return PriorInputs()
    from converters.model_image import to_model_image

    current = pydicom.dcmread(frontal_path, stop_before_pixels=True)
    result = lookup(current)
    note = f"; {result.outcome} ({result.seconds:.2f} s)"
    if result.state != "found" or result.image_path is None:
        return PriorInputs(note=note)
    try:
        ds = pydicom.dcmread(result.image_path)
        png = to_model_image(ds, max_side=max_side).png
    except Exception as exc:  # noqa: BLE001 - an unusable prior is no prior
        log.warning("prior image %s cannot be converted: %s", result.study_uid, type(exc).__name__)
        return PriorInputs(note=f"; no prior: the prior image cannot be converted ({type(exc).__name__})")
    del ds.PixelData
    return PriorInputs(png=png, report=result.report, comparison=result.comparison, evidence=(ds,), note=note)
