"""Chest X-ray study -> the inputs of the report models: chosen views as PNGs plus the clinical text.

The steps, each in its own module:

* :mod:`converters.cxr_select`: which files are radiographs (:func:`~converters.cxr_select.skip_reason`) and which
  frontal and lateral image to send (:func:`~converters.cxr_select.select_views`);
* :mod:`converters.cxr_views`: the view of one image (:func:`~converters.cxr_views.classify_view`);
* :mod:`converters.cxr_text`: the clinical text (:func:`~converters.cxr_text.clinical_text`);
* :mod:`converters.model_image`: the model PNG and its mapping back to the source pixels
  (:func:`~converters.model_image.to_model_image`).

:func:`build_cxr_inputs` puts them together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from converters.cxr_select import ViewSelection, image_key, read_header, select_views, skip_reason
from converters.cxr_text import ClinicalText, clinical_text, views_phrase
from converters.model_image import ModelImage, to_model_image

log = logging.getLogger(__name__)

__all__ = ["CxrInputs", "NoFrontalView", "build_cxr_inputs"]


class NoFrontalView(Exception):
    """No usable frontal chest image; the message lists what was seen, ``selection`` holds the details."""

    def __init__(self, message: str, selection: ViewSelection | None = None) -> None:
        super().__init__(message)
        self.selection = selection


@dataclass(frozen=True)
class CxrInputs:
    """What a chest X-ray report model needs from one study."""

    frontal: ModelImage
    lateral: ModelImage | None
    frontal_path: Path
    lateral_path: Path | None
    text: ClinicalText
    selection: ViewSelection


def build_cxr_inputs(paths: Sequence[Path], *, classified: Mapping[str, str] | None = None,
                     max_side: int | None = None) -> CxrInputs:
    """Read the headers of ``paths``, choose the views, convert them and gather the clinical text.

    Unreadable files and files without Pixel Data are skipped with a reason, like the non-images of
    :func:`~converters.cxr_select.select_views`. The clinical text comes from the frontal image's header.

    Raises:
        NoFrontalView: no frontal image; the message lists every file's reason.
        converters.pixels.PixelConversionError: a chosen image cannot be converted.
    """
    if not paths:
        raise ValueError("build_cxr_inputs needs at least one file")
    selection = choose_views(paths, classified)
    if selection.frontal is None:
        seen = "; ".join(f"{key}: {why}" for key, why in selection.reasons.items())
        raise NoFrontalView(f"no frontal chest image among {len(paths)} file(s): {seen}", selection)

    frontal_ds = pydicom.dcmread(selection.frontal)
    frontal = to_model_image(frontal_ds, max_side=max_side)
    lateral = None
    if selection.lateral is not None:
        lateral = to_model_image(pydicom.dcmread(selection.lateral), max_side=max_side)
    return CxrInputs(
        frontal=frontal,
        lateral=lateral,
        frontal_path=selection.frontal,
        lateral_path=selection.lateral,
        text=clinical_text(frontal_ds, views=views_phrase(selection)),
        selection=selection,
    )


def choose_views(paths: Sequence[Path], classified: Mapping[str, str] | None = None) -> ViewSelection:
    """Read the headers of ``paths`` (without pixel data) and choose the frontal and lateral images.

    Unreadable files and files without Pixel Data get their reason in ``reasons`` like the non-images of
    :func:`~converters.cxr_select.select_views`. Converts nothing (the rule tester shows this choice).
    """
    early: dict[str, str] = {}
    headers: list[tuple[Path, Dataset]] = []
    for path in map(Path, paths):
        try:
            ds, has_pixels = read_header(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("skipping %s: not readable as DICOM (%s)", path, exc)
            early[f"skipped:{path}"] = f"not readable as DICOM: {exc}"
            continue
        if not has_pixels:
            early[image_key(ds, path, early)] = skip_reason(ds) or "not an image (no Pixel Data)"
            continue
        headers.append((path, ds))
    selection = select_views(headers, classified)
    return ViewSelection(selection.frontal, selection.lateral, {**early, **selection.reasons},
                         selection.frontal_projection)
