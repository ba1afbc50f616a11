"""The emulated UPS-RS worklist's HTTP side, under ``/v2`` like the Azure DICOM service (PS3.18 §11).

=======  =====================================  ===============================================================
POST     /v2/workitems[?{workitem}]             Create Workitem (201 + Location; 409 exists; 400 invalid)
GET      /v2/workitems?{attribute}={value}...   Search Workitems (200, or 204 when nothing matches; 400)
GET      /v2/workitems/{workitem}               Retrieve Workitem (200 without Transaction UID; 404)
POST     /v2/workitems/{workitem}?{transaction} Update Workitem (200; 400; 404)
PUT      /v2/workitems/{workitem}/state         Change Workitem State (200; 400; 404; 409)
POST     /v2/workitems/{workitem}/cancelrequest Request Cancellation (202; 404; 409)
=======  =====================================  ===============================================================

Bodies are DICOM JSON (``application/dicom+json``; anything else: 415). A failure's body is a short text and
its PS3.4 status code is in ``X-UPS-Status`` (an emulator aid; the real service words its errors its own way).
Test hooks outside the API: ``GET /_emulator/log`` (every update and state change with its Transaction UID and
answer), ``GET /_emulator/workitems/{workitem}`` (the stored workitem and its Transaction UID), ``POST
/_emulator/faults`` (``{"status": 503, "count": 2}``) and ``POST /_emulator/config``
(``{"state_delay_seconds": 1.5}``: state changes wait that long before they apply). Run alone:
``python -m node.emulator.ups_rs.server --port 8090``. It imports nothing of the node's client code.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydicom.dataset import Dataset

from node.emulator.ups_rs.worklist import UpsFailure, Worklist
from node.emulator.threaded import ThreadedEmulator

PREFIX = "/v2"
DICOM_JSON = "application/dicom+json"
MAX_LIMIT = 200
_UID = r"[0-9]+(?:\.[0-9]+)*"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = DICOM_JSON,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _fail(self, exc: UpsFailure) -> None:
        self._send(exc.http, str(exc).encode(), "text/plain", {"X-UPS-Status": exc.code})

    def _gate(self) -> bool:
        srv = self.server
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self._send(401, b"unauthorized", "text/plain")
            return False
        with srv.lock:
            if srv.faults:
                status = srv.faults.pop(0)
                self._send(status, f"emulated fault {status}".encode(), "text/plain")
                return False
        return True

    def _dataset(self) -> Dataset:
        if self.headers.get("Content-Type", "").split(";")[0].strip() != DICOM_JSON:
            raise UpsFailure(415, "0000", f"Content-Type must be {DICOM_JSON}")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(raw or b"{}")
            return Dataset.from_json(doc[0] if isinstance(doc, list) else doc)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise UpsFailure(400, "0106", f"the body is not DICOM JSON: {type(exc).__name__}") from None

    def _path(self) -> tuple[str, str]:
        url = urlsplit(self.path)
        return url.path, url.query

    # -- verbs -------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        path, query = self._path()
        wl = self.server.worklist
        if path == "/_emulator/log":
            with wl.lock:
                return self._send(200, json.dumps(wl.log).encode(), "application/json")
        m = re.fullmatch(r"/_emulator/workitems/(" + _UID + ")", path)
        if m:
            try:
                ds = wl.get(m.group(1))
            except UpsFailure as exc:
                return self._fail(exc)
            doc = {"transaction_uid": wl.transaction_of(m.group(1)), "workitem": ds.to_json_dict()}
            return self._send(200, json.dumps(doc).encode(), "application/json")
        if not self._gate():
            return
        try:
            if path == PREFIX + "/workitems":
                return self._search(query)
            m = re.fullmatch(PREFIX + r"/workitems/(" + _UID + ")", path)
            if m:
                return self._send(200, json.dumps([wl.get(m.group(1)).to_json_dict()]).encode())
        except UpsFailure as exc:
            return self._fail(exc)
        self._send(404, b"not found (the API version is part of the URL: /v2)", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        path, query = self._path()
        if path == "/_emulator/faults":
            doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with self.server.lock:
                self.server.faults += [int(doc.get("status", 503))] * int(doc.get("count", 1))
            return self._send(200, b"{}", "application/json")
        if path == "/_emulator/config":
            doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            self.server.state_delay = float(doc.get("state_delay_seconds", self.server.state_delay))
            return self._send(200, b"{}", "application/json")
        if not self._gate():
            return
        wl = self.server.worklist
        try:
            if path == PREFIX + "/workitems":
                uid = wl.create(query or None, self._dataset())
                where = f"{self.server.base_url()}/workitems/{uid}"
                return self._send(201, headers={"Location": where, "Content-Location": where})
            m = re.fullmatch(PREFIX + r"/workitems/(" + _UID + ")(/cancelrequest)?", path)
            if m and m.group(2):
                warning = wl.request_cancel(m.group(1))
                return self._send(202, headers={"Warning": f"299 ups-emulator: {warning}"} if warning else None)
            if m:
                wl.update(m.group(1), query or None, self._dataset())
                return self._send(200)
        except UpsFailure as exc:
            return self._fail(exc)
        self._send(404, b"not found", "text/plain")

    def do_PUT(self) -> None:  # noqa: N802
        path, _ = self._path()
        if not self._gate():
            return
        m = re.fullmatch(PREFIX + r"/workitems/(" + _UID + ")/state", path)
        if not m:
            return self._send(404, b"not found", "text/plain")
        if self.server.state_delay:  # test hook: claims that overlap (two performers, both saw SCHEDULED)
            time.sleep(self.server.state_delay)
        try:
            ds = self._dataset()
            warning = self.server.worklist.change_state(m.group(1), str(ds.get("TransactionUID", "") or "") or None,
                                                        str(ds.get("ProcedureStepState", "") or ""))
        except UpsFailure as exc:
            return self._fail(exc)
        self._send(200, headers={"Warning": f"299 ups-emulator: {warning}"} if warning else None)

    def _search(self, query: str) -> None:
        params = parse_qsl(query, keep_blank_values=True)
        include = [v for k, v in params if k == "includefield"]
        opts = {k: v for k, v in params if k in ("limit", "offset", "fuzzymatching")}
        matching = {k: v for k, v in params if k not in ("includefield", "limit", "offset", "fuzzymatching")}
        try:
            limit, offset = int(opts.get("limit", "100")), int(opts.get("offset", "0"))
        except ValueError:
            raise UpsFailure(400, "0106", "limit and offset are integers") from None
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            raise UpsFailure(400, "0106", f"limit must be 1..{MAX_LIMIT}, offset >= 0")
        fields = [f for v in include for f in v.split(",") if f]
        found = self.server.worklist.search(matching, "all" in fields, [f for f in fields if f != "all"], limit,
                                            offset, opts.get("fuzzymatching", "false").lower() == "true")
        if not found:
            return self._send(204)
        self._send(200, json.dumps([ds.to_json_dict() for ds in found]).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str | None) -> None:
        super().__init__(address, _Handler)
        self.worklist = Worklist()
        self.token = token
        self.lock = threading.Lock()
        self.faults: list[int] = []
        self.state_delay = 0.0

    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{PREFIX}"


class UpsRsEmulator(ThreadedEmulator):
    """The emulated worklist in a background thread (a context manager); ``url`` is its ``.../v2`` base URL."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self._server: _Server
        super().__init__(_Server((host, port), token), "ups-rs-emulator")

    @property
    def url(self) -> str:
        return self._server.base_url()

    @property
    def worklist(self) -> Worklist:
        return self._server.worklist

    def script_faults(self, status: int, count: int = 1) -> None:
        """The next ``count`` API requests are answered with HTTP ``status``."""
        with self._server.lock:
            self._server.faults += [status] * count

    def delay_state_changes(self, seconds: float) -> None:
        """Hold every Change Workitem State request this long before it is applied (overlapping claims)."""
        self._server.state_delay = seconds


def main(argv: list[str] | None = None) -> int:
    """``python -m node.emulator.ups_rs.server --port P [--token T]``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Emulated UPS-RS worklist (Azure DICOM service v2 workitems)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", default=None, help="Require Authorization: Bearer TOKEN")
    args = parser.parse_args(argv)
    emu = UpsRsEmulator(host=args.host, port=args.port, token=args.token)
    print(f"EMULATED UPS-RS worklist at {emu.url}", flush=True)
    try:
        emu._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
