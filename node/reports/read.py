"""Reading the node's own written results (SR, classification SR, SEG) into a :class:`~node.reports.model.Content`.

The layouts are the ones :mod:`dicom_out` writes (and docs/viewers.md describes):

* report SR (CXRReportGen): one TID 1410 group per box, "Finding N box M", with the coded Finding (DCM 121071) and
  the sentence as TEXT Comment (DCM 121106); sentences without a box in the "Qualitative Evaluations" container, a
  CODE Finding per sentence, then the TEXT Findings in the same order. Finding N of the model's output is the
  N-th sentence: box groups give their numbers, the sentences without a box fill the others in order;
* classification SR (MedImageInsight): one TID 1501 group per image with a NUM per label (its probability) and
  the image as SCOORD > IMAGE; the "Qualitative Evaluations" hold per image, per label set, a CODE (concept the
  label set, value the winner), then one TEXT per image (the words);
* SEG: the SegmentSequence (number, label, category, type, tracking UID).

The algorithm is the result's IHE AIR "Processing Algorithm" item of ContributingEquipmentSequence. Patient,
study and order attributes come from a source image of the job when given (the results copy them; the order
numbers are only in the source), else from the first result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.reports.model import Algorithm, Coded, Content, Finding, ImageLabels, Patient, Score, Segment, Study

FINDING = "121071"  # DCM Finding
COMMENT = "121106"  # DCM Comment
IMAGING_MEASUREMENTS = "126010"
MEASUREMENT_GROUP = "125007"
QUALITATIVE = "C0034375"
TRACKING_ID = "112039"
TRACKING_UID = "112040"
PROCESSING_ALGORITHM = "Newcode1"
_BOX_ID = re.compile(r"^Finding (\d+) box \d+$")


class UnreadableResult(ValueError):
    """A result that is not in one of the node's own layouts (the message says what is missing)."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def coded(item: Dataset | None) -> Coded | None:
    """A code sequence item as :class:`Coded` (None for None or an item without a value)."""
    if item is None:
        return None
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    if not value:
        return None
    return Coded(value=str(value), scheme=str(item.get("CodingSchemeDesignator", "")),
                 meaning=str(item.get("CodeMeaning", "")))


def _first(seq: Iterable[Dataset] | None) -> Dataset | None:
    for item in seq or []:
        return item
    return None


def _concept(item: Dataset) -> str:
    name = _first(item.get("ConceptNameCodeSequence"))
    return str(name.CodeValue) if name is not None and "CodeValue" in name else ""


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def algorithm_of(ds: Dataset) -> Algorithm:
    """The IHE AIR "Processing Algorithm" item of ContributingEquipmentSequence."""
    for item in ds.get("ContributingEquipmentSequence") or []:
        purpose = _first(item.get("PurposeOfReferenceCodeSequence"))
        if purpose is not None and purpose.get("CodeValue") == PROCESSING_ALGORITHM:
            return Algorithm(name=_text(item, "ManufacturerModelName"), version=_text(item, "SoftwareVersions"),
                             manufacturer=_text(item, "Manufacturer"), device_uid=_text(item, "DeviceUID"),
                             emulated="EMULATED" in _text(item, "ContributionDescription").upper())
    raise UnreadableResult(f"result {ds.get('SOPInstanceUID', '?')} names no Processing Algorithm")


def _request_items(ds: Dataset) -> list[Dataset]:
    return [ds, *(ds.get("RequestAttributesSequence") or []), *(ds.get("ReferencedRequestSequence") or [])]


def _first_text(items: Sequence[Dataset], keyword: str) -> str:
    for item in items:
        value = _text(item, keyword)
        if value:
            return value
    return ""


def patient_of(ds: Dataset) -> Patient:
    """Patient module attributes."""
    oid = ""
    for item in ds.get("IssuerOfPatientIDQualifiersSequence") or []:
        if _text(item, "UniversalEntityIDType") == "ISO" and _text(item, "UniversalEntityID"):
            oid = _text(item, "UniversalEntityID")
    return Patient(id=_text(ds, "PatientID"), issuer=_text(ds, "IssuerOfPatientID"), issuer_oid=oid,
                   name=_text(ds, "PatientName"), birth_date=_text(ds, "PatientBirthDate"),
                   sex=_text(ds, "PatientSex").upper()[:1])


def study_of(ds: Dataset, modalities: Sequence[str] = ()) -> Study:
    """Study and order attributes (the order's may sit at the top level or in the request sequences)."""
    items = _request_items(ds)
    procedure = None
    for keyword in ("RequestedProcedureCodeSequence", "ProcedureCodeSequence"):
        for item in items:
            procedure = procedure or coded(_first(item.get(keyword)))
    issuer = _first(ds.get("IssuerOfAccessionNumberSequence"))
    return Study(
        uid=_text(ds, "StudyInstanceUID"), accession=_first_text(items, "AccessionNumber"),
        accession_issuer=_text(issuer, "LocalNamespaceEntityID") or _text(issuer, "UniversalEntityID")
        if issuer is not None else "",
        date=_text(ds, "StudyDate"), time=_text(ds, "StudyTime"),
        description=_first_text([ds], "StudyDescription") or _first_text(items, "RequestedProcedureDescription"),
        procedure=procedure, requested_procedure_id=_first_text(items, "RequestedProcedureID"),
        placer_order=_first_text(items, "PlacerOrderNumberImagingServiceRequest"),
        filler_order=_first_text(items, "FillerOrderNumberImagingServiceRequest"),
        modalities=sorted(set(modalities)), character_set=_text(ds, "SpecificCharacterSet"))


def _tracking(group: Dataset) -> tuple[str, str]:
    ident = uid = ""
    for child in _children(group):
        if _concept(child) == TRACKING_ID:
            ident = str(child.get("TextValue", ""))
        elif _concept(child) == TRACKING_UID:
            uid = str(child.get("UID", ""))
    return ident, uid


def _image_ref(group: Dataset) -> str:
    for child in _children(group):
        if child.get("ValueType") == "SCOORD":
            for ref in _children(child):
                sop = _first(ref.get("ReferencedSOPSequence"))
                if sop is not None:
                    return str(sop.ReferencedSOPInstanceUID)
    return ""


def _containers(sr: Dataset) -> tuple[list[Dataset], list[Dataset]]:
    """(measurement groups, qualitative evaluation items) of a TID 1500 report."""
    groups: list[Dataset] = []
    qualitative: list[Dataset] = []
    for item in sr.get("ContentSequence") or []:
        if _concept(item) == IMAGING_MEASUREMENTS:
            groups += [g for g in _children(item) if _concept(g) == MEASUREMENT_GROUP]
        elif _concept(item) == QUALITATIVE:
            qualitative += _children(item)
    return groups, qualitative


class _Numbers:
    """Running item numbers across the report (OBX-4 sub-IDs)."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def read_report_sr(sr: Dataset, algorithm: Algorithm, numbers: _Numbers) -> list[Finding]:
    """The sentences of a CXRReportGen SR in the model's order (see the module docstring)."""
    sop = str(sr.SOPInstanceUID)
    groups, qualitative = _containers(sr)
    boxed: dict[int, dict] = {}
    for group in groups:
        ident, uid = _tracking(group)
        match = _BOX_ID.match(ident)
        if match is None:
            raise UnreadableResult(f"SR {sop}: measurement group {ident!r} is not a finding's box")
        n = int(match.group(1))
        entry = boxed.setdefault(n, {"uid": uid, "text": "", "code": None, "regions": 0})
        for child in _children(group):
            if _concept(child) == COMMENT and child.get("ValueType") == "TEXT" and not entry["text"]:
                entry["text"] = str(child.TextValue)
            elif _concept(child) == FINDING and child.get("ValueType") == "CODE" and entry["code"] is None:
                entry["code"] = coded(_first(child.ConceptCodeSequence))
            elif child.get("ValueType") == "SCOORD":
                entry["regions"] += 1
    codes = [coded(_first(c.ConceptCodeSequence)) for c in qualitative
             if c.get("ValueType") == "CODE" and _concept(c) == FINDING]
    texts = [str(c.TextValue) for c in qualitative if c.get("ValueType") == "TEXT" and _concept(c) == FINDING]
    if codes and len(codes) != len(texts):
        raise UnreadableResult(f"SR {sop}: {len(codes)} coded findings for {len(texts)} sentences")
    free = iter(zip(texts, codes or [None] * len(texts)))
    out: list[Finding] = []
    total = len(boxed) + len(texts)
    for n in range(1, total + 1):
        if n in boxed:
            e = boxed[n]
            out.append(Finding(number=numbers.next(), uid=e["uid"] or _derived(sr, algorithm, n, e["text"]),
                               text=e["text"], code=e["code"], regions=e["regions"], source_uid=sop))
        else:
            text, code = next(free)
            out.append(Finding(number=numbers.next(), uid=_derived(sr, algorithm, n, text), text=text, code=code,
                               source_uid=sop))
    return out


def _derived(sr: Dataset, algorithm: Algorithm, n: int, text: str) -> str:
    """An observation UID from the content (study, algorithm, position, sentence): the same in a re-run saying it."""
    return generate_uid(entropy_srcs=["dicom-ai-node/finding", str(sr.StudyInstanceUID), algorithm.device_uid,
                                      str(n), text])


def read_classification_sr(sr: Dataset, numbers: _Numbers) -> list[ImageLabels]:
    """Per classified image: the winners per label set, the probabilities and the words."""
    sop = str(sr.SOPInstanceUID)
    groups, qualitative = _containers(sr)
    winners = [(coded(_first(c.ConceptNameCodeSequence)), coded(_first(c.ConceptCodeSequence)))
               for c in qualitative if c.get("ValueType") == "CODE"]
    texts = [str(c.TextValue) for c in qualitative if c.get("ValueType") == "TEXT"]
    if not groups or len(texts) != len(groups) or len(winners) % len(groups):
        raise UnreadableResult(f"classification SR {sop}: {len(groups)} images, {len(texts)} sentences, "
                               f"{len(winners)} winners")
    per_image = len(winners) // len(groups)
    out = []
    for i, group in enumerate(groups):
        _, uid = _tracking(group)
        scores = [Score(label=coded(_first(c.ConceptNameCodeSequence)),
                        probability=float(c.MeasuredValueSequence[0].NumericValue))
                  for c in _children(group) if c.get("ValueType") == "NUM"]
        out.append(ImageLabels(number=numbers.next(), uid=uid, image_uid=_image_ref(group), text=texts[i],
                               winners=[w for w in winners[i * per_image:(i + 1) * per_image]],
                               scores=scores, source_uid=sop))
    return out


def read_seg(seg: Dataset, numbers: _Numbers) -> list[Segment]:
    """The segments of a SEG."""
    sop = str(seg.SOPInstanceUID)
    out = []
    for item in seg.get("SegmentSequence") or []:
        number = int(item.SegmentNumber)
        uid = _text(item, "TrackingUID") or generate_uid(entropy_srcs=["dicom-ai-node/segment", sop, str(number)])
        out.append(Segment(number=numbers.next(), segment_number=number, uid=uid,
                           label=_text(item, "SegmentLabel") or _text(item, "SegmentDescription"),
                           category=coded(_first(item.get("SegmentedPropertyCategoryCodeSequence"))),
                           type=coded(_first(item.get("SegmentedPropertyTypeCodeSequence"))), source_uid=sop))
    return out


def _is_classification(sr: Dataset) -> bool:
    groups, _ = _containers(sr)
    return any(c.get("ValueType") == "NUM" for g in groups for c in _children(g))


def read_results(results: Sequence[tuple[str, Dataset]], source: Dataset | None = None) -> Content | None:
    """What ``results`` ((kind, dataset) of one job) say; None when none of them is an SR or a SEG.

    GSPS and Secondary Captures repeat the SR (boxes, burned-in) and are not read.

    Raises:
        UnreadableResult: an SR or SEG not in the node's own layout.
    """
    readable = [(kind, ds) for kind, ds in results if kind in ("sr", "seg")]
    if not readable:
        return None
    first = readable[0][1]
    algorithm = algorithm_of(first)
    numbers = _Numbers()
    findings: list[Finding] = []
    labels: list[ImageLabels] = []
    segments: list[Segment] = []
    for kind, ds in readable:
        if kind == "seg":
            segments += read_seg(ds, numbers)
        elif _is_classification(ds):
            labels += read_classification_sr(ds, numbers)
        else:
            findings += read_report_sr(ds, algorithm, numbers)
    header = source if source is not None else first
    modalities = [str(header.get("Modality", ""))] if header.get("Modality") else []
    return Content(patient=patient_of(header), study=study_of(header, modalities), algorithm=algorithm,
                   findings=findings, labels=labels, segments=segments,
                   results=[str(ds.SOPInstanceUID) for _, ds in readable])
