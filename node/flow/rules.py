"""Decide: which routing rules match which series of a complete study.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pydicom
from pydicom.multival import MultiValue

from node.config import CLASSIFIED_KEY, MatchValue, RuleSection, glob_match


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
    return {"rule": plan.rule.name, "endpoint": plan.rule.endpoint, "series": plan.series_uids}
