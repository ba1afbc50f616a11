"""Prometheus gauges of the monitoring side, read from the database at scrape time (Grafana alerts on them).

- ``dicom_node_monitoring_agreement{model,version,item,measure,window_days}`` and its ``_low`` / ``_high`` (Wilson
  95%), measures positive_agreement, negative_agreement, sensitivity, ppv; ``dicom_node_monitoring_pairs`` (studies
  with both an AI result and a report);
- ``dicom_node_monitoring_drift_p_adjusted{model,version,test}``, ``..._drift_effect``, ``..._drift_significant``
  (the newest evaluation of each model version);
- ``dicom_node_monitoring_alerts{kind}`` (open alerts), ``dicom_node_monitoring_reports{door}`` (reports held; door
  ``unmatched``: waiting for their study).

Agreement is computed over every ``monitoring.windows_days`` window (study totals only, no breakdown), cached for a
minute: a scrape every 15 s costs one computation a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from node.monitoring import agreement

log = logging.getLogger(__name__)
CACHE_SECONDS = 60.0
MEASURES = ("positive_agreement", "negative_agreement", "sensitivity", "ppv")


class MonitoringCollector(Collector):
    """Reads agreement, drift, alerts and report counts on every scrape (``ctx``: the HTTP side's context)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def _agreement(self) -> list[dict[str, Any]]:
        with self._lock:
            at, rows = self._cached
            if time.monotonic() - at > CACHE_SECONDS:
                now = time.time()
                rows = [r for days in self.ctx.cfg.monitoring.windows_days
                        for r in agreement.window_rows(self.ctx.store, now, days, breakdowns=("all",))]
                self._cached = (time.monotonic(), rows)
            return rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self.ctx.cfg.monitoring.enabled:
            return
        labels = ["model", "version", "item", "measure", "window_days"]
        value = GaugeMetricFamily("dicom_node_monitoring_agreement",
                                  "Agreement of the AI with the radiologists' reports (radiologist = reference)", labels=labels)
        low = GaugeMetricFamily("dicom_node_monitoring_agreement_low", "Lower end of its Wilson 95% interval", labels=labels)
        high = GaugeMetricFamily("dicom_node_monitoring_agreement_high", "Upper end of its Wilson 95% interval", labels=labels)
        pairs = GaugeMetricFamily("dicom_node_monitoring_pairs", "Studies with both an AI result and a report",
                                  labels=["model", "version", "item", "window_days"])
        p_adj = GaugeMetricFamily("dicom_node_monitoring_drift_p_adjusted",
                                  "Adjusted p-value of each drift test (newest evaluation)", labels=["model", "version", "test"])
        effect = GaugeMetricFamily("dicom_node_monitoring_drift_effect", "Effect size of each drift test",
                                   labels=["model", "version", "test"])
        sig = GaugeMetricFamily("dicom_node_monitoring_drift_significant", "1 when the drift test alerts",
                                labels=["model", "version", "test"])
        alerts = GaugeMetricFamily("dicom_node_monitoring_alerts", "Open monitoring alerts", labels=["kind"])
        reports = GaugeMetricFamily("dicom_node_monitoring_reports", "Radiologists' reports held", labels=["door"])
        try:
            for r in self._agreement():
                window = f"{r['window_days']:g}"
                pairs.add_metric([r["model"], r["model_version"], r["item"], window], r["pairs"])
                for m in MEASURES:
                    if r[m] is not None:
                        key = [r["model"], r["model_version"], r["item"], m, window]
                        value.add_metric(key, r[m])
                        low.add_metric(key, r[f"{m}_low"])
                        high.add_metric(key, r[f"{m}_high"])
            for d in self.ctx.store.latest_drift():
                key = [d["model"], d["model_version"], d["test"]]
                p_adj.add_metric(key, d["p_adjusted"])
                effect.add_metric(key, d["effect"])
                sig.add_metric(key, 1.0 if d["significant"] else 0.0)
            open_alerts = self.ctx.store.open_alerts()
            for kind in ("agreement", "drift"):
                alerts.add_metric([kind], sum(a["kind"] == kind for a in open_alerts))
            for door, n in self.ctx.store.report_counts().items():
                reports.add_metric([door], n)
        except Exception:  # noqa: BLE001 - a scrape never fails on monitoring
            log.exception("monitoring gauges could not be read")
        yield from (value, low, high, pairs, p_adj, effect, sig, alerts, reports)
