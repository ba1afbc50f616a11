"""The configuration keys of study completion (docs/study-completion.md): the node's MPPS and IAN SCPs, the
maximum wait, and a rule's expected content (``complete_when``) and ``on_discontinued``.

:class:`NodeCompletionKeys` and :class:`RuleCompletionKeys` are mixed into ``NodeSection`` and ``RuleSection``
(:mod:`node.config_sections`), so the keys sit where the issue names them (``node.accept_mpps``, a rule's
``complete_when``). This module imports nothing of the node: ``config_sections`` imports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ExpectedValue = str | int | float | list[str | int | float]


class _Keys(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectedSeries(_Keys):
    """One thing the study must hold: at least ``min_instances`` instances matching ``match``."""

    match: dict[str, ExpectedValue] = Field(description="DICOM keywords and values, as in a rule's match")
    min_instances: int = Field(1, ge=1, description="How many instances must match")

    @field_validator("match")
    @classmethod
    def _keywords(cls, match: dict[str, ExpectedValue]) -> dict[str, ExpectedValue]:
        from pydicom.datadict import tag_for_keyword

        if not match:
            raise ValueError("match needs at least one key, e.g. {ViewPosition: PA}")
        for key in match:
            if tag_for_keyword(key) is None:
                raise ValueError(f"match key {key!r} is not a DICOM keyword (e.g. ViewPosition, SeriesDescription)")
        return match


class CompleteWhen(_Keys):
    """A rule's expected content: when all given clauses hold, the rule has what it needs (docs/study-completion.md)."""

    series: list[ExpectedSeries] | None = Field(
        None, description="Each entry needs its own matching instance(s), e.g. [{match: {ViewPosition: PA}}, "
        "{match: {ViewPosition: LL}}]")
    min_instances: int | None = Field(None, ge=1, description="At least this many instances in the series the "
                                      "rule matches")
    number_of_study_related_instances: Literal["header"] | None = Field(
        None, description="header: as many instances as NumberOfStudyRelatedInstances (0020,1208) in the headers says")

    @model_validator(mode="after")
    def _something(self) -> "CompleteWhen":
        if not self.series and self.min_instances is None and self.number_of_study_related_instances is None:
            raise ValueError("complete_when needs series, min_instances or number_of_study_related_instances")
        return self


class NodeCompletionKeys(_Keys):
    """``node`` keys: the MPPS and IAN SCPs on the node's AE title, and the longest a held study waits."""

    accept_mpps: bool = Field(False, description="MPPS SCP: a study is complete when its MPPS is COMPLETED and "
                              "every instance it lists is in")
    accept_ian: bool = Field(False, description="IAN SCP: a study is complete once the instances an Instance "
                             "Availability Notification lists are in")
    study_complete_max_wait_seconds: float = Field(
        900.0, gt=0, description="A study an MPPS or IAN holds (in progress, or listed instances missing) is decided "
        "after this long without a new instance or message")


class RuleCompletionKeys(_Keys):
    """Rule keys: expected content, and what a DISCONTINUED MPPS means for the rule."""

    complete_when: CompleteWhen | None = Field(None, description="Expected content: the study is decided as soon "
                                               "as it is in (when every matching rule has its own)")
    on_discontinued: Literal["run", "skip"] = Field("run", description="A study whose MPPS was DISCONTINUED: run "
                                                    "this rule on what arrived, or skip it")
