"""Configuration keys of the monitoring side (``monitoring:``): agreement with the radiologists and drift.

A plain pydantic model that imports nothing of :mod:`node.config` (which imports it). Every key is documented in
``config/example.yaml``; docs/monitoring.md says what each one changes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ReportStatus = Literal["final", "corrected", "preliminary"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MonitoringSection(_Strict):
    """Agreement with the radiologists' reports and drift against a pinned baseline (node/monitoring)."""

    enabled: bool = Field(True, description="false: no report is taken, nothing is observed or evaluated")
    keep_report_text: bool = Field(
        False, description="Keep the report's text beside what was extracted from it (PHI); default: only the labels")
    report_statuses: list[ReportStatus] = Field(
        default_factory=lambda: ["final", "corrected"],
        description="Report statuses taken (HL7 OBR-25 F/C/P, FHIR status, SR VerificationFlag); others are refused")
    unmatched_report_days: float = Field(
        14.0, gt=0, description="A report no AI result matched (by accession number or study UID) is dropped after this")
    keep_days: float = Field(
        400.0, gt=0, description="Observations and matched reports older than this are purged (a year and a month)")
    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90],
                                    description="Rolling windows of the agreement tables and gauges")
    min_agreement: float = Field(
        0.6, ge=0, le=1, description="Alert when a finding's positive or negative agreement over alert_window_days "
                                     "has its Wilson 95% interval wholly below this")
    min_agreement_per_finding: dict[str, float] = Field(
        default_factory=dict, description="Overrides of min_agreement per finding key (e.g. pneumothorax: 0.8)")
    min_pairs: int = Field(20, ge=1, description="Matched studies a finding needs in the window before it can alert")
    alert_window_days: int = Field(30, ge=1, description="The agreement window alerts look at")
    evaluate_every_minutes: float = Field(60.0, gt=0, description="How often the worker evaluates drift and alerts")
    drift_window_days: float = Field(7.0, gt=0, description="The window compared with the pinned baseline")
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="Family-wise false-alarm level per evaluation (Benjamini-Hochberg over its tests)")
    drift_min_effect: float = Field(
        0.1, ge=0, le=1, description="Smallest effect that alerts: total variation distance of a mix, the KS "
                                     "statistic of a number, the change of a rate, MMD^2 of the embeddings")
    drift_min_mmd2: float = Field(
        0.005, ge=0, description="Smallest MMD^2 of the MedImageInsight embeddings that alerts (Gaussian kernel)")
    min_window_cases: int = Field(30, ge=2, description="Observations a window needs before it is tested")
    permutations: int = Field(
        4000, ge=100, le=50000, description="Permutations of the embeddings' MMD test (the smallest p-value is "
                                            "1/(permutations+1): it must survive the correction)")
    max_embedding_samples: int = Field(300, ge=20, description="Embeddings drawn per side for the MMD test")
    label_terms: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict,
        description="Extra report words per classification label set and canonical value, e.g. "
                    "{view: {LATERAL: [lat]}} (built in: view PA/AP/LATERAL, laterality LEFT/RIGHT)")

    @field_validator("windows_days")
    @classmethod
    def _windows(cls, value: list[int]) -> list[int]:
        if not value or any(v < 1 for v in value):
            raise ValueError("windows_days: at least one window of at least 1 day")
        return sorted(set(value))

    def threshold(self, finding: str) -> float:
        """The agreement floor of ``finding``."""
        return self.min_agreement_per_finding.get(finding, self.min_agreement)
