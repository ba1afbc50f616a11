"""Decide: which routing rules match which series of a complete study, and which jobs it gets.

``check_study`` runs when a study's quiet timer is due (:mod:`node.flow.intake`): once the study is quiet it plans
one job per matching rule. Study-level checks (:func:`mixed_patients_reason`) run before any image leaves.

Rule semantics (also documented in config/example.yaml):

- ``match`` is tested per series, on the tags of its instances: a series matches when at least one of its
  instances matches every key of ``match``. An empty ``match`` matches every series.
- A value is a scalar or a list (any of the list matches).
- Strings may use ``*`` and ``?`` globs; comparison ignores case and surrounding spaces.
- Numbers compare numerically (``SeriesNumber: 3`` matches "3").
- A multi-valued attribute (e.g. ImageType) matches when any of its values matches.
- A missing or empty tag does not match.
- Every matching rule runs: one job per rule and study, covering all the series that rule matched.
- ``classified: {label_set: [labels]}`` matches an instance whose stored zero-shot label of that set (from a
  MedImageInsight rule with ``params.labels``) is one of the labels (globs, case ignored). Such a rule waits until
  the study's classification rules have run (:mod:`node.classified`); before that, :func:`plan_study` leaves it out.

Classification-aware routing: when a study is decided, a rule whose ``match`` has ``classified`` and whose header
keys match some series gets a job in state ``waiting`` (it keeps the study open). Once no job of a *classification
rule* (a MedImageInsight endpoint with ``params.labels``) is pending or running for that study version,
:func:`resolve_waiting` evaluates the waiting rules again with the stored winning labels
(:func:`node.store.embeddings.study_labels`): a rule that matches becomes ``pending`` with the series it matched,
one that does not is ``skipped`` with the reason. It runs after every job of the study, at the end of the decision
(a study with no classification job resolves at once) and in the periodic sweep (a crash between the two leaves
nothing stuck). A failed classification job counts as run: its images simply have no label.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import pydicom

from node.ops import metrics
from node.config import CLASSIFIED_KEY, NodeConfig, RuleSection
from node.flow.matching import (  # noqa: F401  (rule matching lives there; re-exported for its callers)
    RulePlan, classified_matches, explain_mismatch, glob_match, instance_matches, plan_study, value_matches)
from node.flow.services import Services
from node.monitoring.sr_door import take_reports
from node.ops.failpoints import failpoint
from node.store.embeddings import study_labels

log = logging.getLogger(__name__)


# Rules (matching itself: node/flow/matching.py) -----------------------------------------------------------
def describe(plan: RulePlan) -> dict[str, Any]:
    """A plan as plain data (for logs and status)."""
    return {"rule": plan.rule.name, "endpoint": plan.rule.endpoint, "series": plan.series_uids}


# Study checks -----------------------------------------------------------------------------------------------
def mixed_patients_reason(paths: Iterable[Path]) -> str | None:
    """Why a job's instances must not be sent together: they belong to more than one patient (Patient ID).

    One result (an SR citing every image as evidence) for two patients would put one patient's findings in
    another's record. The message never quotes the IDs (PHI), only how many there are.
    """
    ids: set[str] = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # an unreadable file is the converter's to report, with its reason
            continue
        ids.add(str(ds.get("PatientID", "") or "").strip())
    if len(ids) > 1:
        return f"the study mixes {len(ids)} patients (different Patient IDs in one Study Instance UID): not processed"
    return None


# Classification-aware routing -------------------------------------------------------------------------------


def is_classification_rule(rule: RuleSection, cfg: NodeConfig) -> bool:
    """A rule that stores zero-shot labels: a MedImageInsight endpoint with ``params.labels``."""
    endpoint = cfg.endpoints.get(rule.endpoint)
    return endpoint is not None and endpoint.model == "medimageinsight" and bool(rule.params.get("labels"))


def deferred_rules(cfg: NodeConfig) -> list[RuleSection]:
    """The rules that wait for zero-shot labels (``match.classified``)."""
    return [r for r in cfg.rules if r.match.get(CLASSIFIED_KEY)]


def waiting_plans(cfg: NodeConfig, headers: list[pydicom.Dataset]) -> list[tuple[str, str, list[str]]]:
    """(rule, endpoint, series) of the deferred rules whose header keys match: their jobs start waiting."""
    plans = plan_study(deferred_rules(cfg), headers, ignore_classified=True)
    return [(p.rule.name, p.rule.endpoint, p.series_uids) for p in plans]


def resolve_waiting(svc: Services, study_uid: str) -> list[int]:
    """Decide the waiting jobs of a study whose classification jobs are over; returns the jobs enqueued."""
    waiting = svc.store.waiting_jobs(study_uid)
    if not waiting:
        return []
    classifying = [r.name for r in svc.cfg.rules if is_classification_rule(r, svc.cfg)]
    versions = {j["study_version"] for j in waiting}
    ready = [j for j in waiting if svc.store.open_jobs_of_rules(study_uid, j["study_version"], classifying) == 0]
    if not ready:
        return []
    headers = read_headers(svc, study_uid)
    labels = study_labels(svc.store.engine, study_uid)
    decisions: list[tuple[int, str, list[str], str]] = []
    for job in ready:
        rule = next((r for r in svc.cfg.rules if r.name == job["rule_name"]), None)
        if rule is None:
            decisions.append((job["id"], "skipped", [], "rule no longer configured"))
            continue
        plans = plan_study([rule], headers, labels)
        if plans:
            decisions.append((job["id"], "pending", plans[0].series_uids, "classification matched"))
        else:
            wanted: Any = rule.match.get(CLASSIFIED_KEY)
            decisions.append((job["id"], "skipped", [], f"no image classified as {wanted}"[:500]))
    enqueued = svc.store.resolve_waiting_jobs(decisions)
    log.info("study %s (version(s) %s): classified rules resolved: %s", study_uid, sorted(versions),
             [(d[0], d[1]) for d in decisions])
    for job_id in enqueued:
        svc.queue.enqueue_job(job_id)
    return enqueued


def resolve_all(svc: Services) -> None:
    """The sweep's part: every study with waiting jobs (a crash may have left some)."""
    for study_uid in sorted({j["study_uid"] for j in svc.store.waiting_jobs()}):
        try:
            resolve_waiting(svc, study_uid)
        except Exception:  # noqa: BLE001 - the sweep goes on with the next study
            log.exception("study %s: resolving classified rules failed", study_uid)


# The decision -------------------------------------------------------------------------------------------------
def read_headers(svc: Services, study_uid: str) -> list[pydicom.Dataset]:
    """The headers of a study's instances (priors left out); an unreadable file is logged and skipped."""
    out = []
    for row in svc.store.study_instances(study_uid):
        try:
            out.append(pydicom.dcmread(row["path"], stop_before_pixels=True))
        except Exception as exc:  # the file was accepted once; a later read failure must not stop the study
            # pydicom's messages may quote element values: the type only
            log.warning("study %s: cannot read instance %s: %s", study_uid, row["sop_instance_uid"],
                        type(exc).__name__)
    return out


def check_study(svc: Services, study_uid: str) -> None:
    """A study's check (armed by its quiet timer or a completion trigger): when a trigger decides the study
    (:mod:`node.flow.completion`), plan its jobs; otherwise arm the next check."""
    outcome = svc.intake.begin_decision(study_uid)
    if outcome.kind == "wait":
        svc.intake.arm(study_uid, outcome.due)
        return
    if outcome.kind != "complete":
        return
    version = outcome.version
    failpoint("decided")
    headers, fresh = take_reports(svc, study_uid, read_headers(svc, study_uid))  # radiologists' SRs (node/monitoring)
    if not fresh:  # only a report came since the jobs were made: the AI's results stand, nothing runs again
        svc.store.close_after_report(study_uid, f"version {version}: a radiologist's report came, no new image: "
                                                "the AI's results stand")
        log.info("study %s (version %d): only a radiologist's report came; the models are not run again",
                 study_uid, version)
        return
    rules = [r for r in svc.cfg.rules if outcome.rules is None or r.name in outcome.rules]
    plans = plan_study(rules, headers)
    waiting = [w for w in waiting_plans(svc.cfg, headers)  # rules with `classified:` wait for the study's labels
               if outcome.rules is None or w[0] in outcome.rules]
    skipped: list[tuple[str, str, list[str]]] = []
    if outcome.discontinued:  # an MPPS of the study was DISCONTINUED: rules with on_discontinued: skip do not run
        skip = {r.name for r in rules if r.on_discontinued == "skip"}
        skipped = [(p.rule.name, p.rule.endpoint, p.series_uids) for p in plans if p.rule.name in skip]
        skipped += [w for w in waiting if w[0] in skip]
        plans = [p for p in plans if p.rule.name not in skip]
        waiting = [w for w in waiting if w[0] not in skip]
    job_ids = svc.store.create_jobs(study_uid, version, [(p.rule.name, p.rule.endpoint, p.series_uids)
                                                         for p in plans], waiting=waiting)
    if skipped:
        svc.store.skip_jobs(study_uid, version, skipped,
                            "not run: the study's MPPS was DISCONTINUED (on_discontinued: skip)")
    log.info("study %s complete (version %d, %d instances, trigger %s: %s): %d job(s) %s%s", study_uid, version,
             len(headers), outcome.trigger, outcome.detail, len(job_ids), [p.rule.name for p in plans],
             f", skipped {[s[0] for s in skipped]}" if skipped else "")
    metrics.study_completed()
    if outcome.latency is not None:  # not when a crashed decision is planned again
        metrics.study_decided(outcome.trigger, outcome.latency)
    for job_id in job_ids:
        svc.queue.enqueue_job(job_id)
    if waiting:
        resolve_waiting(svc, study_uid)
