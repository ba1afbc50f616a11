"""Previews of a study's results as a radiologist would glance at them: PNGs drawn from the DICOM objects.

GSPS: its graphics (the boxes) drawn on the image it references. SEG: the masks of a few non-empty frames laid
over their source slices, side by side. SR: the findings' sentences (text, shown on the page), boxed or not.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import pydicom
from PIL import Image, ImageDraw

from converters.pixels import to_uint8

MAX_SIDE = 768
#: TEXT items that hold a finding's sentence in the node's TID 1500 SRs (dicom_out/sr.py): (DCM, "Finding") for the
#: sentences without a box (Qualitative Evaluations), (DCM, "Comment") for the sentence of each box's group.
SENTENCE_CODES = ("121071", "121106")
SEG_FRAMES = 3
COLOURS = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (80, 255, 80)]


def _fit(img: Image.Image) -> Image.Image:
    img.thumbnail((MAX_SIDE, MAX_SIDE))
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def gsps_png(gsps: pydicom.Dataset, source_path: Callable[[str], str | None]) -> bytes | None:
    """The presentation state's boxes and labels on the image it references (None when that image is gone)."""
    refs = [str(img.ReferencedSOPInstanceUID) for s in gsps.get("ReferencedSeriesSequence", [])
            for img in s.get("ReferencedImageSequence", [])]
    path = next((p for p in map(source_path, refs) if p), None)
    if path is None:
        return None
    img = Image.fromarray(to_uint8(pydicom.dcmread(path))).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, img.width // 300)
    for ann in gsps.get("GraphicAnnotationSequence", []):
        for g in ann.get("GraphicObjectSequence", []):
            pts = [float(v) for v in g.GraphicData]
            draw.line(list(zip(pts[0::2], pts[1::2])), fill=COLOURS[0], width=width)
        for t in ann.get("TextObjectSequence", []):
            anchor = t.get("AnchorPoint") or t.get("BoundingBoxTopLeftHandCorner")
            if anchor is not None:
                draw.text((float(anchor[0]) + 4, float(anchor[1]) + 2), str(t.UnformattedTextValue), fill=COLOURS[2])
    return _png(_fit(img))


def seg_png(seg: pydicom.Dataset, source_path: Callable[[str], str | None]) -> bytes | None:
    """Up to three non-empty SEG frames over their source slices, side by side (None when nothing to show)."""
    masks = seg.pixel_array
    if masks.ndim == 2:
        masks = masks[None]
    frames = seg.PerFrameFunctionalGroupsSequence
    nonempty = [i for i in range(len(frames)) if masks[i].any()]
    if not nonempty:
        return None
    picks = [nonempty[int(k * (len(nonempty) - 1) / max(1, SEG_FRAMES - 1))] for k in range(min(SEG_FRAMES, len(nonempty)))]
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    tiles = []
    for i in dict.fromkeys(picks):
        fg = frames[i]
        # with one segment, highdicom puts its identification in the shared functional groups
        ident = fg.get("SegmentIdentificationSequence") or (shared.get("SegmentIdentificationSequence")
                                                             if shared is not None else None)
        try:
            src = fg.DerivationImageSequence[0].SourceImageSequence[0]
            segment = int(ident[0].ReferencedSegmentNumber)
        except (AttributeError, IndexError, TypeError):
            continue
        path = source_path(str(src.ReferencedSOPInstanceUID))
        if path is None:
            continue
        frame = int(src.get("ReferencedFrameNumber", 1) or 1) - 1
        base = np.stack([to_uint8(pydicom.dcmread(path), frame)] * 3, axis=-1).astype(np.float32)
        mask = masks[i] > (0 if seg.SegmentationType == "BINARY" else masks[i].max() / 2)
        colour = np.array(COLOURS[(segment - 1) % len(COLOURS)], dtype=np.float32)
        base[mask] = base[mask] * 0.5 + colour * 0.5
        tiles.append(Image.fromarray(base.astype(np.uint8)))
    if not tiles:
        return None
    tiles = [_fit(t) for t in tiles]
    out = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width
    return _png(out)


def sr_findings(sr: pydicom.Dataset) -> list[str]:
    """The report's finding sentences, boxed (a measurement group's Comment) or not (a TEXT Finding), in document
    order, without repeats (a finding with two boxes has its sentence in each box's group)."""
    found: list[str] = []

    def walk(items) -> None:
        for item in items:
            concept = item.get("ConceptNameCodeSequence")
            is_sentence = (concept is not None and concept[0].CodeValue in SENTENCE_CODES
                           and concept[0].CodingSchemeDesignator == "DCM")
            if item.get("ValueType") == "TEXT" and is_sentence and str(item.TextValue) not in found:
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))
    return found
