"""The operator's baseline: a window of one model version, pinned (``dicom-node monitor baseline pin``) and frozen.

Pinning summarizes the window's observations and its endpoints' calls (:func:`node.monitoring.drift.summarize`)
and keeps a sample of its MedImageInsight embeddings, so that later retention or a purge of the spool never moves
the reference. A model version has at most one active baseline; a new pin replaces it; drift of a version with no
baseline is not tested (the page says so): an in-place model update starts from nothing, never from the old
version's reference.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from node.monitoring.drift import summarize
from node.store.embeddings import bytes_vector, vector_bytes


class BaselineError(ValueError):
    """A baseline that cannot be pinned (the message says why and what is there)."""


@dataclass(frozen=True)
class Window:
    """A time window [start, end) in POSIX seconds."""

    start: float
    end: float


def window_data(store: Any, model: str, version: str, window: Window, sample: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """(drift summary, embedding sample or None) of ``model`` ``version`` in ``window``."""
    observations = [o for o in store.observations_between(window.start, window.end, model=model)
                    if o["model_version"] == version]
    calls = [c for c in store.calls_between(window.start, window.end) if c["model"] == model]
    rows = store.embedding_sample(version, window.start, window.end, sample)
    vectors = np.vstack([bytes_vector(r) for r in rows]) if rows else None
    return summarize(observations, calls), vectors


def versions_in(store: Any, model: str, window: Window) -> Counter:
    """How many observations each version of ``model`` has in ``window``."""
    return Counter(o["model_version"] for o in store.observations_between(window.start, window.end, model=model))


def pin(store: Any, *, model: str, window: Window, version: str | None = None, pinned_by: str = "operator",
        note: str = "", min_cases: int = 1, sample: int = 300) -> dict[str, Any]:
    """Pin the baseline of ``model`` (``version``: the only one in the window when not given); returns its row."""
    seen = versions_in(store, model, window)
    if version is None:
        if len(seen) != 1:
            raise BaselineError(f"{model} has {len(seen)} versions in that window "
                                f"({', '.join(f'{v}: {n}' for v, n in seen.most_common()) or 'no observation'}): "
                                "name one with --version")
        version = next(iter(seen))
    summary, vectors = window_data(store, model, version, window, sample)
    if summary["n"] < min_cases:
        raise BaselineError(f"{model} {version} has {summary['n']} observation(s) in that window; at least "
                            f"{min_cases} are needed (monitoring.min_window_cases)")
    row = {"model": model, "model_version": version, "window_start": window.start, "window_end": window.end,
           "pinned_by": pinned_by[:128], "note": note, "summary": json.dumps(summary),
           "embedding_dim": int(vectors.shape[1]) if vectors is not None else None,
           "embeddings": b"".join(vector_bytes(v) for v in vectors) if vectors is not None else None}
    row["id"] = store.pin_baseline(row)
    return row


def embeddings_of(baseline: dict[str, Any]) -> np.ndarray | None:
    """The embedding sample a baseline keeps (None when it has none)."""
    if not baseline.get("embeddings") or not baseline.get("embedding_dim"):
        return None
    return bytes_vector(baseline["embeddings"]).reshape(-1, int(baseline["embedding_dim"]))
