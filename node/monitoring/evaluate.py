"""The periodic evaluation: drift of each baselined model version, agreement against its floor, alerts.

The worker's sweep calls :func:`upkeep`; an evaluation runs when ``monitoring.evaluate_every_minutes`` have passed
since the last one (claimed in the database, so one node of a cluster runs it) and ``dicom-node monitor evaluate``
runs one now. An evaluation:

1. for each active baseline, tests the last ``drift_window_days`` of that model *version* against it
   (:func:`node.monitoring.drift.compare`; a window with fewer than ``min_window_cases`` observations is not
   tested) and keeps every test in ``monitor_drift``;
2. computes agreement over ``alert_window_days`` per model version and item (:mod:`node.monitoring.agreement`);
3. makes the open alerts exactly the significant drift tests and the items whose positive or negative agreement
   has its whole Wilson interval below ``min_agreement`` (with at least ``min_pairs`` studies). A new alert is
   logged once as ``ALERT: monitoring ...`` (ERROR), a cleared one at INFO; open alerts are the status page's banner
   and the ``dicom_node_monitoring_alerts`` gauge.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from node.monitoring import agreement, drift
from node.monitoring.baseline import Window, embeddings_of, window_data
from node.monitoring.settings import MonitoringSection

log = logging.getLogger(__name__)
DAY = 86400.0


@dataclass
class Evaluation:
    """What one evaluation found."""

    at: float
    drift: list[dict[str, Any]] = field(default_factory=list)  # monitor_drift rows
    untested: list[str] = field(default_factory=list)  # "model version: why"
    alerts: dict[str, dict[str, str]] = field(default_factory=lambda: {"drift": {}, "agreement": {}})
    raised: list[dict[str, Any]] = field(default_factory=list)
    cleared: list[dict[str, Any]] = field(default_factory=list)


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(t))


def drift_of(store: Any, cfg: MonitoringSection, baseline: dict[str, Any], now: float,
             out: Evaluation) -> None:
    """Test one baseline's model version over the drift window; rows and alerts go into ``out``."""
    model, version = baseline["model"], baseline["model_version"]
    window = Window(now - cfg.drift_window_days * DAY, now)
    summary, vectors = window_data(store, model, version, window, cfg.max_embedding_samples)
    if summary["n"] < cfg.min_window_cases:
        out.untested.append(f"{model} {version}: {summary['n']} observation(s) in the last {cfg.drift_window_days:g} "
                            f"day(s), {cfg.min_window_cases} needed")
        return
    base_vectors = embeddings_of(baseline)
    pair = (base_vectors, vectors) if base_vectors is not None and vectors is not None else None
    results = drift.compare(baseline["summary"], summary, alpha=cfg.drift_alpha, min_effect=cfg.drift_min_effect,
                            min_mmd2=cfg.drift_min_mmd2, embeddings=pair, permutations=cfg.permutations,
                            seed=int(now) % (2**32))
    for r in results:
        out.drift.append({"evaluated_at": now, "model": model, "model_version": version, "test": r.test,
                          "method": r.method, "window_start": window.start, "window_end": window.end,
                          "n_baseline": r.n_baseline, "n_window": r.n_window, "statistic": r.statistic,
                          "effect": r.effect, "p_value": r.p_value, "p_adjusted": r.p_adjusted,
                          "significant": r.significant})
        if r.significant:
            out.alerts["drift"][f"drift:{model}:{version}:{r.test}"] = (
                f"{model} {version}: {r.test} has drifted from the baseline pinned for "
                f"{_clock(baseline['window_start'])}..{_clock(baseline['window_end'])} ({r.method}, adjusted p = "
                f"{r.p_adjusted:.2g}, effect {r.effect:.3f}; {r.n_window} in the window, {r.n_baseline} in the baseline)")


def agreement_alerts(store: Any, cfg: MonitoringSection, now: float, out: Evaluation) -> None:
    """Items whose agreement is wholly below their floor over ``alert_window_days``."""
    for row in agreement.window_rows(store, now, cfg.alert_window_days, breakdowns=("all",)):
        item = row["item"]
        why = agreement.below_floor(row, cfg.threshold(item), cfg.min_pairs)
        if why:
            out.alerts["agreement"][f"agreement:{row['model']}:{row['model_version']}:{item}"] = (
                f"{row['model']} {row['model_version']}: {why} (last {cfg.alert_window_days} days)")


def evaluate(store: Any, cfg: MonitoringSection, now: float | None = None) -> Evaluation:
    """Run one evaluation now (see the module docstring); returns what it found and which alerts changed."""
    t = time.time() if now is None else now
    out = Evaluation(at=t)
    for baseline in store.baselines(active_only=True):
        try:
            drift_of(store, cfg, baseline, t, out)
        except Exception:  # noqa: BLE001 - one model's failure leaves the others' evaluation
            log.exception("monitoring: drift of %s %s could not be evaluated", baseline["model"],
                          baseline["model_version"])
    store.record_drift(out.drift)
    agreement_alerts(store, cfg, t, out)
    for kind in ("drift", "agreement"):
        raised, cleared = store.set_alerts(kind, out.alerts[kind])
        out.raised += raised
        out.cleared += cleared
    for alert in out.raised:
        log.error("ALERT: monitoring %s: %s", alert["kind"], alert["message"])
    for alert in out.cleared:
        log.info("monitoring %s alert cleared: %s", alert["kind"], alert["key"])
    log.info("monitoring evaluated: %d drift test(s), %d significant; %d agreement alert(s)%s", len(out.drift),
             sum(r["significant"] for r in out.drift), len(out.alerts["agreement"]),
             f"; not tested: {'; '.join(out.untested)}" if out.untested else "")
    return out


def upkeep(svc: Any) -> None:
    """The sweep's part: retention of reports and observations, and the evaluation when it is due."""
    cfg = svc.cfg.monitoring
    if not cfg.enabled:
        return
    purged = svc.store.purge_monitoring(cfg.unmatched_report_days * DAY, cfg.keep_days * DAY)
    if any(purged.values()):
        log.info("monitoring retention: %s", ", ".join(f"{n} {k}" for k, n in purged.items() if n))
    if svc.store.claim_monitor_evaluation(cfg.evaluate_every_minutes * 60.0):
        evaluate(svc.store, cfg)
