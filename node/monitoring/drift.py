"""Drift: a window against the operator's baseline, one test per feature, corrected for the number of tests.

:func:`summarize` turns observations (and endpoint calls) into a summary: categorical counts (the input mix:
manufacturer, model, photometric interpretation, view; the output's winning labels), numbers (kVp, pixel spacing,
findings per study, boxes per finding, endpoint seconds) and rates (studies with each finding, failed calls). The
baseline is the same summary of the pinned window, frozen (:mod:`node.monitoring.baseline`). :func:`compare` tests
every feature both have:

=============  =============================================================  ===============================
categorical    chi-square test of homogeneity (scipy), permutation p-value     effect: total variation distance
               when an expected count is under 5
numbers        two-sample Kolmogorov-Smirnov (scipy ``ks_2samp``)              effect: the KS statistic D
rates          Fisher's exact test (scipy)                                     effect: the difference of rates
embeddings     MMD with a Gaussian kernel (median heuristic bandwidth),        effect: MMD^2
               permutation p-value (scipy ``permutation_test``)
=============  =============================================================  ===============================

The p-values of one evaluation (one model version) are adjusted together (Benjamini-Hochberg, scipy's
``false_discovery_control``; under no drift at all it bounds the chance of any false alarm by ``drift_alpha``). A
test is *significant* when its adjusted p-value is below ``drift_alpha`` and its effect reaches the floor
(``drift_min_effect``; ``drift_min_mmd2`` for embeddings): with thousands of studies a trivial change is
statistically certain, and nobody wants an alert for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

CATEGORICAL_INPUTS = ("manufacturer", "model", "photometric", "view")
NUMERIC_INPUTS = ("kvp", "spacing")
MAX_VALUES = 5000  # numbers kept per feature in a summary (evenly spaced when there are more)
MIN_VALUES = 5  # a number or box feature is tested only with this many values on each side


@dataclass(frozen=True)
class TestResult:
    """One feature's test (before and after the correction)."""

    test: str
    method: str
    n_baseline: int
    n_window: int
    statistic: float
    effect: float
    p_value: float
    p_adjusted: float = 1.0
    significant: bool = False


def _thin(values: list[float]) -> list[float]:
    if len(values) <= MAX_VALUES:
        return values
    step = len(values) / MAX_VALUES
    return [values[int(i * step)] for i in range(MAX_VALUES)]


def summarize(observations: Sequence[dict[str, Any]], calls: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The drift summary of some observations of one model version and the calls of its endpoints."""
    cats: dict[str, Counter] = {f"input:{k}": Counter() for k in CATEGORICAL_INPUTS}
    nums: dict[str, list[float]] = {f"input:{k}": [] for k in NUMERIC_INPUTS}
    nums["output:findings_per_study"] = []
    found: Counter = Counter()
    for obs in observations:
        for image in obs["inputs"]:
            for k in CATEGORICAL_INPUTS:
                cats[f"input:{k}"][image.get(k) or "(none)"] += 1
            for k in NUMERIC_INPUTS:
                if image.get(k) is not None:
                    nums[f"input:{k}"].append(float(image[k]))
        nums["output:findings_per_study"].append(float(obs["n_findings"]))
        for finding, boxes in obs["findings"].items():
            found[finding] += 1
            nums.setdefault(f"output:boxes:{finding}", []).append(float(boxes))
        for label_set, values in obs["labels"].items():
            cats.setdefault(f"output:label:{label_set}", Counter()).update(values)
    rates = {f"output:rate:{f}": [k, len(observations)] for f, k in found.items()}
    seconds = [float(c["seconds"]) for c in calls if c["outcome"] == "ok" and c["seconds"] is not None]
    if seconds:
        nums["endpoint:seconds"] = seconds
    if calls:
        rates["endpoint:errors"] = [sum(c["outcome"] != "ok" for c in calls), len(calls)]
    return {"n": len(observations), "categorical": {k: dict(v) for k, v in cats.items() if v},
            "numeric": {k: _thin(v) for k, v in nums.items() if v}, "rates": rates}


def categorical_test(name: str, base: dict[str, int], window: dict[str, int],
                     rng: np.random.Generator) -> TestResult | None:
    """Chi-square test of homogeneity of two category counts (None when they have fewer than two categories)."""
    keys = sorted(set(base) | set(window))
    if len(keys) < 2:
        return None
    table = np.array([[base.get(k, 0) for k in keys], [window.get(k, 0) for k in keys]], dtype=float)
    nb, nw = table.sum(axis=1)
    if nb == 0 or nw == 0:
        return None
    expected = stats.contingency.expected_freq(table)
    method = None if expected.min() >= 5 else stats.PermutationMethod(n_resamples=999, rng=rng)
    res = stats.chi2_contingency(table, correction=False, method=method)
    tvd = 0.5 * float(np.abs(table[0] / nb - table[1] / nw).sum())
    return TestResult(name, "chi2" if method is None else "chi2-perm", int(nb), int(nw), float(res.statistic), tvd,
                      float(res.pvalue))


def numeric_test(name: str, base: Sequence[float], window: Sequence[float]) -> TestResult | None:
    """Two-sample Kolmogorov-Smirnov test (None with fewer than MIN_VALUES values on a side)."""
    if len(base) < MIN_VALUES or len(window) < MIN_VALUES:
        return None
    res = stats.ks_2samp(base, window)
    return TestResult(name, "ks", len(base), len(window), float(res.statistic), float(res.statistic),
                      float(res.pvalue))


def rate_test(name: str, base: Sequence[int], window: Sequence[int]) -> TestResult | None:
    """Fisher's exact test of two rates k/n (None when a side has no case)."""
    (kb, nb), (kw, nw) = base, window
    if nb == 0 or nw == 0:
        return None
    res = stats.fisher_exact([[kb, nb - kb], [kw, nw - kw]])
    diff = abs(kb / nb - kw / nw)
    return TestResult(name, "fisher", int(nb), int(nw), float(res.statistic) if np.isfinite(res.statistic) else 0.0,
                      diff, float(res.pvalue))


def mmd_test(name: str, x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> TestResult | None:
    """MMD^2 (unbiased) between two samples of embeddings, Gaussian kernel, permutation p-value."""
    if len(x) < MIN_VALUES or len(y) < MIN_VALUES:
        return None
    z = np.vstack([x, y]).astype(np.float64)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    median = float(np.median(sq[np.triu_indices(len(z), 1)]))
    kernel = np.exp(-sq / (median if median > 0 else 1.0))
    np.fill_diagonal(kernel, 0.0)

    n, m, total = len(x), len(y), len(z)

    def mmd2(ix: np.ndarray, iy: np.ndarray, axis: int = -1) -> np.ndarray:
        # ix: (..., n) indices of the "x" side in each resample; the rest is the "y" side. With the indicator s of
        # the x side: sum(Kxx) = s'Ks, sum(Kyy) = (1-s)'K(1-s), sum(Kxy) = s'K(1-s): one matrix product per batch.
        ix = np.moveaxis(np.asarray(ix), axis, -1).reshape(-1, n)
        s = np.zeros((len(ix), total))
        np.put_along_axis(s, ix, 1.0, axis=1)
        ks = s @ kernel
        kxx = (ks * s).sum(1)
        kxy = (ks * (1.0 - s)).sum(1)
        kyy = kernel.sum() - 2.0 * kxy - kxx
        value = kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)
        return value if value.size > 1 else value[0]

    ix, iy = np.arange(n), np.arange(n, total)
    res = stats.permutation_test((ix, iy), mmd2, permutation_type="independent", vectorized=True,
                                 n_resamples=permutations, alternative="greater", rng=rng, batch=200)
    return TestResult(name, "mmd", len(x), len(y), float(res.statistic), float(res.statistic), float(res.pvalue))


def compare(baseline: dict[str, Any], window: dict[str, Any], *, alpha: float, min_effect: float,
            min_mmd2: float, embeddings: tuple[np.ndarray, np.ndarray] | None = None, permutations: int = 500,
            seed: int = 0) -> list[TestResult]:
    """Every test the two summaries allow, adjusted together (see the module docstring)."""
    rng = np.random.default_rng(seed)
    found: list[TestResult | None] = []
    for name in sorted(set(baseline["categorical"]) & set(window["categorical"])):
        found.append(categorical_test(name, baseline["categorical"][name], window["categorical"][name], rng))
    for name in sorted(set(baseline["numeric"]) & set(window["numeric"])):
        found.append(numeric_test(name, baseline["numeric"][name], window["numeric"][name]))
    for name in sorted(set(baseline["rates"]) | set(window["rates"])):
        if name.startswith("output:rate:"):  # a finding one side never saw is a rate of 0 there
            b = baseline["rates"].get(name, [0, baseline["n"]])
            w = window["rates"].get(name, [0, window["n"]])
        elif name in baseline["rates"] and name in window["rates"]:
            b, w = baseline["rates"][name], window["rates"][name]
        else:
            continue
        found.append(rate_test(name, b, w))
    if embeddings is not None:
        found.append(mmd_test("embedding:mmd", embeddings[0], embeddings[1], permutations, rng))
    tests = [t for t in found if t is not None]
    if not tests:
        return []
    adjusted = stats.false_discovery_control([t.p_value for t in tests], method="bh")
    out = []
    for t, p in zip(tests, adjusted):
        floor = min_mmd2 if t.method == "mmd" else min_effect
        out.append(TestResult(**{**t.__dict__, "p_adjusted": float(p),
                                 "significant": bool(p < alpha and t.effect >= floor)}))
    return out


def significant(results: Iterable[TestResult]) -> list[TestResult]:
    """The tests that alert."""
    return [r for r in results if r.significant]
