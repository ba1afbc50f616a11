"""``python -m bench.monitoring_drift [--windows 500]``: the drift test's false-alarm rate and power, measured.

No-drift windows are drawn from the same synthetic chest X-ray stream as the baseline (tests/support/
monitoring_data.py: manufacturer and view mix, kVp, pixel spacing, finding rates with boxes, 1024-d embeddings);
each window is compared with the baseline by :func:`node.monitoring.drift.compare` with the defaults of
``monitoring`` (drift_alpha 0.01, drift_min_effect 0.1, drift_min_mmd2 0.005, 4000 permutations). The false-alarm
rate is the share of no-drift windows with any significant test; the power is the share of shifted windows (a
second manufacturer, a different view mix, moved embeddings) whose shifted feature is flagged. docs/monitoring.md
quotes the numbers of a run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from node.monitoring.drift import compare, summarize  # noqa: E402
from node.monitoring.settings import MonitoringSection  # noqa: E402
from support.monitoring_data import Stream, embeddings, observations  # noqa: E402

SHIFTS: dict[str, tuple[dict[str, Any], str]] = {
    "second manufacturer": ({"manufacturers": {"Agfa": 0.45, "Carestream": 0.2, "Fujifilm": 0.35}},
                            "input:manufacturer"),
    "view mix PA 75% -> 40%": ({"views": {"PA": 0.4, "AP": 0.6}}, "input:view"),
    "embeddings moved 0.15": ({"embedding_shift": 0.15}, "embedding:mmd"),
}


def run(windows: int = 500, n: int = 150, n_embeddings: int = 80, seed: int = 1) -> list[dict[str, Any]]:
    cfg = MonitoringSection()
    rng = np.random.default_rng(seed)
    base = summarize(observations(Stream(), 400, rng))
    base_emb = embeddings(Stream(), 120, rng)

    def window(stream: Stream, i: int) -> list:
        return compare(base, summarize(observations(stream, n, rng)), alpha=cfg.drift_alpha,
                       min_effect=cfg.drift_min_effect, min_mmd2=cfg.drift_min_mmd2,
                       embeddings=(base_emb, embeddings(stream, n_embeddings, rng)), permutations=cfg.permutations,
                       seed=i)

    rows = []
    t0 = time.monotonic()
    null = [window(Stream(), i) for i in range(windows)]
    alarms = sum(any(r.significant for r in res) for res in null)
    raw = sum(any(r.p_value < cfg.drift_alpha for r in res) for res in null)
    rows.append({"name": "no drift: windows with an alert", "value": alarms / windows, "count": f"{alarms}/{windows}",
                 "note": f"{len(null[0])} tests per window; without correction and floor: {raw}/{windows}",
                 "seconds": time.monotonic() - t0})
    for name, (shift, test) in SHIFTS.items():
        k = max(20, windows // 10)
        hits = sum(any(r.test == test and r.significant for r in window(Stream().shifted(**shift), i))
                   for i in range(k))
        rows.append({"name": f"{name}: flagged", "value": hits / k, "count": f"{hits}/{k}", "note": test})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=500)
    args = p.parse_args(argv)
    for row in run(args.windows):
        print(f"{row['name']}: {row['count']} = {row['value']:.4f} ({row['note']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
