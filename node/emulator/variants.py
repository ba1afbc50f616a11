"""The reply variants the real endpoints are known to use, selectable per emulator (``dicom-node emulator --variant``,
``POST /_emulator/config {"variants": [...]}``, ``EmulatorServer(variants=...)``) or per request
(``POST /<model>/score?variant=3d-canonical``, so one emulator can stand for several deployments at once).

Each variant is written from a Microsoft source (see :data:`VARIANTS`); without any, the emulator answers as the
documents and notebooks show most often: MedImageInsight one row per input with ``scaling_factor``, MedImageParse 3D
a ``nifti_file`` carrying the request volume's header and affine, and no model-version header (no Microsoft source
shows one: the node's results take their Algorithm Version from ``endpoints.<n>.model_version``); ``versioned`` adds
``x-ms-model-version`` for the tests of the node's reading of such a header.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["AFFINE_VARIANTS", "VARIANTS", "VERSION_VARIANTS", "check_variants", "parse_query"]

VARIANTS: dict[str, str] = {
    "versioned": "an x-ms-model-version reply header with the emulated model's version (no Microsoft source shows "
                 "one: it tests the node's reading of such a header, which a future service version may send)",
    "no-version": "no model-version reply header, as every Microsoft source shows: the default (the name is kept so "
                  "URLs and commands that named it still work)",
    "insight-object": "MedImageInsight: one object for the whole request (the model document's response example) "
                      "instead of one row per input (the mi2-deploy notebook's output)",
    "no-scaling-factor": "MedImageInsight: no scaling_factor even when asked (the mi2-deploy notebook sent "
                         "get_scaling_factor: True and printed keys without it)",
    "3d-input-affine": "MedImageParse 3D: the mask NIfTI carries the request volume's header and affine (default)",
    "3d-canonical": "MedImageParse 3D: the mask reoriented to the closest canonical (RAS+) axes, with the correct "
                    "affine for that orientation",
    "3d-no-affine": "MedImageParse 3D: the mask NIfTI has no affine (qform_code and sform_code 0), as a model that "
                    "writes nib.Nifti1Image(mask, None)",
    "3d-identity": "MedImageParse 3D: the mask NIfTI's affine is the identity (nib.Nifti1Image(mask, np.eye(4)))",
    "3d-zooms-only": "MedImageParse 3D: the mask NIfTI's affine holds the voxel sizes only (no direction, no origin)",
    "3d-prompt-first": "MedImageParse 3D: image_features {data, shape, dtype}, a 4-D uint8 array with the prompt "
                       "axis first (N, i, j, k) and no affine, plus text_features (an unmerged Microsoft branch)",
    "3d-one-prompt": "MedImageParse 3D: a deployment that reads '&'-joined prompts as one: image_features with a "
                     "prompt axis of 1 whatever the number of prompts",
}
#: These two exclude each other.
VERSION_VARIANTS = ("versioned", "no-version")
#: At most one of these at a time: each says how MedImageParse 3D answers.
AFFINE_VARIANTS = ("3d-input-affine", "3d-canonical", "3d-no-affine", "3d-identity", "3d-zooms-only",
                   "3d-prompt-first", "3d-one-prompt")


def check_variants(names: Any) -> list[str]:
    """``names`` (a list, or a comma-separated string) as a sorted list; ``ValueError`` names an unknown one or two
    MedImageParse 3D forms at once."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple, set)) or not all(isinstance(n, str) for n in names):
        raise ValueError("variants must be a list of names")
    cleaned = sorted({n.strip() for n in names})
    unknown = [n for n in cleaned if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    forms = [n for n in cleaned if n in AFFINE_VARIANTS]
    if len(forms) > 1:
        raise ValueError(f"variants {forms} exclude each other (one MedImageParse 3D reply form at a time)")
    if set(VERSION_VARIANTS) <= set(cleaned):
        raise ValueError(f"variants {list(VERSION_VARIANTS)} exclude each other")
    return cleaned


def parse_query(path: str) -> tuple[str, list[str]]:
    """``/m/score?variant=a,b&variant=c`` -> (``/m/score``, [a, b, c]); ``ValueError`` for an unknown variant."""
    route, _, query = path.partition("?")
    found: list[str] = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "variant":
            found.extend(v for v in value.split(",") if v)
    return route, check_variants(found)


def merged(configured: Iterable[str], requested: Iterable[str]) -> set[str]:
    """The variants of one request: the server's, with those the request names replacing its 3D form."""
    requested = set(requested)
    base = {v for v in configured if not (v in AFFINE_VARIANTS and requested & set(AFFINE_VARIANTS))
            and not (v in VERSION_VARIANTS and requested & set(VERSION_VARIANTS))}
    return base | requested
