"""The node's three kinds of written results, made by its own writers (dicom_out) from real images, with the
inputs they were made from (the expected values of the report and message tests come from these inputs)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dicom_out.algorithm import AlgorithmInfo
from dicom_out.classification_sr import ImageClassification, build_classification_sr
from dicom_out.seg import SegmentSpec, build_segmentation
from dicom_out.sr import GroundedFinding, build_findings_sr

CXR = AlgorithmInfo(name="CXRReportGen", version="cxr-deploy-7")
INSIGHT = AlgorithmInfo(name="MedImageInsight", version="mii-2", emulated=True)
PARSE = AlgorithmInfo(name="MedImageParse 3D", version="mip3d-1")

FINDINGS = (
    GroundedFinding("Cardiomegaly is present.", ((100.5, 200.25, 400.0, 600.75),)),
    GroundedFinding("No pneumothorax.", ()),
    GroundedFinding("Bilateral pleural effusions | small ^ left > right.",
                    ((10.0, 20.0, 30.5, 40.5), (1000.0, 1100.0, 1500.25, 1800.0))),
    GroundedFinding("Degenerative changes of the spine.", ()),
)
PROBABILITIES = {"view": {"x-ray chest posteroanterior": 0.81, "x-ray chest anteroposterior": 0.15,
                          "x-ray chest lateral": 0.04}}
SEGMENTS = (SegmentSpec.from_prompt("liver"), SegmentSpec.from_prompt("kidney"))


@dataclass
class Made:
    """The results and the header of the source image they were made from."""

    source: pydicom.Dataset
    results: list[tuple[str, pydicom.Dataset]]


def frontal(data: Path, accession: str = "ACC-7781") -> pydicom.Dataset:
    """The PA chest radiograph with an order's attributes (accession, placer/filler numbers, procedure code)."""
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm", stop_before_pixels=True)
    ds.AccessionNumber = accession
    ds.PatientID = "PAT-0042"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientName = "Müller^Anna^B"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PlacerOrderNumberImagingServiceRequest = "PLC-5501"
    ds.FillerOrderNumberImagingServiceRequest = "FIL-9902"
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "36643-5", "LN", "XR Chest 2 Views"
    ds.RequestedProcedureCodeSequence = [item]
    return ds


def cxr_report(data: Path, findings=FINDINGS, accession: str = "ACC-7781") -> Made:
    src = frontal(data, accession)
    sr = build_findings_sr(frontal=src, evidence=[src], findings=list(findings), algorithm=CXR,
                           series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=9901)
    return Made(src, [("sr", sr)])


def classification(data: Path) -> Made:
    src = frontal(data)
    lateral = copy.deepcopy(src)
    lateral.SOPInstanceUID = generate_uid()
    items = [ImageClassification(image=src, probabilities=PROBABILITIES),
             ImageClassification(image=lateral, probabilities={"view": {"x-ray chest posteroanterior": 0.1,
                                                                        "x-ray chest anteroposterior": 0.2,
                                                                        "x-ray chest lateral": 0.7}})]
    sr = build_classification_sr(items=items, algorithm=INSIGHT, series_instance_uid=generate_uid(),
                                 sop_instance_uid=generate_uid(), series_number=9903)
    return Made(src, [("sr", sr)])


def ct_segmentation(data: Path) -> Made:
    files = sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[30:32]
    sources = [pydicom.dcmread(f) for f in files]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    masks = np.zeros((len(sources), rows, cols, len(SEGMENTS)), dtype=bool)
    masks[:, 10:40, 10:40, 0] = True
    masks[:, 60:90, 60:90, 1] = True
    seg = build_segmentation(source_images=sources, masks=masks, segments=list(SEGMENTS), algorithm=PARSE,
                             series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=9905)
    header = copy.deepcopy(sources[0])
    del header.PixelData
    return Made(header, [("seg", seg)])


def now() -> float:
    return time.time()
