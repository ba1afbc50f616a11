"""Emulated MedImageInsight: deterministic embeddings from pixels and from hashed words, and a scaling factor.

Image vector (:func:`embed_image`): the PNG's luminance (as :func:`node.emulator.payload.luminance`) resized to
32x32 (bilinear), centred (mean subtracted) and normalised, multiplied by a fixed Gaussian random matrix
(1024x1024, seed :data:`PROJECTION_SEED`) and normalised again. A random projection keeps cosines roughly, so
similar pictures get similar vectors and the same picture always the same vector.

Text vector (:func:`embed_text`): the lower-cased words (``[a-z0-9]+``, at most 77 as the model's tokenizer keeps)
each give a Gaussian vector seeded by the SHA-256 of the word; their sum is normalised. Shared words, close vectors.

``scaling_factor`` is :data:`SCALING_FACTOR` (the document's example value) when ``params.get_scaling_factor`` is
true or absent (the document's default).

Reply, as the real deployment answers (the mi2-deploy notebook's output; the toolkit's tests expect one entry per
input): **one row per input row**, ``[{"image_features": [[1024 floats]], "text_features": [[1024 floats]],
"scaling_factor": f}, ...]``, each row holding the keys of what it had (an image, a text, or both). Variants
(:mod:`node.emulator.variants`): ``insight-object`` answers the model document's single object
``{"image_features": [...], "text_features": [...], "scaling_factor": f}``; ``no-scaling-factor`` leaves the factor
out even when asked (the notebook asked and printed keys without it). Answers are emulated, never clinical output:
the server's ``x-ms-emulator`` header says so (and, in the ``versioned`` variant, the model version
``medimageinsight-emulator-1``).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from node.emulator import RequestError
from node.emulator.payload import b64_bytes, luminance, validate_input

MODEL_NAME = "medimageinsight"
MODEL_VERSION = "medimageinsight-emulator-1"
DIM = 1024
GRID = 32  # 32 x 32 = 1024 pixel features
PROJECTION_SEED = 20241024
SCALING_FACTOR = 4.516357
MAX_ROWS = 1024
MAX_TOKENS = 77
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=1)
def projection() -> np.ndarray:
    """The fixed (GRID*GRID, DIM) random projection."""
    rng = np.random.default_rng(PROJECTION_SEED)
    return rng.standard_normal((GRID * GRID, DIM)).astype(np.float64) / np.sqrt(DIM)


def _normalise(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n == 0.0:  # a uniform picture or no word: a fixed unit vector instead of a division by zero
        out = np.zeros_like(v)
        out[0] = 1.0
        return out
    return v / n


def pixel_features(y: np.ndarray) -> np.ndarray:
    """(H, W) luminance -> the centred, normalised 32x32 thumbnail as a 1024 vector."""
    img = Image.fromarray(np.clip(y, 0, 255).astype(np.float32), mode="F")
    small = np.asarray(img.resize((GRID, GRID), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    return _normalise(small - small.mean())


def embed_image(png_bytes: bytes) -> np.ndarray:
    """The emulated 1024-d unit vector of a PNG. Pure and deterministic."""
    return _normalise(pixel_features(luminance(png_bytes)) @ projection())


@lru_cache(maxsize=4096)
def _word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM)


def embed_text(text: str) -> np.ndarray:
    """The emulated 1024-d unit vector of a text. Pure and deterministic."""
    words = _WORD.findall(text.lower())[:MAX_TOKENS]
    total = np.zeros(DIM, dtype=np.float64)
    for word in words:
        total += _word_vector(word)
    return _normalise(total)


class MedImageInsightHandler:
    """The MedImageInsight model for :mod:`node.emulator.server`."""

    name = MODEL_NAME
    model_version = MODEL_VERSION

    def accepts(self, columns: list[str]) -> bool:
        # ["image", "text"] is also MedImageParse's: a bare /score is never dispatched here by columns; use
        # /medimageinsight/score or the server's model= setting.
        return False

    def score(self, input_data: dict, options: dict[str, Any]) -> Any:
        rows = validate_input(input_data, max_rows=MAX_ROWS, model="MedImageInsight")
        per_row: list[dict[str, Any]] = []
        for i, (image_b64, text) in enumerate(rows):
            if not image_b64.strip() and not text.strip():
                raise RequestError(400, f"row {i}: neither an image nor a text")
            row: dict[str, Any] = {}
            if image_b64.strip():
                row["image_features"] = [[round(float(v), 7) for v in embed_image(b64_bytes(image_b64, i))]]
            if text.strip():
                row["text_features"] = [[round(float(v), 7) for v in embed_text(text)]]
            per_row.append(row)
        params = options.get("params") or {}
        want_factor = params.get("get_scaling_factor", True)
        if isinstance(want_factor, str):
            want_factor = want_factor.strip().lower() in ("true", "1", "yes")
        variants = options.get("variants") or ()
        factor = SCALING_FACTOR if want_factor and "no-scaling-factor" not in variants else None
        if "insight-object" in variants:
            out: dict[str, Any] = {"image_features": [r["image_features"][0] for r in per_row if "image_features" in r],
                                   "text_features": [r["text_features"][0] for r in per_row if "text_features" in r]}
            if factor is not None:
                out["scaling_factor"] = factor
            return out
        if factor is not None:
            for row in per_row:
                row["scaling_factor"] = factor
        return per_row


HANDLER = MedImageInsightHandler()
