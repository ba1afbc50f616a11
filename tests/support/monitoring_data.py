"""Synthetic observations for the monitoring tests: a hospital's chest X-ray stream, with and without a shift.

Each observation is what :mod:`node.monitoring.observe` records for one CXRReportGen job (one frontal image, its
header features, the findings the AI named with their boxes); embeddings are 1024-d unit vectors around a centre,
like MedImageInsight's. A :class:`Stream` draws them from fixed distributions; a shifted stream changes one thing
(a second manufacturer, another view mix, moved embeddings), so a test knows the truth without asking the code.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_ids = itertools.count(1)


@dataclass(frozen=True)
class Stream:
    """The distributions one window is drawn from."""

    manufacturers: dict[str, float] = field(default_factory=lambda: {"Agfa": 0.7, "Carestream": 0.3})
    views: dict[str, float] = field(default_factory=lambda: {"PA": 0.75, "AP": 0.25})
    kvp_mean: float = 120.0
    spacing: tuple[float, ...] = (0.139, 0.143, 0.15)
    finding_rates: dict[str, float] = field(default_factory=lambda: {
        "opacity": 0.3, "pleural_effusion": 0.15, "cardiomegaly": 0.12, "atelectasis": 0.1, "pneumothorax": 0.04})
    embedding_shift: float = 0.0
    model_version: str = "cxr-v1"

    def shifted(self, **change: Any) -> "Stream":
        return replace(self, **change)


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return str(rng.choice(keys, p=p / p.sum()))


def observations(stream: Stream, n: int, rng: np.random.Generator, *, start: float = 0.0,
                 decoded: bool = True) -> list[dict[str, Any]]:
    """``n`` observations (rows as the store returns them: JSON fields decoded unless ``decoded`` is False)."""
    out = []
    for i in range(n):
        manufacturer = _pick(rng, stream.manufacturers)
        findings = {f: int(rng.integers(0, 3)) for f, p in stream.finding_rates.items() if rng.random() < p}
        row = {"id": next(_ids), "job_id": next(_ids), "study_uid": f"2.25.{next(_ids)}", "study_version": 1,
               "accession_hash": None, "rule": "chest", "endpoint": "cxr", "model": "cxrreportgen",
               "model_version": stream.model_version, "observed_at": start + i, "site": "MODALITY1",
               "institution": "General", "modality": "CR", "manufacturer": manufacturer,
               "inputs": [{"manufacturer": manufacturer, "model": f"{manufacturer} DR-1",
                           "kvp": float(round(rng.normal(stream.kvp_mean, 4))),
                           "photometric": "MONOCHROME2", "spacing": float(rng.choice(stream.spacing)),
                           "view": _pick(rng, stream.views)}],
               "findings": findings, "labels": {}, "n_findings": len(findings) + 2, "endpoint_seconds": None}
        if not decoded:
            row = {**row, **{k: json.dumps(row[k]) for k in ("inputs", "findings", "labels")}}
        out.append(row)
    return out


def embeddings(stream: Stream, n: int, rng: np.random.Generator, dim: int = 1024) -> np.ndarray:
    """``n`` unit vectors around a fixed centre (moved by ``embedding_shift`` along a fixed direction)."""
    fixed = np.random.default_rng(12345)
    centre = fixed.normal(size=dim)
    direction = fixed.normal(size=dim)
    centre /= np.linalg.norm(centre)
    direction /= np.linalg.norm(direction)
    x = centre + stream.embedding_shift * direction + rng.normal(scale=0.6 / np.sqrt(dim), size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
