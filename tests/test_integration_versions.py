"""Model versions as the real service gives them: none in the reply (no Microsoft source shows a version header), so
the emulator sends none by default and the results' Algorithm Version comes from ``endpoints.<n>.model_version``.

* The emulator's default replies (scoring, a refused input's 424, the control routes) carry no version header; only
  its ``versioned`` variant does, on scoring replies.
* ``dicom-node demo`` (run_demo, the real node as a process and the demo's PACS) writes results whose Algorithm
  Version is the demo's configured ``model_version``, and prints it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from node.emulator.server import EmulatorServer
from node.models.cxrreportgen.contract import build_request
from node.models.cxrreportgen.emulator import MODEL_VERSION
from test_emulator import chest_like


def chest_png() -> bytes:
    return chest_like(300, 200, (50, 0, 117, 67), (184, 134, 250, 200))


def test_the_default_emulator_sends_no_version_header_and_versioned_does() -> None:
    payload = build_request(frontal_png=chest_png())
    with EmulatorServer(max_input_pixels=100) as small, EmulatorServer() as plain:
        with httpx.Client(timeout=30, trust_env=False) as http:
            ok = http.post(plain.model_url("cxrreportgen"), json=payload)
            versioned = http.post(plain.model_url("cxrreportgen", "versioned"), json=payload)
            refused = http.post(small.model_url("cxrreportgen"), json=payload)
            control = http.get(f"{plain.base_url}/_emulator/requests")
            health = http.get(plain.base_url + "/")
    assert ok.status_code == 200 and versioned.status_code == 200 and refused.status_code == 424
    for reply in (ok, refused, control, health):
        assert "x-ms-model-version" not in reply.headers and "azureml-model-version" not in reply.headers, reply
    assert versioned.headers["x-ms-model-version"] == MODEL_VERSION
    with EmulatorServer(variants=["versioned"]) as server, httpx.Client(timeout=30, trust_env=False) as http:
        assert http.post(server.url, json=payload).headers["x-ms-model-version"] == MODEL_VERSION
        # a request naming no-version on a versioned server: the request's variant wins
        plain_again = http.post(server.model_url("cxrreportgen", "no-version"), json=payload)
        assert "x-ms-model-version" not in plain_again.headers


@pytest.mark.slow
def test_the_demo_labels_its_results_with_the_configured_model_version(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from node.emulator.demo import DEMO_MODEL_VERSION, run_demo

    assert run_demo(tmp_path / "out", timeout=240) == 0
    printed = capsys.readouterr().out
    results = sorted((tmp_path / "out" / "pacs").glob("*.dcm"))
    assert {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in results} == {"SR", "PR"}, results
    for path in results:  # what the PACS received, read back from its files
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        versions = [str(i.SoftwareVersions) for i in ds.ContributingEquipmentSequence
                    if i.get("ManufacturerModelName") == "CXRReportGen"]
        assert versions == [DEMO_MODEL_VERSION], (path.name, versions)
    assert f"algorithm: CXRReportGen version {DEMO_MODEL_VERSION}" in printed, printed
    assert "unspecified" not in printed
