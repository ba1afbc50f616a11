"""Classification-aware routing: rules with ``match: {classified: {...}}`` wait for the study's zero-shot labels.

When a study is decided (:meth:`node.worker.Runtime.check_study`), a rule whose ``match`` has ``classified`` and
whose header keys match some series gets a job in state ``waiting`` (it keeps the study open). Once no job of a
*classification rule* (a MedImageInsight endpoint with ``params.labels``) is pending or running for that study
version, :func:`resolve_waiting` evaluates the waiting rules again with the stored winning labels
(:func:`node.embeddings.study_labels`): a rule that matches becomes ``pending`` with the series it matched, one that
does not is ``skipped`` with the reason. It runs after every job of the study, at the end of the decision (a study
with no classification job resolves at once) and in the periodic sweep (a crash between the two leaves nothing
stuck). A failed classification job counts as run: its images simply have no label.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pydicom

from node.config import CLASSIFIED_KEY, NodeConfig, RuleSection
from node.store.embeddings import study_labels
from node.flow.rules import plan_study

if TYPE_CHECKING:  # pragma: no cover
    from node.flow.worker import Runtime

log = logging.getLogger(__name__)


def is_classification_rule(rule: RuleSection, cfg: NodeConfig) -> bool:
    """A rule that stores zero-shot labels: a MedImageInsight endpoint with ``params.labels``."""
    endpoint = cfg.endpoints.get(rule.endpoint)
    return endpoint is not None and endpoint.model == "medimageinsight" and bool(rule.params.get("labels"))


def deferred_rules(cfg: NodeConfig) -> list[RuleSection]:
    return [r for r in cfg.rules if r.match.get(CLASSIFIED_KEY)]


def waiting_plans(cfg: NodeConfig, headers: list[pydicom.Dataset]) -> list[tuple[str, str, list[str]]]:
    """(rule, endpoint, series) of the deferred rules whose header keys match: their jobs start waiting."""
    plans = plan_study(deferred_rules(cfg), headers, ignore_classified=True)
    return [(p.rule.name, p.rule.endpoint, p.series_uids) for p in plans]


def _headers(rt: "Runtime", study_uid: str) -> list[pydicom.Dataset]:
    out = []
    for row in rt.store.study_instances(study_uid):
        try:
            out.append(pydicom.dcmread(row["path"], stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not block the study
            log.warning("study %s: cannot read instance %s: %s", study_uid, row["sop_instance_uid"],
                        type(exc).__name__)
    return out


def resolve_waiting(rt: "Runtime", study_uid: str) -> list[int]:
    """Decide the waiting jobs of a study whose classification jobs are over; returns the jobs enqueued."""
    waiting = rt.store.waiting_jobs(study_uid)
    if not waiting:
        return []
    classifying = [r.name for r in rt.cfg.rules if is_classification_rule(r, rt.cfg)]
    versions = {j["study_version"] for j in waiting}
    ready = [j for j in waiting if rt.store.open_jobs_of_rules(study_uid, j["study_version"], classifying) == 0]
    if not ready:
        return []
    headers = _headers(rt, study_uid)
    labels = study_labels(rt.store.engine, study_uid)
    decisions: list[tuple[int, str, list[str], str]] = []
    for job in ready:
        rule = next((r for r in rt.cfg.rules if r.name == job["rule_name"]), None)
        if rule is None:
            decisions.append((job["id"], "skipped", [], "rule no longer configured"))
            continue
        plans = plan_study([rule], headers, labels)
        if plans:
            decisions.append((job["id"], "pending", plans[0].series_uids, "classification matched"))
        else:
            wanted: Any = rule.match.get(CLASSIFIED_KEY)
            decisions.append((job["id"], "skipped", [], f"no image classified as {wanted}"[:500]))
    enqueued = rt.store.resolve_waiting_jobs(decisions)
    log.info("study %s (version(s) %s): classified rules resolved: %s", study_uid, sorted(versions),
             [(d[0], d[1]) for d in decisions])
    for job_id in enqueued:
        rt.queue.enqueue_job(job_id)
    return enqueued


def resolve_all(rt: "Runtime") -> None:
    """The sweep's part: every study with waiting jobs (a crash may have left some)."""
    for study_uid in sorted({j["study_uid"] for j in rt.store.waiting_jobs()}):
        try:
            resolve_waiting(rt, study_uid)
        except Exception:  # noqa: BLE001 - the sweep goes on with the next study
            log.exception("study %s: resolving classified rules failed", study_uid)
