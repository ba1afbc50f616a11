"""What a radiologist sees: the node's results in OHIF 3.13.2, in headless Chromium, on Orthanc + DICOMweb.

End to end: a PA + lateral chest study goes through ``dicom-node serve`` (CXRReportGen and MedImageInsight
emulators, priors on: the patient's earlier study is in the PACS, so the findings SR references it) into an
Orthanc with the DICOMweb plugin, which OHIF reads from the same origin. In the browser:

- the findings SR (priors-referencing): double-clicked in the study browser, the tracking prompt accepted: the
  measurement panel lists every box with its sentence as the label, and each box is drawn (annotation yellow, read
  in the screenshot) on the frontal image exactly where the emulator's answer puts it, and not inside it; no
  console error;
- the classification SR: opens in OHIF's SR viewport (no "unsupported display set" warning on its thumbnail) on the
  image of the SR's first group, drawn with a green frame around the whole image and, beside it, each label with
  its probability as the SR in the PACS holds them (SVG text in the page, green pixels in the screenshot there);
  OHIF reads every image's group, but its SR viewport shows the first group's image only;
- the CT SEGs (MedImageParse 2D on two slices, 3D on the whole series): the 2D SEG, once accepted, is drawn on the
  slice it references and not on the next one; the 3D SEG, opened in a fresh browser (no other segmentation
  loaded), is drawn on a middle slice where the CT's own voxels are above 0 HU (the emulator's rule) and nowhere
  else.

Expected sentences and boxes come from the emulator's answer (the model's output), probabilities from the SR file
Orthanc holds, masks from the CT's pixels, never from the node's writers. Positions on the screen use the viewer's
own image-to-canvas transform (``support/viewer_geometry.py``); what is checked is the screenshot.
Screenshots go to ``test-artifacts/viewer/``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from support import viewer_geometry as geo
from support.dcmtk import assert_ok, storescu
from support.nodekit import send
from support.nodeproc import NodeProcess, node_config
from support.ports import free_port
from PIL import Image
from support.studies import CURRENT_DATE, make_prior_study
from selenium.common.exceptions import StaleElementReferenceException
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
    """The viewer on this study, its study browser listed and its first image drawn (the first-use tour is off:
    support/viewer.py). Opening another series while that image still loads destroys its viewport under the
    pending load, which OHIF 3.13.2 reports as "Something went wrong" (IMAGE_LOAD_ERROR, "The stack viewport has
    been destroyed")."""
    driver.get(f"{url}/viewer?StudyInstanceUIDs={study_uid}")
    wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "[data-cy=study-browser-thumbnail]"), 120,
             "the study browser")
    wait_for(driver, lambda: driver.execute_script(geo.IMAGE_DRAWN_JS), 120, "the study's first image drawn")


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

#: Per study-browser entry: modality, description, and whether OHIF put its display-set warning (the triangle whose
#: tooltip says e.g. "Unsupported display set.") on it.
SERIES_WARNINGS_JS = """
const out = [];
for (const label of document.querySelectorAll('[data-cy=series-description-label]')) {
  let node = label;
  while (node && !node.getAttribute('draggable')) node = node.parentElement;
  if (!node) continue;
  const mod = node.querySelector('[data-cy=series-modality-label]');
  out.push([mod ? mod.textContent.trim() : '', label.textContent.trim(),
            !!node.querySelector('[id^=display-set-tooltip-], #status-warning')]);
}
return out;
"""


def double_click_series(driver: WebDriver, modality: str, description: str) -> None:
    """Double-click the study browser's series of this modality whose description contains ``description``."""
    label = wait_for(driver, lambda: driver.execute_script(FIND_SERIES_JS, modality, description), 30,
                     f"{modality} series {description!r} in the study browser")
    ActionChains(driver).double_click(label).perform()


def open_series_until(driver: WebDriver, modality: str, description: str, ready: Callable[[], Any], timeout: float,
                      what: str, opened: Callable[[], Any] | None = None) -> Any:
    """Double-click the series until OHIF answers (``opened()``, by default ``ready()``: a double-click can go
    unanswered on a loaded machine), then wait for ``ready()``; its value, or AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    opened = opened or ready
    while True:
        double_click_series(driver, modality, description)
        try:
            wait_for(driver, opened, min(30.0, max(1.0, deadline - time.monotonic())), what)
            break
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
    return wait_for(driver, ready, max(1.0, deadline - time.monotonic()), what)


def ohif_failure(driver: WebDriver) -> str:
    """OHIF's "Something went wrong" notice with its details and the console errors; "" when there is none."""
    if "Something went wrong" not in driver.find_element(By.TAG_NAME, "body").text:
        return ""
    for button in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Show Details']"):
        button.click()
    time.sleep(1)  # the details dialog opens; this is for the failure message only
    screenshot(driver, "ohif-failure")
    return driver.find_element(By.TAG_NAME, "body").text[-3000:] + "\n" + "\n".join(console_errors(console(driver)))


def present(driver: WebDriver, css: str) -> Callable[[], list[Any]]:
    return lambda: driver.find_elements(By.CSS_SELECTOR, css)


def pointer_off_the_viewport(driver: WebDriver) -> None:
    """Rest the mouse on the study browser: an annotation under the pointer is drawn in its highlight colour."""
    ActionChains(driver).move_to_element(
        driver.find_element(By.CSS_SELECTOR, "[data-cy=study-browser-thumbnail]")).perform()


def screenshots_until(driver: WebDriver, name: str, measure: Callable[[geo.Shot], Any], ok: Callable[[Any], bool],
                      timeout: float, zoom: float | None = None) -> tuple[geo.Shot, Any]:
    """Screenshots until ``ok(measure(shot))`` (the viewer renders asynchronously) or ``timeout``; the last shot and
    its measure, for the caller to assert on. With ``zoom``, the viewport is set to it and rendered again before
    each try: OHIF 3.13.2 draws annotations that arrive after the viewport's last render only at its next one (a
    zoom, a scroll), and on a loaded machine an SR's can arrive that late."""
    deadline = time.monotonic() + timeout
    while True:
        if zoom is not None:
            driver.execute_script(geo.ZOOM_JS, zoom)
            time.sleep(0.3)
        ratio = driver.execute_script("return window.devicePixelRatio") or 1
        shot = geo.Shot.read(screenshot(driver, name), ratio)
        result = measure(shot)
        if ok(result) or time.monotonic() >= deadline:
            return shot, result
        time.sleep(0.5)


def viewport_state(driver: WebDriver) -> dict[str, Any]:
    return wait_for(driver, lambda: driver.execute_script(geo.VIEWPORT_STATE_JS), 30, "the cornerstone viewport")


def sop_of(image_id: str) -> str:
    """The SOP Instance UID in a ``wadors:`` image id (``.../instances/<uid>/frames/1``)."""
    return image_id.split("/instances/", 1)[1].split("/", 1)[0]


def content_items(items: Any) -> Iterator[Any]:
    """Every SR content item, depth first."""
    for item in items or []:
        yield item
        yield from content_items(item.get("ContentSequence"))


def concept(item: Any) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in item else ""


def expected_findings(frontal: Path, requests: list[dict[str, Any]]) -> list[tuple[str, list[tuple[float, ...]]]]:
    """(sentence, boxes) per finding: the emulator's answer (the model's output), each normalised box mapped to
    source pixels (x = column, y = row) by the centre-square-crop rule the emulator documents. The answer is the
    emulator's deterministic function of the frontal PNG it received, which the request log's digest pins."""
    from converters.model_image import to_model_image
    from node.models.cxrreportgen.emulator import emulate_findings

    ds = pydicom.dcmread(frontal)
    png = to_model_image(ds).png
    digest = hashlib.sha256(base64.b64encode(png)).hexdigest()
    received = [r["digests"]["frontal_image"] for r in requests if r["status"] == 200
                and "frontal_image" in (r.get("digests") or {})]
    assert received == [digest], "the emulator should have answered once, on this frontal PNG"
    width, height = int(ds.Columns), int(ds.Rows)
    side = min(width, height)
    dx, dy = (width - side) / 2, (height - side) / 2
    return [(text, [(x0 * side + dx, y0 * side + dy, x1 * side + dx, y1 * side + dy) for x0, y0, x1, y1 in boxes or []])
            for text, boxes in emulate_findings(png)]


def sr_rectangles(sr: pydicom.Dataset) -> list[tuple[float, float, float, float]]:
    """The bounding box (x0, y0, x1, y1) of every SCOORD in the SR, as the file holds it."""
    out = []
    for item in content_items(sr.ContentSequence):
        if item.ValueType == "SCOORD":
            xy = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
            out.append((xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()))
    return out


def classification_groups(sr: pydicom.Dataset) -> list[dict[str, Any]]:
    """Per measurement group of the classification SR, in order: the image its SCOORD outlines, that outline's
    bounding box, and each label's probability (NUM items), as the file holds them."""
    groups = []
    for item in content_items(sr.ContentSequence):
        if item.ValueType != "CONTAINER" or concept(item) != "Measurement Group":
            continue
        children = list(item.ContentSequence)
        scoord = next((c for c in children if c.ValueType == "SCOORD"), None)
        assert scoord is not None, "every classification group outlines its image (OHIF needs coordinates in each)"
        image = next(c for c in content_items([scoord]) if c.ValueType == "IMAGE")
        xy = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
        groups.append({
            "image": str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            "outline": (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()),
            "probabilities": [(concept(c), float(c.MeasuredValueSequence[0].NumericValue))
                              for c in children if c.ValueType == "NUM"],
        })
    return groups


LABEL_LINE = re.compile(r"^(?P<label>.+?):\s*(?P<value>[0-9]+(?:\.[0-9]+)?)")


def shows_probabilities(lines: list[str], probabilities: list[tuple[str, float]]) -> list[str]:
    """What is missing from ``lines`` (OHIF's "label: 0.21 1"): each label with its probability to two decimals."""
    shown = {}
    for line in lines:
        match = LABEL_LINE.match(line.strip())
        if match:
            shown[match["label"].strip()] = float(match["value"])
    return [f"{label}: {p:.2f}" for label, p in probabilities
            if label not in shown or abs(shown[label] - p) > 0.005 + 1e-9]


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
        current = [ds for ds in got if ds.StudyInstanceUID != prior.study_uid]
        findings_sr = next(ds for ds in current if ds.Modality == "SR"
                           and "AI findings" in ds.get("SeriesDescription", ""))
        classification_sr = next(ds for ds in current if ds.Modality == "SR"
                                 and "AI classification" in ds.get("SeriesDescription", ""))
        pertinent = {str(i.ReferencedSOPInstanceUID) for s in findings_sr.get("PertinentOtherEvidenceSequence", [])
                     for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        prior_frontal = str(pydicom.dcmread(prior.frontal, stop_before_pixels=True).SOPInstanceUID)
        assert pertinent == {prior_frontal}, "the findings SR should reference the prior study"
        findings = expected_findings(study[0], emulator.requests)
        for path in study:  # the source images, for the viewer
            pacs.client.post("/instances", content=path.read_bytes()).raise_for_status()
        headers = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in study)}
        with ViewerServer(dist, pacs.url) as web:
            yield {"web": web, "study_uid": pydicom.dcmread(study[0]).StudyInstanceUID, "results": got,
                   "findings": findings, "findings_sr": findings_sr,
                   "classification_sr": classification_sr, "headers": headers,
                   "frontal_uid": str(pydicom.dcmread(study[0], stop_before_pixels=True).SOPInstanceUID)}


@pytest.fixture()
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


#: Zoomed out from fit-to-window, so that boxes and frames on the image's border lie inside the canvas.
ZOOM_OUT = 0.8
EDGE_DRAWN = 0.9    # fraction of an edge's points (corners left out) that must show the colour
ELSEWHERE = 0.2     # at most this fraction on the same rectangle shrunk to its middle half (nothing drawn there)


def rectangle_coverage(driver: WebDriver, shot: geo.Shot, box: tuple[float, float, float, float],
                       colour: geo.ColourTest, canvas: list[float]) -> dict[str, Any]:
    """Edge coverage of the box (image pixels) as drawn, and of the same box shrunk to its middle half."""
    x0, y0, x1, y1 = box
    qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
    image_id, page = geo.to_page(driver, geo.rectangle_corners(x0, y0, x1, y1)
                                 + geo.rectangle_corners(x0 + qx, y0 + qy, x1 - qx, y1 - qy))
    return {"image": sop_of(image_id), "in_canvas": geo.inside_canvas(page[:4], canvas),
            "edges": geo.edge_coverage(shot, page[:4], colour), "inner": geo.edge_coverage(shot, page[4:], colour)}


def test_findings_sr_draws_every_box_where_the_model_put_it(published: dict[str, Any], browser: WebDriver) -> None:
    boxes = [(text, box) for text, found in published["findings"] for box in found]
    boxed = [text for text, _ in boxes]
    assert boxes, "the emulator should ground at least one finding"
    open_study(browser, published["web"].url, published["study_uid"])
    console(browser)  # what loading the study logged is not the SR's business
    yes = open_series_until(browser, "SR", "AI findings CXRReportGen", present(browser, "[data-cy=yes-hydrate-btn]"),
                            150, "the tracking prompt (the SR did not load)")
    yes[0].click()
    panel = browser.find_elements(By.CSS_SELECTOR, "[data-cy=trackedMeasurements-btn]")
    if panel:
        panel[0].click()

    def listed() -> list[str]:
        text = browser.find_element(By.TAG_NAME, "body").text
        return [s for s in boxed if s in text] if all(s in text for s in boxed) else []

    wait_for(browser, listed, 60, f"the measurement panel listing {boxed}")
    browser.execute_script(geo.ZOOM_JS, ZOOM_OUT)
    pointer_off_the_viewport(browser)
    canvas = viewport_state(browser)["canvas"]

    def measure(shot: geo.Shot) -> list[dict[str, Any]]:
        return [rectangle_coverage(browser, shot, box, geo.yellow, canvas) for _, box in boxes]

    shot, drawn = screenshots_until(browser, "cxr-sr-hydrated", measure,
                                    lambda got: all(min(d["edges"]) >= EDGE_DRAWN for d in got), 60, zoom=ZOOM_OUT)
    for (text, box), d in zip(boxes, drawn):
        assert d["image"] == published["frontal_uid"], f"the boxes should be on the frontal image ({shot.path})"
        assert d["in_canvas"], f"box {box} of {text!r} is not inside the viewport at zoom {ZOOM_OUT} ({shot.path})"
        assert min(d["edges"]) >= EDGE_DRAWN, \
            f"box {box} of {text!r} not drawn where the model put it: edge coverage {d['edges']} ({shot.path})"
        assert max(d["inner"]) <= ELSEWHERE, \
            f"yellow inside box {box} of {text!r}, where nothing is drawn: {d['inner']} ({shot.path})"
    body = browser.find_element(By.TAG_NAME, "body").text
    for sentence in set(boxed):
        assert body.count(sentence) >= boxed.count(sentence), f"{sentence!r} listed fewer times than it has boxes"
    unboxed = [text for text, found in published["findings"] if not found]
    assert unboxed, "the emulator should answer a sentence without a box too"
    shown = [text for text in unboxed if text in body]
    assert not shown, f"OHIF 3.13.2 shows no box-less sentence of a TID 1500 SR (docs/viewers.md), yet it shows {shown}"
    # and the SR in the PACS holds those boxes (what the viewer drew came from it)
    held = sorted(sr_rectangles(published["findings_sr"]))
    assert len(held) == len(boxes) and np.allclose(held, sorted(box for _, box in boxes), atol=0.5), held
    failure = ohif_failure(browser)
    assert not failure, f"OHIF failed on the findings SR ({shot.path}):\n{failure}"
    errors = console_errors(console(browser))
    assert not errors, f"console errors while loading the SR (screenshot {shot.path}):\n" + "\n".join(errors)


#: An SR in the active viewport (OHIF's SR badge), drawn or not yet.
SR_BADGE_JS = """
const pane = document.querySelector('[data-cy=viewport-pane][data-is-active=true]');
const badge = pane && pane.querySelector('[data-cy^=ModalityLoadBadge]');
return !!(badge && badge.textContent.includes('SR'));
"""

#: The label texts drawn in the active viewport's annotation layer: lines and page box of each.
ANNOTATION_TEXT_JS = """
const pane = document.querySelector('[data-cy=viewport-pane][data-is-active=true]');
return Array.from(pane.querySelectorAll('svg[id^=svg-layer] text')).map(t => ({
  lines: Array.from(t.querySelectorAll('tspan')).map(s => s.textContent),
  box: (r => [r.left, r.top, r.width, r.height])(t.getBoundingClientRect())}));
"""

#: Every measurement OHIF read from the classification SR: its image and its labels.
SR_MEASUREMENTS_JS = """
const sets = window.services.displaySetService.getActiveDisplaySets()
  .filter(d => d.Modality === 'SR' && (d.SeriesDescription || '').includes('classification'));
return sets.flatMap(d => (d.measurements || []).map(m => ({imageId: m.imageId || '',
  labels: (m.labels || []).map(l => `${l.label}: ${l.value}`)})));
"""

CLASSIFICATION_ZOOM = 0.6  # the probabilities are written to the right of the frame: room for them in the canvas


def test_classification_sr_shows_the_first_image_framed_with_its_label_probabilities(
        published: dict[str, Any], browser: WebDriver) -> None:
    groups = classification_groups(published["classification_sr"])
    assert len(groups) == 2 and {g["image"] for g in groups} == set(published["headers"]), groups
    first = groups[0]
    source = published["headers"][first["image"]]
    frame = (0.0, 0.0, float(source.Columns), float(source.Rows))  # "around the whole image": the source's size
    open_study(browser, published["web"].url, published["study_uid"])
    console(browser)
    open_series_until(browser, "SR", "AI classification MedImageInsight",
                      lambda: browser.execute_script(SR_BADGE_JS) and browser.execute_script(geo.IMAGE_DRAWN_JS),
                      150, "the classification SR in the SR viewport, its image drawn",
                      opened=lambda: browser.execute_script(SR_BADGE_JS))
    warnings = {(m, d): w for m, d, w in browser.execute_script(SERIES_WARNINGS_JS)}
    assert warnings.get(("PR", "AI findings CXRReportGen (EMULATED)")) is True, \
        f"the check should see OHIF's warning on the GSPS it does not support: {warnings}"
    assert warnings.get(("SR", "AI classification MedImageInsight (EMULATED)")) is False, warnings
    browser.execute_script(geo.ZOOM_JS, CLASSIFICATION_ZOOM)
    pointer_off_the_viewport(browser)
    canvas = viewport_state(browser)["canvas"]

    def measure(shot: geo.Shot) -> dict[str, Any]:
        got = rectangle_coverage(browser, shot, frame, geo.green, canvas)
        got["texts"] = browser.execute_script(ANNOTATION_TEXT_JS)
        return got

    shot, drawn = screenshots_until(browser, "classification-sr", measure,
                                    lambda d: min(d["edges"]) >= EDGE_DRAWN and d["texts"], 60,
                                    zoom=CLASSIFICATION_ZOOM)
    assert drawn["image"] == first["image"], "OHIF should show the image of the SR's first group"
    assert drawn["in_canvas"], f"the frame is not inside the viewport at zoom {CLASSIFICATION_ZOOM} ({shot.path})"
    assert min(drawn["edges"]) >= EDGE_DRAWN, \
        f"no frame around the whole image: edge coverage {drawn['edges']} ({shot.path})"
    assert max(drawn["inner"]) <= ELSEWHERE, f"green inside the frame: {drawn['inner']} ({shot.path})"
    lines = [line for text in drawn["texts"] for line in text["lines"]]
    missing = shows_probabilities(lines, first["probabilities"])
    assert not missing, f"the viewer does not show {missing}; it shows {lines} ({shot.path})"
    label_box = next(t["box"] for t in drawn["texts"] if not shows_probabilities(t["lines"], first["probabilities"]))
    left, top, width, height = label_box
    assert geo.inside_canvas([[left, top], [left + width, top + height]], canvas, margin=0), \
        f"the probabilities are drawn outside the viewport: {label_box} ({shot.path})"
    text_pixels = shot.pixels[int(top * shot.ratio):int((top + height) * shot.ratio),
                              int(left * shot.ratio):int((left + width) * shot.ratio)]
    assert geo.green(text_pixels).mean() > 0.03, f"the probabilities' text is not drawn ({shot.path})"
    # OHIF reads every image's group (the SR viewport then shows the first one's image: its arrows move within that
    # image's series only)
    read = browser.execute_script(SR_MEASUREMENTS_JS)
    for group in groups:
        labels = [m["labels"] for m in read if sop_of(m["imageId"]) == group["image"]]
        assert labels and not shows_probabilities(labels[0], group["probabilities"]), (group, read)
    failure = ohif_failure(browser)
    assert not failure, f"OHIF failed on the classification SR ({shot.path}):\n{failure}"
    errors = console_errors(console(browser))
    assert not errors, f"console errors while loading the classification SR ({shot.path}):\n" + "\n".join(errors)


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
                   "n_slices": len(ct), "ct": {str(h.SOPInstanceUID): p for h, p in zip(headers, ct)}}


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


def seg_pixels_until(driver: WebDriver, name: str, ok: Callable[[int], bool], timeout: float) -> tuple[int, Path]:
    """:func:`seg_pixels` until ``ok`` of the count (the viewer renders asynchronously) or ``timeout``: the last."""
    deadline = time.monotonic() + timeout
    while True:
        count, shot = seg_pixels(driver, name)
        if ok(count) or time.monotonic() >= deadline:
            return count, shot
        time.sleep(0.5)


def slice_label(driver: WebDriver) -> str:
    try:
        return driver.find_element(By.CSS_SELECTOR, "[data-cy=viewport-overlay-bottom-right]").text
    except StaleElementReferenceException:  # OHIF re-rendered the overlay between the find and the read
        return ""


def test_ct_seg_is_drawn_on_its_slice(published_ct: dict[str, Any], browser: WebDriver) -> None:
    first, n = published_ct["first_slice"], published_ct["n_slices"]
    open_study(browser, published_ct["web"].url, published_ct["study_uid"])
    console(browser)
    # the 2D SEG (not "... 3D")
    yes = open_series_until(browser, "SEG", "AI segmentation MedImageParse (", present(browser,
                            "[data-cy=yes-hydrate-btn]"), 150, "the 'open this Segmentation?' prompt")
    yes[0].click()
    wait_for(browser, lambda: f"({first}/{n})" in slice_label(browser), 30, f"slice {first}/{n} after loading")
    on, shot = seg_pixels_until(browser, "ct-seg-2d-on-its-slice", lambda count: count > 2000, 30)
    assert on > 2000, f"no segmentation overlay on slice {first} (screenshot {shot})"
    browser.find_element(By.CSS_SELECTOR, "[data-cy=viewport-pane]").click()
    ActionChains(browser).send_keys("\ue015").perform()  # arrow down: the next slice
    wait_for(browser, lambda: f"({first + 1}/{n})" in slice_label(browser) or f"({first - 1}/{n})"
             in slice_label(browser), 15, "the next slice")
    off, shot_next = seg_pixels_until(browser, "ct-seg-2d-next-slice", lambda count: count < on / 50, 15)
    assert off < on / 50, f"overlay on a slice the SEG does not cover ({off} vs {on} pixels; {shot_next})"
    errors = console_errors(console(browser))
    assert not errors, "console errors while loading the SEG:\n" + "\n".join(errors)


SEG_INSIDE = 0.95   # fraction of the mask's inner pixels (2 px from its border) drawn in the segment's colour
SEG_OUTSIDE = 0.03  # at most this fraction of pixels 3 px or more away from the mask


def jump_to_slice(driver: WebDriver, index: int) -> None:
    done = driver.execute_async_script(geo.JUMP_ASYNC_JS, index)
    assert done is True, f"cornerstone could not show slice {index}: {done}"


def test_ct_3d_seg_is_drawn_where_the_ct_is_above_0_hu(published_ct: dict[str, Any], browser: WebDriver) -> None:
    """A fresh browser: the 3D SEG is the only segmentation loaded, so its colour can only come from it."""
    n = published_ct["n_slices"]
    middle = n // 2
    open_study(browser, published_ct["web"].url, published_ct["study_uid"])
    console(browser)

    def measure(shot: geo.Shot) -> dict[str, Any]:
        sop = sop_of(viewport_state(browser)["imageId"])
        ds = pydicom.dcmread(published_ct["ct"][sop])
        hu = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        mask = hu > 0  # the emulator's documented rule, on the CT's own voxels
        rows, columns = mask.shape
        inside = geo.pixel_centres_to_page(browser, rows, columns, geo.erode(mask, 2))
        outside = geo.pixel_centres_to_page(browser, rows, columns, ~geo.dilate(mask, 3))
        return {"sop": sop, "mask": int(mask.sum()), "inside": float(shot.colour_at(inside, geo.reddish).mean()),
                "outside": float(shot.colour_at(outside, geo.reddish).mean())}

    # the CT alone first (OHIF previews a SEG's overlay as soon as it is opened, before its prompt is answered)
    jump_to_slice(browser, middle)
    wait_for(browser, lambda: f"({middle + 1}/{n})" in slice_label(browser), 30, f"slice {middle + 1}/{n}")
    _, before = screenshots_until(browser, "ct-seg-3d-before", measure, lambda _: True, 0)
    assert before["mask"] > 5000, f"slice {middle + 1} should hold tissue above 0 HU: {before}"
    assert before["inside"] < 0.01, f"red on the CT before the SEG is opened: {before}"
    yes = open_series_until(browser, "SEG", "AI segmentation MedImageParse 3D",
                            present(browser, "[data-cy=yes-hydrate-btn]"), 150, "the 3D SEG's prompt")
    yes[0].click()
    wait_for(browser, lambda: seg_pixels(browser, "ct-seg-3d-loading")[0] > 2000, 60, "the 3D SEG drawn")
    jump_to_slice(browser, middle)
    wait_for(browser, lambda: f"({middle + 1}/{n})" in slice_label(browser), 30, f"slice {middle + 1}/{n}")
    pointer_off_the_viewport(browser)
    shot, drawn = screenshots_until(browser, "ct-seg-3d", measure,
                                    lambda d: d["inside"] >= SEG_INSIDE and d["outside"] <= SEG_OUTSIDE, 45)
    assert drawn["inside"] >= SEG_INSIDE, f"the 3D SEG is not drawn where HU > 0 on its slice: {drawn} ({shot.path})"
    assert drawn["outside"] <= SEG_OUTSIDE, f"the 3D SEG is drawn where HU <= 0: {drawn} ({shot.path})"
    errors = console_errors(console(browser))
    assert not errors, "console errors while loading the 3D SEG:\n" + "\n".join(errors)
