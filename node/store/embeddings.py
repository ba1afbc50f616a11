"""The database side of MedImageInsight: image embeddings, zero-shot labels and the label-text cache.

Embeddings and labels of a job are written by :func:`job_writes`, which the worker runs inside the transaction
that finishes the job (``JobOutput.writes``), so a job is either done with its vectors and labels or not done.
A re-run writes the same rows again: an embedding already stored for (SOP instance, model, version) is kept as it
is (same image, same model version, same vector), which keeps its id stable for :mod:`node.similar`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.engine import Connection, Engine

from node.store.conflicts import retry_on_conflict
from node.store.schema import classifications, embeddings, text_embeddings


@dataclass(frozen=True)
class EmbeddingRecord:
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    model_name: str
    model_version: str
    vector: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class LabelRecord:
    """The winning label of one label set for one image, with every label's probability."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    label_set: str
    label: str
    probabilities: Mapping[str, float]
    model_name: str
    model_version: str
    rule_name: str

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.label])


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def bytes_vector(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def write_embeddings(conn: Connection, records: Iterable[EmbeddingRecord]) -> int:
    """Insert the embeddings not stored yet (see the module docstring); returns how many were new."""
    t = time.time()
    n = 0
    for rec in records:
        have = conn.execute(select(embeddings.c.id).where(and_(
            embeddings.c.sop_instance_uid == rec.sop_instance_uid, embeddings.c.model_name == rec.model_name,
            embeddings.c.model_version == rec.model_version))).first()
        if have is not None:
            continue
        conn.execute(insert(embeddings).values(
            sop_instance_uid=rec.sop_instance_uid, series_uid=rec.series_uid, study_uid=rec.study_uid,
            model_name=rec.model_name, model_version=rec.model_version, dim=int(np.asarray(rec.vector).shape[0]),
            vector=vector_bytes(rec.vector), created_at=t))
        n += 1
    return n


def write_labels(conn: Connection, records: Iterable[LabelRecord]) -> None:
    """Store (replace) the winning label per image and label set."""
    t = time.time()
    for rec in records:
        conn.execute(delete(classifications).where(and_(
            classifications.c.sop_instance_uid == rec.sop_instance_uid,
            classifications.c.label_set == rec.label_set)))
        conn.execute(insert(classifications).values(
            sop_instance_uid=rec.sop_instance_uid, label_set=rec.label_set, study_uid=rec.study_uid,
            series_uid=rec.series_uid, label=rec.label, probability=rec.probability,
            probabilities=json.dumps({k: round(float(v), 6) for k, v in rec.probabilities.items()}),
            model_name=rec.model_name, model_version=rec.model_version, rule_name=rec.rule_name, created_at=t))


def job_writes(vectors: Sequence[EmbeddingRecord], labels: Sequence[LabelRecord]) -> Callable[[Connection], None]:
    """A write to run inside the job's finishing transaction."""
    def write(conn: Connection) -> None:
        write_embeddings(conn, vectors)
        write_labels(conn, labels)
    return write


# --- reads -----------------------------------------------------------------------------------------------

def study_labels(engine: Engine, study_uid: str) -> dict[str, dict[str, str]]:
    """``{label_set: {sop_instance_uid: winning label}}`` of one study."""
    out: dict[str, dict[str, str]] = {}
    with engine.connect() as conn:
        for row in conn.execute(select(classifications.c.label_set, classifications.c.sop_instance_uid,
                                       classifications.c.label).where(classifications.c.study_uid == study_uid)):
            out.setdefault(row[0], {})[row[1]] = row[2]
    return out


def instance_embedding(engine: Engine, sop_instance_uid: str, model_name: str | None = None
                       ) -> tuple[dict, np.ndarray] | None:
    """The newest stored embedding of one instance (row without the blob, vector), or None."""
    q = select(embeddings).where(embeddings.c.sop_instance_uid == sop_instance_uid)
    if model_name:
        q = q.where(embeddings.c.model_name == model_name)
    with engine.connect() as conn:
        row = conn.execute(q.order_by(embeddings.c.id.desc())).mappings().first()
    if row is None:
        return None
    meta = {k: v for k, v in row.items() if k != "vector"}
    return meta, bytes_vector(row["vector"])


def newest_model(engine: Engine) -> tuple[str, str] | None:
    """(model_name, model_version) of the newest stored embedding, or None when there is none."""
    with engine.connect() as conn:
        row = conn.execute(select(embeddings.c.model_name, embeddings.c.model_version)
                           .order_by(embeddings.c.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def count_embeddings(engine: Engine, model_name: str, model_version: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(embeddings).where(and_(
            embeddings.c.model_name == model_name, embeddings.c.model_version == model_version))).scalar_one())


# --- label text cache --------------------------------------------------------------------------------------

def cached_texts(engine: Engine, endpoint: str, model_version: str, texts: Iterable[str]
                 ) -> tuple[dict[str, np.ndarray], float | None]:
    """Cached text vectors of ``texts`` for this endpoint and model version, and a cached scaling factor."""
    wanted = list(dict.fromkeys(texts))
    out: dict[str, np.ndarray] = {}
    factor = None
    if not wanted:
        return out, None
    with engine.connect() as conn:
        for row in conn.execute(select(text_embeddings).where(and_(
                text_embeddings.c.endpoint == endpoint, text_embeddings.c.model_version == model_version,
                text_embeddings.c.text.in_(wanted)))).mappings():
            out[row["text"]] = bytes_vector(row["vector"])
            if row["scaling_factor"] is not None:
                factor = float(row["scaling_factor"])
    return out, factor


@retry_on_conflict  # two jobs caching the same label texts at once (PostgreSQL)
def cache_texts(engine: Engine, endpoint: str, model_version: str, vectors: Mapping[str, np.ndarray],
                scaling_factor: float | None) -> None:
    """Store text vectors (a cache: its own short transaction, outside the job's)."""
    if not vectors:
        return
    t = time.time()
    with engine.begin() as conn:
        for text, vec in vectors.items():
            conn.execute(delete(text_embeddings).where(and_(
                text_embeddings.c.endpoint == endpoint, text_embeddings.c.model_version == model_version,
                text_embeddings.c.text == text)))
            conn.execute(insert(text_embeddings).values(endpoint=endpoint, model_version=model_version, text=text,
                                                        vector=vector_bytes(vec), scaling_factor=scaling_factor,
                                                        created_at=t))
