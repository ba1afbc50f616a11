"""Emulated MedImageParse (2D): deterministic masks computed from the image's pixels, categories from keywords.

Masks (checkable with :func:`emulate_masks`): the PNG (L, LA, RGB, RGBA or P; 16-bit grey divided by 257;
1024x1024 as the model demands, else 400) is turned into luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R 601;
grey images as they are). Prompt ``k`` (0-based, in the order of the ``&``-separated text) gets
``mask_k = 255 where Y > threshold_k else 0`` with ``threshold_k = 128 >> min(k, 8)``: prompt 0 -> Y > 128,
1 -> > 64, 2 -> > 32, ... 7 -> > 1, 8 and later -> > 0. The stack is (n_prompts, 1024, 1024) uint8, 0/255.

Category per prompt (:func:`emulate_category`): the first keyword of :data:`CATEGORY_KEYWORDS` found in the
lower-cased prompt, else ``"other"`` (one of the model's 16 ``text_features`` categories).

Reply shapes: ``response_shape`` ``rows`` (default): ``[{"image_features": "<JSON string>", "text_features":
[...]}]`` per image, what the notebooks parse; ``object``: the product page's example, ``image_features`` written
with single quotes (a Python literal) and ``text_features`` a list. Answers are emulated, never clinical output:
the server's ``x-ms-emulator`` header says so (and, in the ``versioned`` variant, the model version
``medimageparse-emulator-1``).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Sequence

import numpy as np

from node.emulator import RequestError
from node.emulator.payload import b64_bytes, luminance, validate_input

MODEL_NAME = "medimageparse"
MODEL_VERSION = "medimageparse-emulator-1"
SIZE = 1024
MAX_ROWS = 256
MAX_PROMPTS = 32

# (keyword, category) in priority order; the first keyword contained in the prompt wins.
CATEGORY_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("cell", "histology structure"),
    ("gland", "histology structure"),
    ("nucle", "histology structure"),
    ("liver", "liver"),
    ("hepat", "liver"),
    ("lung", "lung"),
    ("pulmonary", "lung"),
    ("kidney", "kidney"),
    ("renal", "kidney"),
    ("pancrea", "pancreas"),
    ("heart", "heart anatomies"),
    ("ventric", "heart anatomies"),
    ("atri", "heart anatomies"),
    ("myocard", "heart anatomies"),
    ("brain", "brain anatomies"),
    ("eye", "eye anatomies"),
    ("retina", "eye anatomies"),
    ("optic", "eye anatomies"),
    ("vessel", "vessel"),
    ("aorta", "vessel"),
    ("artery", "vessel"),
    ("vein", "vessel"),
    ("tumor", "tumor"),
    ("tumour", "tumor"),
    ("neoplas", "tumor"),
    ("cancer", "tumor"),
    ("infection", "infection"),
    ("covid", "infection"),
    ("pneumonia", "infection"),
    ("lesion", "other lesion"),
    ("nodule", "other lesion"),
    ("effusion", "fluid disturbance"),
    ("fluid", "fluid disturbance"),
    ("edema", "fluid disturbance"),
    ("oedema", "fluid disturbance"),
    ("spleen", "other organ"),
    ("stomach", "other organ"),
    ("bladder", "other organ"),
    ("prostate", "other organ"),
    ("organ", "other organ"),
    ("abnormal", "other abnormality"),
)


def threshold_for(k: int) -> int:
    """The luminance threshold of prompt ``k`` (0-based): 128, 64, 32, ..., 1, then 0."""
    return 128 >> min(k, 8)


def emulate_category(prompt: str) -> str:
    text = prompt.lower()
    for keyword, category in CATEGORY_KEYWORDS:
        if keyword in text:
            return category
    return "other"


def split_text(text: str) -> list[str]:
    return [part.strip() for part in text.split("&") if part.strip()]


def emulate_masks(png_bytes: bytes, prompts: Sequence[str] | str) -> tuple[np.ndarray, list[str]]:
    """(masks (n_prompts, H, W) uint8 0/255, categories) for a PNG and its prompts (a list or the "&" text). Pure."""
    items = split_text(prompts) if isinstance(prompts, str) else [p.strip() for p in prompts]
    if not items:
        raise RequestError(400, "the text holds no prompt")
    y = luminance(png_bytes)
    masks = np.stack([np.where(y > threshold_for(k), 255, 0).astype(np.uint8) for k in range(len(items))])
    return masks, [emulate_category(p) for p in items]


class MedImageParseHandler:
    """The MedImageParse (2D) model for :mod:`node.emulator.server`."""

    name = MODEL_NAME
    model_version = MODEL_VERSION

    def accepts(self, columns: list[str]) -> bool:
        # ["image", "text"] is also MedImageParse 3D's (and MedImageInsight's): the columns cannot tell them apart,
        # so a bare /score is never dispatched here by columns; use /medimageparse/score or the server's model= setting.
        return False

    def score(self, input_data: dict, options: dict[str, Any]) -> Any:
        rows = validate_input(input_data, max_rows=MAX_ROWS, model="MedImageParse")
        literal = options.get("response_shape") == "object"
        out = []
        for i, (image_b64, text) in enumerate(rows):
            prompts = split_text(text)
            if not prompts:
                raise RequestError(400, f"row {i}: the text holds no prompt")
            if len(prompts) > MAX_PROMPTS:
                raise RequestError(400, f"row {i}: {len(prompts)} prompts; at most {MAX_PROMPTS}")
            masks, categories = emulate_masks(b64_bytes(image_b64, i), prompts)
            if masks.shape[1:] != (SIZE, SIZE):
                raise RequestError(400, f"row {i}: the image is {masks.shape[2]}x{masks.shape[1]}; MedImageParse "
                                        f"takes {SIZE}x{SIZE} (resize keeping the aspect ratio, pad with black)")
            features = {"data": base64.b64encode(masks.tobytes()).decode("ascii"), "shape": list(masks.shape),
                        "dtype": str(masks.dtype)}
            out.append({"image_features": repr(features) if literal else json.dumps(features),
                        "text_features": categories})
        return out


HANDLER = MedImageParseHandler()
