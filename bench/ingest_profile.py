"""Where the receive path's CPU goes: node CPU per instance from /proc, and a py-spy profile itemised.

``python -m bench.ingest_profile [--count 512] [--assoc 1] [--py-spy OUT.txt] [--runs 1]`` starts a fresh node
(``dicom-node serve``, as ``bench ingest`` does), sends a few instances to warm it up, then pushes ``--count``
slices of the 1,024-instance CT copy with dcmtk ``storescu`` over ``--assoc`` associations. It prints the rate,
the node's CPU per instance (user + system of every node process, from /proc/<pid>/stat, before and after the
push) per process, and each process's peak RSS (VmHWM).

With ``--py-spy OUT.txt`` it also records the serve process (the Storage SCP) with ``py-spy record --gil``
(samples only the thread holding the GIL: the Python work) and prints the samples sorted into the items of
issue 17 as ms per instance (samples x 4 ms / instances), and the rest of the measured CPU of the SCP process:
what runs outside the GIL (the kernel's socket and page-cache copies and fsync, SQLite's C code).
``--table A.txt=CPU_MS:N B.txt=CPU_MS:N`` prints the table of earlier recordings side by side.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import push, repeated_ct, split

ITEMS: list[tuple[str, str]] = [  # first match wins (a stack is counted once); the directory fsyncs go
    # through a GroupCommitter too, so they are matched before the commit
    ("fsync + rename + dir fsync", r"move_durably|fsync_file|fsync_dir|DirSyncer|GuardedTempFile\.sync"),
    ("commit (SQLAlchemy + SQLite)", r"_commit_batch|GroupCommitter\.submit|record_instances|sqlalchemy"),
    ("header parse", r"read_header|dcmread"),
    ("node: audit, metrics, checks", r"instance_received|instance_stored|cstore_status|audit|metrics|check_space|"
                                     r"write_failed|_store \(|handle_store"),
    ("response: encode + send", r"send_msg|validate_status|c_store_rsp_command"),
    ("command set decode + file meta", r"message_to_primitive|write_file_meta_info|create_file_meta|file_meta_group|"
                                       r"decode \(pynetdicom/dsutils"),
    ("fragments -> file (assembly, writes)", r"GuardedTempFile|_TemporaryFileWrapper|tempfile|decode_msg"),
    ("PDU read + decode", r"_read_pdu_data|recv_exact|AssociationSocket.recv|QuickAck|_decode_pdu|pdu.py|pdu_items|"
                          r"to_primitive|split_pdvs"),
    ("queue hops, FSM, events", r"fsm.py|do_action|queue.py|events.py|trigger|receive_primitive|"
                                r"_process_recv_primitive|get_msg|send_pdu"),
    ("reactor loops (polling)", r"run_reactor|_run_reactor|adaptive_sleep|netpoll|ready|Timer"),
]
OTHER = "other (accept loop, logging, GC)"
HZ = os.sysconf("SC_CLK_TCK")
RATE = 250  # py-spy samples per second


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            kids = []
        for kid in kids:
            out += process_tree(int(kid))
    return out


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` ((0, 0) once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / HZ, int(fields[12]) / HZ


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 once it is gone)."""
    return sum(cpu_split(pid))


def peak_rss_mib(pid: int) -> float:
    """VmHWM of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def itemise(collapsed: Path) -> tuple[int, collections.Counter[str]]:
    """Total samples and samples per item of a py-spy ``--format raw`` recording."""
    total, counts = 0, collections.Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        for name, pattern in ITEMS:
            if any(re.search(pattern, f) for f in frames):
                counts[name] += int(n)
                break
        else:
            counts[OTHER] += int(n)
    return total, counts


def table(columns: list[tuple[str, Path, float, int]], split_ms: list[tuple[float, float]] | None = None) -> str:
    """Markdown table, one column per (label, recording, SCP CPU ms per instance, instances): each item's Python
    time per instance (GIL-held samples x the sampling period / instances), then the rest of the measured CPU;
    with ``split_ms`` (user, system ms per instance of each column, from /proc) also that split."""
    loaded = [(label, cpu, count, *itemise(path)) for label, path, cpu, count in columns]
    period_ms = 1000.0 / RATE
    lines = ["| ms CPU per instance | " + " | ".join(label for label, *_ in loaded) + " |", "|---|" + "---|" * len(loaded)]
    for name in [n for n, _ in ITEMS] + [OTHER]:
        lines.append(f"| {name} | " + " | ".join(f"{c[name] * period_ms / count:.2f}"
                                                   for _, _, count, _, c in loaded) + " |")
    python = [t * period_ms / count for _, _, count, t, _ in loaded]
    lines.append("| Python in the SCP (sum of the above) | " + " | ".join(f"{p:.2f}" for p in python) + " |")
    lines.append("| outside the GIL (kernel: socket and page-cache copies, fsync; SQLite's C code) | "
                 + " | ".join(f"{cpu - p:.2f}" for (_, cpu, *_), p in zip(loaded, python)) + " |")
    lines.append("| **SCP process, measured (/proc)** | " + " | ".join(f"**{cpu:.2f}**" for _, cpu, *_ in loaded) + " |")
    if split_ms is not None:
        lines.append("| of which user time (Python, pydicom, SQLite, libc) | "
                     + " | ".join(f"{u:.2f}" for u, _ in split_ms) + " |")
        lines.append("| of which system time (kernel: socket and page-cache copies, file creation, fsync) | "
                     + " | ".join(f"{k:.2f}" for _, k in split_ms) + " |")
    return "\n".join(lines)


def run_once(count: int, assoc: int, spy_out: Path | None) -> tuple[float, float, float]:
    """One fresh node, one push; prints the figures; returns the SCP process's CPU, user and system ms per
    instance."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.nodeproc import NodeProcess, node_config

    files = repeated_ct(Path(tempfile.gettempdir()) / "bench-ct-1024", 16)[:count]
    base = Path(tempfile.mkdtemp(prefix="ingest-profile-"))
    node = NodeProcess(base, node_config(base, endpoint_url="http://127.0.0.1:9", pacs=None, quiet=600))
    node.start()
    spy = None
    try:
        node.wait_worker_started()
        push(node.port, [files[:8]], "AINODE", nodelay=True)  # warm-up association
        assert node.proc is not None
        pids = process_tree(node.proc.pid)
        before = [cpu_seconds(p) for p in pids]
        scp_before = cpu_split(pids[0])
        if spy_out is not None:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(node.proc.pid), "--rate", str(RATE), "--gil",
                                    "--format", "raw", "--nonblocking", "-o", str(spy_out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        elapsed = push(node.port, split(files, assoc), "AINODE", nodelay=True)
        per = [1000 * (cpu_seconds(p) - b) / count for p, b in zip(pids, before)]
        scp_after = cpu_split(pids[0])
        user, system = (1000 * (a - b) / count for a, b in zip(scp_after, scp_before))
        print(f"{count} instances, {assoc} association(s): {count / elapsed:.0f}/s; node CPU {sum(per):.2f} ms per "
              f"instance (per process: {', '.join(f'{x:.2f}' for x in per)}); peak RSS "
              f"{', '.join(f'{peak_rss_mib(p):.0f}' for p in pids)} MiB")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        node.kill()
        shutil.rmtree(base, ignore_errors=True)
    return per[0], user, system


def main() -> None:
    """Command line: see the module docs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=512)
    ap.add_argument("--assoc", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--py-spy", type=Path, default=None, help="record the SCP with py-spy --gil into this file")
    ap.add_argument("--table", nargs="+", default=None,
                    help="RECORDING=SCP_CPU_MS:INSTANCES ...: print the table of earlier recordings only")
    args = ap.parse_args()
    if args.table:
        cols = []
        for arg in args.table:
            path, _, figures = arg.partition("=")
            cpu, _, count = figures.partition(":")
            cols.append((Path(path).stem, Path(path), float(cpu), int(count or args.count)))
        print(table(cols))
        return
    for _ in range(args.runs):
        scp_ms, user, system = run_once(args.count, args.assoc, args.py_spy)
        print(f"SCP process: user {user:.2f} + system {system:.2f} ms per instance")
        if args.py_spy is not None:
            print(table([(args.py_spy.stem, args.py_spy, scp_ms, args.count)], [(user, system)]))


if __name__ == "__main__":
    main()
