"""IHE IOCM rejection notes: a Key Object Selection document that rejects instances the node sent earlier.

IHE Imaging Object Change Management (IOCM): a KOS whose document title is one of
DCM 113001 "Rejected for Quality Reasons", 113037 "Rejected for Patient Safety Reasons" or 113038 "Incorrect
Modality Worklist Entry", in the study of the instances it rejects, in a series of its own, referencing every
rejected instance in its content and in CurrentRequestedProcedureEvidenceSequence (highdicom fills that sequence
from ``evidence``). A PACS that supports IOCM hides or deletes the rejected instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.coding import Code

from dicom_out.algorithm import NODE_MANUFACTURER

#: reason (as the command line names it) -> the IOCM document title
REJECTION_TITLES: dict[str, Code] = {
    "quality": Code("113001", "DCM", "Rejected for Quality Reasons"),
    "safety": Code("113037", "DCM", "Rejected for Patient Safety Reasons"),
    "incorrect-worklist": Code("113038", "DCM", "Incorrect Modality Worklist Entry"),
}

KOS_SERIES_NUMBER = 9990


def build_rejection_note(rejected: Sequence[pydicom.Dataset], reason: str, *, series_instance_uid: str,
                         sop_instance_uid: str, series_number: int = KOS_SERIES_NUMBER,
                         description: str | None = None) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS rejecting ``rejected`` (headers suffice) for ``reason`` (a key of :data:`REJECTION_TITLES`).

    Every rejected instance must belong to one study; the note joins that study.

    Raises:
        ValueError: no instance, an unknown reason, or instances of more than one study.
    """
    if reason not in REJECTION_TITLES:
        raise ValueError(f"unknown rejection reason {reason!r}; allowed: {', '.join(REJECTION_TITLES)}")
    if not rejected:
        raise ValueError("a rejection note needs at least one instance to reject")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"the rejected instances belong to {len(studies)} studies; one note per study")
    content = hd.ko.KeyObjectSelection(document_title=REJECTION_TITLES[reason], referenced_objects=list(rejected),
                                       description=description)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(rejected), content=content, series_instance_uid=series_instance_uid,
        series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=1,
        manufacturer=NODE_MANUFACTURER)
