"""Rule matching: whether a rule's ``match`` holds for an instance header, and which series of a study a rule takes.

Pure functions over headers (no database, no files): the decision (:mod:`node.flow.decide`), expected content
(:mod:`node.flow.expected`) and the rule tester (:mod:`node.flow.ruletest`) share them. The semantics are listed in
:mod:`node.flow.decide`'s docstring and in config/example.yaml.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pydicom
from pydicom.multival import MultiValue

from node.config import CLASSIFIED_KEY, MatchValue, RuleSection

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
