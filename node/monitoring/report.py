"""``dicom-node monitor report``: the quality committee's document, as one HTML file or a CSV table.

HTML: the Monitoring page's tables and charts for one window (``--since``), self-contained (Chart.js inlined, no
network), with every breakdown (site, modality, manufacturer). CSV: one row per agreement table row (window, model,
version, finding or label, breakdown and value, a b c d, uncertain, the four measures with their Wilson 95%
interval), or with ``--table drift`` the newest drift tests. No patient identifiers either way.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from node.monitoring.page import STATIC, TEMPLATES, chart_data, trend_keys
from node.monitoring.summary import overview

AGREEMENT_COLUMNS = ("window_days", "model", "model_version", "item", "by", "value", "pairs", "ai_positive",
                     "radiologist_positive", "a", "b", "c", "d", "uncertain",
                     *(f"{m}{s}" for m in ("positive_agreement", "negative_agreement", "sensitivity", "ppv")
                       for s in ("", "_low", "_high")))
DRIFT_COLUMNS = ("evaluated_at", "model", "model_version", "test", "method", "n_baseline", "n_window", "statistic",
                 "effect", "p_value", "p_adjusted", "significant")


def report_data(store: Any, cfg: Any, since_days: float, now: float | None = None) -> dict[str, Any]:
    """The window's overview with every breakdown."""
    data = overview(store, cfg.monitoring, now, by="all", since_days=since_days)
    for by in ("site", "modality", "manufacturer"):
        data["agreement"] += [r for r in overview(store, cfg.monitoring, now, by=by, since_days=since_days)["agreement"]
                              if r["by"] == by]
    return data


def as_csv(data: dict[str, Any], table: str = "agreement") -> str:
    """The agreement rows (or the newest drift tests) as CSV."""
    out = io.StringIO()
    columns = AGREEMENT_COLUMNS if table == "agreement" else DRIFT_COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in data["agreement"] if table == "agreement" else data["drift"]:
        writer.writerow({k: ("" if row.get(k) is None else f"{row[k]:.4f}" if isinstance(row.get(k), float)
                             and k != "window_days" else row.get(k)) for k in columns})
    return out.getvalue()


def as_html(data: dict[str, Any], cfg: Any, since_text: str) -> str:
    """The self-contained HTML document."""
    script = (STATIC / "chart.umd.min.js").read_text() + "\n" + (STATIC / "monitoring.js").read_text()
    chart_json = json.dumps(chart_data(data, cfg.monitoring.min_agreement, cfg.monitoring.drift_alpha))
    return TEMPLATES.get_template("monitoring.html").render(
        layout="report_base.html", node=cfg.node, show_phi=False, cfg=cfg.monitoring, data=data, recent=[],
        trend_keys=trend_keys(data),
        chart_json=chart_json.replace("</", "<\\/"), inline_js=script.replace("</script", "<\\/script"),
        produced=time.strftime("%Y-%m-%d %H:%M"), window_text=since_text)
