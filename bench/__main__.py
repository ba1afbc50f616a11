"""``python -m bench all [--quick] [--out DIR]``: every registered benchmark, one table, JSON and a PNG chart.

``python -m bench ingest conversion`` runs only the named modules; ``python -m bench scale`` (a cluster of 1-3
nodes next to Orthanc on PostgreSQL, bench/scale.py) runs only when named. ``python -m bench soak --studies N`` is the
unattended-month soak (bench/soak.py): chaos, then counts of what was lost or duplicated. A module is ``bench.<name>`` exposing
``run(quick: bool) -> list[dict]`` (rows: group, name, value, unit, reference, ref_value, ratio, note).
Optional modules (written elsewhere) are reported as missing when they are not there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# name -> required? (an optional module may not exist in this checkout yet)
MODULES: dict[str, bool] = {
    "ingest": True,
    "overhead": True,
    "conversion": True,
    "search": False,
    "dicomweb": True,
    "http_cost": True,
    "completion": True,  # bench/completion.py: quiet timer against MPPS and expected content
    "scale": True,
    "endpoint_calls": True,
}
# run only when named (``python -m bench scale``), not by ``all``: each starts servers for minutes
ON_REQUEST = {"scale"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    head = ["group", "name", "value", "unit", "reference", "ref", "ratio", "note"]
    body = [[r["group"], r["name"], _fmt(r["value"]), r["unit"], r.get("reference") or "", _fmt(r.get("ref_value")),
             (f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""), r.get("note") or ""] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    widths[-1] = 0  # notes are not padded
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths[:-1]] + ["----"])] + [line(b) for b in body])


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """A horizontal bar chart of every row that has a ratio (node vs reference; 1.0 = parity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if r.get("ratio") is not None]
    fig, ax = plt.subplots(figsize=(11, 0.35 * max(len(ratios), 1) + 1.2))
    labels = [f"{r['group']}: {r['name']}"[:95] for r in ratios]
    values = [r["ratio"] for r in ratios]
    colors = ["tab:green" if v >= 1 else "tab:orange" if v >= 0.8 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("node vs reference (> 1: node better), log scale")
    ax.set_title("dicom-ai-node benchmarks (same run, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # not a table benchmark: its own options and a pass/fail exit status
        from bench.soak import main as soak_main

        return soak_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", default=["all"], help="'all' or module names: " + ", ".join(MODULES))
    p.add_argument("--quick", action="store_true", help="one short run of each (CI smoke mode)")
    p.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png (default: bench-out)")
    args = p.parse_args(argv)
    # The figures are the default configuration's (SQLite), and bench.completion reads its node.db: a PostgreSQL
    # choice meant for the test harness's nodes must not leak into the benchmarks' nodes.
    os.environ.pop("DICOM_NODE_TEST_DATABASE", None)
    names = [n for n in MODULES if n not in ON_REQUEST] if args.modules in (["all"], []) else args.modules
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}" and not MODULES[name]:
                print(f"[bench] {name}: module bench.{name} is missing in this checkout (optional): skipped",
                      flush=True)
                status[name] = "missing"
                continue
            raise
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            got = module.run(args.quick)
            status[name] = f"ok in {time.perf_counter() - t0:.1f} s"
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            got = []
            status[name] = f"failed: {type(exc).__name__}: {exc}"
        rows.extend(got)
        print(f"[bench] {name}: {status[name]}, {len(got)} row(s)", flush=True)
    print()
    print(table(rows))
    doc = {"quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "platform": platform.platform(),
                       "cpus": __import__("os").cpu_count()},
           "modules": status, "rows": rows}
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    try:
        chart(rows, out / "bench.png")
    except ImportError:
        print("[bench] matplotlib is missing: no chart (pip install '.[test]')")
    print(f"\n[bench] wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 1 if any(s.startswith("failed") for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
