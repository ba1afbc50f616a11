"""Agreement between the AI's results and the radiologists' reports: counts, agreement, sensitivity, PPV.

One *pair* is a study with an AI observation (the newest study version per rule) and a radiologist's report (the
newest). Per finding of a report-writing model (CXRReportGen), with the radiologist as the reference:

==================  =====================================  ===========================================
a                   AI positive, radiologist positive      the report says present
b                   AI positive, radiologist negative      absent, or not mentioned
c                   AI negative, radiologist positive
d                   AI negative, radiologist negative
uncertain           the report is uncertain                 left out of a..d, counted apart
==================  =====================================  ===========================================

positive agreement ``2a / (2a + b + c)``, negative agreement ``2d / (2d + b + c)`` (Cicchetti & Feinstein's
specific agreement), sensitivity ``a / (a + c)``, PPV ``a / (a + b)``; each with the Wilson score 95% interval
(scipy's ``binomtest(...).proportion_ci(method="wilson")``; for the two agreements the interval of 2a successes in
2a + b + c ratings, an approximation that treats the ratings as independent). Classification labels are pairs too,
where the report names the label set (its view, its side): ``view=PA`` is AI positive when an image of the study
was labelled PA, radiologist positive when the report says PA.

Series never mix model versions: every row is per model and version, and then per site (calling AE), modality,
manufacturer, or all of them together (``by`` = ``all``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from scipy.stats import binomtest

from node.monitoring.vocabulary import FINDINGS, LABEL_TERMS

#: Models whose results are report sentences coded with the node's findings.
FINDING_MODELS = frozenset({"cxrreportgen"})
BREAKDOWNS = ("all", "site", "modality", "manufacturer")
DAY = 86400.0


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None


def wilson(k: int, n: int) -> Interval:
    """k of n with its Wilson score 95% interval (all None when n is 0)."""
    if n <= 0:
        return Interval(None, None, None)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high))


@dataclass
class Counts:
    """The 2x2 table of one finding in one group, and the reports that were uncertain about it."""

    a: int = 0
    b: int = 0
    c: int = 0
    d: int = 0
    uncertain: int = 0

    def add(self, ai: bool, radiologist: str) -> None:
        if radiologist == "uncertain":
            self.uncertain += 1
            return
        rad = radiologist == "present"
        if ai and rad:
            self.a += 1
        elif ai:
            self.b += 1
        elif rad:
            self.c += 1
        else:
            self.d += 1

    @property
    def pairs(self) -> int:
        return self.a + self.b + self.c + self.d

    def metrics(self) -> dict[str, Interval]:
        a, b, c, d = self.a, self.b, self.c, self.d
        return {"positive_agreement": wilson(2 * a, 2 * a + b + c), "negative_agreement": wilson(2 * d, 2 * d + b + c),
                "sensitivity": wilson(a, a + c), "ppv": wilson(a, a + b)}


def latest_observations(observations: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per study and rule, the observation of its newest study version (a re-run's result replaces the earlier)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for o in observations:
        key = (o["study_uid"], o["rule"])
        if key not in best or (o["study_version"], o["id"]) > (best[key]["study_version"], best[key]["id"]):
            best[key] = o
    return sorted(best.values(), key=lambda o: o["id"])


def pair_items(obs: dict[str, Any], report: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(item, AI positive, radiologist's status) of one pair: the findings, then the labels the report names."""
    out: list[tuple[str, bool, str]] = []
    if obs["model"] in FINDING_MODELS:
        for kind in FINDINGS:
            out.append((kind.key, kind.key in obs["findings"], report["findings"].get(kind.key, "absent")))
    for label_set, ai_values in obs["labels"].items():
        said = report["labels"].get(label_set)
        if not said:
            continue
        values = sorted(set(LABEL_TERMS.get(label_set, {})) | set(ai_values) | set(said))
        out += [(f"{label_set}={v}", v in ai_values, "present" if v in said else "absent") for v in values]
    return out


def _group_values(obs: dict[str, Any], by: str) -> str:
    if by == "all":
        return "all"
    if by == "site":
        return obs["site"] or obs["institution"] or "-"
    return obs[by] or "-"


def agreement_rows(observations: Sequence[dict[str, Any]], reports: dict[str, dict[str, Any]],
                   breakdowns: Sequence[str] = BREAKDOWNS) -> list[dict[str, Any]]:
    """One row per (model, version, item, breakdown, value): counts and metrics with intervals."""
    tables: dict[tuple[str, str, str, str, str], Counts] = {}
    for obs in latest_observations(observations):
        report = reports.get(obs["study_uid"])
        if report is None:
            continue
        for item, ai, rad in pair_items(obs, report):
            for by in breakdowns:
                key = (obs["model"], obs["model_version"], item, by, _group_values(obs, by))
                tables.setdefault(key, Counts()).add(ai, rad)
    rows = []
    for (model, version, item, by, value), counts in sorted(tables.items()):
        row: dict[str, Any] = {"model": model, "model_version": version, "item": item, "by": by, "value": value,
                               **asdict(counts), "pairs": counts.pairs, "ai_positive": counts.a + counts.b,
                               "radiologist_positive": counts.a + counts.c}
        for name, interval in counts.metrics().items():
            row[name], row[f"{name}_low"], row[f"{name}_high"] = interval.value, interval.low, interval.high
        rows.append(row)
    return rows


def window_rows(store: Any, now: float, days: float, breakdowns: Sequence[str] = BREAKDOWNS) -> list[dict[str, Any]]:
    """:func:`agreement_rows` of the observations of the last ``days`` days (each row names its window)."""
    observations = store.observations_between(now - days * DAY, now)
    reports = store.matched_reports(o["study_uid"] for o in observations)
    return [{"window_days": days, **r} for r in agreement_rows(observations, reports, breakdowns)]


def below_floor(row: dict[str, Any], floor: float, min_pairs: int) -> str | None:
    """Why ``row`` (a ``by == all`` row) alerts: an agreement whose whole interval is below ``floor``; else None."""
    if row["pairs"] < min_pairs:
        return None
    for name in ("positive_agreement", "negative_agreement"):
        high = row[f"{name}_high"]
        if high is not None and high < floor:
            return (f"{name.replace('_', ' ')} of {row['item']} is {row[name]:.2f} (95% CI {row[f'{name}_low']:.2f}-"
                    f"{high:.2f}) over {row['pairs']} studies, below {floor:.2f}")
    return None
