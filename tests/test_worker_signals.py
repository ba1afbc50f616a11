"""serve stops its worker with SIGINT: the stop must work at every moment of the worker's start.

A node started as a background shell job (``dicom-node serve &``, a CI script's ``&``) inherits SIGINT ignored, and
its children inherited that too: a SIGINT reaching the worker before Huey set its handlers was lost, and ``serve``
waited a whole lease (60 s) before killing it (``test_a_silent_tcp_connection_does_not_hold_the_shutdown`` failed
only in full, backgrounded runs).

What the code can promise: from the first line the interpreter runs of the package (``node/__init__.py`` restores
Python's SIGINT handler there, before any other import), a SIGINT stops the process. A SIGINT that arrives while the
interpreter itself is still starting, before that line, is discarded by the kernel (SIGINT is ignored then): no code
of the package can see it. So the moment is read from outside, in ``/proc/PID/status``: the SIGINT bit leaving the
``SigIgn`` mask of the process once it runs Python; the SIGINTs are sent from that moment on.

The clean stop, checked for each SIGINT: exit status 0 with the worker's own "worker stopped" line (the stop handled
while starting, or Huey's graceful stop once it runs), or, while the package is still importing (nothing opened),
the interpreter's own response to an unhandled KeyboardInterrupt: killed by SIGINT with a traceback ending in
``KeyboardInterrupt``. Any other exit (a crash, a timeout kill) fails.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.ports import free_port

pytestmark = pytest.mark.slow  # starts worker processes

#: the bit of SIGINT in the masks of /proc/PID/status (signal N is bit N-1)
SIGINT_BIT = 1 << (signal.SIGINT - 1)
# trap '' INT: SIGINT ignored, as a shell starts a background job; exec keeps that (and the pid)
SHELL_BACKGROUND = 'trap "" INT; exec "$0" "$@"'


def _config(tmp: Path) -> Path:
    cfg = {"node": {"storage_dir": str(tmp / "var"), "host": "127.0.0.1", "port": free_port()},
           "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:9/score", "auth": "none"}},
           "rules": [{"name": "r", "match": {"Modality": "CR"}, "endpoint": "cxr", "send_to": []}]}
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sigint_handled(pid: int) -> bool:
    """Is ``pid`` running Python (past the shell's exec) with SIGINT no longer ignored?"""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    ignored = int(re.search(r"^SigIgn:\s*([0-9a-fA-F]+)", status, re.M).group(1), 16)
    return argv0 == sys.executable.encode() and not ignored & SIGINT_BIT


def _clean_stop(returncode: int, log: str) -> bool:
    if returncode == 0:
        return "worker stopped" in log
    return returncode == -signal.SIGINT and log.rstrip().endswith("KeyboardInterrupt")


@pytest.mark.timeout(300)
def test_a_worker_started_with_sigint_ignored_stops_on_sigint_at_any_moment_of_its_start(tmp_path: Path) -> None:
    path = _config(tmp_path)
    # from the first line of the package, through the imports, the configuration, the store and the queue, to a
    # running consumer ("started": once the worker's log says so)
    delays: list[float | str] = [0.0, 0.02, 0.1, 0.3, 0.6, 1.0, 1.5, 2.5, "started"]
    outcomes: dict[str, str] = {}
    for i, delay in enumerate(delays):
        log_path = tmp_path / f"worker-{i}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["sh", "-c", SHELL_BACKGROUND, sys.executable, "-m", "node.cli", "worker",
                                     "--config", str(path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not _sigint_handled(proc.pid):  # poll as fast as we can: the moment is the point
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "SIGINT is still ignored 60 s after the start"
            if delay == "started":
                deadline = time.monotonic() + 120
                while "worker started" not in log_path.read_text():
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.05)
            else:
                time.sleep(float(delay))
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                outcomes[str(delay)] = "still running 20 s after the SIGINT"
                continue
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log_path.read_text(errors="replace")
        if not _clean_stop(proc.returncode, text):
            outcomes[str(delay)] = f"exit {proc.returncode}: {text[-800:]}"
    assert outcomes == {}, f"SIGINT this many seconds after the reset did not stop the worker cleanly: {outcomes}"


def test_the_package_restores_sigint_before_it_imports_anything_else() -> None:
    """The earliest moment: importing ``node`` alone restores SIGINT, with no other module of the node loaded."""
    probe = ("import signal, sys; ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN; import node; "
             "print(ignored, signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
             "sorted(m for m in sys.modules if m.startswith(('node.', 'converters', 'dicom_out'))))")
    out = subprocess.run(["sh", "-c", SHELL_BACKGROUND, sys.executable, "-c", probe], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "[]"], out.stdout
