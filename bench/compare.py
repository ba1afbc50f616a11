"""Two runs of ``python -m bench all`` side by side (e.g. before and after a change), as a Markdown table.

    python -m bench.compare bench-out/before/bench.json bench-out/after/bench.json

Rows are matched by group and name; each side shows its value and its ratio against the reference measured in
its own run (figures from different runs are never divided by each other).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def compare(before: dict, after: dict) -> str:
    """The Markdown table of both runs' rows (union, in the order of ``after`` then the rows only ``before`` has)."""
    key = lambda r: (r["group"], r["name"])  # noqa: E731
    old = {key(r): r for r in before["rows"]}
    new = {key(r): r for r in after["rows"]}
    keys = list(new) + [k for k in old if k not in new]
    lines = ["| group | figure | unit | before | ratio before | after | ratio after |",
             "|---|---|---|---|---|---|---|"]
    for k in keys:
        a, b = old.get(k, {}), new.get(k, {})
        ratio = lambda r: f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""  # noqa: E731
        unit = (b or a).get("unit", "")
        lines.append(f"| {k[0]} | {k[1]} | {unit} | {_f(a.get('value'))} | {ratio(a)} | {_f(b.get('value'))} | "
                     f"{ratio(b)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__)
        return 2
    before, after = (json.loads(Path(p).read_text()) for p in args)
    print(compare(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
