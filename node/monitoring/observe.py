"""The AI side of monitoring: what each finished job's results said and what went in, and each endpoint call's end.

:func:`job_writes` runs in the worker when a job has written its results (:func:`node.flow.run.run_job`); its
write commits in the transaction that finishes the job, so an observation exists exactly for the jobs that are
done. It reads one header per series of the job (never per instance): the input mix (manufacturer, model, kVp,
photometric interpretation, pixel spacing, view), the site (calling AE, institution), and what the results say
(:func:`node.reports.read.read_results`: coded findings and their boxes, winning labels, segments) under the model
version the result names (its Processing Algorithm item). :func:`call_ended` keeps each endpoint call's end (its
time, or its error) for the latency and error-rate drift. Monitoring never fails a job: a problem here is logged.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pydicom
from sqlalchemy import insert, select

from node.monitoring.intake import accession_hash
from node.monitoring.vocabulary import canonical_label, finding_of_code, label_terms
from node.reports.read import UnreadableResult, read_results
from node.store.monitoring import observation_write
from node.store.schema import embeddings, monitoring

log = logging.getLogger(__name__)

INPUT_TAGS = ["Manufacturer", "ManufacturerModelName", "KVP", "PhotometricInterpretation", "PixelSpacing",
              "ImagerPixelSpacing", "ViewPosition", "Modality", "InstitutionName", "AccessionNumber",
              "SeriesInstanceUID", "BodyPartExamined"]


def _number(value: Any) -> float | None:
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return None


def input_of(ds: pydicom.Dataset) -> dict[str, Any]:
    """The input features of one image header (no patient data)."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return {"manufacturer": str(ds.get("Manufacturer", "") or "").strip()[:64],
            "model": str(ds.get("ManufacturerModelName", "") or "").strip()[:64],
            "kvp": _number(ds.get("KVP")), "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
            "spacing": _number(spacing[0]) if spacing else None,
            "view": str(ds.get("ViewPosition", "") or "").strip().upper()[:16]}


def series_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """One header per series of ``paths`` (the first readable instance of each), in order."""
    seen: set[str] = set()
    out = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=INPUT_TAGS)
        except Exception:  # noqa: BLE001 - the converter reports unreadable files
            continue
        series = str(ds.get("SeriesInstanceUID", ""))
        if series not in seen:
            seen.add(series)
            out.append(ds)
    return out


def what_results_say(results: Sequence[tuple[str, pydicom.Dataset]],
                     extra_terms: dict | None = None) -> tuple[str | None, dict[str, int], dict[str, list[str]], int]:
    """(model version, {finding: boxes}, {label set: [values]}, items) of a job's written results."""
    try:
        content = read_results(results)
    except UnreadableResult as exc:
        log.warning("monitoring: results not readable (%s)", exc)
        return None, {}, {}, 0
    if content is None:
        return None, {}, {}, 0
    findings: dict[str, int] = {}
    for f in content.findings:
        kind = finding_of_code(f.code.value if f.code is not None else None)
        if kind is not None:
            findings[kind.key] = findings.get(kind.key, 0) + f.regions
    terms = label_terms(extra_terms)
    labels: dict[str, set[str]] = {}
    for image in content.labels:
        for label_set, label in image.winners:
            name = label_set.meaning.replace("(zero-shot)", "").strip().lower()
            value = canonical_label(name, label.meaning, terms)
            if value is not None:
                labels.setdefault(name, set()).add(value)
    return (content.algorithm.version or None, findings, {k: sorted(v) for k, v in labels.items()},
            len(content.findings) + len(content.segments))


def job_writes(svc: Any, job: dict[str, Any], results: Sequence[tuple[str, pydicom.Dataset]], paths: Sequence[Path],
               endpoint_seconds: float | None) -> list[Callable[[Any], None]]:
    """The write (fn(connection)) of a done job's observation and its call; [] when monitoring is off or fails."""
    cfg = svc.cfg
    if not cfg.monitoring.enabled:
        return []
    try:
        endpoint = cfg.endpoints.get(job["endpoint"])
        model = endpoint.model if endpoint is not None else "unknown"
        version, findings, labels, items = what_results_say(results, cfg.monitoring.label_terms)
        headers = series_headers(paths)
        first = headers[0] if headers else pydicom.Dataset()
        rows = svc.store.study_instances(job["study_uid"])
        row = {
            "job_id": job["id"], "study_uid": job["study_uid"], "study_version": int(job["study_version"]),
            "accession_hash": accession_hash(str(first.get("AccessionNumber", "") or "")),
            "rule": job["rule_name"], "endpoint": job["endpoint"], "model": model,
            "model_version": (version or (endpoint.deployment if endpoint is not None else None) or "")[:128],
            "site": (rows[0]["calling_ae"] if rows else "")[:64],
            "institution": str(first.get("InstitutionName", "") or "").strip()[:128],
            "modality": str(first.get("Modality", "") or "")[:16],
            "manufacturer": str(first.get("Manufacturer", "") or "").strip()[:64],
            "inputs": json.dumps([input_of(h) for h in headers]), "findings": json.dumps(findings, sort_keys=True),
            "labels": json.dumps(labels, sort_keys=True), "n_findings": items, "endpoint_seconds": endpoint_seconds,
        }
    except Exception:  # noqa: BLE001 - monitoring never holds back a result
        log.exception("monitoring: job %s could not be observed", job.get("id"))
        return []

    def write(conn: Any) -> None:
        if not row["model_version"]:  # no SR/SEG (an embedding-only rule): the version its embeddings carry
            row["model_version"] = conn.execute(select(embeddings.c.model_version).where(
                embeddings.c.study_uid == row["study_uid"]).order_by(embeddings.c.id.desc()).limit(1)).scalar() \
                or "unspecified"
        observation_write(row)(conn)
        conn.execute(insert(monitoring.calls).values(endpoint=row["endpoint"], model=row["model"], at=time.time(),
                                                     outcome="ok", seconds=endpoint_seconds, status=200))
    return [write]


def call_ended(svc: Any, job: dict[str, Any], outcome: str, status: int | None = None) -> None:
    """Keep an endpoint call that failed: ``error`` (permanent) or ``transient`` (to be retried)."""
    if not svc.cfg.monitoring.enabled:
        return
    try:
        endpoint = svc.cfg.endpoints.get(job["endpoint"])
        svc.store.record_call(job["endpoint"], endpoint.model if endpoint is not None else "unknown", outcome,
                              status=status)
    except Exception:  # noqa: BLE001
        log.exception("monitoring: the call of job %s could not be recorded", job.get("id"))
