"""scripts/setup.sh stops the Debian orthanc service's own process, never another Orthanc on the machine.

The orthanc-service part of setup.sh is scripts/disable_orthanc_service.sh; these tests run just it, with an
unrelated Orthanc (the tests' harness: free ports, its own temporary configuration) running beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import REPO
from support.orthanc import Orthanc

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "disable_orthanc_service.sh"


def run_script(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHON": sys.executable, **env})


def assert_alive(pacs: Orthanc, out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    assert pacs.running, f"the unrelated Orthanc was stopped:\n{out.stdout}{out.stderr}"
    assert pacs.client.get("/system").status_code == 200


def test_an_unrelated_orthanc_survives_the_service_part_of_setup(tmp_path: Path) -> None:
    with Orthanc(tmp_path / "unrelated") as pacs:
        assert_alive(pacs, run_script())


@pytest.mark.parametrize("who", ["the unrelated Orthanc", "a process that is no Orthanc"])
def test_a_pid_file_naming_another_process_does_not_get_it_killed(tmp_path: Path, who: str) -> None:
    """A stale /run/orthanc.pid whose pid now belongs to someone else: left alone (exe and config are checked)."""
    pidfile = tmp_path / "orthanc.pid"
    with Orthanc(tmp_path / "unrelated") as pacs:
        other = subprocess.Popen(["sleep", "120"]) if who.startswith("a process") else None
        try:
            target = other if other is not None else pacs.process
            assert target is not None
            pidfile.write_text(f"{target.pid}\n")
            out = run_script(ORTHANC_PIDFILE=str(pidfile))
            assert_alive(pacs, out)
            assert target.poll() is None, out.stdout + out.stderr
            assert f"names pid {target.pid}, not the Debian service's Orthanc" in out.stdout, out.stdout
        finally:
            if other is not None:
                other.kill()
                other.wait()
