"""Expected content: whether a study holds what its rules' ``complete_when`` asks for (docs/study-completion.md).

Pure functions over headers (no database, no files), used by the decision (:mod:`node.flow.completion`) and by the
rule tester (:mod:`node.flow.ruletest`), so both say the same thing:

- a rule *applies* to a study when its ``match`` header keys match one of the study's series (the node's own
  :func:`node.flow.matching.plan_study`; ``classified`` keys are not known before the labels, so they are ignored);
- a rule's ``complete_when`` holds when every clause given holds: ``series`` (each entry has ``min_instances``
  instances matching its ``match``, anywhere in the study), ``min_instances`` (the series the rule matches hold that
  many instances), ``number_of_study_related_instances: header`` (the study holds as many instances as the largest
  NumberOfStudyRelatedInstances among its headers says; a study whose headers never say holds no such count);
- the study's expected content is in when at least one rule applies and **every** rule that applies has a
  ``complete_when`` that holds. A rule that applies without ``complete_when`` leaves the study to the quiet timer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pydicom

from node.config import CLASSIFIED_KEY, RuleSection
from node.config_completion import CompleteWhen
from node.flow.matching import instance_matches, plan_study


@dataclass(frozen=True)
class ExpectedVerdict:
    """What expected content says about a study: ``satisfied`` (decide now), ``watch`` (each new instance may
    satisfy it: check at once), and why, in a short sentence (UIDs and rule names only)."""

    applicable: bool
    satisfied: bool
    watch: bool
    detail: str
    rules: tuple[str, ...] = field(default=())


def needed_keywords(rules: Iterable[RuleSection]) -> list[str]:
    """Every header keyword the rules and their ``complete_when`` read (to read headers with ``specific_tags``)."""
    keys = {"SeriesInstanceUID", "SOPInstanceUID", "NumberOfStudyRelatedInstances"}
    for rule in rules:
        keys |= {k for k in rule.match if k != CLASSIFIED_KEY}
        cw = rule.complete_when
        for entry in (cw.series or []) if cw is not None else []:
            keys |= set(entry.match)
    return sorted(keys)


def holds(cw: CompleteWhen, headers: Sequence[pydicom.Dataset], matched_series: Sequence[str]) -> tuple[bool, str]:
    """Whether ``cw`` holds for these headers (the study's), and the first clause that does not."""
    for i, entry in enumerate(cw.series or []):
        n = sum(1 for ds in headers if instance_matches(entry.match, ds))
        if n < entry.min_instances:
            return False, f"series[{i}] {dict(entry.match)}: {n} of {entry.min_instances} instance(s)"
    if cw.min_instances is not None:
        wanted = set(matched_series)
        n = sum(1 for ds in headers if str(ds.get("SeriesInstanceUID", "")) in wanted)
        if n < cw.min_instances:
            return False, f"min_instances: {n} of {cw.min_instances}"
    if cw.number_of_study_related_instances == "header":
        counts = []
        for ds in headers:
            try:
                counts.append(int(ds.get("NumberOfStudyRelatedInstances") or 0))
            except (TypeError, ValueError):
                continue
        expected = max(counts, default=0)
        if expected <= 0:
            return False, "number_of_study_related_instances: no header says how many"
        if len(headers) < expected:
            return False, f"number_of_study_related_instances: {len(headers)} of {expected}"
    return True, "in"


def evaluate(rules: Sequence[RuleSection], headers: Sequence[pydicom.Dataset]) -> ExpectedVerdict:
    """The study's expected content (see the module docstring)."""
    plans = plan_study(rules, headers, ignore_classified=True)
    if not plans:
        return ExpectedVerdict(False, False, False, "no rule matches yet")
    without = [p.rule.name for p in plans if p.rule.complete_when is None]
    names = tuple(p.rule.name for p in plans)
    if without:
        return ExpectedVerdict(False, False, False, f"rule(s) {without} match without complete_when", names)
    waiting = []
    for plan in plans:
        assert plan.rule.complete_when is not None
        ok, why = holds(plan.rule.complete_when, headers, plan.series_uids)
        if not ok:
            waiting.append(f"{plan.rule.name}: {why}")
    if waiting:
        return ExpectedVerdict(True, False, True, "waiting for " + "; ".join(waiting), names)
    return ExpectedVerdict(True, True, True, f"expected content of {list(names)} is in", names)
