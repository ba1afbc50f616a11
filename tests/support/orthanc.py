"""A real Orthanc (Debian's ``/usr/sbin/Orthanc``) on free loopback ports, for end-to-end tests.

Use the fixture by importing it into the test module (``conftest.py`` does not re-export it)::

    from support.orthanc import Orthanc, orthanc  # noqa: F401  (the import registers the fixture)

    def test_something(orthanc: Orthanc):
        ...  # orthanc.aet / orthanc.dicom_port receive C-STORE; orthanc.datasets() shows what arrived

or drive it by hand, e.g. when the PACS must know the node's port first::

    with Orthanc(tmp_path / "pacs", modalities={"NODE": ("AINODE", "127.0.0.1", node_port)}) as pacs:
        ...

Each instance writes its own configuration, database and storage under ``workdir`` and logs to
``workdir/logs``; nothing outside ``workdir`` is touched. No plugin is loaded unless ``dicomweb=True``: then
Debian's DICOMweb plugin (``orthanc-dicomweb``) serves STOW-RS / QIDO-RS / WADO-RS at :attr:`Orthanc.dicomweb_url`.

Network exposure: Debian bookworm's Orthanc 1.10.1 has no bind-address options, so both servers listen on
0.0.0.0. The REST API still refuses every non-loopback client (``RemoteAccessAllowed: false``: HTTP 401);
the DICOM port, randomly chosen, accepts any peer for the life of the test (Orthanc cannot restrict its
DICOM listener to 127.0.0.1). Tests only ever connect through 127.0.0.1.

When Orthanc is missing the test fails (never skips): run ``scripts/setup.sh``.
"""

from __future__ import annotations

import io
import json
from collections import Counter
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pydicom
import pytest

from .ports import HOST, free_port

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_binary() -> str:
    """Debian's Orthanc server; a test failure (not a skip) when it is not installed."""
    if Path(ORTHANC_BINARY).exists():
        return ORTHANC_BINARY
    path = shutil.which("Orthanc")
    if path is None:
        pytest.fail("Orthanc is not installed: run scripts/setup.sh (it installs dcmtk, orthanc, dicom3tools)",
                    pytrace=False)
    return path


class OrthancError(RuntimeError):
    pass


class Received(NamedTuple):
    """One instance Orthanc received (:meth:`Orthanc.received_log`)."""

    sop: str
    study: str
    modality: str
    origin: str  # DicomProtocol (C-STORE), RestApi (POST /instances), Plugins (STOW-RS)


class Orthanc:
    """One Orthanc server process with its own temporary storage; see the module docstring."""

    START_TIMEOUT = 30.0
    STOP_TIMEOUT = 15.0

    def __init__(self, workdir: Path, *, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None,
                 dicom_port: int | None = None, http_port: int | None = None, dicomweb: bool = False,
                 count_cstores: bool = False):
        """``modalities``: name -> (AET, host, port) of the DICOM peers Orthanc knows (C-MOVE destinations).

        ``dicom_port``/``http_port``: fixed ports (e.g. a PACS that comes back on the port a node already
        knows); by default free ones are picked at each start. ``dicomweb``: load the DICOMweb plugin.
        ``count_cstores``: a Lua ``ReceivedInstanceFilter`` logs every instance received (SOP Instance and Study
        UIDs, modality, C-STORE / upload / STOW-RS), duplicates included (Orthanc keeps one copy per UID, so
        counting what it holds cannot see a resend): :meth:`cstore_counts`, :meth:`received_log`.
        """
        self.dicomweb = dicomweb
        self.count_cstores = count_cstores
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.fixed_dicom_port = dicom_port
        self.fixed_http_port = http_port
        self.dicom_port = dicom_port or 0
        self.http_port = http_port or 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def config(self) -> dict:
        """The configuration written to ``workdir/orthanc.json`` (only options Orthanc 1.10 knows)."""
        return {
            "Name": f"test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            **({"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}} if self.dicomweb else {}),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpDescribeErrors": True,
            "RemoteAccessAllowed": False,  # the REST API answers loopback clients only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomAssociationCloseDelay": 0,
            "StableAge": 1,
            "SaveJobs": False,
            "JobsHistorySize": 100,
            **({"LuaScripts": [str(self._write_counter_script())]} if self.count_cstores else {}),
        }

    @property
    def cstore_log(self) -> Path:
        return self.workdir / "cstores.txt"

    def _write_counter_script(self) -> Path:
        script = self.workdir / "count_cstores.lua"
        # one tab-separated line per instance received, before Orthanc decides to keep it: SOP Instance UID,
        # Study Instance UID, Modality, and how it came (DicomProtocol: a C-STORE; RestApi: an upload; Plugins:
        # a STOW-RS through the DICOMweb plugin)
        script.write_text(
            "function ReceivedInstanceFilter(dicom, origin, info)\n"
            f"  local f = io.open({json.dumps(str(self.cstore_log))}, 'a')\n"
            "  f:write(table.concat({dicom.SOPInstanceUID or '', dicom.StudyInstanceUID or '',\n"
            "                        dicom.Modality or '', origin.RequestOrigin or ''}, '\\t') .. '\\n')\n"
            "  f:close()\n"
            "  return true\n"
            "end\n")
        return script

    def received_log(self) -> list[Received]:
        """Every instance Orthanc received, in order, duplicates included (needs ``count_cstores=True``)."""
        if not self.cstore_log.exists():
            return []
        return [Received(*line.split("\t")) for line in self.cstore_log.read_text().splitlines() if line]

    def cstore_counts(self, origin: str | None = "DicomProtocol") -> Counter[str]:
        """SOP Instance UID -> how many times Orthanc received it (needs ``count_cstores=True``): by C-STORE by
        default; ``origin="Plugins"``: by STOW-RS; None: any way (REST uploads included)."""
        return Counter(r.sop for r in self.received_log() if origin is None or r.origin == origin)

    def start(self) -> Orthanc:
        """Pick free ports, write the configuration, start Orthanc and wait until ``/system`` answers."""
        if self.process is not None:
            raise OrthancError("Orthanc already started")
        binary = orthanc_binary()
        if self.dicomweb and not Path(DICOMWEB_PLUGIN).exists():
            pytest.fail("Orthanc's DICOMweb plugin is not installed: run scripts/setup.sh (orthanc-dicomweb)",
                        pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        last_error = ""
        for _attempt in range(3):  # another process may grab a "free" port before Orthanc binds it
            self.dicom_port = self.fixed_dicom_port or free_port()
            self.http_port = self.fixed_http_port or free_port()
            while self.http_port == self.dicom_port and not self.fixed_http_port:
                self.http_port = free_port()
            self.url = f"http://{HOST}:{self.http_port}"
            config_path = self.workdir / "orthanc.json"
            config_path.write_text(json.dumps(self.config(), indent=2))
            stdout = (logs / "stdout.log").open("ab")
            self.process = subprocess.Popen(
                [binary, f"--logdir={logs}", str(config_path)],
                stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach Orthanc before stop() does
            )
            stdout.close()
            # No kept-alive connections: Orthanc's HTTP server closes an idle one after its KeepAliveTimeout, and a
            # request sent on it at that moment ends in "Server disconnected without sending a response".
            self._client = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False,
                                        limits=httpx.Limits(max_keepalive_connections=0))
            try:
                self._wait_until_ready()
                return self
            except OrthancError as exc:
                last_error = str(exc)
                self.stop(graceful=False)
        raise OrthancError(f"Orthanc did not start: {last_error}")

    def _wait_until_ready(self) -> None:
        assert self.process is not None and self._client is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                if self._client.get("/system", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise OrthancError(f"Orthanc's REST API did not answer within {self.START_TIMEOUT} s\n{self.log_tail()}")

    def stop(self, *, graceful: bool = True) -> None:
        """Stop Orthanc and wait for it; safe to call twice.

        Graceful: SIGTERM, then SIGKILL after ``STOP_TIMEOUT`` (Orthanc 1.10 needs about 3 s: its HTTP and DICOM
        servers poll for the stop request). ``graceful=False`` kills at once, for throw-away servers.
        """
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if graceful:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait(timeout=self.STOP_TIMEOUT)

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (``dicomweb=True``), e.g. http://127.0.0.1:PORT/dicom-web."""
        if not self.dicomweb:
            raise OrthancError("this Orthanc was started without its DICOMweb plugin (dicomweb=True)")
        return f"{self.url}/dicom-web"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The end of Orthanc's own logs, for failure messages."""
        text = []
        for path in sorted((self.workdir / "logs").glob("*")):
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                text.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(text)

    # -- REST ------------------------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise OrthancError("Orthanc is not running: call start() first")
        return self._client

    def _get(self, path: str, **params: object) -> httpx.Response:
        response = self.client.get(path, params=params or None)
        if response.status_code != 200:
            raise OrthancError(f"GET {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def instances(self) -> list[str]:
        """Orthanc's ids of all stored instances."""
        return list(self._get("/instances").json())

    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UIDs of all stored instances."""
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in self._get("/instances", expand="").json()]

    def get_dicom(self, orthanc_id: str) -> pydicom.Dataset:
        """The stored file of one instance, as Orthanc hands it back."""
        return pydicom.dcmread(io.BytesIO(self._get(f"/instances/{orthanc_id}/file").content))

    def datasets(self) -> list[pydicom.Dataset]:
        return [self.get_dicom(orthanc_id) for orthanc_id in self.instances()]

    def wait_for_instances(self, n: int, timeout: float = 60) -> list[pydicom.Dataset]:
        """Poll until at least ``n`` instances are stored; all stored datasets, or AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            ids = self.instances()
            if len(ids) >= n:
                return [self.get_dicom(orthanc_id) for orthanc_id in ids]
            if time.monotonic() >= deadline:
                raise AssertionError(f"Orthanc {self.aet} holds {len(ids)} instance(s) after {timeout} s, "
                                     f"expected at least {n}")
            if not self.running:
                raise OrthancError(f"Orthanc exited while waiting for instances\n{self.log_tail()}")
            time.sleep(0.2)

    def upload(self, path: Path) -> None:
        """Store one DICOM file through the REST API (POST /instances)."""
        response = self.client.post("/instances", content=Path(path).read_bytes(),
                                    headers={"Content-Type": "application/dicom"})
        if response.status_code != 200:
            raise OrthancError(f"POST /instances {path}: HTTP {response.status_code}: {response.text[:500]}")

    def set_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare (or change) a DICOM peer at run time, e.g. a C-MOVE destination whose port is known late."""
        response = self.client.put(f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})
        if response.status_code != 200:
            raise OrthancError(f"PUT /modalities/{name}: HTTP {response.status_code}: {response.text[:500]}")
        self.modalities[name] = (aet, host, port)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A started Orthanc (AET ``ORTHANC``) with empty storage under ``tmp_path/orthanc``.

    Killed afterwards without the graceful shutdown (which takes ~3 s): its storage is thrown away anyway.
    """
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful=False)


__all__ = ["HOST", "Orthanc", "OrthancError", "Received", "orthanc", "orthanc_binary"]

