"""What a radiologist sees: the node's results in OHIF 3.13.2, in headless Chromium, on Orthanc + DICOMweb.

End to end: a PA + lateral chest study goes through ``dicom-node serve`` (CXRReportGen and MedImageInsight
emulators, priors on: the patient's earlier study is in the PACS, so the findings SR references it) into an
Orthanc with the DICOMweb plugin, which OHIF reads from the same origin. In the browser:

- the findings SR (priors-referencing): double-clicked in the study browser, the tracking prompt accepted: the measurement panel lists
  every box with its sentence as the label, and the console shows no error;
- the classification SR opens without an error;
- the CT SEGs (MedImageParse 2D on two slices, 3D on the whole series): the 2D SEG, once accepted, is drawn on
  the slice it references and not on the next one; the 3D SEG loads without an error and is drawn too.

Expected sentences and boxes come from the emulator's reply (the model's output), never from the SR writer.
Screenshots go to ``test-artifacts/viewer/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from support.dcmtk import assert_ok, storescu
from support.nodekit import send
from support.nodeproc import NodeProcess, node_config
from support.ports import free_port
from PIL import Image
from support.studies import CURRENT_DATE, make_prior_study
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from support.viewer import (
    DicomWebOrthanc,
    ViewerServer,
    chromium,
    console,
    console_errors,
    ohif_dist,
    screenshot,
)

pytestmark = pytest.mark.slow

LABELS = ["x-ray chest posteroanterior", "x-ray chest anteroposterior", "x-ray chest lateral"]


def wait_for(driver: WebDriver, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    screenshot(driver, "timeout-" + "".join(c if c.isalnum() else "-" for c in what)[:40])
    raise AssertionError(f"OHIF: {what} not seen within {timeout} s; console errors: "
                         f"{console_errors(console(driver))}")


def open_study(driver: WebDriver, url: str, study_uid: str) -> None:
    driver.get(f"{url}/viewer?StudyInstanceUIDs={study_uid}")
    wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "[data-cy=study-browser-thumbnail]"), 60,
             "the study browser")
    time.sleep(2)
    for button in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Skip all']"):  # first-use tour
        button.click()


FIND_SERIES_JS = """
const [modality, description] = arguments;
for (const label of document.querySelectorAll('[data-cy=series-description-label]')) {
  if (!label.textContent.includes(description)) continue;
  let node = label.parentElement;
  while (node && !node.querySelector('[data-cy=series-modality-label]')) node = node.parentElement;
  const mod = node && node.querySelector('[data-cy=series-modality-label]');
  if (mod && mod.textContent.trim() === modality) return label;
}
return null;
"""


def double_click_series(driver: WebDriver, modality: str, description: str) -> None:
    """Double-click the study browser's series of this modality whose description contains ``description``."""
    label = wait_for(driver, lambda: driver.execute_script(FIND_SERIES_JS, modality, description), 30,
                     f"{modality} series {description!r} in the study browser")
    ActionChains(driver).double_click(label).perform()


def open_series_until(driver: WebDriver, modality: str, description: str, css: str, timeout: float,
                      what: str) -> list[Any]:
    """Double-click the series until ``css`` shows up (a double-click while OHIF is still busy loading the study
    can go unanswered on a loaded machine); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        double_click_series(driver, modality, description)
        try:
            return wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, css),
                            min(20.0, max(1.0, deadline - time.monotonic())), what)
        except AssertionError:
            if time.monotonic() >= deadline:
                raise


def expected_findings(frontal: Path) -> list[tuple[str, int]]:
    """(sentence, number of boxes) per finding: what the emulator answers for this frontal (the model's output)."""
    from converters.model_image import to_model_image
    from node.models.cxrreportgen.emulator import emulate_findings

    return [(text, len(boxes or [])) for text, boxes in emulate_findings(to_model_image(pydicom.dcmread(frontal)).png)]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[dict[str, Any]]:
    """The CXR study and the node's results in a DICOMweb Orthanc; OHIF served beside it."""
    from support.studies import derive_cxr_study
    from node.emulator.server import EmulatorServer

    tmp = tmp_path_factory.mktemp("viewer")
    # the JPEG PA: OHIF 3.13.2 draws an image with PixelSpacing 0\0 (the MONOCHROME1 CR) black, boxes at NaN
    study = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", study_date=CURRENT_DATE)
    prior = make_prior_study(tmp / "prior", data)
    dist = ohif_dist()
    node_port = free_port()
    with EmulatorServer("127.0.0.1", 0) as emulator, \
            DicomWebOrthanc(tmp / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", node_port)}) as pacs:
        for path in prior.files:
            pacs.upload(path)
        cfg = node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port),
                          priors={"query": "pacs", "method": "c-move", "lookback_days": 1825, "timeout_seconds": 30})
        cfg["node"]["port"] = node_port
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
            # the prior's 3 files, then the findings SR, the GSPS and the classification SR
            got = pacs.wait_for_instances(len(prior.files) + 3, timeout=180)
        finally:
            node.stop()
        findings_sr = next(ds for ds in got if ds.Modality == "SR" and "AI findings" in ds.get("SeriesDescription", "")
                           and ds.StudyInstanceUID != prior.study_uid)
        pertinent = {str(i.ReferencedSOPInstanceUID) for s in findings_sr.get("PertinentOtherEvidenceSequence", [])
                     for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        prior_frontal = str(pydicom.dcmread(prior.frontal, stop_before_pixels=True).SOPInstanceUID)
        assert pertinent == {prior_frontal}, "the findings SR should reference the prior study"
        for path in study:  # the source images, for the viewer
            pacs.client.post("/instances", content=path.read_bytes()).raise_for_status()
        with ViewerServer(dist, pacs.url) as web:
            yield {"web": web, "study_uid": pydicom.dcmread(study[0]).StudyInstanceUID, "results": got,
                   "findings": expected_findings(study[0])}


@pytest.fixture()
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def test_findings_sr_hydrates_every_box_with_its_sentence(published: dict[str, Any], browser: WebDriver) -> None:
    expected = published["findings"]
    boxed = [text for text, n in expected for _ in range(n)]
    assert boxed, "the emulator should ground at least one finding"
    open_study(browser, published["web"].url, published["study_uid"])
    console(browser)  # what loading the study logged is not the SR's business
    yes = open_series_until(browser, "SR", "AI findings CXRReportGen", "[data-cy=yes-hydrate-btn]", 60,
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


def test_classification_sr_opens_without_error(published: dict[str, Any], browser: WebDriver) -> None:
    open_study(browser, published["web"].url, published["study_uid"])
    console(browser)
    double_click_series(browser, "SR", "AI classification MedImageInsight")
    time.sleep(8)
    for button in browser.find_elements(By.CSS_SELECTOR, "[data-cy=yes-hydrate-btn]"):
        button.click()
    time.sleep(4)
    shot = screenshot(browser, "classification-sr")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Something went wrong" not in body, f"OHIF failed on the classification SR (screenshot {shot})"
    errors = console_errors(console(browser))
    assert not errors, f"console errors while loading the classification SR (screenshot {shot}):\n" + "\n".join(errors)


SEGMENTED_INSTANCES = (20, 40)  # the 2D rule's frames: instances:20,40
#: The first segment's display colour (dicom_out.seg.SEGMENT_COLORS_RGB[0] is (255, 64, 64)): typed here.
SEG_RGB = (255, 64, 64)


@pytest.fixture(scope="module")
def published_ct(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[dict[str, Any]]:
    """The 64-slice CT and its two SEGs (2D on two slices, 3D liver) in a DICOMweb Orthanc; OHIF beside it."""
    from node.emulator.server import EmulatorServer

    tmp = tmp_path_factory.mktemp("viewer-ct")
    ct = sorted((data / "ct/chest_ct_5mm_64slices").glob("*.dcm"))
    dist = ohif_dist()
    with EmulatorServer("127.0.0.1", 0) as emulator, DicomWebOrthanc(tmp / "orthanc") as pacs:
        cfg = node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port), quiet=1.5)
        cfg["endpoints"] = {
            "parse3d": {"model": "medimageparse3d", "url": emulator.model_url("medimageparse3d"), "auth": "none",
                        "timeout_seconds": 120},
            "parse": {"model": "medimageparse", "url": emulator.model_url("medimageparse"), "auth": "none",
                      "timeout_seconds": 60}}
        cfg["rules"] = [
            {"name": "liver-ct", "match": {"Modality": "CT"}, "endpoint": "parse3d", "params": {"prompt": "liver"},
             "send_to": ["pacs"]},
            {"name": "ct-slices", "match": {"Modality": "CT"}, "endpoint": "parse", "send_to": ["pacs"],
             "params": {"prompt": "lung", "frames": "instances:" + ",".join(map(str, SEGMENTED_INSTANCES))}}]
        cfg["queue"] = {"workers": 1}
        node = NodeProcess(tmp, cfg)
        node.start()
        try:
            assert_ok(storescu("127.0.0.1", node.port, ct, extra=["-x="]))
            got = pacs.wait_for_instances(2, timeout=240)
        finally:
            node.stop()
        assert_ok(storescu("127.0.0.1", pacs.dicom_port, ct, extra=["-x="]))  # the CT itself, for the viewer
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct]
        # slice order (head first, as OHIF stacks them) of the first segmented instance: 1-based
        order = sorted(headers, key=lambda h: -float(h.ImagePositionPatient[2]))
        first = 1 + [int(h.InstanceNumber) for h in order].index(SEGMENTED_INSTANCES[0])
        with ViewerServer(dist, pacs.url) as web:
            yield {"web": web, "study_uid": headers[0].StudyInstanceUID, "results": got, "first_slice": first,
                   "n_slices": len(ct)}


def seg_pixels(driver: WebDriver, name: str) -> tuple[int, Path]:
    """Pixels of the segment's colour in the viewport (a screenshot), and the screenshot."""
    shot = screenshot(driver, name)
    grid = driver.find_element(By.CSS_SELECTOR, "[data-cy=viewport-grid]").rect
    ratio = driver.execute_script("return window.devicePixelRatio") or 1
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    x0, y0 = int(grid["x"] * ratio), int(grid["y"] * ratio)
    view = px[y0:y0 + int(grid["height"] * ratio), x0:x0 + int(grid["width"] * ratio)]
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    hits = (r > 200) & (np.abs(g - SEG_RGB[1]) < 60) & (np.abs(b - SEG_RGB[2]) < 60) & (r - g > 100)
    return int(hits.sum()), shot


def slice_label(driver: WebDriver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "[data-cy=viewport-overlay-bottom-right]").text


def test_ct_seg_is_drawn_on_its_slice(published_ct: dict[str, Any], browser: WebDriver) -> None:
    first, n = published_ct["first_slice"], published_ct["n_slices"]
    open_study(browser, published_ct["web"].url, published_ct["study_uid"])
    console(browser)
    # the 2D SEG (not "... 3D")
    yes = open_series_until(browser, "SEG", "AI segmentation MedImageParse (", "[data-cy=yes-hydrate-btn]", 90,
                            "the 'open this Segmentation?' prompt")
    yes[0].click()
    wait_for(browser, lambda: f"({first}/{n})" in slice_label(browser), 30, f"slice {first}/{n} after loading")
    time.sleep(3)
    on, shot = seg_pixels(browser, "ct-seg-2d-on-its-slice")
    assert on > 2000, f"no segmentation overlay on slice {first} (screenshot {shot})"
    browser.find_element(By.CSS_SELECTOR, "[data-cy=viewport-pane]").click()
    ActionChains(browser).send_keys("\ue015").perform()  # arrow down: the next slice
    wait_for(browser, lambda: f"({first + 1}/{n})" in slice_label(browser) or f"({first - 1}/{n})"
             in slice_label(browser), 15, "the next slice")
    time.sleep(2)
    off, shot_next = seg_pixels(browser, "ct-seg-2d-next-slice")
    assert off < on / 50, f"overlay on a slice the SEG does not cover ({off} vs {on} pixels; {shot_next})"
    errors = console_errors(console(browser))
    assert not errors, "console errors while loading the SEG:\n" + "\n".join(errors)

    for button in open_series_until(browser, "SEG", "AI segmentation MedImageParse 3D", "[data-cy=yes-hydrate-btn]",
                                    90, "the 3D SEG's prompt"):
        button.click()
    time.sleep(8)
    drawn, shot_3d = seg_pixels(browser, "ct-seg-3d")
    assert drawn > 2000, f"the 3D SEG is not drawn (screenshot {shot_3d})"
    errors = console_errors(console(browser))
    assert not errors, "console errors while loading the 3D SEG:\n" + "\n".join(errors)
