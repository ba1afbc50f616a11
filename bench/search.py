"""Similar-case search latency: k-NN (k = 10) queries on the node's real index (:class:`node.similar.EmbeddingIndex`).

Synthetic unit vectors (1024-d, seeded) are appended to an index in a temporary folder, the matrix is mapped as
the CLI maps it, and queries are timed one by one (search only: not the process start, not the sync from the
database). Each query is a stored vector plus noise, and the bench checks that its source comes back first.

    python -m bench.search [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 1024
K = 10
QUERIES = 50
CHUNK = 10_000


def _measure(n: int, queries: int, seed: int = 0) -> tuple[float, float]:
    from node.models.medimageinsight.similar import EmbeddingIndex

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        index = EmbeddingIndex(Path(tmp) / "index", dim=DIM)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            index.append(np.arange(start + 1, start + m + 1), rng.standard_normal((m, DIM), dtype=np.float32))
        index.load()
        stored = np.memmap(Path(tmp) / "index" / "vectors.f32", dtype="<f4", mode="r", shape=(n, DIM))
        index.search(stored[0], K)  # warm-up: page the matrix in, as a running node would have it
        times = []
        for q in range(queries):
            row = int(rng.integers(n))
            query = stored[row] + 0.01 * rng.standard_normal(DIM, dtype=np.float32)
            t0 = time.perf_counter()
            hits = index.search(query, K)
            times.append((time.perf_counter() - t0) * 1000.0)
            if hits[0][0] != row + 1:
                raise AssertionError(f"query {q}: stored row {row + 1} not first ({hits[0]})")
        del stored
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95


def run(quick: bool) -> list[dict]:
    """Rows for ``python -m bench all``: median and p95 query latency at 10,000 (and 100,000) vectors."""
    sizes = [10_000] if quick else [10_000, 100_000]
    rows = []
    for n in sizes:
        median, p95 = _measure(n, QUERIES)
        note = f"exact k-NN (k={K}) over {n:,} x {DIM} float32, memory-mapped, {QUERIES} queries, matrix in page cache"
        for name, value in (("median", median), ("p95", p95)):
            rows.append({"group": "search", "name": f"knn_{n // 1000}k_{name}", "value": round(value, 3),
                         "unit": "ms", "reference": None, "ref_value": None, "ratio": None, "note": note})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 vectors only")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
