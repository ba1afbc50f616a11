"""What sending the audit trail to an ATNA repository costs the receive path.

``python -m bench.atna_cost [--count 512] [--runs 2]`` starts a fresh node twice per run, alternately without
``audit.syslog`` (the reference: the JSON lines only) and with it (rsyslogd over RFC 5425 TLS, on loopback, as
``tests/support/rsyslog.py`` starts it), pushes ``--count`` slices of the CT copy over one association with dcmtk
storescu and prints, per configuration, the rate, the Storage SCP process's CPU per instance, the ATNA forwarder's
CPU per instance, and the time from the association's end until the repository holds its transfer message. The
ratio (reference / ATNA) of the SCP's CPU per instance above 1 means ATNA made receiving cheaper; 1.0 is the goal.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .common import push, repeated_ct
from .ingest_profile import cpu_seconds, process_tree


def run_once(count: int, atna: bool) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import rsyslog
    from support.nodeproc import NodeProcess, node_config

    files = repeated_ct(Path(tempfile.gettempdir()) / "bench-ct-1024", 16)[:count]
    base = Path(tempfile.mkdtemp(prefix="atna-cost-"))
    repo = rsyslog.start(base / "rsyslog", tls=True) if atna else None
    cfg = node_config(base, endpoint_url="http://127.0.0.1:9", pacs=None, quiet=600)
    if repo is not None:
        cfg["audit"] = {"syslog": repo.syslog_config()}
    node = NodeProcess(base, cfg)
    node.start()
    try:
        node.wait_worker_started()
        push(node.port, [files[:8]], "AINODE", nodelay=True)  # warm-up association
        if repo is not None:
            repo.wait_for(2)  # node-start and the warm-up's transfer: the forwarder runs
        assert node.proc is not None
        pids = process_tree(node.proc.pid)
        before = {p: cpu_seconds(p) for p in pids}
        elapsed = push(node.port, [files], "AINODE", nodelay=True)
        ended = time.monotonic()
        delay = 0.0
        if repo is not None:
            got = repo.wait_for(3, timeout=120)
            delay = time.monotonic() - ended if len(got) >= 3 else float("nan")
        per = {p: 1000 * (cpu_seconds(p) - before[p]) / count for p in pids}
        forwarder = [p for p in pids if b"audit-forward" in Path(f"/proc/{p}/cmdline").read_bytes()]
        return {"rate": count / elapsed, "scp_ms": per[pids[0]],
                "forwarder_ms": sum(per[p] for p in forwarder), "delay_s": delay}
    finally:
        node.kill()
        if repo is not None:
            repo.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=512)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for i in range(args.runs):
        for atna in ((False, True) if i % 2 == 0 else (True, False)):  # alternately: the machine's load drifts
            r = run_once(args.count, atna)
            results[atna].append(r)
            print(f"{'ATNA on ' if atna else 'ATNA off'}: {r['rate']:.0f} instances/s, SCP {r['scp_ms']:.2f} ms CPU "
                  f"per instance, forwarder {r['forwarder_ms']:.3f} ms, end -> repository {r['delay_s']:.2f} s")
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(f"median of {args.runs}: rate {med[False]['rate']:.0f} -> {med[True]['rate']:.0f} instances/s "
          f"(ratio {med[True]['rate'] / med[False]['rate']:.2f}); SCP CPU {med[False]['scp_ms']:.2f} -> "
          f"{med[True]['scp_ms']:.2f} ms per instance (ratio {med[False]['scp_ms'] / med[True]['scp_ms']:.2f}); "
          f"forwarder {med[True]['forwarder_ms']:.3f} ms per instance; the transfer's message at the repository "
          f"{med[True]['delay_s']:.2f} s after the association ended")


if __name__ == "__main__":
    main()
