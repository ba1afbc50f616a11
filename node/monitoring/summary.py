"""What the Monitoring page, the committee's report and the gauges show, read once from the database.

:func:`overview` gathers: agreement per window (``monitoring.windows_days``) and breakdown, agreement over time
(weekly points of a rolling window, per item, with its interval), the newest drift tests and their history, the
baselines, volumes (observations per model version and day, reports per door) and the open alerts. Nothing
identifies a patient: studies are counted, never named (the page adds identifiers only with ``http.show_phi``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from node.monitoring import agreement
from node.monitoring.settings import MonitoringSection

DAY = 86400.0
TREND_WEEKS = 12


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(t))


def trend(store: Any, now: float, window_days: float, weeks: int = TREND_WEEKS) -> dict[str, list[dict[str, Any]]]:
    """Per "model|version|item", weekly points (oldest first) of its agreement over the ``window_days`` before."""
    observations = store.observations_between(now - (weeks * 7 + window_days) * DAY, now)
    reports = store.matched_reports(o["study_uid"] for o in observations)
    series: dict[str, list[dict[str, Any]]] = {}
    for w in range(weeks, -1, -1):
        end = now - w * 7 * DAY
        inside = [o for o in observations if end - window_days * DAY <= o["observed_at"] < end]
        for row in agreement.agreement_rows(inside, reports, breakdowns=("all",)):
            key = f"{row['model']}|{row['model_version']}|{row['item']}"
            series.setdefault(key, []).append({"date": _day(end), **{k: row[k] for k in (
                "pairs", "a", "b", "c", "d", "positive_agreement", "positive_agreement_low",
                "positive_agreement_high", "sensitivity", "sensitivity_low", "sensitivity_high", "ppv", "ppv_low",
                "ppv_high")}})
    return series


def volumes(store: Any, now: float, days: int = 90) -> dict[str, Any]:
    """Observations per model version and day, reports per door, unmatched reports."""
    per_day: dict[str, Counter] = {}
    for o in store.observations_between(now - days * DAY, now):
        per_day.setdefault(f"{o['model']} {o['model_version']}", Counter())[_day(o["observed_at"])] += 1
    return {"observations": {k: dict(sorted(v.items())) for k, v in sorted(per_day.items())},
            "reports": store.report_counts()}


def overview(store: Any, cfg: MonitoringSection, now: float | None = None, *, by: str = "all",
             since_days: float | None = None) -> dict[str, Any]:
    """Everything the page and the report show (``since_days``: one window instead of ``windows_days``)."""
    t = time.time() if now is None else now
    windows = [since_days] if since_days is not None else cfg.windows_days
    breakdowns = ("all",) if by == "all" else ("all", by)
    rows = [r for days in windows for r in agreement.window_rows(store, t, days, breakdowns)]
    latest = store.latest_drift()
    return {
        "now": t, "windows": windows, "by": by, "agreement": rows,
        "trend": trend(store, t, cfg.alert_window_days),
        "drift": sorted(latest, key=lambda r: (r["model"], r["model_version"], r["test"])),
        "drift_history": store.drift_since(t - 90 * DAY),
        "baselines": [{k: v for k, v in b.items() if k not in ("embeddings", "summary")} | {"n": b["summary"]["n"]}
                      for b in store.baselines(active_only=True)],
        "volumes": volumes(store, t), "alerts": store.open_alerts(),
        "thresholds": {"min_agreement": cfg.min_agreement, "per_finding": cfg.min_agreement_per_finding,
                       "drift_alpha": cfg.drift_alpha, "min_pairs": cfg.min_pairs},
    }
