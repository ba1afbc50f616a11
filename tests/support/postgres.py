"""A throwaway PostgreSQL server for the tests: its own data folder, a free loopback port, stopped by the test.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<major>/bin``); nothing of the
Debian cluster (``pg_ctlcluster``, port 5432) is used or touched. PostgreSQL refuses to run as root, so when the
tests run as root (CI does) the server runs as the ``postgres`` user the package created, in a folder owned by it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .ports import HOST, free_port


def _pg_bin() -> Path:
    root = Path("/usr/lib/postgresql")
    majors = sorted((p for p in root.glob("*/bin/postgres")), key=lambda p: int(p.parts[-3]), reverse=True)
    if not majors:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql: run scripts/setup.sh "
                           "(Debian package postgresql)")
    return majors[0].parent


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` on a free port; :meth:`create_database` hands out fresh databases."""

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        self.bin = _pg_bin()
        # Under a root-owned tmp_path the postgres user cannot reach the folder: use one of its own, in the
        # system's temporary folder (TMPDIR or /tmp), not tempfile's current default: the SCP points that at its
        # spool (owner-only) in whatever process runs it, a test process included.
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="pgtest-", dir=os.environ.get("TMPDIR") or "/tmp"))
        self.folder = Path(folder)
        self.port = port or free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.datadir = self.folder / "data"
        self.sockdir = self.folder / "sock"
        self.logfile = self.folder / "postgres.log"
        self._started = False

    def _run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "PostgresServer":
        """Create the cluster (trust auth on loopback only) and start it; returns when it accepts connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, self.user)
            shutil.chown(self.sockdir, self.user)
            os.chmod(self.folder, 0o700)
        if not (self.datadir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync", "--locale=C")
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses={HOST} -c max_connections=400 "
                f"-c fsync=on -c shared_buffers=128MB")
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", opts, "-w", "-t", "60", "start")
        self._started = True
        deadline = time.monotonic() + 30
        while self._run("pg_isready", "-h", HOST, "-p", str(self.port), check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections on {HOST}:{self.port}: {self.log_tail()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop the server this harness started (fast shutdown); the folder is removed."""
        if self._started:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop", check=False)
            self._started = False
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill(self) -> None:
        """Immediate shutdown (as a crash would leave it); :meth:`start` recovers it."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver, the ``postgres`` extra)."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql; returns its unaligned output."""
        out = self._run("psql", "-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", database,
                        "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
        return out.stdout

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database; returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
