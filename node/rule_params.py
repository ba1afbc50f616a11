"""The ``params`` a routing rule may give, per model, validated when the configuration is read.

A rule's ``params`` are free-form in the YAML; the model of the rule's endpoint decides what they mean. For the
models listed in :data:`PARAMS_MODELS` they are checked here (unknown keys and bad values are configuration
errors naming the rule), so a typo such as ``promt:`` fails at start-up, not on the first study at 3 a.m.

MedImageParse (2D), :class:`Parse2DParams`::

    params: {prompt: "neoplastic cells & inflammatory cells", frames: middle, window: abdomen}

MedImageParse 3D, :class:`Parse3DParams`::

    params: {prompt: liver, category: liver, series: largest-axial}

MedImageInsight, :class:`InsightParams`::

    params: {labels: {view: ["x-ray chest posteroanterior", "x-ray chest lateral"]}, resize: 512}
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["InsightParams", "Parse2DParams", "Parse3DParams", "PARAMS_MODELS", "params_for", "RuleParamsError"]

_FRAMES_RE = re.compile(r"^(middle|all|every:[1-9][0-9]*|instances:[0-9]+(,[0-9]+)*)$")


class RuleParamsError(ValueError):
    """A rule's params are not valid for its model: ``loc`` is the key path inside ``params``."""

    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


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
    allow_burned_in: bool = Field(False, description="Send images marked BurnedInAnnotation=YES (node/worker.py)")
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


class InsightParams(BaseModel):
    """Rule params for MedImageInsight (node/pipelines/insight.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, list[str]] = Field(
        default_factory=dict, description="Zero-shot label sets: {set: [text, ...]}, at least two texts each")
    resize: int | None = Field(None, ge=1, description="Longer side in pixels on the client (e.g. 512)")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request, bytes of JSON")
    max_rows: int = Field(32, ge=1, le=1024, description="Rows (images or texts) per request")
    allow_burned_in: bool = Field(False, description="Send images marked BurnedInAnnotation=YES (node/worker.py)")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, texts in value.items():
            cleaned = [t.strip() for t in texts]
            if any(not t for t in cleaned) or len(set(cleaned)) < 2:
                raise ValueError(f"label set {name!r} needs at least two different, non-blank texts")
        return value


PARAMS_MODELS: dict[str, type[BaseModel]] = {"medimageparse": Parse2DParams, "medimageparse3d": Parse3DParams,
                                             "medimageinsight": InsightParams}


def params_for(model: str, params: dict[str, Any]) -> Any:
    """The validated params of a rule whose endpoint runs ``model`` (the dict itself for models without a schema).

    Raises :class:`RuleParamsError` with the key path of the first problem.
    """
    schema = PARAMS_MODELS.get(model)
    if schema is None:
        return params
    try:
        return schema.model_validate(params)
    except ValidationError as exc:
        # A typo'd key explains a "missing" one: report unknown keys first.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key for a {model} rule; allowed: {', '.join(schema.model_fields)}"
        elif err["type"] == "missing":
            msg = f"required for a {model} rule"
        return _raise(tuple(err["loc"]), msg)


def _raise(loc: tuple[Any, ...], msg: str) -> Any:
    raise RuleParamsError(loc, msg)
