"""A report: what one job result says, in terms both HL7 v2 and FHIR can carry (plain, JSON-serialisable data).

Identifiers are fixed when the report is built and stored with it, so every message built from it (and every
resend) carries the same ones:

* ``uid``: this version of the report (the outbox's result UID; MSH-10 and the Provenance derive from it);
* ``report_id``: the same for every version of one rule's report on one study (the DiagnosticReport identifier,
  the ORU's filler order number when the study has none);
* each finding, label and segment's ``uid``: the SR's tracking UID (or one derived from the content), the
  Observation identifier, the same in a re-run that finds the same thing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coded(_Data):
    """A coded concept (DICOM code sequence item): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


class Finding(_Data):
    """One sentence of a report SR, with its code (the SR's Finding CODE item) and how many boxes it has."""

    number: int  # the item number in the report (OBX-4 sub-ID)
    uid: str
    text: str
    code: Coded | None = None
    regions: int = 0  # boxes drawn on the image
    source_uid: str  # the SR's SOP Instance UID


class Score(_Data):
    """One label's probability."""

    label: Coded
    probability: float


class ImageLabels(_Data):
    """The zero-shot classification of one image: the winner per label set, every label's probability."""

    number: int
    uid: str  # the group's tracking UID
    image_uid: str  # the classified image's SOP Instance UID
    text: str  # the SR's words, e.g. "Image 1: view: x-ray chest lateral (p = 0.62)"
    winners: list[tuple[Coded, Coded]] = Field(default_factory=list)  # (label set, winning label)
    scores: list[Score] = Field(default_factory=list)
    source_uid: str


class Segment(_Data):
    """One segment of a SEG."""

    number: int  # the item number in the report
    segment_number: int  # SegmentNumber in the SEG
    uid: str
    label: str
    category: Coded | None = None
    type: Coded | None = None
    source_uid: str  # the SEG's SOP Instance UID


class Algorithm(_Data):
    """The model that made the result (the IHE AIR "Processing Algorithm" item of the result)."""

    name: str
    version: str
    manufacturer: str = ""
    device_uid: str = ""
    emulated: bool = False


class Patient(_Data):
    """The patient as the study's header names them (PHI: never logged)."""

    id: str = ""
    issuer: str = ""  # IssuerOfPatientID
    issuer_oid: str = ""  # IssuerOfPatientIDQualifiersSequence > UniversalEntityID, when its type is ISO
    name: str = ""  # DICOM PN, family^given^middle^prefix^suffix
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M | F | O


class Study(_Data):
    """The study and the order it fulfils."""

    uid: str
    accession: str = ""
    accession_issuer: str = ""
    date: str = ""  # YYYYMMDD
    time: str = ""  # HHMMSS(.ffffff)
    description: str = ""
    procedure: Coded | None = None  # RequestedProcedureCodeSequence, else ProcedureCodeSequence
    requested_procedure_id: str = ""
    placer_order: str = ""
    filler_order: str = ""
    modalities: list[str] = Field(default_factory=list)
    character_set: str = ""  # SpecificCharacterSet, as in the header


class Content(_Data):
    """What the results of one job say."""

    patient: Patient
    study: Study
    algorithm: Algorithm
    findings: list[Finding] = Field(default_factory=list)
    labels: list[ImageLabels] = Field(default_factory=list)
    segments: list[Segment] = Field(default_factory=list)
    results: list[str] = Field(default_factory=list)  # SOP Instance UIDs of the DICOM results read

    @property
    def sentences(self) -> list[str]:
        """Every sentence, in report order (the findings, then each image's words, then each segment)."""
        return ([f.text for f in self.findings] + [i.text for i in self.labels]
                + [segment_sentence(s) for s in self.segments])


def segment_sentence(seg: Segment) -> str:
    """ "Segment 1: liver (Anatomical Structure)"."""
    kind = f" ({seg.category.meaning})" if seg.category is not None else ""
    return f"Segment {seg.segment_number}: {seg.label}{kind}"


ReportStatus = Literal["preliminary", "corrected", "retracted"]


class Report(_Data):
    """One version of one rule's report on one study (see the module docstring for its identifiers)."""

    uid: str
    report_id: str
    rule: str
    study_version: int
    status: ReportStatus
    created_at: float  # POSIX seconds: MSH-7, DiagnosticReport.issued
    content: Content
    replaces: str | None = None  # the report this one corrects or retracts
    superseded: Content | None = None  # what the replaced version said (its observations are withdrawn)
    reason: str | None = None  # a retraction's reason (quality | safety | incorrect-worklist)
    note: str = "AI generated, not reviewed by a radiologist: a preliminary result, not a diagnosis."

    def to_json(self) -> bytes:
        """The stored form (the ``report`` result file)."""
        return self.model_dump_json(indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> "Report":
        """Read a stored report."""
        return cls.model_validate_json(data)
