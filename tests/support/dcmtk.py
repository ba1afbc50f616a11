"""The real dcmtk peers (Debian's /usr/bin/storescu, echoscu; storescp +tls as a TLS PACS) as the tests drive them.

``from support.dcmtk import storescu, echoscu, assert_ok, transfer_syntax_flag``. The programs come from
``support.tools.require_tool``, which takes them from /usr/bin (pynetdicom installs Python look-alikes with the
same names) and fails the test, with a hint to run scripts/setup.sh, when dcmtk is missing.

Transfer syntaxes: Debian's storescu proposes only the uncompressed transfer syntaxes unless told otherwise,
and cannot decompress, so a compressed file needs its own proposal flag (``-xy`` for JPEG baseline, ``-xv``
for JPEG 2000 lossless...): ``storescu(..., extra=[transfer_syntax_flag(path)])``. One storescu association
proposes at most one compressed transfer syntax besides the uncompressed ones; send mixed sets in several calls.

By default ``TCP_NODELAY=1`` is set in the tool's environment: Debian's dcmtk leaves Nagle's algorithm on
otherwise, which costs ~40 ms per instance on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .ports import free_port
from .tools import require_tool

if TYPE_CHECKING:
    from .tlscerts import Pki


# Transfer Syntax UID -> the storescu flag that proposes it (together with all uncompressed transfer syntaxes).
TRANSFER_SYNTAX_FLAGS = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE lossless
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated explicit VR little endian
}
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def transfer_syntax_flag(path: Path) -> str:
    """The storescu option that proposes the transfer syntax ``path`` is stored in (``-x=`` when uncompressed)."""
    import pydicom  # local: only this helper needs it

    uid = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if uid in UNCOMPRESSED:
        return "-x="
    try:
        return TRANSFER_SYNTAX_FLAGS[uid]
    except KeyError:
        raise ValueError(f"{path}: no storescu option proposes transfer syntax {uid}") from None


def _env(nodelay: bool) -> dict[str, str]:
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def _run(cmd: list[str], *, env_nodelay: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=_env(env_nodelay), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def storescu(host: str, port: int, files: Sequence[Path], *, calling_ae: str = "STORESCU",
             called_ae: str = "AINODE", extra: Sequence[str] = (), env_nodelay: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with dcmtk's storescu in one association; the finished process (output captured as text).

    Directories among ``files`` are scanned recursively (``+sd +r``). Transfer-syntax proposals (see
    :func:`transfer_syntax_flag`; without one only uncompressed files can be sent), timeouts (``-to``,
    ``-ta``, ``-td``), ``-nh`` and the like go in ``extra``. The exit status is not checked: use
    :func:`assert_ok` or look at the receiving side.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("storescu needs at least one file or directory")
    cmd = [require_tool("storescu"), "-aet", calling_ae, "-aec", called_ae]
    if any(p.is_dir() for p in paths):
        cmd += ["+sd", "+r"]
    cmd += [*extra, host, str(port), *map(str, paths)]
    return _run(cmd, env_nodelay=env_nodelay, timeout=timeout)


def echoscu(host: str, port: int, called_ae: str, calling_ae: str = "ECHOSCU", *,
            extra: Sequence[str] = (), env_nodelay: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with dcmtk's echoscu; the finished process (exit status 0 when the peer answered Success)."""
    cmd = [require_tool("echoscu"), "-aet", calling_ae, "-aec", called_ae, *extra, host, str(port)]
    return _run(cmd, env_nodelay=env_nodelay, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Fail with the tool's own output when it exited non-zero."""
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited with {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


class Storescp:
    """dcmtk's storescp on loopback, one file per C-STORE in ``folder`` (``+uf``: unique names, so a resend is a
    second file); started by ``with`` and stopped by the test.

    Orthanc keeps one copy per SOP Instance UID; this peer keeps every C-STORE, so :meth:`counts` (SOP Instance
    UID -> C-STOREs received) sees a duplicate send.
    """

    def __init__(self, folder: Path, *, ae_title: str = "PACS", extra: Sequence[str] = ()) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = free_port()
        self.cmd = [require_tool("storescp"), "-aet", ae_title, "+uf", "-od", str(folder), *extra, str(self.port)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Storescp":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"storescp did not start: {' '.join(self.cmd)}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def received(self) -> list[Path]:
        """The files received, one per C-STORE."""
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def counts(self) -> "Counter[str]":
        """SOP Instance UID -> how many C-STOREs of it were received (one file each)."""
        import pydicom

        return Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.received())


class TlsStorescp(Storescp):
    """dcmtk's storescp with +tls on loopback, requiring a client certificate signed by the test CA."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        super().__init__(folder, ae_title="TLSPACS", extra=["+tls", str(pki.server.key), str(pki.server.cert),
                                                           "+cf", str(pki.ca.cert)])
