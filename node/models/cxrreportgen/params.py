"""Rule params of CXRReportGen, checked when the configuration is read::

    params: {max_side: 1024, view_label_set: view, allow_burned_in: false}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CXRParams(BaseModel):
    """Rule params for CXRReportGen (node/models/cxrreportgen/pipeline.py; allow_burned_in: node/flow/run.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_side: int | None = Field(None, ge=64, description="Longer side in pixels of the PNGs sent (default: as is)")
    view_label_set: str = Field(
        "view", min_length=1, description="MedImageInsight label set whose zero-shot labels name views without "
        "a header view")
    allow_burned_in: bool = Field(
        False, description="Send images (the prior included) marked BurnedInAnnotation=YES")
