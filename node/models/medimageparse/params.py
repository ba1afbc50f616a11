"""Rule params of MedImageParse (2D) and MedImageParse 3D, checked when the configuration is read.

MedImageParse (2D), :class:`Parse2DParams`::

    params: {prompt: "neoplastic cells & inflammatory cells", frames: middle, window: abdomen}

MedImageParse 3D, :class:`Parse3DParams`::

    params: {prompt: liver, category: liver, series: largest-axial}
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_FRAMES_RE = re.compile(r"^(middle|all|every:[1-9][0-9]*|instances:[0-9]+(,[0-9]+)*)$")


def _prompts(value: Any) -> list[str]:
    """``"a & b"`` or ``["a", "b"]`` -> ``["a", "b"]``; blank prompts and ``&`` inside list items are refused."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split("&")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
        if any("&" in v for v in items):
            raise ValueError("a prompt of a list may not contain '&' (the model's separator)")
    else:
        raise ValueError("a prompt is a string (several joined with '&') or a list of strings")
    if not items or any(not v for v in items):
        raise ValueError("blank prompt (check for a leading, trailing or doubled '&')")
    if len(set(v.lower() for v in items)) != len(items):
        raise ValueError("the same prompt twice")
    return items


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: list[str] = Field(description="One segment per prompt: a string joined with '&', or a list")
    allow_burned_in: bool = Field(False, description="Send images marked BurnedInAnnotation=YES (node/flow/run.py)")
    segmentation_type: Literal["auto", "binary", "fractional"] = Field(
        "auto", description="auto: FRACTIONAL when the model's mask holds values between its extremes, else BINARY")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> list[str]:
        return _prompts(value)


class Parse2DParams(_Params):
    """Rule params for MedImageParse (2D)."""

    frames: str = Field(
        "middle",
        description="Which frames of each matched series: middle (default; index (n-1)//2 of all frames sorted by "
        "InstanceNumber), all, every:N, or instances:3,7 (those InstanceNumbers, all their frames)")
    window: str | tuple[float, float] | None = Field(
        None, description="CT window: a name (abdomen, lung, liver, pancreas, colon, pelvis) or [low, high] HU; "
        "default: chosen from the prompt")
    batch_size: int = Field(8, ge=1, le=256, description="Images per request")
    threshold: int = Field(128, ge=0, le=254, description="BINARY: a mask value above this is inside (0..255 masks)")

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: str) -> str:
        value = value.strip().lower().replace(" ", "")
        if not _FRAMES_RE.match(value):
            raise ValueError("allowed: middle, all, every:N (N >= 1), instances:N[,N...] (InstanceNumbers)")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: Any) -> Any:
        from converters.parse2d import choose_ct_window

        if value is not None:
            choose_ct_window("", value)  # raises ValueError naming what is allowed
        return value


class Parse3DParams(_Params):
    """Rule params for MedImageParse 3D."""

    category: str | None = Field(None, description="One of the 16 MedImageParse categories; overrides the codes "
                                                   "chosen from the prompt")
    series: Literal["largest-axial", "matched"] = Field(
        "largest-axial",
        description="largest-axial: the largest axial CT/MR volume among the matched series (never a localizer, "
        "dose report or derived/secondary image); matched: every matched series, each its own volume")
    threshold: float = Field(0.5, ge=0, lt=1, description="BINARY from a probability mask: a value above this is "
                                                         "inside (fraction of the mask's maximum)")
    max_request_mb: float = Field(100.0, gt=0, description="Refuse (clearly) a volume whose request would be larger")

    @field_validator("category")
    @classmethod
    def _category(cls, value: str | None) -> str | None:
        from dicom_out.seg_codes import MIP_CATEGORIES

        if value is not None and value.strip().lower() not in MIP_CATEGORIES:
            raise ValueError(f"allowed: {', '.join(MIP_CATEGORIES)}")
        return None if value is None else value.strip().lower()
