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

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pydicom
from pydicom.multival import MultiValue

from node.ops import metrics
from node.config import CLASSIFIED_KEY, MatchValue, NodeConfig, RuleSection
from node.flow.services import Services
from node.monitoring.sr_door import take_reports
from node.ops.failpoints import failpoint
from node.store.embeddings import study_labels

log = logging.getLogger(__name__)


# Rules ------------------------------------------------------------------------------------------------------
def glob_match(pattern: str, value: str) -> bool:
    """Case-insensitive ``*``/``?`` glob match used by rules."""
    return fnmatch.fnmatchcase(value.strip().upper(), pattern.strip().upper())


def _values_of(ds: pydicom.Dataset, keyword: str) -> list[str] | None:
    if keyword not in ds:
        return None
    value = ds.data_element(keyword).value  # type: ignore[union-attr]
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        items = [str(v) for v in value if str(v).strip() != ""]
        return items or None
    if isinstance(value, pydicom.sequence.Sequence):
        return None  # sequences cannot be matched by value
    return [str(value)]


def _one_matches(expected: str | int | float, actual: str) -> bool:
    if isinstance(expected, bool):
        expected = str(expected)
    if isinstance(expected, (int, float)):
        try:
            return float(actual) == float(expected)
        except ValueError:
            return False
    return glob_match(str(expected), actual)


def value_matches(expected: MatchValue, actual_values: Sequence[str] | None) -> bool:
    """One ``match`` key against the values of one attribute."""
    if actual_values is None:
        return False
    options = expected if isinstance(expected, list) else [expected]
    return any(_one_matches(opt, actual) for opt in options for actual in actual_values)


def instance_matches(match: Mapping[str, MatchValue], ds: pydicom.Dataset) -> bool:
    """Every key of ``match`` matches this instance's header."""
    return all(value_matches(expected, _values_of(ds, key)) for key, expected in match.items()
               if key != CLASSIFIED_KEY)


def explain_mismatch(match: Mapping[str, MatchValue], ds: pydicom.Dataset) -> tuple[str, MatchValue, list[str] | None] | None:
    """The first ``match`` key this instance fails, as (key, expected, values found or None); None if all match.

    The same test as :func:`instance_matches` (``classified`` is left out: it needs stored labels).
    """
    for key, expected in match.items():
        if key == CLASSIFIED_KEY:
            continue
        found = _values_of(ds, key)
        if not value_matches(expected, found):
            return key, expected, found
    return None


def classified_matches(expected: Mapping[str, Any] | None, ds: pydicom.Dataset,
                       labels: Mapping[str, Mapping[str, str]]) -> bool:
    """Every label set of ``expected`` has, for this instance, a stored winning label among the listed ones."""
    if not expected:
        return True
    sop = str(ds.get("SOPInstanceUID", ""))
    for label_set, wanted in expected.items():
        label = labels.get(label_set, {}).get(sop)
        if label is None or not value_matches(wanted, [label]):
            return False
    return True


@dataclass
class RulePlan:
    """A rule that matched, and the series (in study order) it matched."""

    rule: RuleSection
    series_uids: list[str] = field(default_factory=list)


def plan_study(rules: Iterable[RuleSection], headers: Iterable[pydicom.Dataset],
               classified: Mapping[str, Mapping[str, str]] | None = None, *,
               ignore_classified: bool = False) -> list[RulePlan]:
    """Evaluate every rule against the series of one study; rules that match no series are left out.

    Rules with ``classified`` are left out unless ``classified`` (label set -> SOP Instance UID -> label) is
    given; ``ignore_classified`` tests only their header keys (to know whether they may apply at all).
    """
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    plans: list[RulePlan] = []
    for rule in rules:
        wanted = rule.match.get(CLASSIFIED_KEY)
        if wanted and classified is None and not ignore_classified:
            continue  # waits for the study's classification rules
        if ignore_classified:
            wanted = None
        matched = [uid for uid, items in by_series.items()
                   if any(instance_matches(rule.match, ds) and classified_matches(wanted, ds, classified or {})
                          for ds in items)]
        if matched:
            plans.append(RulePlan(rule=rule, series_uids=matched))
    return plans


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
    """Quiet-timer check: close the study when no instance came for the quiet time, and plan its jobs."""
    decision, value = svc.intake.begin_decision(study_uid)
    if decision == "wait":
        svc.intake.arm(study_uid, float(value))
        return
    if decision != "complete":
        return
    version = int(value)
    failpoint("decided")
    headers, fresh = take_reports(svc, study_uid, read_headers(svc, study_uid))  # radiologists' SRs (node/monitoring)
    if not fresh:  # only a report came since the jobs were made: the AI's results stand, nothing runs again
        svc.store.close_after_report(study_uid, f"version {version}: a radiologist's report came, no new image: "
                                                "the AI's results stand")
        log.info("study %s (version %d): only a radiologist's report came; the models are not run again",
                 study_uid, version)
        return
    plans = plan_study(svc.cfg.rules, headers)
    waiting = waiting_plans(svc.cfg, headers)  # rules with `classified:` wait for the study's labels
    job_ids = svc.store.create_jobs(study_uid, version, [(p.rule.name, p.rule.endpoint, p.series_uids)
                                                         for p in plans], waiting=waiting)
    log.info("study %s complete (version %d, %d instances): %d job(s) %s", study_uid, version, len(headers),
             len(job_ids), [p.rule.name for p in plans])
    metrics.study_completed()
    for job_id in job_ids:
        svc.queue.enqueue_job(job_id)
    if waiting:
        resolve_waiting(svc, study_uid)
