"""A real viewer for tests: OHIF 3.13.2 (prebuilt, from npm) in headless Chromium, on a real Orthanc + DICOMweb.

- :class:`DicomWebOrthanc`: the test Orthanc of ``tests/orthanc.py`` with Debian's DICOMweb plugin.
- :class:`ViewerServer`: one origin on a free loopback port: OHIF's ``dist/`` (``scripts/setup.sh`` caches it in
  ``.cache/ohif/<version>/dist``) with our own ``app-config.js``, and ``/dicom-web`` + ``/wado`` proxied to
  Orthanc (same origin: no CORS).
- :func:`chromium`: selenium + Debian's chromedriver, software WebGL2 (SwiftShader through ANGLE: cornerstone3D
  needs WebGL; ``--disable-gpu`` would remove it), the browser console captured (``goog:loggingPrefs``).

Nothing here skips: a missing tool or OHIF build fails with the command that installs it.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from .data import REPO
from .orthanc import Orthanc
from .ports import free_port

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

OHIF_VERSION = "3.13.2"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts" / "viewer"

# OHIF shows its first-use tour once per browser profile (localStorage "shownTours"); every test browser is a fresh
# profile, so the tour is marked shown before the app starts instead of being clicked away at an unknown moment.
APP_CONFIG = """try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  showErrorDetails: 'always',
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'Orthanc (test)',
      name: 'orthanc',
      wadoUriRoot: '/wado',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""


def ohif_dist() -> Path:
    """OHIF's prebuilt ``dist/`` (``$OHIF_DIST`` or the setup script's cache); fail clearly when absent."""
    path = Path(os.environ.get("OHIF_DIST", REPO / ".cache" / "ohif" / OHIF_VERSION / "dist"))
    if not (path / "index.html").is_file():
        pytest.fail(f"OHIF {OHIF_VERSION} not found at {path}: run scripts/setup.sh "
                    f"(npm pack @ohif/app@{OHIF_VERSION}, unpacked there)", pytrace=False)
    return path


class DicomWebOrthanc(Orthanc):
    """The test Orthanc with the DICOMweb plugin at ``/dicom-web/``."""

    def config(self) -> dict:
        if not DICOMWEB_PLUGIN.is_file():
            pytest.fail(f"{DICOMWEB_PLUGIN} missing: run scripts/setup.sh (apt: orthanc-dicomweb)", pytrace=False)
        cfg = super().config()
        cfg["Plugins"] = [str(DICOMWEB_PLUGIN)]
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                           "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        return cfg


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: ViewerServer  # type: ignore[assignment]
    PROXIED = ("/dicom-web", "/wado")

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(self.PROXIED):
            return self._proxy()
        if path == "/app-config.js":
            return self._send(200, APP_CONFIG.encode(), "application/javascript")
        if path != "/" and (Path(self.server.dist) / path.lstrip("/")).is_file():
            return super().do_GET()
        self.path = "/index.html"  # OHIF's client-side routes (/viewer?StudyInstanceUIDs=...)
        return super().do_GET()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        request = urllib.request.Request(self.server.orthanc_url + self.path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                body, status, ctype = reply.read(), reply.status, reply.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            body, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "text/plain")
        self._send(status, body, ctype)


class ViewerServer(http.server.ThreadingHTTPServer):
    """OHIF and the DICOMweb proxy on one loopback origin; use as a context manager."""

    daemon_threads = True

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist = str(dist)
        self.orthanc_url = orthanc_url.rstrip("/")
        handler = lambda *a, **kw: _Handler(*a, directory=self.dist, **kw)
        super().__init__(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="viewer-http", daemon=True)

    def __enter__(self) -> ViewerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def chromium(width: int = 1600, height: int = 1000) -> WebDriver:
    """Headless Chromium under selenium, software WebGL2, console logged; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium")
    if binary is None or not CHROMEDRIVER.exists():
        pytest.fail("chromium / chromedriver missing: run scripts/setup.sh (apt: chromium chromium-driver)",
                    pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                "--disable-dev-shm-usage", f"--window-size={width},{height}", "--no-first-run",
                "--disable-extensions", "--proxy-server=direct://", "--proxy-bypass-list=*"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def console(driver: WebDriver) -> list[dict[str, Any]]:
    """Browser console entries since the last call (selenium drains the log)."""
    return list(driver.get_log("browser"))


def console_errors(entries: list[dict[str, Any]]) -> list[str]:
    """SEVERE console entries, and any entry naming a TypeError or "Something went wrong"."""
    out = []
    for e in entries:
        msg = str(e.get("message", ""))
        if e.get("level") == "SEVERE" or "TypeError" in msg or "Something went wrong" in msg:
            if "favicon" in msg:
                continue
            out.append(msg)
    return out


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save a PNG under ``test-artifacts/viewer/`` and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
