"""Rule params of MedImageInsight, checked when the configuration is read::

    params: {labels: {view: ["x-ray chest posteroanterior", "x-ray chest lateral"]}, resize: 512}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class InsightParams(BaseModel):
    """Rule params for MedImageInsight (node/models/medimageinsight/pipeline.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, list[str]] = Field(
        default_factory=dict, description="Zero-shot label sets: {set: [text, ...]}, at least two texts each")
    resize: int | None = Field(None, ge=1, description="Longer side in pixels on the client (e.g. 512)")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request, bytes of JSON")
    max_rows: int = Field(32, ge=1, le=1024, description="Rows (images or texts) per request")
    allow_burned_in: bool = Field(False, description="Send images marked BurnedInAnnotation=YES (node/flow/run.py)")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, texts in value.items():
            cleaned = [t.strip() for t in texts]
            if any(not t for t in cleaned) or len(set(cleaned)) < 2:
                raise ValueError(f"label set {name!r} needs at least two different, non-blank texts")
        return value
