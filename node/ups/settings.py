"""The keys of a UPS-RS worklist source (``sources: [{type: ups-rs, ...}]``), documented in config/example.yaml."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from node.config_sections import DicomWebAuth, _Strict


class WorkitemCode(_Strict):
    """One task the node performs: a Scheduled Workitem Code (0040,4018) and the rule that does it."""

    code: str = Field(min_length=1, description="CodeValue of ScheduledWorkitemCodeSequence")
    scheme: str | None = Field(None, description="CodingSchemeDesignator it must have (null: any)")
    rule: str = Field(min_length=1, description="The rule (by name) run on the workitem's inputs")


class UpsSourceSection(DicomWebAuth):
    """A UPS-RS worklist (the Azure DICOM service v2 ``/workitems``, dcm4chee-arc...) the node performs tasks from."""

    type: Literal["ups-rs"] = Field(description="ups-rs: an IHE AIW-I worklist, polled (no Watch/Event SOPs)")
    name: str | None = Field(None, description="Names the source in status and logs; default the url")
    poll_seconds: float = Field(10.0, gt=0, description="Pause between searches of the worklist")
    filter: dict[str, str] = Field(
        default_factory=dict, description="More search parameters (the service's searchable attributes), e.g. "
        "{ScheduledStationNameCodeSequence.CodeValue: AINODE}")
    workitems: list[WorkitemCode] = Field(min_length=1, description="Scheduled Workitem Code -> rule")
    inputs: Literal["wado-rs", "c-move", "c-get"] = Field(
        "wado-rs", description="How input instances are fetched: WADO-RS (the workitem's RetrieveURL, else "
        "retrieve_from, else url) or C-MOVE/C-GET from the retrieve_from destination")
    retrieve_from: str | None = Field(None, description="A destination name: the DICOMweb service (wado-rs) or the "
                                      "PACS (c-move, c-get) the inputs come from")
    station_name: str | None = Field(None, description="Code value of PerformedStationNameCodeSequence; default "
                                     "node.ae_title")
    limit: int = Field(100, ge=1, le=200, description="Workitems per search (the Azure DICOM service allows 200)")
    timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one HTTP request; also of one C-MOVE/C-GET")
    backoff_max_seconds: float = Field(300.0, gt=0, description="Longest pause after failed polls")

    @model_validator(mode="after")
    def _service(self) -> "UpsSourceSection":
        self._check_dicomweb()
        if self.inputs != "wado-rs" and self.retrieve_from is None:
            raise ValueError(f"inputs: {self.inputs} needs retrieve_from, the destination (PACS) to retrieve from")
        return self

    @property
    def key(self) -> str:
        """The source's name in the database and in status."""
        return self.name or str(self.url)

    def rule_for(self, codes: list[tuple[str, str]]) -> str | None:
        """The rule of the first configured code among ``codes`` ((value, scheme) pairs); None: not ours."""
        for wanted in self.workitems:
            for value, scheme in codes:
                if value == wanted.code and (wanted.scheme is None or scheme == wanted.scheme):
                    return wanted.rule
        return None


def check_references(sources: list[Any], rules: list[str], destinations: dict[str, Any]) -> tuple[tuple, str] | None:
    """The first ups-rs source key naming an unknown rule or destination, as (location, message); None: all known."""
    for i, src in enumerate(sources):
        if getattr(src, "type", None) != "ups-rs":
            continue
        for j, item in enumerate(src.workitems):
            if item.rule not in rules:
                return ("sources", i, "workitems", j, "rule"), f"unknown rule {item.rule!r}; allowed: {rules}"
        if src.retrieve_from is not None and src.retrieve_from not in destinations:
            return (("sources", i, "retrieve_from"),
                    f"unknown destination {src.retrieve_from!r}; allowed: {sorted(destinations)}")
        kind = "dicomweb" if src.inputs == "wado-rs" else "dimse"
        if src.retrieve_from is not None and destinations[src.retrieve_from].type != kind:
            return (("sources", i, "retrieve_from"), f"inputs: {src.inputs} needs a type: {kind} destination")
    return None
