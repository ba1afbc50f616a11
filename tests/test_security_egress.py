"""Minimal egress: free text scrubbed of the study's own identity, pixels only, BurnedInAnnotation honoured,
NIfTI headers without text. The CXR pipeline runs for real against the HTTP emulator, whose request log
says what left the node."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from converters.scrub import scrub_request_text, scrub_text
from node.config import parse_config
from support.studies import derive_cxr_study

pytestmark = pytest.mark.security

PHI = {"name": "QUIXOTE^ALONSO^MIGUEL", "id": "PID-7788991", "accession": "ACC55443322", "birth": "19610305"}


def header(**extra) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName = PHI["name"]
    ds.PatientID = PHI["id"]
    ds.AccessionNumber = PHI["accession"]
    ds.PatientBirthDate = PHI["birth"]
    ds.StudyDate = "20240131"
    ds.ReferringPhysicianName = "SANCHO^PANZA"
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def test_scrub_text_removes_the_headers_names_ids_and_dates() -> None:
    text = ("Cough, fever. Mr Alonso Quixote (MRN PID-7788991, acc ACC55443322), born 05/03/1961 or 1961-03-05; "
            "referred by Dr Panza. Comparison: 2024-01-31 and 31.01.2024. T12 vertebra, 3 cm nodule, PA view.")
    out = scrub_text(text, header())
    for leaked in ("Alonso", "Quixote", "PID-7788991", "ACC55443322", "05/03/1961", "1961-03-05", "Panza",
                   "2024-01-31", "31.01.2024"):
        assert leaked.lower() not in out.lower(), (leaked, out)
    # Clinical words and numbers that are not the header's values survive.
    for kept in ("Cough, fever.", "T12 vertebra, 3 cm nodule, PA view.", "Comparison:", "[name]", "[id]", "[date]"):
        assert kept in out, (kept, out)
    assert scrub_text(None, header()) is None and scrub_text("Normal chest.", header()) == "Normal chest."


def test_ids_are_replaced_only_as_whole_tokens() -> None:
    ds = header(PatientID="12")
    assert scrub_text("Pain at T12 and 12 ribs; ID 12.", ds) == "Pain at T12 and [id] ribs; ID [id]."


def test_request_text_columns_are_scrubbed_and_images_untouched() -> None:
    payload = {"input_data": {"columns": ["frontal_image", "indication", "prior_report"], "index": [0],
                              "data": [["aGVsbG8gUElELTc3ODg5OTE=", "QUIXOTE cough", "Prior of PID-7788991: clear"]]}}
    out = scrub_request_text(payload, header())
    assert out["input_data"]["data"][0] == ["aGVsbG8gUElELTc3ODg5OTE=", "[name] cough", "Prior of [id]: clear"]
    assert payload["input_data"]["data"][0][1] == "QUIXOTE cough", "the input is not modified"


def _run_cxr(tmp: Path, study: list[Path], emulator_url: str, params: dict):
    from node.invoke.client import EndpointClient
    from node.models.base import JobContext
    from node.models.cxrreportgen.pipeline import run

    cfg = parse_config({"endpoints": {"cxr": {"model": "cxrreportgen", "url": emulator_url, "auth": "none",
                                              "max_attempts": 1}},
                        "rules": [{"name": "r", "endpoint": "cxr", "params": params}]})
    ctx = JobContext(job={"job_uid": uuid.uuid4().hex, "attempts": 1}, rule=cfg.rules[0], endpoint_name="cxr",
                     endpoint=cfg.endpoints["cxr"], client=EndpointClient("cxr", cfg.endpoints["cxr"]),
                     instance_paths=study, previous_results=lambda kind: None)
    return run(ctx)


def _study_with_phi(tmp: Path, data: Path, **frontal_extra) -> list[Path]:
    study = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=PHI["id"],
                             patient_name=PHI["name"])
    for path in study:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = PHI["accession"]
        ds.PatientBirthDate = PHI["birth"]
        ds.ReasonForTheRequestedProcedure = "Cough in Alonso QUIXOTE, MRN PID-7788991, DOB 05/03/1961"
        ds.RequestedProcedureComments = f"Comparison: film of {PHI['accession']} from 1961-03-05"
        if path == study[0]:
            for k, v in frontal_extra.items():
                setattr(ds, k, v)
        ds.save_as(path, enforce_file_format=True)
    return study


def test_what_the_cxr_pipeline_sends_is_pixels_and_scrubbed_text(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = _study_with_phi(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        out = _run_cxr(tmp_path, study, emulator.url, {})
        assert out.state == "done", out.outcome
        [request] = emulator.requests
    [row] = request["payload"]
    images = {c: d for c, d in row.items() if c.endswith("_image")}
    assert set(images) == {"frontal_image", "lateral_image"}
    for column, desc in images.items():
        # Pixels only: a PNG with no text chunks, never a DICOM file (whose header would carry the PHI).
        assert desc["kind"] == "png", (column, desc)
        assert set(desc["png_chunks"]) <= {"IHDR", "IDAT", "IEND", "PLTE"}, desc
    # The emulator logs a hash of each text column: it must be the hash of the scrubbed header text.
    from converters.cxr_text import clinical_text

    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    lateral = pydicom.dcmread(study[1], stop_before_pixels=True)
    raw = clinical_text(frontal, views="PA and lateral views of the chest")
    expected = {"indication": scrub_text(raw.indication, [frontal, lateral]),
                "comparison": scrub_text(raw.comparison, [frontal, lateral])}
    sent = {c: d for c, d in row.items() if d["kind"] == "text"}
    assert {"indication", "comparison"} <= set(sent), sent
    for column, text in expected.items():
        assert sent[column]["sha256"] == hashlib.sha256(text.encode()).hexdigest(), (column, text)
        assert text != getattr(raw, column), "the raw text held identity: scrubbing must have changed it"
    joined = " ".join(expected.values()).lower()
    for leaked in ("quixote", "alonso", PHI["id"].lower(), PHI["accession"].lower(), "05/03/1961", "1961-03-05"):
        assert leaked not in joined, (leaked, expected)
    assert "cough" in joined and "[name]" in joined and "[id]" in joined and "[date]" in joined


def test_nifti_sent_to_medimageparse3d_carries_no_text(data: Path) -> None:
    import gzip

    from converters.volume import series_to_volume
    from node.emulator.inspect import describe_value

    files = sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))
    volume = series_to_volume(files)
    header_ = volume.to_nifti().header
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        assert bytes(header_[field].item()).strip(b"\x00 ") == b"", field
    import base64

    raw = volume.to_nifti_gz_bytes()
    desc = describe_value(base64.b64encode(raw).decode())
    assert desc["kind"] == "nifti.gz" and set(desc["nifti_text"].values()) == {""}, desc
    # No DICOM header bytes anywhere in the file: no "DICM" preamble, no patient identity.
    content = gzip.decompress(raw)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert b"DICM" not in content[:1024]
    for value in (str(ds.get("PatientID", "")), str(ds.get("PatientName", ""))):
        if len(value) >= 4:
            assert value.encode() not in content


def test_png_converter_writes_no_metadata(data: Path) -> None:
    from converters.model_image import to_model_image
    from node.emulator.inspect import png_chunks

    png = to_model_image(pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm")).png
    assert set(png_chunks(png)) <= {"IHDR", "IDAT", "IEND", "PLTE"}
    assert not Image.open(io.BytesIO(png)).info.get("exif")


def test_a_priors_names_and_ids_are_scrubbed_but_its_date_is_kept() -> None:
    from converters.scrub import names_and_ids

    prior = header(AccessionNumber="ACC-PRIOR-1", StudyDate="20230115")
    text = "Prior ACC-PRIOR-1 of 2023-01-15 for Quixote: clear lungs."
    assert scrub_text(text, [header(), names_and_ids(prior)]) == "Prior [id] of 2023-01-15 for [name]: clear lungs."


def test_only_the_burned_in_images_are_left_out_of_a_job(tmp_path: Path, data: Path) -> None:
    """A burned-in image (a dose screen, a screen capture) leaves the job; the rest of the series goes on."""
    from converters.scrub import without_burned_in

    study = _study_with_phi(tmp_path, data)
    marked = pydicom.dcmread(study[0])
    marked.BurnedInAnnotation = "YES"
    marked.save_as(study[0], enforce_file_format=True)
    keep, note = without_burned_in([*study, tmp_path / "missing.dcm"], {})
    assert keep == [*study[1:], tmp_path / "missing.dcm"], "unreadable files stay: the pipeline reports them"
    assert note is not None and marked.SOPInstanceUID in note and "allow_burned_in" in note
    assert without_burned_in(study, {"allow_burned_in": True}) == (study, None)
    assert without_burned_in(study[1:], {}) == (study[1:], None)
