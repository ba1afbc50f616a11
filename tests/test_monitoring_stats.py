"""The statistics of node/monitoring: Wilson intervals, the agreement table, the drift tests and their false alarms.

In process, no database: observations are the synthetic streams of support/monitoring_data.py, whose truth (shift
or no shift, counts) the test knows without the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from node.monitoring.agreement import Counts, agreement_rows, below_floor, wilson
from node.monitoring.drift import compare, summarize
from support.monitoring_data import Stream, embeddings, observations

pytestmark = pytest.mark.nodb

#: the windows of the false-alarm measurement here (docs/monitoring.md's rate is measured over more, see bench/)
NULL_WINDOWS = 40


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval written out (E. B. Wilson, 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (81, 263), (1, 2)])
def test_wilson_interval(k: int, n: int) -> None:
    got = wilson(k, n)
    low, high = wilson_by_hand(k, n)
    assert got.value == pytest.approx(k / n)
    assert got.low == pytest.approx(low, abs=1e-9) and got.high == pytest.approx(high, abs=1e-9)
    assert wilson(0, 0).value is None


def test_the_two_by_two_table_and_its_measures() -> None:
    counts = Counts()
    for ai, rad, times in ((True, "present", 8), (True, "absent", 2), (False, "present", 4), (False, "absent", 86),
                           (True, "uncertain", 3)):
        for _ in range(times):
            counts.add(ai, rad)
    assert (counts.a, counts.b, counts.c, counts.d, counts.uncertain, counts.pairs) == (8, 2, 4, 86, 3, 100)
    m = counts.metrics()
    assert m["positive_agreement"].value == pytest.approx(16 / 22)
    assert m["negative_agreement"].value == pytest.approx(172 / 178)
    assert m["sensitivity"].value == pytest.approx(8 / 12) and m["ppv"].value == pytest.approx(8 / 10)


def _obs(study: str, version: str, findings: dict, *, rule: str = "chest", study_version: int = 1, oid: int = 1,
         site: str = "CR1", labels: dict | None = None) -> dict:
    return {"id": oid, "study_uid": study, "study_version": study_version, "rule": rule, "model": "cxrreportgen",
            "model_version": version, "site": site, "institution": "", "modality": "CR", "manufacturer": "Agfa",
            "findings": findings, "labels": labels or {}, "observed_at": 0.0}


def test_agreement_rows_from_pairs_per_version_and_site() -> None:
    obs = [_obs("s1", "v1", {"pleural_effusion": 1}, oid=1), _obs("s2", "v1", {"cardiomegaly": 0}, oid=2, site="CR2"),
           _obs("s3", "v1", {}, oid=3), _obs("s4", "v2", {"pleural_effusion": 2}, oid=4),
           _obs("s1", "v1", {}, oid=5, study_version=0),  # an earlier study version: replaced by oid 1
           _obs("s5", "v1", {"pneumothorax": 1}, oid=6)]  # no report: not a pair
    reports = {"s1": {"findings": {"pleural_effusion": "present"}, "labels": {}},
               "s2": {"findings": {"cardiomegaly": "absent"}, "labels": {}},
               "s3": {"findings": {"pneumothorax": "present", "pleural_effusion": "uncertain"}, "labels": {}},
               "s4": {"findings": {}, "labels": {}}}
    rows = {(r["model_version"], r["item"], r["by"], r["value"]): r for r in agreement_rows(obs, reports)}
    eff1 = rows[("v1", "pleural_effusion", "all", "all")]
    assert (eff1["a"], eff1["b"], eff1["c"], eff1["d"], eff1["uncertain"]) == (1, 0, 0, 1, 1)
    eff2 = rows[("v2", "pleural_effusion", "all", "all")]  # a version of its own: never mixed with v1
    assert (eff2["a"], eff2["b"], eff2["c"], eff2["d"]) == (0, 1, 0, 0)
    ptx = rows[("v1", "pneumothorax", "all", "all")]
    assert (ptx["a"], ptx["b"], ptx["c"], ptx["d"]) == (0, 0, 1, 2)
    cm_site = rows[("v1", "cardiomegaly", "site", "CR2")]
    assert (cm_site["a"], cm_site["b"], cm_site["c"], cm_site["d"]) == (0, 1, 0, 0)
    assert ("v1", "cardiomegaly", "site", "CR1") in rows


def test_labels_are_pairs_only_where_the_report_names_them() -> None:
    obs = [_obs("s1", "v1", {}, labels={"view": ["PA", "LATERAL"]}, oid=1),
           _obs("s2", "v1", {}, labels={"view": ["AP"]}, oid=2)]
    reports = {"s1": {"findings": {}, "labels": {"view": ["PA", "LATERAL"]}},
               "s2": {"findings": {}, "labels": {}}}
    rows = {r["item"]: r for r in agreement_rows(obs, reports, breakdowns=("all",))}
    assert (rows["view=PA"]["a"], rows["view=LATERAL"]["a"], rows["view=AP"]["d"]) == (1, 1, 1)
    assert rows["view=PA"]["pairs"] == 1  # s2's report names no view


def test_an_agreement_below_the_floor_alerts_only_with_enough_studies() -> None:
    row = {"item": "pneumothorax", "pairs": 40, "positive_agreement": 0.2, "positive_agreement_low": 0.1,
           "positive_agreement_high": 0.35, "negative_agreement": 0.95, "negative_agreement_low": 0.9,
           "negative_agreement_high": 0.98}
    assert "positive agreement of pneumothorax" in below_floor(row, 0.6, 20)
    assert below_floor(row, 0.3, 20) is None  # the interval reaches the floor
    assert below_floor({**row, "pairs": 10}, 0.6, 20) is None


def _windows(stream: Stream, count: int, rng: np.random.Generator, base: dict, base_emb: np.ndarray, *,
             alpha: float = 0.01, min_effect: float = 0.1, n: int = 150) -> list[list]:
    out = []
    for i in range(count):
        window = summarize(observations(stream, n, rng))
        out.append(compare(base, window, alpha=alpha, min_effect=min_effect, min_mmd2=0.005,
                           embeddings=(base_emb, embeddings(stream, 80, rng)), permutations=2000, seed=i))
    return out


@pytest.fixture(scope="module")
def baseline() -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(2026)
    return summarize(observations(Stream(), 400, rng)), embeddings(Stream(), 120, rng)


@pytest.mark.parametrize("shift, test", [
    ({"manufacturers": {"Agfa": 0.45, "Carestream": 0.2, "Fujifilm": 0.35}}, "input:manufacturer"),
    ({"views": {"PA": 0.4, "AP": 0.6}}, "input:view"),
    ({"embedding_shift": 0.15}, "embedding:mmd"),
    ({"finding_rates": {**Stream().finding_rates, "pneumothorax": 0.2}}, "output:rate:pneumothorax"),
])
def test_a_synthetic_shift_is_detected(baseline, shift: dict, test: str) -> None:
    base, base_emb = baseline
    rng = np.random.default_rng(99)
    for results in _windows(Stream().shifted(**shift), 3, rng, base, base_emb):
        flagged = {r.test for r in results if r.significant}
        assert test in flagged, [(r.test, r.p_adjusted, r.effect) for r in results]


def test_no_shift_raises_no_alarm_over_many_windows(baseline, capsys: pytest.CaptureFixture) -> None:
    """The false-alarm rate per evaluation on no-drift data, with the correction and without it."""
    base, base_emb = baseline
    rng = np.random.default_rng(7)
    runs = _windows(Stream(), NULL_WINDOWS, rng, base, base_emb)
    alarms = sum(any(r.significant for r in results) for results in runs)
    uncorrected = sum(any(r.p_value < 0.01 for r in results) for results in runs)
    tests = len(runs[0])
    with capsys.disabled():
        print(f"\nno-drift windows: {alarms}/{NULL_WINDOWS} with an alert ({tests} tests each); "
              f"{uncorrected}/{NULL_WINDOWS} would have one at p < 0.01 without the correction and the effect floor")
    assert tests >= 15
    assert alarms == 0  # P(>= 1 of 40 | rate 0.01) is 33%; the effect floor makes the real rate far smaller
    assert uncorrected > alarms  # the correction is what keeps these windows quiet


def test_a_version_without_its_own_baseline_is_not_compared() -> None:
    """Summaries are per version: a window of v2 against v1's baseline is the caller's mistake to avoid, so the
    summary itself carries nothing of the version (the evaluation looks the baseline up by version)."""
    rng = np.random.default_rng(3)
    a = summarize(observations(Stream(model_version="v1"), 50, rng))
    assert "model_version" not in a and a["n"] == 50


def test_a_trivial_shift_in_a_huge_window_is_certain_but_does_not_alert() -> None:
    """20,000 studies a side: 70/30 -> 68/32 is statistically certain and of no consequence (the effect floor)."""
    base = {"n": 20000, "categorical": {"input:manufacturer": {"Agfa": 14000, "Carestream": 6000}}, "numeric": {},
            "rates": {}}
    window = {"n": 20000, "categorical": {"input:manufacturer": {"Agfa": 13600, "Carestream": 6400}}, "numeric": {},
              "rates": {}}
    (result,) = compare(base, window, alpha=0.01, min_effect=0.1, min_mmd2=0.005)
    assert result.p_adjusted < 1e-4 and result.effect == pytest.approx(0.02)
    assert not result.significant
    (floorless,) = compare(base, window, alpha=0.01, min_effect=0.0, min_mmd2=0.0)
    assert floorless.significant
