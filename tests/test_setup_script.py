"""The setup scripts: the demo's installs the node's runtime only, the tests' every peer; and the tests' setup stops
the Debian orthanc service's own process, never another Orthanc on the machine.

The orthanc-service part of scripts/setup_tests.sh is scripts/disable_orthanc_service.sh; the first tests run just
it, with an unrelated Orthanc (the tests' harness: free ports, its own temporary configuration) running beside it.
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


# ---- the split: the demo's setup installs the node's runtime only, the tests' setup every peer ---------------------
# Both scripts run on a copy of scripts/ with stub apt-get, dpkg-query (nothing installed), npm and python on PATH
# that record how they were called: nothing is installed, and the checkout's own install is never touched.

_STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> "$SETUP_CALLS"\n'
_STUBS = {
    "apt-get": _STUB,
    "dpkg-query": _STUB + "exit 1\n",  # "not installed"
    "sudo": '#!/bin/sh\nexec "$@"\n',
    # npm pack @ohif/app@V: a tarball with package/dist/index.html, as the registry's
    "npm": _STUB + 'if [ "$1" = pack ]; then mkdir -p package/dist && touch package/dist/index.html && '
                   'tar -czf "ohif-app-${3##*@}.tgz" package; fi\n',
}


def _sandbox(tmp: Path, *, python: bool) -> tuple[Path, dict[str, str]]:
    repo = tmp / "repo"
    (repo / "scripts").mkdir(parents=True)
    for script in (REPO / "scripts").glob("*.sh"):
        (repo / "scripts" / script.name).write_text(script.read_text())
    (repo / "scripts" / "disable_orthanc_service.sh").write_text(_STUB)  # stopping services is not this test's
    oidc = repo / "tests" / "support" / "oidc"
    oidc.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        (oidc / name).write_text((REPO / "tests" / "support" / "oidc" / name).read_text())
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    stubs = dict(_STUBS)
    if python:  # a Python with pip whose check finds the package installed (exit 0): pip install never runs;
        # its one-liners (reading a package.json) run for real
        stubs["python3"] = _STUB + f'if [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\n'
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SETUP_CALLS": str(tmp / "calls"), "HOME": str(tmp),
           "PYTHON": "python3" if python else str(tmp / "no-python-here")}
    return repo, env


def _calls(tmp: Path) -> list[str]:
    path = tmp / "calls"
    return path.read_text().splitlines() if path.exists() else []


def _apt_installed(calls: list[str]) -> list[str]:
    return [pkg for call in calls if call.startswith("apt-get ") and " install " in call
            for pkg in call.split() if not pkg.startswith("-") and pkg not in ("apt-get", "install")]


def test_test_apt_packages_is_one_list_with_every_peer() -> None:
    out = subprocess.run(["bash", "-c", 'eval "$(sed -n "/^TEST_APT_PACKAGES=(/,/^)/p" "$1")"; '
                          'printf "%s\\n" "${TEST_APT_PACKAGES[@]}"', "-", str(REPO / "scripts" / "setup_tests.sh")],
                         capture_output=True, text=True, timeout=30)
    peers = out.stdout.split()
    assert {"dcmtk", "orthanc", "dicom3tools", "chromium", "default-jre-headless", "pixelmed-apps", "postgresql",
            "redis-server", "haproxy", "strace"} <= set(peers), peers


def test_the_demo_setup_on_a_machine_without_python_asks_apt_for_python_and_pip_only(tmp_path: Path) -> None:
    repo, env = _sandbox(tmp_path, python=False)
    out = subprocess.run(["bash", str(repo / "scripts" / "setup_runtime.sh")], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    calls = _calls(tmp_path)
    assert sorted(_apt_installed(calls)) == ["python3", "python3-pip", "python3-venv"], (calls, out.stderr)
    assert not any(c.startswith("npm ") for c in calls), calls
    demo = (REPO / "scripts" / "demo.sh").read_text()
    assert "setup_runtime.sh" in demo and "setup.sh" not in demo.replace("setup_runtime.sh", ""), demo


def test_the_demo_setup_with_python_installs_nothing_but_the_package(tmp_path: Path) -> None:
    repo, env = _sandbox(tmp_path, python=True)
    out = subprocess.run(["bash", str(repo / "scripts" / "setup_runtime.sh")], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    calls = _calls(tmp_path)
    assert not any(c.startswith(("apt-get", "npm")) for c in calls), calls
    assert f"python3 - {repo} " in calls, calls  # the package's check, without extras


def test_the_test_setup_installs_every_peer_and_the_test_extra(tmp_path: Path) -> None:
    repo, env = _sandbox(tmp_path, python=True)
    out = subprocess.run(["bash", str(repo / "scripts" / "setup_tests.sh")], env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    calls = _calls(tmp_path)
    peers = subprocess.run(["bash", "-c", 'eval "$(sed -n "/^TEST_APT_PACKAGES=(/,/^)/p" "$1")"; '
                            'printf "%s\\n" "${TEST_APT_PACKAGES[@]}"', "-", str(repo / "scripts" / "setup_tests.sh")],
                           capture_output=True, text=True, timeout=30).stdout.split()
    # npm is on PATH here (the stub), so Debian's is not asked for
    assert sorted(_apt_installed(calls)) == sorted(p for p in peers if p != "npm"), calls
    assert any(c.startswith("npm pack") and "@ohif/app@" in c for c in calls), calls
    assert any(c.startswith("npm install") and "fhir@" in c for c in calls), calls  # TEST_NPM_PACKAGES
    assert "npm ci --omit=dev --ignore-scripts --no-audit --no-fund --silent" in calls, calls  # oidc-provider
    assert (repo / ".cache" / "ohif").is_dir()
    assert f"python3 - {repo} test" in calls, calls  # the runtime, with the test extra
