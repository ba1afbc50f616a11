"""The emulated Azure DICOM service's HTTP side: STOW-RS, QIDO-RS, WADO-RS and the change feed under ``/v2``.

Run it alone with ``python -m node.emulator.azure_dicom.server --port 8080 --dir ./azure-dicom``. Test hooks
(not part of Azure's API) live under ``/_emulator``: ``GET /_emulator/stow-counts`` (how many times each SOP
Instance UID arrived by STOW-RS) and ``POST /_emulator/faults`` (``{"status": 503, "count": 2}``: the next two
requests of any kind are answered with that status).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydicom.dataset import Dataset

from node.emulator.azure_dicom.archive import Archive, Stored, StowResult, metadata_json
from node.emulator.azure_dicom.multipart_io import BodyError, read_related, write_related
from node.emulator.threaded import ThreadedEmulator

PREFIX = "/v2"
MAX_FEED_LIMIT = 200  # the change feed refuses larger pages
_STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "PatientID", "IssuerOfPatientID", "AccessionNumber",
               "StudyDescription")
_SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
                "ProtocolName")
_INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")


def stow_body(result: StowResult, base: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DICOM JSON) of a STOW-RS answer: 200 all stored, 202 some failed, 409 none stored."""
    body: dict[str, Any] = {}
    if result.stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [sop]},
             "00081190": {"vr": "UR", "Value": [f"{base}/instances/{sop}"]}} for cls, sop in result.stored]}
    if result.failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {**({"00081150": {"vr": "UI", "Value": [cls]}} if cls else {}),
             **({"00081155": {"vr": "UI", "Value": [sop]}} if sop else {}),
             "00081197": {"vr": "US", "Value": [reason]}} for cls, sop, reason in result.failed]}
    status = 200 if not result.failed else (202 if result.stored else 409)
    return status, body


def _matches(header: Dataset, key: str, wanted: str) -> bool:
    value = header.get(key)
    if key == "ModalitiesInStudy":
        return True  # checked on the study's series by the caller
    text = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
        else str(value or "")
    if "-" in wanted and key.endswith("Date"):
        lo, _, hi = wanted.partition("-")
        return bool(text) and (not lo or text >= lo) and (not hi or text <= hi)
    if "*" in wanted or "?" in wanted:
        return re.fullmatch(re.escape(wanted).replace(r"\*", ".*").replace(r"\?", "."), text) is not None
    return text == wanted


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the tests read state, not logs
        pass

    # -- plumbing ----------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", content_type: str = "application/dicom+json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, content_type: str = "application/dicom+json") -> None:
        self._send(status, json.dumps(doc).encode(), content_type)

    def _gate(self) -> bool:
        """Authorization and scripted faults; False when the request was answered here."""
        srv = self.server
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self._json(401, {"error": "unauthorized"}, "application/json")
            return False
        with srv.lock:
            if srv.faults and not self.path.startswith("/_emulator"):
                status = srv.faults.pop(0)
                self._json(status, {"error": f"emulated fault {status}"}, "application/json")
                return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # -- verbs -------------------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        body = self._body()
        if url.path == "/_emulator/faults":
            doc = json.loads(body or b"{}")
            with self.server.lock:
                self.server.faults += [int(doc.get("status", 503))] * int(doc.get("count", 1))
            return self._json(200, {"pending": len(self.server.faults)}, "application/json")
        if not self._gate():
            return
        m = re.fullmatch(PREFIX + r"/studies(?:/([0-9.]+))?", url.path)
        if not m:
            return self._json(404, {"error": "not found"}, "application/json")
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/related":
            return self._json(415, {"error": "multipart/related expected"}, "application/json")
        try:
            parts = [data for kind, data in read_related(body, content_type) if kind == "application/dicom"]
        except BodyError as exc:
            return self._json(400, {"error": str(exc)}, "application/json")
        status, doc = stow_body(self.server.archive.store(parts, m.group(1)), self.server.base_url())
        self._json(status, doc)

    def do_DELETE(self) -> None:  # noqa: N802
        if not self._gate():
            return
        m = re.fullmatch(PREFIX + r"/studies/([0-9.]+)(?:/series/([0-9.]+)(?:/instances/([0-9.]+))?)?",
                         urlsplit(self.path).path)
        if not m:
            return self._json(404, {"error": "not found"}, "application/json")
        gone = self.server.archive.delete(*m.groups())
        self._send(204 if gone else 404)

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        archive = self.server.archive
        if url.path == "/_emulator/stow-counts":
            return self._json(200, dict(archive.stow_counts), "application/json")
        if not self._gate():
            return
        path = url.path[len(PREFIX):] if url.path.startswith(PREFIX + "/") else None
        if path is None:
            return self._json(404, {"error": "not found (the API version is part of the URL: /v2)"},
                              "application/json")
        if path == "/changefeed/latest":
            return self._json(200, archive.latest() or {}, "application/json")
        if path == "/changefeed":
            return self._changefeed(query)
        metadata = path.endswith("/metadata")
        if metadata:
            path = path[:-len("/metadata")]
        m = re.fullmatch(r"/studies(?:/([0-9.]+))?(?:/series(?:/([0-9.]+))?)?(?:/instances(?:/([0-9.]+))?)?",
                         path)
        if not m:
            return self._json(404, {"error": "not found"}, "application/json")
        study, series, sop = m.groups()
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if metadata and last not in ("studies", "series", "instances"):
            found = archive.find(study, series, sop)
            return self._json(200, [metadata_json(s.header) for s in found]) if found else \
                self._json(404, {"error": "not found"}, "application/json")
        if last not in ("studies", "series", "instances"):  # the path names a resource: WADO-RS
            return self._retrieve(archive.find(study, series, sop))
        level = {"studies": "study", "series": "series", "instances": "instance"}[last]
        return self._qido(level, archive.find(study, series, None), query)

    # -- resources ---------------------------------------------------------------------------------------
    def _changefeed(self, query: dict[str, str]) -> None:
        try:
            offset = int(query.get("offset", "0"))
            limit = int(query.get("limit", "100"))
        except ValueError:
            return self._json(400, {"error": "offset and limit are integers"}, "application/json")
        if offset < 0 or not 1 <= limit <= MAX_FEED_LIMIT:
            return self._json(400, {"error": f"limit must be 1..{MAX_FEED_LIMIT}, offset >= 0"}, "application/json")
        metadata = query.get("includemetadata", query.get("includeMetadata", "true")).lower() != "false"
        page = self.server.archive.changefeed(query.get("startTime") or None, query.get("endTime") or None,
                                              offset, limit, metadata)
        self._json(200, page, "application/json")

    def _retrieve(self, found: list[Stored]) -> None:
        if not found:
            return self._json(404, {"error": "not found"}, "application/json")
        accept = self.headers.get("Accept", "")
        if accept and "application/dicom" not in accept and "*/*" not in accept:
            return self._json(406, {"error": "multipart/related; type=\"application/dicom\" expected"},
                              "application/json")
        with self.server.lock:
            self.server.archive.wado_counts.update(s.sop for s in found)
        body, content_type = write_related(s.path.read_bytes() for s in found)
        self._send(200, body, content_type)

    def _qido(self, level: str, found: list[Stored], query: dict[str, str]) -> None:
        keys = {"study": _STUDY_KEYS, "series": _STUDY_KEYS[:1] + _SERIES_KEYS,
                "instance": _STUDY_KEYS[:1] + _SERIES_KEYS[:1] + _INSTANCE_KEYS}[level]
        include = [k for k in query.get("includefield", "").split(",") if k]
        filters = {k: v for k, v in query.items() if k not in ("includefield", "limit", "offset", "fuzzymatching")}
        rows: dict[str, Dataset] = {}
        for s in found:
            if not all(_matches(s.header, k, v) for k, v in filters.items()):
                continue
            uid = {"study": s.study, "series": s.series, "instance": s.sop}[level]
            rows.setdefault(uid, s.header)
        out = []
        for uid, header in rows.items():
            ds = Dataset()
            for kw in (*keys, *include):
                if kw in header:
                    ds[kw] = header[kw]
            if level == "study":
                modalities = sorted({str(s.header.get("Modality", "")) for s in found
                                     if s.study == uid and s.header.get("Modality")})
                wanted = [m for m in filters.get("ModalitiesInStudy", "").split(",") if m]
                if wanted and not set(wanted) & set(modalities):
                    continue
                ds.ModalitiesInStudy = modalities
            out.append(metadata_json(ds))
        if not out:
            return self._send(204)
        self._json(200, out)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], archive: Archive, token: str | None) -> None:
        super().__init__(address, _Handler)
        self.archive = archive
        self.token = token
        self.lock = threading.Lock()
        self.faults: list[int] = []

    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{PREFIX}"


class AzureDicomEmulator(ThreadedEmulator):
    """The emulated service in a background thread (a context manager); ``url`` is its ``.../v2`` base URL."""

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.archive = Archive(directory)
        self._server: _Server
        super().__init__(_Server((host, port), self.archive, token), "azure-dicom-emulator")

    @property
    def url(self) -> str:
        return self._server.base_url()

    def script_faults(self, status: int, count: int = 1) -> None:
        """The next ``count`` requests are answered with HTTP ``status``."""
        with self._server.lock:
            self._server.faults += [status] * count


def main(argv: list[str] | None = None) -> int:
    """``python -m node.emulator.azure_dicom.server --port P --dir D [--token T]``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Emulated Azure DICOM service (DICOMweb v2, change feed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--dir", type=Path, default=Path("./azure-dicom"))
    parser.add_argument("--token", default=None, help="Require Authorization: Bearer TOKEN")
    args = parser.parse_args(argv)
    emu = AzureDicomEmulator(args.dir, host=args.host, port=args.port, token=args.token)
    print(f"emulated Azure DICOM service at {emu.url}", flush=True)
    try:
        emu._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
