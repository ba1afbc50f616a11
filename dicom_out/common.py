"""What every writer of ``dicom_out`` shares: the node's equipment, result UIDs, source-header copies, labels.

- :data:`NODE_EQUIPMENT` / :func:`equipment_kwargs`: the Equipment module values of every object the node writes
  (the node itself; the model is recorded as IHE AIR "Processing Algorithm" contributing equipment).
- :func:`derived_uid` / :func:`finding_tracking_uid`: UIDs that depend only on their inputs (a resend or a
  re-run writes the same UIDs; the SR, GSPS and SC of one finding share its tracking UID).
- :func:`source_header`: a pixel-free, repaired copy of a source image header for highdicom.
- :func:`labelled_text` / :func:`resolve_series_description`: texts that say EMULATED for emulator output.
- :func:`observation_context` / :func:`algorithm_id`: the SR content items every SR writer repeats.

Nothing here imports from ``node/``.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_out.algorithm import (
    EMULATED_MARKER,
    NODE_MANUFACTURER,
    NODE_MODEL_NAME,
    NODE_SOFTWARE_VERSION,
    AlgorithmInfo,
)

logger = logging.getLogger(__name__)

#: Equipment module keywords of every object the node writes (highdicom constructor arguments).
NODE_EQUIPMENT: Final[dict[str, str]] = {
    "manufacturer": NODE_MANUFACTURER,
    "manufacturer_model_name": NODE_MODEL_NAME,
    "software_versions": NODE_SOFTWARE_VERSION,
}

#: Patient / study attributes highdicom reads from the first evidence dataset (attribute access: missing ones raise).
REQUIRED_EMPTY_OK: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
REQUIRED_UIDS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

#: Copied patient/study values that real headers often get wrong; an invalid one would make our object invalid.
_VALID: Final = {
    "PatientAge": re.compile(r"\d{3}[DWMY]"),
    "PatientSex": re.compile(r"[MFO]?"),
    "PatientBirthDate": re.compile(r"(\d{8})?"),
    "StudyDate": re.compile(r"(\d{8})?"),
    "StudyTime": re.compile(r"(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?"),
}


def equipment_kwargs() -> dict[str, str]:
    """A fresh copy of :data:`NODE_EQUIPMENT` for a highdicom constructor (``**equipment_kwargs()``)."""
    return dict(NODE_EQUIPMENT)


def derived_uid(*parts: str) -> str:
    """A UID derived from ``parts`` only (pydicom's root): the same parts give the same UID, on any machine."""
    return generate_uid(entropy_srcs=["dicom-ai-node", *parts])


def finding_tracking_uid(
    frontal_sop_instance_uid: str,
    algorithm: AlgorithmInfo,
    finding_number: int,
    box_number: int | None,
    text: str,
    box: object = None,
) -> str:
    """A tracking UID that depends only on the finding (image, algorithm, position, text, box).

    The SR, the GSPS and the SC built from the same result, and a revised SR repeating a finding, share the UID.
    """
    return generate_uid(
        entropy_srcs=[
            "dicom-ai-node/finding",
            frontal_sop_instance_uid,
            algorithm.device_uid,
            str(finding_number),
            str(box_number),
            text,
            repr(box),
        ]
    )


def require_uids(ds: pydicom.Dataset, what: str) -> None:
    """Raise ValueError naming the identifying UIDs ``ds`` lacks."""
    missing = [kw for kw in REQUIRED_UIDS if not ds.get(kw)]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")


def source_header(ds: pydicom.Dataset) -> Dataset:
    """A pixel-free copy of a source image header with what highdicom needs present.

    Works for datasets read with ``stop_before_pixels=True``. Type 2 patient/study attributes that are absent are
    added empty (DICOM allows empty values; highdicom refuses missing ones). The input is not modified.
    """
    require_uids(ds, "source image header")
    out = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0 or elem.tag.group == 0x0002:
            continue  # pixel data (and the file meta group, if someone merged it in)
        out.add(copy.deepcopy(elem))
    for kw, pattern in _VALID.items():
        if kw not in out or out[kw].value is None:
            continue
        if not pattern.fullmatch(str(out[kw].value).strip()):
            logger.warning("source header has an invalid %s: %s", kw, "left out" if kw == "PatientAge" else "emptied")
            if kw == "PatientAge":  # type 3: drop it
                del out[kw]
            else:  # type 2: keep it, empty
                setattr(out, kw, "")
    for kw in REQUIRED_EMPTY_OK:
        if kw not in out:
            setattr(out, kw, "")
    return out


@contextmanager
def quiet_person_name_warnings() -> Iterator[None]:
    """Silence highdicom's warning about single-component person names: we copy names, we do not compose them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def default_series_description(algorithm: AlgorithmInfo) -> str:
    """"AI findings <model>", with "(EMULATED)" for emulator output."""
    text = f"AI findings {algorithm.name}"
    if algorithm.emulated:
        text += f" ({EMULATED_MARKER})"
    return text


def labelled_text(text: str, algorithm: AlgorithmInfo, max_chars: int = 64) -> str:
    """``text`` cut to ``max_chars`` (LO: 64); for emulated output it always ends up containing "EMULATED"."""
    suffix = f" ({EMULATED_MARKER})"
    if algorithm.emulated and EMULATED_MARKER not in text.upper():
        text += suffix
    if len(text) > max_chars:
        text = text[:max_chars]
        if algorithm.emulated and EMULATED_MARKER not in text.upper():
            text = text[: max_chars - len(suffix)].rstrip() + suffix
    return text


def resolve_series_description(algorithm: AlgorithmInfo, series_description: str | None) -> str:
    """The given description or the default one, labelled EMULATED where needed, at most 64 characters."""
    text = series_description if series_description is not None else default_series_description(algorithm)
    return labelled_text(text, algorithm)


def observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """TID 1001 with the model as a DEVICE observer (TID 1004: UID, name, manufacturer, model name)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.device_name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of a measurement group: the model's name and version.

    No "Algorithm Manufacturer" row: older TID 4019 (PixelMed's) lacks it, and the manufacturer is already in the
    observer context and ContributingEquipmentSequence.
    """
    return hd.sr.AlgorithmIdentification(name=algorithm.device_name, version=algorithm.version)


def set_series_laterality(ds: pydicom.Dataset, image: pydicom.Dataset) -> None:
    """General Series Laterality (type 2C: required for a paired body part, absent otherwise).

    The image's own R/L is copied. A CHEST image (unpaired) gets BodyPartExamined CHEST and no Laterality,
    which dciodvfy accepts silently. Anything else gets an empty Laterality ("unknown"): dciodvfy treats a series
    without a body part as possibly paired and reports a missing Laterality as an error, an empty one as a warning.
    """
    laterality = str(image.get("Laterality", "") or "").strip().upper()
    body_part = str(image.get("BodyPartExamined", "") or "").strip().upper()
    if laterality in ("R", "L"):
        ds.Laterality = laterality
    elif body_part == "CHEST":
        ds.BodyPartExamined = body_part
    else:
        ds.Laterality = ""
