"""Study-level checks made before any image leaves the node for a model."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pydicom


def mixed_patients_reason(paths: Iterable[Path]) -> str | None:
    """Why a job's instances must not be sent together: they belong to more than one patient (Patient ID).

    One result (an SR citing every image as evidence) for two patients would put one patient's findings in
    another's record. The message never quotes the IDs (PHI), only how many there are.
    """
    ids: set[str] = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # an unreadable file is the converter's to report, with its reason
            continue
        ids.add(str(ds.get("PatientID", "") or "").strip())
    if len(ids) > 1:
        return f"the study mixes {len(ids)} patients (different Patient IDs in one Study Instance UID): not processed"
    return None
