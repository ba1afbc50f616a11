"""Priors: the patient's previous chest X-ray and its report, fetched from a PACS for CXRReportGen.

One lookup (:meth:`PriorFetcher.fetch`) for the frontal image of a complete chest X-ray study:

1. C-FIND, study level (study root): same PatientID and IssuerOfPatientID, StudyDate in
   ``[current date - lookback_days, current date]``, ModalitiesInStudy among ``priors.modalities``. The most recent
   study strictly before the current one (StudyDate + StudyTime; never the current study) that holds a frontal
   image is the prior (at most :data:`MAX_STUDIES` are tried, most recent first).
2. Its UID is committed to the ``priors`` table before anything is retrieved: from then on, instances of that
   study arriving through the node's SCP (C-MOVE) or on the lookup's association (C-GET) are recorded as priors
   (:meth:`node.store.state.Store.record_instances`): their study is 'done' at once, triggers no rule, is never sent
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

The query/retrieve plumbing is generic (:mod:`node.dicom.qr`); this module chooses what to ask for and what to
keep. The whole lookup runs against one deadline (``priors.timeout_seconds``): every association's ACSE/DIMSE/network
timeouts are the time left, and a watchdog aborts the association when the deadline passes, so a PACS that
accepts a connection and never answers costs at most the timeout. No prior, a timeout or an error gives a
:class:`PriorResult` saying so (recorded in the ``priors`` table, shown by ``dicom-node status``); the study goes
on without a prior. Nothing identifying (patient ID, name, dates) is logged at INFO or above.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import evt

from converters.scrub import without_burned_in
from converters.sr_text import is_text_sr, report_text
from dicom_out.algorithm import NODE_MANUFACTURER, NODE_MODEL_NAME

from node.audit.queries import record_query, record_retrieve
from node.config import DestinationSection, NodeConfig, PriorsSection
from node.dicom.pynetdicom_patches import configure_pynetdicom
from node.dicom.qr import (SR_CLASSES, XRAY_IMAGE_CLASSES, Deadline, Peer, QRSession, QueryError, QueryTimeout,
                           SpoolingStoreHandler, text_of)
from node.store.spool import Spool, is_valid_uid
from node.store.state import Store

log = logging.getLogger(__name__)

MAX_STUDIES = 3  # prior studies tried, most recent first, until one holds a frontal image
MAX_REPORTS = 4  # SR instances of the prior study retrieved at most
MAX_UNKNOWN_IMAGES = 4  # images retrieved to choose the frontal when the C-FIND answers do not tell

#: Storage classes accepted on a C-GET association (a prior chest X-ray and its reports).
GET_IMAGE_CLASSES = XRAY_IMAGE_CLASSES
GET_SR_CLASSES = SR_CLASSES

#: Instance-level keys asked for, so that the frontal can be chosen without retrieving every image.
_IMAGE_KEYS = ("SOPClassUID", "InstanceNumber", "ViewPosition", "ImageType", "Rows", "Columns",
               "PhotometricInterpretation", "PatientOrientation", "ImageComments", "AcquisitionDate",
               "AcquisitionTime", "ContentDate", "ContentTime")

PriorState = Literal["found", "none", "timeout", "error"]


PriorTimeout = QueryTimeout  # the lookup's deadline passed
PriorError = QueryError  # the PACS refused or failed a request; the message has no PHI
_text = text_of


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
class _Candidate:
    study_uid: str
    date: str
    time: str


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
        self._for_study: str | None = None
        self._retrieved: list[dict] = []
        configure_pynetdicom()  # identifiers carry PHI: pynetdicom must not log them

    # --- the lookup -------------------------------------------------------------------------------------
    def fetch(self, current: Dataset) -> PriorResult:
        """The prior of the study ``current`` (a header of its frontal image) belongs to; never raises."""
        study_uid = _text(current, "StudyInstanceUID")
        self._for_study, self._retrieved = study_uid, []  # for the audit events of the queries and retrieves
        lookup_id = self.store.start_prior_lookup(study_uid)
        deadline = Deadline(self.priors.timeout_seconds)
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
        record_retrieve(self.cfg, self.priors, self.dest, self._retrieved)  # C-GET, WADO-RS (C-MOVE: the SCP's)
        seconds = time.monotonic() - deadline.start
        result = dataclasses.replace(result, seconds=seconds)
        self.store.finish_prior_lookup(lookup_id, result.state, result.outcome, seconds)
        log.info("study %s: prior lookup %s in %.2f s: %s", study_uid, result.state, seconds, result.outcome)
        return result

    def _find(self, session: QRSession, query: Dataset) -> list[Dataset]:
        """One query of the lookup, and its audit event (an ATNA Query message: node/audit/queries.py)."""
        try:
            found = session.find(query)
        except Exception as exc:
            record_query(self.cfg, self.priors.query, self.dest, query, self._for_study, None, exc)
            raise
        record_query(self.cfg, self.priors.query, self.dest, query, self._for_study, len(found), None)
        return found

    def _fetch(self, current: Dataset, lookup_id: int, deadline: Deadline) -> PriorResult:
        if not _text(current, "PatientID"):
            return PriorResult("none", "no prior: the study has no PatientID", 0.0)
        with self._session(deadline) as session:
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

    def _session(self, deadline: Deadline) -> QRSession:
        """One association with the priors PACS; C-MOVE to this node's own AE title, or C-GET into the spool.

        A ``type: dicomweb`` destination: QIDO-RS and WADO-RS instead, behind the same interface."""
        if self.dest.type == "dicomweb":
            from node.dicomweb.session import DicomWebSession

            return DicomWebSession(self.priors.query, self.dest, deadline, self.spool, self.store)  # type: ignore[return-value]
        peer = Peer(self.priors.query, self.dest.host, self.dest.port, self.dest.ae_title)
        return QRSession(peer, deadline, ae_title=self.cfg.node.ae_title, method=self.priors.method,
                         move_destination=self.cfg.node.ae_title, on_store=self.store_retrieved,
                         image_classes=GET_IMAGE_CLASSES, sr_classes=GET_SR_CLASSES)

    # --- queries ----------------------------------------------------------------------------------------
    def _find_prior_studies(self, session: QRSession, current: Dataset) -> list[_Candidate]:
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
        for ds in self._find(session, query):
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

    def _find_instances(self, session: QRSession, study_uid: str) -> tuple[list[Dataset], list[Dataset]]:
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
        for series in self._find(session, query):
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
            for inst in self._find(session, q):
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

    def _frontal(self, session: QRSession, images: list[Dataset]) -> Path | None:
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
    def _retrieve(self, session: QRSession, ds: Dataset, *, required: bool) -> Path | None:
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
            self._retrieved.append(held)
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
        # a retrieved prior never waits for a quiet time: its study is 'done' at once (quiet_seconds 0)
        return SpoolingStoreHandler(self.spool, self.store, self.dest.ae_title, 0.0, is_prior=True)(event)


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
                 max_side: int | None = None, allow_burned_in: bool = False) -> PriorInputs:
    """Look up the prior of the study of ``frontal_path`` and convert it for the model; never raises.

    The prior goes through the same burned-in policy as the study's own images: marked
    BurnedInAnnotation=YES, it is not sent unless the rule says ``allow_burned_in`` (the job goes on without it).
    """
    if lookup is None:
        return PriorInputs()
    from converters.model_image import to_model_image

    current = pydicom.dcmread(frontal_path, stop_before_pixels=True)
    result = lookup(current)
    note = f"; {result.outcome} ({result.seconds:.2f} s)"
    if result.state != "found" or result.image_path is None:
        return PriorInputs(note=note)
    allowed, burned_note = without_burned_in([Path(result.image_path)], {"allow_burned_in": allow_burned_in})
    if not allowed:
        log.warning("prior image of study %s not sent: %s", result.study_uid, burned_note)
        return PriorInputs(note="; no prior sent: the prior image is marked BurnedInAnnotation=YES "
                                "(allow_burned_in is not set)")
    try:
        ds = pydicom.dcmread(result.image_path)
        png = to_model_image(ds, max_side=max_side).png
    except Exception as exc:  # noqa: BLE001 - an unusable prior is no prior
        log.warning("prior image %s cannot be converted: %s", result.study_uid, type(exc).__name__)
        return PriorInputs(note=f"; no prior: the prior image cannot be converted ({type(exc).__name__})")
    del ds.PixelData
    return PriorInputs(png=png, report=result.report, comparison=result.comparison, evidence=(ds,), note=note)
