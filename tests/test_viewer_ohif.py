"""What a radiologist sees: the node's results in OHIF 3.13.2, in headless Chromium, on Orthanc + DICOMweb.

End to end: a PA + lateral chest study goes through ``dicom-node serve`` (CXRReportGen and MedImageInsight
emulators) into an Orthanc with the DICOMweb plugin, which OHIF reads from the same origin. In the browser:

- the findings SR: double-clicked in the study browser, the tracking prompt accepted: the measurement panel lists
  every box with its sentence as the label, and the console shows no error;
- the classification SR opens without an error.

Expected sentences and boxes come from the emulator's reply (the model's output), never from the SR writer.
Screenshots go to ``test-artifacts/viewer/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from nodekit import send
from nodeproc import NodeProcess, node_config
from viewer import DicomWebOrthanc, ViewerServer, chromium, console, console_errors, ohif_dist, screenshot

pytestmark = pytest.mark.slow

LABELS = ["x-ray chest posteroanterior", "x-ray chest anteroposterior", "x-ray chest lateral"]


def wait_for(driver, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    screenshot(driver, "timeout-" + "".join(c if c.isalnum() else "-" for c in what)[:40])
    raise AssertionError(f"OHIF: {what} not seen within {timeout} s; console errors: "
                         f"{console_errors(console(driver))}")


def open_study(driver, url: str, study_uid: str) -> None:
    driver.get(f"{url}/viewer?StudyInstanceUIDs={study_uid}")
    wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "[data-cy=study-browser-thumbnail]"), 60,
             "the study browser")
    time.sleep(2)
    for button in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Skip all']"):  # first-use tour
        button.click()


def double_click_series(driver, description: str) -> None:
    label = wait_for(driver, lambda: driver.find_elements(
        By.XPATH, f"//*[@data-cy='series-description-label' and contains(., '{description}')]"), 30,
        f"series {description!r} in the study browser")
    ActionChains(driver).double_click(label[0]).perform()


def expected_findings(frontal: Path) -> list[tuple[str, int]]:
    """(sentence, number of boxes) per finding: what the emulator answers for this frontal (the model's output)."""
    from converters.cxr import to_model_image
    from node.emulator.cxr import emulate_findings

    return [(text, len(boxes or [])) for text, boxes in emulate_findings(to_model_image(pydicom.dcmread(frontal)).png)]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, data: Path):
    """The CXR study and the node's results in a DICOMweb Orthanc; OHIF served beside it."""
    from node.demo import derive_cxr_study
    from node.emulator.server import EmulatorServer

    tmp = tmp_path_factory.mktemp("viewer")
    # the JPEG PA: OHIF 3.13.2 draws an image with PixelSpacing 0\0 (the MONOCHROME1 CR) black, boxes at NaN
    study = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    dist = ohif_dist()
    with EmulatorServer("127.0.0.1", 0) as emulator, DicomWebOrthanc(tmp / "orthanc") as pacs:
        cfg = node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port))
        cfg["endpoints"]["insight"] = {"model": "medimageinsight", "url": emulator.model_url("medimageinsight"),
                                       "auth": "none", "timeout_seconds": 30}
        cfg["rules"].append({"name": "view", "match": {"Modality": ["CR", "DX"]}, "endpoint": "insight",
                             "send_to": ["pacs"], "params": {"labels": {"view": LABELS}, "resize": 512}})
        # one worker thread: two pipelines importing at once in fresh threads have hit a _DeadlockError (import lock)
        cfg["queue"] = {"workers": 1}
        node = NodeProcess(tmp, cfg)
        node.start()
        try:
            send(node, study)
            got = pacs.wait_for_instances(3, timeout=180)  # findings SR, GSPS, classification SR
        finally:
            node.stop()
        for path in study:  # the source images, for the viewer
            pacs.client.post("/instances", content=path.read_bytes()).raise_for_status()
        with ViewerServer(dist, pacs.url) as web:
            yield {"web": web, "study_uid": pydicom.dcmread(study[0]).StudyInstanceUID, "results": got,
                   "findings": expected_findings(study[0])}


@pytest.fixture()
def browser():
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def test_findings_sr_hydrates_every_box_with_its_sentence(published, browser) -> None:
    expected = published["findings"]
    boxed = [text for text, n in expected for _ in range(n)]
    assert boxed, "the emulator should ground at least one finding"
    open_study(browser, published["web"].url, published["study_uid"])
    console(browser)  # what loading the study logged is not the SR's business
    double_click_series(browser, "AI findings CXRReportGen")
    yes = wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "[data-cy=yes-hydrate-btn]"), 30,
                   "the tracking prompt (the SR did not load)")
    yes[0].click()
    panel = browser.find_elements(By.CSS_SELECTOR, "[data-cy=trackedMeasurements-btn]")
    if panel:
        panel[0].click()

    def listed() -> list[str]:
        text = browser.find_element(By.TAG_NAME, "body").text
        return [s for s in boxed if s in text] if all(s in text for s in boxed) else []

    wait_for(browser, listed, 45, f"the measurement panel listing {boxed}")
    time.sleep(2)
    shot = screenshot(browser, "cxr-sr-hydrated")
    body = browser.find_element(By.TAG_NAME, "body").text
    for sentence in set(boxed):
        assert body.count(sentence) >= boxed.count(sentence), f"{sentence!r} listed fewer times than it has boxes"
    errors = console_errors(console(browser))
    assert not errors, f"console errors while loading the SR (screenshot {shot}):\n" + "\n".join(errors)


def test_classification_sr_opens_without_error(published, browser) -> None:
    open_study(browser, published["web"].url, published["study_uid"])
    console(browser)
    double_click_series(browser, "AI classification MedImageInsight")
    time.sleep(8)
    for button in browser.find_elements(By.CSS_SELECTOR, "[data-cy=yes-hydrate-btn]"):
        button.click()
    time.sleep(4)
    shot = screenshot(browser, "classification-sr")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Something went wrong" not in body, f"OHIF failed on the classification SR (screenshot {shot})"
    errors = console_errors(console(browser))
    assert not errors, f"console errors while loading the classification SR (screenshot {shot}):\n" + "\n".join(errors)
