"""The keys of ``endpoints.<name>`` about what the deployed model does, beyond how to reach it.

:class:`EndpointModelSettings` is a base of :class:`node.config_sections.EndpointSection` (one section in the
YAML; these keys are documented in ``config/example.yaml``):

* ``model_version``: what the node writes as Algorithm Version and keys its embedding caches by when the endpoint
  reports no version (no Microsoft source shows a version header; see :mod:`node.models.versions`).
* ``scaling_factor``: MedImageInsight's zero-shot temperature when the deployment's reply has none (the model
  document's example value is 4.516357).
* ``prompts_per_call``: MedImageParse 3D prompts joined with ``&`` in one call (the model card sends 15).
* ``model_error_retries``: how often a job is tried again after the model container failed on it (424 with an
  inner 5xx) or the deployment's ``request_timeout_ms`` ran out (408); a 424 with an inner 4xx is never retried.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, model_validator

__all__ = ["DEFAULT_PROMPTS_PER_CALL", "EndpointModelSettings", "prompts_per_call"]

#: The model card (Azure/azureml-assets, assets/models/system/MedImageParse3D/description.md) sends 15 prompts
#: joined with '&' in one call; nothing larger is documented.
DEFAULT_PROMPTS_PER_CALL = 15


class EndpointModelSettings(BaseModel):
    """What the node needs to know about the deployed model (see the module docstring)."""

    model_version: str | None = Field(
        None, min_length=1, max_length=64,
        description="The deployed model's version (e.g. the registry asset 'MedImageInsight:6'), used when the "
        "endpoint reports none: Algorithm Version of the results and the key of the embedding caches")
    scaling_factor: float | None = Field(
        None, description="MedImageInsight: zero-shot scaling factor when the reply has none (document: 4.516357)")
    prompts_per_call: int | None = Field(
        None, ge=1, le=64,
        description=f"MedImageParse 3D: prompts joined with '&' in one call (default {DEFAULT_PROMPTS_PER_CALL}, "
        "as the model card; 1: one call per prompt)")
    model_error_retries: int = Field(
        2, ge=0, le=10,
        description="Further tries of a job after a 424 with an inner 5xx or a 408 (an inner 4xx fails at once)")

    @model_validator(mode="after")
    def _model_specific(self) -> Any:
        model = getattr(self, "model", None)
        if self.scaling_factor is not None:
            if model != "medimageinsight":
                raise ValueError("scaling_factor applies to a medimageinsight endpoint only")
            if not math.isfinite(self.scaling_factor) or not 0 < self.scaling_factor < 20:
                raise ValueError("scaling_factor is a log scale between 0 and 20 (the document's example: 4.516357)")
        if self.prompts_per_call is not None and model != "medimageparse3d":
            raise ValueError("prompts_per_call applies to a medimageparse3d endpoint only")
        return self


def prompts_per_call(settings: EndpointModelSettings) -> int:
    """The endpoint's ``prompts_per_call``, or the model card's default."""
    return settings.prompts_per_call or DEFAULT_PROMPTS_PER_CALL
